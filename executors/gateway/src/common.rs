//! What the three dialects share: reading a JSON body within the limit, errors as each
//! dialect shapes them, and starting a generation on a model's engine.

use std::sync::Arc;

use aistack_engine_api::{ClientError, ErrorKind, EventStream, GenerateRequest, Mode};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::GatewayError;
use crate::models::{Entry, Lease, Unavailable};
use crate::state::Shared;

/// The API a request speaks, which decides its error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAi,
    Ollama,
    Anthropic,
}

impl Api {
    /// The dialect of a path.
    pub(crate) fn of_path(path: &str) -> Api {
        if path.starts_with("/api/") {
            Api::Ollama
        } else if path.starts_with("/v1/messages") {
            Api::Anthropic
        } else {
            Api::OpenAi
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Ollama => "ollama",
            Api::Anthropic => "anthropic",
        }
    }
}

/// An error answer, before it is shaped for a dialect.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

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
        }
    }

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

/// Reads a body no larger than the gateway's limit.
pub(crate) async fn read_body(shared: &Shared, body: Body) -> Result<Bytes, ApiError> {
    let limit = shared.settings().body_limit;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is larger than {limit} bytes"),
        )
    })
}

/// Reads a JSON body no larger than the gateway's limit.
pub(crate) async fn read_json<T: DeserializeOwned>(
    shared: &Shared,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_body(shared, body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))
}

/// Finds the model a request names and checks it serves `mode`.
pub(crate) fn model(
    shared: &Shared,
    name: Option<&str>,
    mode: Mode,
) -> Result<Arc<Entry>, ApiError> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request("The request names no `model`"));
    };
    let entry = shared.models.find(name).map_err(|e| unavailable(name, e))?;
    if entry.config.mode != mode {
        let served = match entry.config.mode {
            Mode::Chat => "chat",
            Mode::Embedding => "embedding",
        };
        return Err(ApiError::bad_request(format!(
            "Model `{name}` is served in `{served}` mode and cannot answer this request; help: set `mode:` on the model in aistack.yaml"
        )));
    }
    Ok(entry)
}

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
            let status = match e {
                GatewayError::Memory { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let message = match e.help() {
                Some(help) => format!("{e}; help: {help}"),
                None => e.to_string(),
            };
            ApiError::new(status, message)
        }
    }
}

/// A lease on the model's engine; waits in the model's queue.
pub(crate) async fn lease(shared: &Shared, entry: Arc<Entry>) -> Result<Lease, ApiError> {
    let name = entry.config.name.clone();
    shared
        .models
        .acquire(entry)
        .await
        .map_err(|e| unavailable(&name, e))
}

/// Starts a generation: a lease on a sequence and the engine's event stream.
pub(crate) async fn generate(
    shared: &Shared,
    entry: Arc<Entry>,
    request: &GenerateRequest,
) -> Result<(Lease, EventStream), ApiError> {
    let lease = lease(shared, entry).await?;
    let stream = lease
        .client
        .generate(request)
        .await
        .map_err(|e| from_client(&e))?;
    Ok((lease, stream))
}

/// A streaming response body fed by a channel.
pub(crate) fn stream_body(
    content_type: &'static str,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An SSE `data:` frame.
pub(crate) fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// A JSON value as one NDJSON line.
pub(crate) fn ndjson(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

/// An id unique within this process and unlikely to repeat across restarts.
pub(crate) fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}{:08x}{n:x}", nanos ^ std::process::id())
}

/// `stop` as a string or an array of strings.
pub(crate) fn stop_list(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::bad_request("`stop` must be a string or an array of strings")
                })
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(
            "`stop` must be a string or an array of strings",
        )),
    }
}

/// An optional number field.
pub(crate) fn number(object: &Value, key: &str) -> Result<Option<f64>, ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("`{key}` must be a number"))),
    }
}

/// An optional positive token count (`max_tokens` and friends).
pub(crate) fn token_limit(object: &Value, key: &str) -> Result<Option<u32>, ApiError> {
    match number(object, key)? {
        None => Ok(None),
        Some(n) if n >= 1.0 && n.fract() == 0.0 && n <= f64::from(u32::MAX) => Ok(Some(n as u32)),
        Some(n) if n == -1.0 && key == "num_predict" => Ok(None),
        Some(n) => Err(ApiError::bad_request(format!(
            "`{key}` must be a positive integer, not {n}"
        ))),
    }
}

/// Sampling fields shared by OpenAI, Ollama `options` and Anthropic.
pub(crate) fn sampling(object: &Value) -> Result<aistack_engine_api::Sampling, ApiError> {
    let f = |key| number(object, key).map(|v| v.map(|n| n as f32));
    Ok(aistack_engine_api::Sampling {
        temperature: f("temperature")?,
        top_p: f("top_p")?,
        top_k: number(object, "top_k")?.map(|n| n as i32),
        min_p: f("min_p")?,
        seed: number(object, "seed")?.map(|n| n as i64 as u32),
        repeat_penalty: f("repeat_penalty")?,
        frequency_penalty: f("frequency_penalty")?,
        presence_penalty: f("presence_penalty")?,
    })
}
