//! The router and what every request passes through first: the host check of a gateway
//! without a key (DNS rebinding, [`crate::host`]), CORS, authentication (a bearer key, else
//! loopback clients only) and the request counter.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use subtle::ConstantTimeEq;

use crate::config::Auth;
use crate::error::{Api, ApiError};
use crate::host;
use crate::metrics::ModelLabel;
use crate::responses;
use crate::scope::{self, Scope};
use crate::state::Shared;
use crate::{anthropic, ollama, openai};

/// OpenAI's routes, mounted under `/v1`, `/engines/v1` and `/engines/llama.cpp/v1` as Docker
/// Model Runner mounts them.
fn openai_routes() -> Router<Shared> {
    Router::new()
        .route("/chat/completions", post(openai::chat_completions))
        .route("/completions", post(openai::completions))
        .route("/responses", post(responses::responses))
        .route("/embeddings", post(openai::embeddings))
        .route("/models", get(openai::list_models))
        .route("/models/{*name}", get(openai::get_model))
}

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .nest("/v1", openai_routes())
        .nest("/engines/v1", openai_routes())
        .nest("/engines/llama.cpp/v1", openai_routes())
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/api/tags", get(ollama::tags))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate_route))
        .route("/api/embed", post(ollama::embed_route))
        .route("/api/embeddings", post(ollama::embeddings_legacy))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .route("/api/pull", post(ollama::pull))
        .route("/api/delete", delete(ollama::delete))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { "aistack is running" }))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

async fn metrics(State(shared): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(&shared.models),
    )
        .into_response()
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_owned();
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("No route `{} {path}`", request.method()),
    )
    .render(Api::of_path(&path))
}

/// Whether `headers` carry the key, as a bearer token or Anthropic's `x-api-key`.
fn authorised(headers: &HeaderMap, key: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    [bearer, x_api_key]
        .into_iter()
        .flatten()
        .any(|given| bool::from(given.as_bytes().ct_eq(key.as_bytes())))
}

async fn guard(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let settings = shared.settings();
    let api = Api::of_path(request.uri().path());
    // First, so that a rebinding page's preflight is refused too.
    if settings.auth == Auth::LoopbackOnly
        && let Some(e) = host::refusal(&request, settings.listen)
    {
        return e.render(api);
    }
    let origin = request.headers().get(header::ORIGIN).cloned();
    let allowed_origin = origin.as_ref().filter(|o| {
        settings
            .cors_origins
            .iter()
            .any(|allowed| allowed == "*" || o.as_bytes() == allowed.as_bytes())
    });
    if request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let Some(origin) = allowed_origin else {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "This origin is not allowed; help: add it to `gateway.cors_origins` in aistack.yaml",
            )
            .render(api);
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-api-key, anthropic-version"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        return response;
    }
    let refusal = match &settings.auth {
        Auth::Key(key) if !authorised(request.headers(), key) => Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Missing or wrong API key; help: send `Authorization: Bearer <key>` with the value of the variable named by `gateway.api_key_env`",
        )),
        Auth::KeyUnknown => Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "The aistack daemon restarted and does not know this gateway's API key yet; help: run `aistack up` again to hand it over",
        )),
        Auth::LoopbackOnly if !peer.ip().is_loopback() => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "This gateway has no API key, so it serves only this machine; help: set `gateway.api_key_env` in aistack.yaml to serve other machines",
        )),
        _ => None,
    };
    let mut response = match refusal {
        Some(e) => e.render(api),
        None => match Scope::of(&request) {
            Some(scope) => scope::enforce(scope, &shared, request, next).await,
            None => next.run(request).await,
        },
    };
    if let Some(label) = response.extensions().get::<ModelLabel>() {
        shared
            .metrics
            .request(&label.0, api.label(), response.status().as_u16());
    }
    if let Some(origin) = allowed_origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}
