//! The Ollama API: chat and generate (a decoder and an encoder for the driver; NDJSON streams
//! by default), embeddings, and the model listing routes. Models come from aistack.yaml, so
//! pull and delete explain that instead.

use aistack_engine_api::{
    FinishReason, Format, GenerateRequest, Input, Message, Mode, Tool, ToolCall,
};
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::driver::{Encoder, End, Generation, generate};
use crate::embed::{embed, inputs};
use crate::error::{Api, ApiError, unavailable};
use crate::framing::Framing;
use crate::models::{Unavailable, unix_now};
use crate::request::{Call, answer, read_json, sampling, stop_list, string_at, token_limit, tool};
use crate::state::Shared;

/// RFC 3339 in UTC, as Ollama writes `created_at`; a time outside the years RFC 3339 can
/// write (0000 to 9999; an expiry after a keep-alive of millennia) is written as the nearest.
fn timestamp(unix: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    let unix = unix.clamp(-62_167_219_200, 253_402_300_799);
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|utc| utc.format(&Rfc3339).ok())
        .expect("years 0000 to 9999 are RFC 3339 times")
}

fn format(request: &Value) -> Result<Option<Format>, ApiError> {
    match request.get("format") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Format::JsonObject)),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(schema @ Value::Object(_)) => Ok(Some(Format::JsonSchema {
            schema: schema.clone(),
        })),
        Some(_) => Err(ApiError::bad_request(
            "`format` must be \"json\" or a JSON schema",
        )),
    }
}

fn options(
    request: &Value,
) -> Result<(aistack_engine_api::Sampling, Option<u32>, Vec<String>), ApiError> {
    let options = request.get("options").cloned().unwrap_or(Value::Null);
    if !options.is_null() && !options.is_object() {
        return Err(ApiError::bad_request("`options` must be an object"));
    }
    Ok((
        sampling(&options)?,
        token_limit(&options, "num_predict")?,
        stop_list(options.get("stop"))?,
    ))
}

fn offered_tools(request: &Value) -> Result<Vec<Tool>, ApiError> {
    let Some(items) = request.get("tools").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|item| {
            let function = item.get("function").unwrap_or(item);
            tool(function, "parameters", json!({"type": "object"}))
                .ok_or_else(|| ApiError::bad_request("Every tool needs a `function.name`"))
        })
        .collect()
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

/// What an Ollama generation route asks for.
enum Asked {
    /// A generation.
    Generate(Generation<OllamaEncoder>),
    /// Only the model loaded: Ollama answers an empty chat or prompt that way.
    Load(OllamaEncoder),
}

/// Answers a chat or generate route: a generation through the driver, or only the model
/// loaded.
async fn run(
    shared: &Shared,
    body: Body,
    decode: fn(&Call) -> Result<Asked, ApiError>,
) -> Response {
    answer(shared, body, Api::Ollama, |call| async move {
        match decode(&call)? {
            Asked::Generate(generation) => generate(shared, &call, generation).await,
            Asked::Load(encoder) => {
                let entry = call.entry(shared, Mode::Chat)?;
                (shared.models.ensure_loaded(&entry).await)
                    .map_err(|e| unavailable(&call.model, Unavailable::Failed(e)))?;
                let body = merge(
                    encoder.piece("", &[]),
                    json!({"done_reason": "load", "done": true}),
                );
                Ok(axum::Json(body).into_response())
            }
        }
    })
    .await
}

/// `POST /api/chat`.
pub(crate) async fn chat(State(shared): State<Shared>, body: Body) -> Response {
    run(&shared, body, decode_chat).await
}

fn decode_chat(call: &Call) -> Result<Asked, ApiError> {
    let request = &call.body;
    let Some(items) = request.get("messages").and_then(Value::as_array) else {
        return Err(ApiError::bad_request(
            "`messages` is required and must be an array",
        ));
    };
    let mut messages = Vec::new();
    for m in items {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("Every message needs a `role`"))?;
        let mut message = Message::new(
            role,
            m.get("content").and_then(Value::as_str).unwrap_or_default(),
        );
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            for (i, call) in calls.iter().enumerate() {
                message.tool_calls.push(ToolCall {
                    id: format!("call_{i}"),
                    name: string_at(call, "/function/name"),
                    arguments: call
                        .pointer("/function/arguments")
                        .map_or_else(|| "{}".to_owned(), Value::to_string),
                });
            }
        }
        message.name = m
            .get("tool_name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        messages.push(message);
    }
    let encoder = OllamaEncoder {
        model: call.model.clone(),
        chat: true,
    };
    if messages.is_empty() {
        return Ok(Asked::Load(encoder));
    }
    let tools = offered_tools(request)?;
    decoded(request, Input::Chat { messages, tools }, encoder)
}

/// `POST /api/generate`.
pub(crate) async fn generate_route(State(shared): State<Shared>, body: Body) -> Response {
    run(&shared, body, decode_generate).await
}

