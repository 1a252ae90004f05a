//! What a sandbox's request may see: the models its `models:` lists, and nothing else.
//!
//! The policy proxy routes `models.aistack.internal` to the gateway and names the
//! sandbox's models in [`HEADER`], replacing any value the sandbox sent. The header only
//! ever narrows what a request sees, so the gateway needs no way to tell the proxy from any
//! other client: a request that names a model outside the list is refused in its dialect's
//! shape, listings leave such models out, and the routes that are not a model API (metrics,
//! pull, delete) are refused.

use std::collections::BTreeSet;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::{Api, ApiError};
use crate::gemini;
use crate::request::read_body;
use crate::state::Shared;

/// The header that names, comma-separated, the models a request may use.
pub const HEADER: &str = "x-aistack-models";

/// The models one request may use, by the names they are registered under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    models: BTreeSet<String>,
}

impl Scope {
    /// The scope a request carries, if it carries one.
    pub(crate) fn of(request: &Request) -> Option<Scope> {
        let value = request.headers().get(HEADER)?;
        let models = String::from_utf8_lossy(value.as_bytes())
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        Some(Scope { models })
    }

    /// Whether a request may use the model a client calls `name` (any spelling the gateway
    /// resolves: `chat`, `chat:latest`, its reference).
    fn allows(&self, shared: &Shared, name: &str) -> bool {
        shared
            .models
            .find(name)
            .is_ok_and(|entry| self.models.contains(&entry.config.name))
    }

    fn refusal(&self, name: &str) -> ApiError {
        let listed = if self.models.is_empty() {
            "none".to_owned()
        } else {
            (self.models.iter().map(|m| format!("`{m}`")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Model `{name}` is not listed in this sandbox's `models:` (listed: {listed}); help: add it to the sandbox's `models:` in aistack.yaml and run `aistack up`"
            ),
        )
    }
}

/// The routes a scoped request may use: the model APIs, not the gateway's administration.
fn is_model_api(method: &Method, path: &str) -> bool {
    let openai = ["/v1", "/engines/v1", "/engines/llama.cpp/v1"]
        .iter()
        .filter_map(|prefix| path.strip_prefix(prefix))
        .any(|rest| {
            matches!(
                rest,
                "/chat/completions" | "/completions" | "/responses" | "/embeddings"
            ) || rest == "/models"
                || rest.starts_with("/models/")
        });
    let other = matches!(
        path,
        "/v1/messages"
            | "/v1/messages/count_tokens"
            | "/api/tags"
            | "/api/chat"
            | "/api/generate"
            | "/api/embed"
            | "/api/embeddings"
            | "/api/show"
            | "/api/ps"
            | "/api/version"
    ) || path == "/v1beta/models"
        || path.starts_with("/v1beta/models/");
    (openai || other) && (method == Method::GET || method == Method::POST)
}

/// The model a `GET .../models/{name}` asks for, or any Gemini route, which names its model
/// in the path: read as the handler of `api` reads it.
fn model_in_path<'a>(api: Api, method: &Method, path: &'a str) -> Option<&'a str> {
    if api == Api::Gemini {
        return gemini::target(method, path).map(|(model, _)| model);
    }
    [
        "/v1/models/",
        "/engines/v1/models/",
        "/engines/llama.cpp/v1/models/",
    ]
    .iter()
    .find_map(|prefix| path.strip_prefix(prefix))
}

/// Runs a scoped request: refused when it names a model outside the scope, its listing
/// narrowed to the scope.
pub(crate) async fn enforce(
    scope: Scope,
    shared: &Shared,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let api = Api::of(&request);
    if !is_model_api(request.method(), &path) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "`{} {path}` is not available from a sandbox; help: sandboxes reach the model APIs only (chat, completions, embeddings, messages, listings)",
                request.method()
            ),
        )
        .render(api);
    }
    if let Some(name) = model_in_path(api, request.method(), &path)
        && !scope.allows(shared, name)
    {
        return scope.refusal(name).render(api);
    }
    // Gemini's handlers use the model of the path, checked above, whatever the body says.
    let request = if request.method() == Method::POST && api != Api::Gemini {
        let (parts, body) = request.into_parts();
        let bytes = match read_body(shared, body).await {
            Ok(bytes) => bytes,
            Err(e) => return e.render(api),
        };
        // A body that is not JSON, or names no model, is the handler's to refuse.
        if let Some(name) = named_model(&bytes)
            && !scope.allows(shared, &name)
        {
            return scope.refusal(&name).render(api);
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    let response = next.run(request).await;
    if response.status() != StatusCode::OK || !is_listing(&path) {
        return response;
    }
    narrowed(scope, shared, api, response).await
}

/// The model a request body names: `model`, or Ollama's older `name`.
fn named_model(body: &Bytes) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let name = value.get("model").or_else(|| value.get("name"))?;
    name.as_str().map(str::to_owned)
}

