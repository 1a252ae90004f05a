//! Reading what a client asks of a model, alike in every dialect: the JSON body within the
//! gateway's limit, the model it names (checked, then leased in its queue), the label the
//! request counter files the answer under, and the fields the dialects spell the same way.

use std::sync::Arc;

use aistack_engine_api::{Mode, Sampling, Tool};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Api, ApiError, unavailable};
use crate::metrics::ModelLabel;
use crate::models::{Entry, Lease};
use crate::state::Shared;

/// A request to a model route, read: what a dialect decodes, and whom it is for.
#[derive(Debug)]
pub(crate) struct Call {
    /// The JSON body.
    pub(crate) body: Value,
    /// The model as the client spelled it (empty when it named none): answers echo it and
    /// the metrics count under it.
    pub(crate) model: String,
}

impl Call {
    /// The model the request names, checked to serve `mode`.
    pub(crate) fn entry(&self, shared: &Shared, mode: Mode) -> Result<Arc<Entry>, ApiError> {
        let name = &self.model;
        if name.is_empty() {
            return Err(ApiError::bad_request("The request names no `model`"));
        }
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

    /// A lease on the engine of the model the request names, once its turn in the model's
    /// queue comes (the engine loaded first if need be).
    pub(crate) async fn lease(&self, shared: &Shared, mode: Mode) -> Result<Lease, ApiError> {
        self.queue(shared, mode)?.await
    }

    /// As [`Call::lease`], with the model checked now and the wait a future that owns what
    /// it needs, so that a stream can go on waiting after its headers are sent.
    pub(crate) fn queue(
        &self,
        shared: &Shared,
        mode: Mode,
    ) -> Result<impl Future<Output = Result<Lease, ApiError>> + Send + 'static, ApiError> {
        let entry = self.entry(shared, mode)?;
        let (shared, model) = (shared.clone(), self.model.clone());
        Ok(async move { (shared.models.acquire(entry).await).map_err(|e| unavailable(&model, e)) })
    }
}

/// Answers a model route in `api`'s shape: reads the body into a [`Call`], runs `respond` on
/// it, and labels the answer with the model for the request counter. A body that is not JSON
/// is refused before any model is known, so it is counted under none.
pub(crate) async fn answer<F, Fut>(shared: &Shared, body: Body, api: Api, respond: F) -> Response
where
    F: FnOnce(Call) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    answer_for(shared, body, api, None, respond).await
}

/// As [`answer`], for a route that names its model in the path (Gemini's
/// `/v1beta/models/{model}:generateContent`): `model`, when given, is the one asked, whatever
/// the body says.
pub(crate) async fn answer_for<F, Fut>(
    shared: &Shared,
    body: Body,
    api: Api,
    model: Option<&str>,
    respond: F,
) -> Response
where
    F: FnOnce(Call) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let body: Value = match read_json(shared, body).await {
        Ok(body) => body,
        Err(e) => return e.render(api),
    };
    let model = (model.or_else(|| body.get("model").and_then(Value::as_str)))
        .unwrap_or_default()
        .to_owned();
    let label = ModelLabel(model.clone());
    let mut response = respond(Call { body, model })
        .await
        .unwrap_or_else(|e| e.render(api));
    response.extensions_mut().insert(label);
    response
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

/// A tool a request offers, from the object that holds its `name`, `description` and, under
/// `schema_key`, the JSON Schema of its arguments (`default_schema` when absent). `None` when
/// it has no name, which each dialect words its own way.
pub(crate) fn tool(object: &Value, schema_key: &str, default_schema: Value) -> Option<Tool> {
    let name = object.get("name")?.as_str()?;
    Some(Tool {
        name: name.to_owned(),
        description: (object.get("description").and_then(Value::as_str)).map(str::to_owned),
        parameters: object.get(schema_key).cloned().unwrap_or(default_schema),
    })
}

/// The string at `pointer`, empty when absent: the history a client sends back is taken as
/// it comes.
pub(crate) fn string_at(value: &Value, pointer: &str) -> String {
    (value.pointer(pointer).and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned()
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
fn number(object: &Value, key: &str) -> Result<Option<f64>, ApiError> {
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
pub(crate) fn sampling(object: &Value) -> Result<Sampling, ApiError> {
    let f = |key| number(object, key).map(|v| v.map(|n| n as f32));
    Ok(Sampling {
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
