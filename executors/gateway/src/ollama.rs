//! The Ollama API: chat and generate (NDJSON streams by default), embeddings, and the model
//! listing routes. Models come from aistack.yaml, so pull and delete explain that instead.

use aistack_engine_api::{
    Event, FinishReason, Format, GenerateRequest, Input, Message, Mode, Tool, ToolCall, tools,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::common::{
    Api, ApiError, from_client, generate, model, ndjson, read_json, sampling, stop_list,
    stream_body, token_limit,
};
use crate::metrics::ModelLabel;
use crate::models::unix_now;
use crate::openai::{embed, embed_inputs};
use crate::state::Shared;

fn fail(e: &ApiError) -> Response {
    e.render(Api::Ollama)
}

fn labelled(mut response: Response, model: &str) -> Response {
    response
        .extensions_mut()
        .insert(ModelLabel(model.to_owned()));
    response
}

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
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("Every tool needs a `function.name`"))?;
            Ok(Tool {
                name: name.to_owned(),
                description: function
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: function
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            })
        })
        .collect()
}

fn done_fields(reason: FinishReason, usage: &aistack_engine_api::Usage) -> Value {
    let ns = |ms: f64| (ms * 1e6) as u64;
    json!({
        "done": true,
        "done_reason": match reason { FinishReason::Stop => "stop", FinishReason::Length => "length" },
        "total_duration": ns(usage.prompt_ms + usage.decode_ms),
        "load_duration": 0,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": ns(usage.prompt_ms),
        "eval_count": usage.completion_tokens,
        "eval_duration": ns(usage.decode_ms),
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

/// `POST /api/chat`.
pub(crate) async fn chat(State(shared): State<Shared>, body: Body) -> Response {
    let request: Value = match read_json(&shared, body).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let name = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let result = async {
        let Some(items) = request.get("messages").and_then(Value::as_array) else {
            return Err(ApiError::bad_request("`messages` is required and must be an array"));
        };
        let mut messages = Vec::new();
        for m in items {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("Every message needs a `role`"))?;
            let mut message = Message::new(role, m.get("content").and_then(Value::as_str).unwrap_or_default());
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for (i, call) in calls.iter().enumerate() {
                    message.tool_calls.push(ToolCall {
                        id: format!("call_{i}"),
                        name: call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        arguments: call.pointer("/function/arguments").map_or_else(|| "{}".to_owned(), Value::to_string),
                    });
                }
            }
            message.name = m.get("tool_name").and_then(Value::as_str).map(str::to_owned);
            messages.push(message);
        }
        if messages.is_empty() {
            // Ollama answers an empty chat by loading the model.
            let entry = model(&shared, Some(&name), Mode::Chat)?;
            shared.models.ensure_loaded(&entry).await.map_err(|e| crate::common::unavailable(&name, crate::models::Unavailable::Failed(e)))?;
            return Ok(axum::Json(json!({"model": name, "created_at": timestamp(unix_now()),
                "message": {"role": "assistant", "content": ""}, "done_reason": "load", "done": true})).into_response());
        }
        let offered = offered_tools(&request)?;
        let (sampling, max_tokens, stop) = options(&request)?;
        let generate_request = GenerateRequest {
            input: Input::Chat { messages, tools: offered.clone() },
            sampling,
            max_tokens,
            stop,
            format: format(&request)?,
        };
        respond(&shared, &request, &name, generate_request, offered, true).await
    }
    .await;
    match result {
        Ok(r) => labelled(r, &name),
        Err(e) => labelled(fail(&e), &name),
    }
}

/// `POST /api/generate`.
pub(crate) async fn generate_route(State(shared): State<Shared>, body: Body) -> Response {
    let request: Value = match read_json(&shared, body).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let name = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let result = async {
        let prompt = request
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if prompt.is_empty() {
            let entry = model(&shared, Some(&name), Mode::Chat)?;
            shared.models.ensure_loaded(&entry).await.map_err(|e| {
                crate::common::unavailable(&name, crate::models::Unavailable::Failed(e))
            })?;
            return Ok(
                axum::Json(json!({"model": name, "created_at": timestamp(unix_now()),
                "response": "", "done_reason": "load", "done": true}))
                .into_response(),
            );
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
        let (sampling, max_tokens, stop) = options(&request)?;
        let generate_request = GenerateRequest {
            input,
            sampling,
            max_tokens,
            stop,
            format: format(&request)?,
        };
        respond(
            &shared,
            &request,
            &name,
            generate_request,
            Vec::new(),
            false,
        )
        .await
    }
    .await;
    match result {
        Ok(r) => labelled(r, &name),
        Err(e) => labelled(fail(&e), &name),
    }
}

/// Runs a chat (`message` objects) or generate (`response` strings) request.
async fn respond(
    shared: &Shared,
    request: &Value,
    name: &str,
    generate_request: GenerateRequest,
    offered: Vec<Tool>,
    chat: bool,
) -> Result<Response, ApiError> {
    let entry = model(shared, Some(name), Mode::Chat)?;
    let streaming = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let (lease, mut events) = generate(shared, entry, &generate_request).await?;
    let model_name = name.to_owned();
    let piece = move |text: &str, calls: &[ToolCall]| {
        let mut v = json!({"model": model_name, "created_at": timestamp(unix_now())});
        if chat {
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
    };
    let label = name.to_owned();
    if !streaming {
        let mut text = String::new();
        loop {
            match events.next().await {
                Some(Ok(Event::Text { text: t })) => text.push_str(&t),
                Some(Ok(Event::Done {
                    finish_reason,
                    usage,
                })) => {
                    drop(lease);
                    shared.metrics.generation(&label, &usage);
                    let parsed = if offered.is_empty() {
                        tools::Parsed {
                            content: text,
                            calls: Vec::new(),
                        }
                    } else {
                        tools::parse(&text, &offered, "call_")
                    };
                    let body = merge(
                        piece(&parsed.content, &parsed.calls),
                        done_fields(finish_reason, &usage),
                    );
                    return Ok(axum::Json(body).into_response());
                }
                Some(Ok(Event::Error { error })) => {
                    return Err(from_client(&aistack_engine_api::ClientError::Refused(
                        error,
                    )));
                }
                Some(Err(e)) => return Err(from_client(&e)),
                None => {
                    return Err(from_client(&aistack_engine_api::ClientError::Disconnected(
                        None,
                    )));
                }
            }
        }
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _lease = lease;
        let mut splitter = tools::Splitter::new();
        loop {
            match events.next().await {
                Some(Ok(Event::Text { text })) => {
                    let visible = if offered.is_empty() {
                        text.as_str()
                    } else {
                        splitter.push(&text)
                    };
                    if !visible.is_empty() {
                        let line = merge(piece(visible, &[]), json!({"done": false}));
                        if tx.send(ndjson(&line)).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(Event::Done {
                    finish_reason,
                    usage,
                })) => {
                    shared.metrics.generation(&label, &usage);
                    let (rest, calls) = if offered.is_empty() {
                        (String::new(), Vec::new())
                    } else {
                        let (parsed, unshown) = splitter.finish(&offered, "call_");
                        (unshown, parsed.calls)
                    };
                    let line = merge(piece(&rest, &calls), done_fields(finish_reason, &usage));
                    let _ = tx.send(ndjson(&line)).await;
                    return;
                }
                Some(Ok(Event::Error { error })) => {
                    let e = from_client(&aistack_engine_api::ClientError::Refused(error));
                    let _ = tx.send(ndjson(&e.body(Api::Ollama))).await;
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx.send(ndjson(&from_client(&e).body(Api::Ollama))).await;
                    return;
                }
                None => return,
            }
        }
    });
    Ok(stream_body("application/x-ndjson", rx))
}

/// `POST /api/embed`.
pub(crate) async fn embed_route(State(shared): State<Shared>, body: Body) -> Response {
    let request: Value = match read_json(&shared, body).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let name = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let result = async {
        let texts = embed_inputs(request.get("input"))?;
        let (vectors, tokens) = embed(&shared, Some(&name), texts).await?;
        Ok(
            axum::Json(json!({"model": name, "embeddings": vectors, "prompt_eval_count": tokens}))
                .into_response(),
        )
    }
    .await;
    match result {
        Ok(r) => labelled(r, &name),
        Err(e) => labelled(fail(&e), &name),
    }
}

/// `POST /api/embeddings` (Ollama's older route: `prompt` in, one `embedding` out).
pub(crate) async fn embeddings_legacy(State(shared): State<Shared>, body: Body) -> Response {
    let request: Value = match read_json(&shared, body).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let name = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let result = async {
        let prompt = request
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("`prompt` is required"))?;
        let (mut vectors, _) = embed(&shared, Some(&name), vec![prompt.to_owned()]).await?;
        Ok(axum::Json(json!({"embedding": vectors.pop().unwrap_or_default()})).into_response())
    }
    .await;
    match result {
        Ok(r) => labelled(r, &name),
        Err(e) => labelled(fail(&e), &name),
    }
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

/// `POST /api/show`.
pub(crate) async fn show(State(shared): State<Shared>, body: Body) -> Response {
    let request: Value = match read_json(&shared, body).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let Some(name) = request
        .get("model")
        .or_else(|| request.get("name"))
        .and_then(Value::as_str)
    else {
        return fail(&ApiError::bad_request("`model` is required"));
    };
    match shared.models.find(name) {
        Ok(entry) => {
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
            axum::Json(json!({"modelfile": "", "parameters": "", "template": template, "details": details(c),
                              "model_info": info, "capabilities": capabilities,
                              "modified_at": timestamp(c.created)})).into_response()
        }
        Err(e) => fail(&crate::common::unavailable(name, e)),
    }
}

/// `POST /api/pull`: models are declared in aistack.yaml; a declared one is already here.
pub(crate) async fn pull(State(shared): State<Shared>, body: Body) -> Response {
    let request: Value = match read_json(&shared, body).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let name = request
        .get("model")
        .or_else(|| request.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    match shared.models.find(name) {
        Ok(_) => {
            let streaming = request
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if streaming {
                let (tx, rx) = mpsc::channel(2);
                let _ = tx.try_send(ndjson(&json!({"status": "success"})));
                drop(tx);
                stream_body("application/x-ndjson", rx)
            } else {
                axum::Json(json!({"status": "success"})).into_response()
            }
        }
        Err(_) => fail(&ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "Model `{name}` is not declared; help: add it under `models:` in aistack.yaml and run `aistack up`, which pulls it"
            ),
        )),
    }
}

/// `DELETE /api/delete`.
pub(crate) async fn delete() -> Response {
    fail(&ApiError::bad_request(
        "Models are declared in aistack.yaml; help: remove the model there and run `aistack up`, or `aistack down --models`",
    ))
}

/// `GET /api/version`.
pub(crate) async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_795_478_400), "2026-11-24T00:00:00Z");
        assert_eq!(timestamp(951_782_400 + 3661), "2000-02-29T01:01:01Z");
        assert_eq!(timestamp(i64::MAX), "9999-12-31T23:59:59Z");
    }
}