fn decode_generate(call: &Call) -> Result<Asked, ApiError> {
    let request = &call.body;
    let encoder = OllamaEncoder {
        model: call.model.clone(),
        chat: false,
    };
    let prompt = request
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if prompt.is_empty() {
        return Ok(Asked::Load(encoder));
    }
    let raw = request.get("raw").and_then(Value::as_bool).unwrap_or(false);
    let input = if raw {
        Input::Text {
            prompt: prompt.to_owned(),
        }
    } else {
        let mut messages = Vec::new();
        if let Some(system) = request.get("system").and_then(Value::as_str) {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", prompt));
        Input::Chat {
            messages,
            tools: Vec::new(),
        }
    };
    decoded(request, input, encoder)
}

/// The generation of a chat or generate request, from the fields they share.
fn decoded(request: &Value, input: Input, encoder: OllamaEncoder) -> Result<Asked, ApiError> {
    let (sampling, max_tokens, stop) = options(request)?;
    Ok(Asked::Generate(Generation {
        request: GenerateRequest {
            input,
            sampling,
            max_tokens,
            stop,
            format: format(request)?,
        },
        stream: request
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        encoder,
    }))
}

fn done_fields(end: &End) -> Value {
    let ns = |ms: f64| (ms * 1e6) as u64;
    let usage = &end.usage;
    json!({
        "done": true,
        "done_reason": match end.reason { FinishReason::Stop => "stop", FinishReason::Length => "length" },
        "total_duration": ns(usage.prompt_ms + usage.decode_ms),
        "load_duration": 0,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": ns(usage.prompt_ms),
        "eval_count": usage.completion_tokens,
        "eval_duration": ns(usage.decode_ms),
    })
}

/// A chat's `message` objects or a generate's `response` strings, one JSON line each.
pub(crate) struct OllamaEncoder {
    model: String,
    /// `/api/chat`, not `/api/generate`.
    chat: bool,
}

impl OllamaEncoder {
    /// The fields every line has: the model, the time, and the text (with a chat's calls).
    fn piece(&self, text: &str, calls: &[ToolCall]) -> Value {
        let mut v = json!({"model": self.model, "created_at": timestamp(unix_now())});
        if self.chat {
            let mut message = json!({"role": "assistant", "content": text});
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(
                    calls
                        .iter()
                        .map(|c| {
                            let arguments: Value =
                                serde_json::from_str(&c.arguments).unwrap_or(json!({}));
                            json!({"function": {"name": c.name, "arguments": arguments}})
                        })
                        .collect(),
                );
            }
            v["message"] = message;
        } else {
            v["response"] = json!(text);
        }
        v
    }
}

impl Encoder for OllamaEncoder {
    const API: Api = Api::Ollama;
    const FRAMING: Framing = Framing::Ndjson;
    const CALL_PREFIX: &'static str = "call_";

    fn whole(&self, end: &End) -> Value {
        merge(self.piece(&end.text, &end.calls), done_fields(end))
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        vec![merge(self.piece(text, &[]), json!({"done": false}))]
    }

    /// Ollama's last line is the whole answer's, with what was held back as its text.
    fn finish(&mut self, end: &End) -> Vec<Value> {
        vec![self.whole(end)]
    }
}

/// `POST /api/embed`.
pub(crate) async fn embed_route(State(shared): State<Shared>, body: Body) -> Response {
    answer(&shared, body, Api::Ollama, async |call| {
        let texts = inputs(call.body.get("input"))?;
        let (vectors, tokens) = embed(&shared, &call, texts).await?;
        let body = json!({"model": call.model, "embeddings": vectors, "prompt_eval_count": tokens});
        Ok(axum::Json(body).into_response())
    })
    .await
}

/// `POST /api/embeddings` (Ollama's older route: `prompt` in, one `embedding` out).
pub(crate) async fn embeddings_legacy(State(shared): State<Shared>, body: Body) -> Response {
    answer(&shared, body, Api::Ollama, async |call| {
        let prompt = call
            .body
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("`prompt` is required"))?;
        let (mut vectors, _) = embed(&shared, &call, vec![prompt.to_owned()]).await?;
        Ok(axum::Json(json!({"embedding": vectors.pop().unwrap_or_default()})).into_response())
    })
    .await
}

fn details(config: &crate::ModelConfig) -> Value {
    let family = config.architecture.clone().unwrap_or_default();
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": config.parameters.clone().unwrap_or_default(),
        "quantization_level": config.quantization.clone().unwrap_or_default(),
    })
}

