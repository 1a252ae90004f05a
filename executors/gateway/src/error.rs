//! Errors as each dialect shapes them. A failure is decided once, as an [`ApiError`] (status
//! and message), and shaped only when it is answered, so every route and the driver's streams
//! agree on what a client sees.

use aistack_engine_api::{ClientError, ErrorKind};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::gemini;
use crate::models::Unavailable;

/// The API a request speaks, which decides its error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// OpenAI's, also Docker Model Runner's under `/engines/...`.
    OpenAi,
    /// Ollama's `/api/...`.
    Ollama,
    /// Anthropic's Messages.
    Anthropic,
    /// Google's Gemini API (`/v1beta/models/...`, and Google's clients on `/v1/models/...`).
    Gemini,
}

impl Api {
    /// The dialect of a request, for answers given before any route runs (authentication,
    /// the sandbox scope, unknown routes).
    pub(crate) fn of(request: &Request) -> Api {
        let path = request.uri().path();
        if gemini::asks(request) {
            Api::Gemini
        } else if path.starts_with("/api/") {
            Api::Ollama
        } else if path.starts_with("/v1/messages") {
            Api::Anthropic
        } else {
            Api::OpenAi
        }
    }

    /// The `api` label of the request counter.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Ollama => "ollama",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gemini",
        }
    }
}

/// An error answer, before it is shaped for a dialect.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    /// The HTTP status, which also picks the error's type in each shape.
    pub(crate) status: StatusCode,
    /// One line saying what is wrong and, after `help:`, what to do.
    pub(crate) message: String,
}

impl ApiError {
    /// An error with its status; the message says what to do, as every user-facing one does.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// The client's mistake, the most common refusal.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The JSON body in `api`'s shape.
    pub(crate) fn body(&self, api: Api) -> Value {
        match api {
            Api::OpenAi => {
                let (kind, code) = match self.status.as_u16() {
                    401 => ("authentication_error", Value::Null),
                    403 => ("permission_error", Value::Null),
                    404 => ("invalid_request_error", json!("model_not_found")),
                    413 => ("invalid_request_error", json!("request_too_large")),
                    503 => ("server_error", json!("service_unavailable")),
                    s if s >= 500 => ("server_error", Value::Null),
                    _ => ("invalid_request_error", Value::Null),
                };
                json!({"error": {"message": self.message, "type": kind, "param": null, "code": code}})
            }
            Api::Ollama => json!({"error": self.message}),
            Api::Anthropic => {
                let kind = match self.status.as_u16() {
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    413 => "request_too_large",
                    503 => "overloaded_error",
                    s if s >= 500 => "api_error",
                    _ => "invalid_request_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": self.message}})
            }
            Api::Gemini => {
                // google.rpc.Status, as Google's HTTP mapping of its codes writes it.
                let status = match self.status.as_u16() {
                    401 => "UNAUTHENTICATED",
                    403 => "PERMISSION_DENIED",
                    404 => "NOT_FOUND",
                    429 => "RESOURCE_EXHAUSTED",
                    501 => "UNIMPLEMENTED",
                    503 => "UNAVAILABLE",
                    s if s >= 500 => "INTERNAL",
                    _ => "INVALID_ARGUMENT",
                };
                json!({"error": {"code": self.status.as_u16(), "message": self.message, "status": status}})
            }
        }
    }

    /// The whole answer in `api`'s shape: status, body, and the challenge a 401 owes the
    /// clients that read one.
    pub(crate) fn render(&self, api: Api) -> Response {
        let mut response = (self.status, axum::Json(self.body(api))).into_response();
        if self.status == StatusCode::UNAUTHORIZED && api != Api::Ollama {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A refusal from the engine, as an API error (its help appended, so clients see the fix).
pub(crate) fn from_client(error: &ClientError) -> ApiError {
    match error {
        ClientError::Refused(body) => {
            let status =
                StatusCode::from_u16(body.kind.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let message = match &body.help {
                Some(help) => format!("{}; help: {help}", body.message),
                None => body.message.clone(),
            };
            let status = if body.kind == ErrorKind::Overloaded {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                status
            };
            ApiError::new(status, message)
        }
        ClientError::Connect { .. } | ClientError::Disconnected(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The model's engine stopped; the next request restarts it",
        ),
        ClientError::Decode(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The model's engine answered with something this gateway cannot read",
        ),
    }
}

/// Why the model `name` cannot answer, as an API error: not served here (with what is), its
/// queue full, or its engine failing to load.
pub(crate) fn unavailable(name: &str, error: Unavailable) -> ApiError {
    match error {
        Unavailable::Unknown(served) => ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "Model `{name}` is not served here (served: {}); help: add it under `models:` in aistack.yaml and run `aistack up`",
                if served.is_empty() {
                    "none".to_owned()
                } else {
                    served.join(", ")
                }
            ),
        ),
        Unavailable::Busy => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy, please try again. maximum pending requests exceeded",
        ),
        Unavailable::Failed(e) => {
            let message = match e.help() {
                Some(help) => format!("{e}; help: {help}"),
                None => e.to_string(),
            };
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}