fn is_listing(path: &str) -> bool {
    path.ends_with("/models") || path == "/api/tags" || path == "/api/ps"
}

/// A listing with the models outside the scope left out: OpenAI's `data[].id`, Ollama's
/// `models[].name`, Gemini's `models[].name` (`models/chat`).
async fn narrowed(scope: Scope, shared: &Shared, api: Api, response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(mut listing) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    for (key, id) in [("data", "id"), ("models", "name")] {
        if let Some(items) = listing.get_mut(key).and_then(Value::as_array_mut) {
            items.retain(|item| {
                (item.get(id).and_then(Value::as_str))
                    .map(|name| match api {
                        Api::Gemini => name.strip_prefix("models/").unwrap_or(name),
                        _ => name,
                    })
                    .is_some_and(|name| scope.allows(shared, name))
            });
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(listing.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_reach_the_model_apis_only() {
        for path in [
            "/v1/chat/completions",
            "/engines/v1/embeddings",
            "/engines/llama.cpp/v1/models/chat",
            "/v1/messages",
            "/api/chat",
            "/api/tags",
            "/v1beta/models",
            "/v1beta/models/chat:streamGenerateContent",
        ] {
            assert!(
                is_model_api(&Method::POST, path) || is_model_api(&Method::GET, path),
                "{path}"
            );
        }
        for path in [
            "/metrics",
            "/api/pull",
            "/api/delete",
            "/",
            "/v1/chat/completionsx",
        ] {
            assert!(!is_model_api(&Method::POST, path), "{path}");
            assert!(!is_model_api(&Method::GET, path), "{path}");
        }
        assert!(!is_model_api(&Method::DELETE, "/api/chat"));
    }

    #[test]
    fn the_header_lists_names_and_an_empty_one_lists_none() {
        let scope = |value: &str| {
            let request = Request::builder()
                .header(HEADER, value)
                .body(Body::empty())
                .unwrap();
            Scope::of(&request).unwrap().models
        };
        assert_eq!(
            scope("chat, embed,"),
            BTreeSet::from(["chat".to_owned(), "embed".to_owned()])
        );
        assert!(scope("").is_empty());
        let unscoped = Request::builder().body(Body::empty()).unwrap();
        assert_eq!(Scope::of(&unscoped), None);
    }

    #[test]
    fn gemini_routes_name_their_model_in_the_path() {
        let post = |path| model_in_path(Api::Gemini, &Method::POST, path);
        let get = |api, path| model_in_path(api, &Method::GET, path);
        assert_eq!(post("/v1beta/models/chat:generateContent"), Some("chat"));
        assert_eq!(
            post("/v1beta/models/models/embed:embedContent"),
            Some("embed")
        );
        assert_eq!(
            post("/v1/models/chat:latest:countTokens"),
            Some("chat:latest")
        );
        assert_eq!(get(Api::Gemini, "/v1beta/models/chat"), Some("chat"));
        assert_eq!(get(Api::Gemini, "/v1beta/models"), None);
        assert_eq!(get(Api::Gemini, "/v1/models/models/chat"), Some("chat"));
        assert_eq!(
            get(Api::OpenAi, "/v1/models/chat:latest"),
            Some("chat:latest")
        );
    }

    #[test]
    fn a_body_names_its_model_or_ollama_name() {
        assert_eq!(
            named_model(&Bytes::from(r#"{"model":"chat"}"#)).as_deref(),
            Some("chat")
        );
        assert_eq!(
            named_model(&Bytes::from(r#"{"name":"chat:latest"}"#)).as_deref(),
            Some("chat:latest")
        );
        assert_eq!(named_model(&Bytes::from("not json")), None);
    }
}