fn tag(name: &str) -> String {
    if name.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// `GET /api/tags`.
pub(crate) async fn tags(State(shared): State<Shared>) -> Response {
    let models: Vec<Value> = shared
        .models
        .configs()
        .iter()
        .map(|e| {
            let c = &e.config;
            json!({"name": tag(&c.name), "model": tag(&c.name), "modified_at": timestamp(c.created),
                   "size": c.size, "digest": c.digest.trim_start_matches("sha256:"), "details": details(c)})
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

/// `GET /api/ps`.
pub(crate) async fn ps(State(shared): State<Shared>) -> Response {
    let models: Vec<Value> = shared
        .models
        .configs()
        .iter()
        .filter_map(|e| {
            let info = e.loaded_info()?;
            let c = &e.config;
            let expires = match c.keep_alive {
                crate::KeepAlive::Never => "0001-01-01T00:00:00Z".to_owned(),
                crate::KeepAlive::After(d) => timestamp(unix_now() + i64::try_from(d.as_secs()).unwrap_or(0)),
            };
            Some(json!({"name": tag(&c.name), "model": tag(&c.name), "size": info.memory_bytes,
                        "digest": c.digest.trim_start_matches("sha256:"), "details": details(c),
                        "expires_at": expires, "size_vram": 0, "context_length": info.context_size}))
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

/// Answers a route about a model, named by `model` or the older `name`. Such a route asks
/// nothing of the model's engine, so the request counter leaves it out.
async fn about_model(
    shared: &Shared,
    body: Body,
    respond: fn(&Shared, &Value, Option<&str>) -> Result<Response, ApiError>,
) -> Response {
    let answer = match read_json::<Value>(shared, body).await {
        Ok(request) => {
            let name =
                (request.get("model").or_else(|| request.get("name"))).and_then(Value::as_str);
            respond(shared, &request, name)
        }
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(|e| e.render(Api::Ollama))
}

/// `POST /api/show`.
pub(crate) async fn show(State(shared): State<Shared>, body: Body) -> Response {
    about_model(&shared, body, show_model).await
}

fn show_model(shared: &Shared, _: &Value, name: Option<&str>) -> Result<Response, ApiError> {
    let name = name.ok_or_else(|| ApiError::bad_request("`model` is required"))?;
    let entry = shared.models.find(name).map_err(|e| unavailable(name, e))?;
    let c = &entry.config;
    let capabilities = match c.mode {
        Mode::Chat => json!(["completion", "tools"]),
        Mode::Embedding => json!(["embedding"]),
    };
    let template = c
        .chat_template
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut info = json!({"general.architecture": c.architecture});
    if let Some(context) = c.context_size {
        info["aistack.context_size"] = json!(context);
    }
    let body = json!({"modelfile": "", "parameters": "", "template": template, "details": details(c),
                      "model_info": info, "capabilities": capabilities,
                      "modified_at": timestamp(c.created)});
    Ok(axum::Json(body).into_response())
}

/// `POST /api/pull`: models are declared in aistack.yaml; a declared one is already here.
pub(crate) async fn pull(State(shared): State<Shared>, body: Body) -> Response {
    about_model(&shared, body, pull_model).await
}

fn pull_model(shared: &Shared, request: &Value, name: Option<&str>) -> Result<Response, ApiError> {
    let name = name.unwrap_or_default();
    if shared.models.find(name).is_err() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "Model `{name}` is not declared; help: add it under `models:` in aistack.yaml and run `aistack up`, which pulls it"
            ),
        ));
    }
    let success = json!({"status": "success"});
    if !request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(true)
    {
        return Ok(axum::Json(success).into_response());
    }
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Framing::Ndjson.frame(&success));
    Ok(Framing::Ndjson.response(rx))
}

/// `DELETE /api/delete`.
pub(crate) async fn delete() -> Response {
    ApiError::bad_request(
        "Models are declared in aistack.yaml; help: remove the model there and run `aistack up`, or `aistack down --models`",
    )
    .render(Api::Ollama)
}

/// `GET /api/version`.
pub(crate) async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_chat_ends_with_a_line_holding_the_rest_and_the_calls() {
        let chat = OllamaEncoder {
            model: "chat".into(),
            chat: true,
        };
        let lines = crate::driver::replay::text_and_a_call(chat);
        let untimed: String = (lines.lines())
            .map(|line| {
                let mut line: Value = serde_json::from_str(line).unwrap();
                line["created_at"] = json!("T");
                format!("{line}\n")
            })
            .collect();
        assert_eq!(
            untimed,
            r#"{"created_at":"T","done":false,"message":{"content":"Let me check.\n","role":"assistant"},"model":"chat"}
{"created_at":"T","done":true,"done_reason":"stop","eval_count":3,"eval_duration":20000000,"load_duration":0,"message":{"content":"\n Done.","role":"assistant","tool_calls":[{"function":{"arguments":{"city":"Paris"},"name":"get_weather"}}]},"model":"chat","prompt_eval_count":10,"prompt_eval_duration":5000000,"total_duration":25000000}
"#
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_795_478_400), "2026-11-24T00:00:00Z");
        assert_eq!(timestamp(951_782_400 + 3661), "2000-02-29T01:01:01Z");
        assert_eq!(timestamp(i64::MAX), "9999-12-31T23:59:59Z");
    }
}
