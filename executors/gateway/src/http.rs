//! The router and what every request passes through first: the host check of a gateway
//! without a key (DNS rebinding, [`crate::host`]), CORS, authentication (a key, else loopback
//! clients only) and the request counter.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
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
use crate::{anthropic, gemini, ollama, openai};

/// OpenAI's routes, mounted under `/v1`, `/engines/v1` and `/engines/llama.cpp/v1` as Docker
/// Model Runner mounts them, but for the models under `/v1` (see [`router`]).
fn openai_routes() -> Router<Shared> {
    Router::new()
        .route("/chat/completions", post(openai::chat_completions))
        .route("/completions", post(openai::completions))
        .route("/responses", post(responses::responses))
        .route("/embeddings", post(openai::embeddings))
}

/// OpenAI's model listing and model.
fn openai_models() -> Router<Shared> {
    Router::new()
        .route("/models", get(openai::list_models))
        .route("/models/{*name}", get(openai::get_model))
}

async fn v1_listing(State(shared): State<Shared>, request: Request) -> Response {
    if gemini::asks(&request) {
        gemini::list_models(State(shared), request).await
    } else {
        openai::list_models(State(shared)).await
    }
}

async fn v1_model(State(shared): State<Shared>, name: Path<String>, request: Request) -> Response {
    if gemini::asks(&request) {
        gemini::model_route(State(shared), request).await
    } else {
        openai::get_model(State(shared), name).await
    }
}

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .nest("/v1", openai_routes())
        // The Gemini API's `v1` (google-genai 3's default) shares these paths: its model
        // methods are `POST`s, which OpenAI has none of here, and its `GET`s are told apart
        // by `gemini::asks`. Routed whole, as a nested route would see its path cut.
        .route("/v1/models", get(v1_listing))
        .route(
            "/v1/models/{*name}",
            get(v1_model).post(gemini::model_route),
        )
        .nest("/engines/v1", openai_routes().merge(openai_models()))
        .nest(
            "/engines/llama.cpp/v1",
            openai_routes().merge(openai_models()),
        )
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1beta/models", get(gemini::list_models))
        .route(
            "/v1beta/models/{*rest}",
            get(gemini::model_route).post(gemini::model_route),
        )
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
    .render(Api::of(&request))
}

/// Whether `request` carries the key: as a bearer token, Anthropic's `x-api-key`, Google's
/// `x-goog-api-key`, or, on the Gemini routes (`api`), Google's `key=` query parameter.
fn authorised(request: &Request, api: Api, key: &str) -> bool {
    let headers: &HeaderMap = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let x_goog_api_key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    let query_key = (api == Api::Gemini)
        .then(|| gemini::query_param(request.uri().query(), "key"))
        .flatten();
    [bearer, x_api_key, x_goog_api_key, query_key.as_deref()]
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
    let api = Api::of(&request);
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
            HeaderValue::from_static(
                "authorization, content-type, x-api-key, anthropic-version, x-goog-api-key, x-goog-api-client",
            ),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        return response;
    }
    let refusal = match &settings.auth {
        Auth::Key(key) if !authorised(&request, api, key) => Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            match api {
                Api::Gemini => {
                    "Missing or wrong API key; help: send `x-goog-api-key: <key>` with the value of the variable named by `gateway.api_key_env`"
                }
                _ => {
                    "Missing or wrong API key; help: send `Authorization: Bearer <key>` with the value of the variable named by `gateway.api_key_env`"
                }
            },
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
