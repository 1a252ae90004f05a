//! The OpenAI API (and Docker Model Runner's, which is OpenAI's under `/engines/...`):
//! chat completions, completions, embeddings and models.

use aistack_engine_api::{
    EmbedRequest, Event, FinishReason, Format, GenerateRequest, Input, Message, Mode, Tool,
    ToolCall, tools,
};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::common::{
    Api, ApiError, from_client, generate, lease, model, new_id, read_json, sampling, sse,
    stop_list, stream_body, token_limit,
};
use crate::metrics::ModelLabel;
use crate::models::unix_now;
use crate::state::Shared;

fn fail(e: &ApiError) -> Response {
    e.render(Api::OpenAi)
}

fn labelled(mut response: Response, model: &str) -> Response {
    response
        .extensions_mut()
        .insert(ModelLabel(model.to_owned()));
    response
}

/// Text of a `content` that is a string, null, or an array of parts.
fn content_text(value: Option<&Value>) -> Result<String, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "Content parts of type `{other}` are not supported; send text"
                        )));
                    }
                    None => return Err(ApiError::bad_request("A content part has no `type`")),
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::bad_request(
            "`content` must be a string or an array of parts",
        )),
    }
}

fn messages(request: &Value) -> Result<Vec<Message>, ApiError> {
    let Some(items) = request.get("messages").and_then(Value::as_array) else {
        return Err(ApiError::bad_request(
            "`messages` is required and must be an array",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty"));
    }
    items
        .iter()
        .map(|m| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("Every message needs a `role`"))?;
            let mut message = Message::new(role, content_text(m.get("content"))?);
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    let arguments = match function.get("arguments") {
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => "{}".to_owned(),
                    };
                    message.tool_calls.push(ToolCall {
                        id: call
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        name: function
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        arguments,
                    });
                }
            }
            message.tool_call_id = m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            message.name = m.get("name").and_then(Value::as_str).map(str::to_owned);
            Ok(message)
        })
        .collect()
}

/// `tools` and `tool_choice`: the tools offered and the constraint they imply.
fn tool_choice(request: &Value) -> Result<(Vec<Tool>, Option<Format>), ApiError> {
    let mut offered = Vec::new();
    if let Some(items) = request.get("tools").and_then(Value::as_array) {
        for item in items {
            let function = item
                .get("function")
                .ok_or_else(|| ApiError::bad_request("Every tool needs a `function`"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("Every tool function needs a `name`"))?;
            offered.push(Tool {
                name: name.to_owned(),
                description: function
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: function
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
        }
    }
    let format = match request.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "auto" => None,
        Some(Value::String(s)) if s == "none" => return Ok((Vec::new(), None)),
        Some(Value::String(s)) if s == "required" => Some(Format::ToolCall {
            names: offered.iter().map(|t| t.name.clone()).collect(),
        }),
        Some(choice) => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(Format::ToolCall {
                names: vec![name.to_owned()],
            }),
            None => {
                return Err(ApiError::bad_request(
                    "`tool_choice` must be `auto`, `none`, `required` or a function",
                ));
            }
        },
    };
    if format.is_some() && offered.is_empty() {
        return Err(ApiError::bad_request("`tool_choice` requires `tools`"));
    }
    Ok((offered, format))
}

fn response_format(request: &Value) -> Result<Option<Format>, ApiError> {
    let Some(format) = request.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Format::JsonObject)),
        Some("json_schema") => {
            let schema = format
                .pointer("/json_schema/schema")
                .or_else(|| format.get("schema"))
                .ok_or_else(|| {
                    ApiError::bad_request("`response_format.json_schema.schema` is required")
                })?;
            if !schema.is_object() {
                return Err(ApiError::bad_request(
                    "`response_format.json_schema.schema` must be a JSON Schema object",
                ));
            }
            Ok(Some(Format::JsonSchema {
                schema: schema.clone(),
            }))
        }
        _ => Err(ApiError::bad_request(
            "`response_format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

fn finish_reason(reason: FinishReason, called: bool) -> &'static str {
    match (reason, called) {
        (_, true) => "tool_calls",
        (FinishReason::Stop, false) => "stop",
        (FinishReason::Length, false) => "length",
    }
}

fn usage_json(usage: &aistack_engine_api::Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

fn calls_json(calls: &[ToolCall], streaming: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut call = json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}});
                if streaming {
                    call["index"] = json!(i);
                }
                call
            })
            .collect(),
    )
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(shared): State<Shared>, body: Body) -> Response {
    let request: Value = match read_json(&shared, body).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let name = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match chat(&shared, &request, &name).await {
        Ok(response) => labelled(response, &name),
        Err(e) => labelled(fail(&e), &name),
    }
}

async fn chat(shared: &Shared, request: &Value, name: &str) -> Result<Response, ApiError> {
    let messages = messages(request)?;
    let (offered, tool_format) = tool_choice(request)?;
    let format = match tool_format {
        Some(f) => Some(f),
        None => response_format(request)?,
    };
    let max_tokens = match token_limit(request, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => token_limit(request, "max_tokens")?,
    };
    let generate_request = GenerateRequest {
        input: Input::Chat {
            messages,
            tools: offered.clone(),
        },
        sampling: sampling(request)?,
        max_tokens,
        stop: stop_list(request.get("stop"))?,
        format,
    };
    let entry = model(shared, Some(name), Mode::Chat)?;
    let stream_flag = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (lease, mut events) = generate(shared, entry, &generate_request).await?;
    let id = new_id("chatcmpl-");
    let created = unix_now();
    let model_name = name.to_owned();
    if !stream_flag {
        let mut text = String::new();
        loop {
            match events.next().await {
                Some(Ok(Event::Text { text: t })) => text.push_str(&t),
                Some(Ok(Event::Done {
                    finish_reason: reason,
                    usage,
                })) => {
                    drop(lease);
                    shared.metrics.generation(&model_name, &usage);
                    let parsed = if offered.is_empty() {
                        tools::Parsed {
                            content: text,
                            calls: Vec::new(),
                        }
                    } else {
                        tools::parse(&text, &offered, "call_")
                    };
                    let called = !parsed.calls.is_empty();
                    let mut message = json!({"role": "assistant", "content": parsed.content});
                    if called {
                        message["tool_calls"] = calls_json(&parsed.calls, false);
                        if parsed.content.is_empty() {
                            message["content"] = Value::Null;
                        }
                    }
                    return Ok(axum::Json(json!({
                        "id": id, "object": "chat.completion", "created": created, "model": model_name,
                        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(reason, called)}],
                        "usage": usage_json(&usage),
                    }))
                    .into_response());
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
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        if tx
            .send(sse(&chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )))
            .await
            .is_err()
        {
            return;
        }
        let mut splitter = tools::Splitter::new();
        loop {
            match events.next().await {
                Some(Ok(Event::Text { text })) => {
                    let visible = if offered.is_empty() {
                        text.as_str()
                    } else {
                        splitter.push(&text)
                    };
                    if !visible.is_empty()
                        && tx
                            .send(sse(&chunk(json!({"content": visible}), Value::Null)))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                Some(Ok(Event::Done {
                    finish_reason: reason,
                    usage,
                })) => {
                    shared.metrics.generation(&model_name, &usage);
                    let mut called = false;
                    if !offered.is_empty() {
                        let (parsed, unshown) = splitter.finish(&offered, "call_");
                        if !unshown.is_empty() {
                            let _ = tx
                                .send(sse(&chunk(json!({"content": unshown}), Value::Null)))
                                .await;
                        }
                        if !parsed.calls.is_empty() {
                            called = true;
                            let _ = tx
                                .send(sse(&chunk(
                                    json!({"tool_calls": calls_json(&parsed.calls, true)}),
                                    Value::Null,
                                )))
                                .await;
                        }
                    }
                    let _ = tx
                        .send(sse(&chunk(json!({}), json!(finish_reason(reason, called)))))
                        .await;
                    if include_usage {
                        let _ = tx
                            .send(sse(&json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                              "model": model_name, "choices": [], "usage": usage_json(&usage)})))
                            .await;
                    }
                    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                    return;
                }
                Some(Ok(Event::Error { error })) => {
                    let e = from_client(&aistack_engine_api::ClientError::Refused(error));
                    let _ = tx.send(sse(&e.body(Api::OpenAi))).await;
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx.send(sse(&from_client(&e).body(Api::OpenAi))).await;
                    return;
                }
                None => return,
            }
        }
    });
    Ok(stream_body("text/event-stream", rx))
}

/// `POST /v1/completions`.
pub(crate) async fn completions(State(shared): State<Shared>, body: Body) -> Response {
    let request: Value = match read_json(&shared, body).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let name = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match completion(&shared, &request, &name).await {
        Ok(response) => labelled(response, &name),
        Err(e) => labelled(fail(&e), &name),
    }
}

async fn completion(shared: &Shared, request: &Value, name: &str) -> Result<Response, ApiError> {
    let prompt = match request.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            return Err(ApiError::bad_request(
                "`prompt` is required and must be a string",
            ));
        }
    };
    let generate_request = GenerateRequest {
        input: Input::Text { prompt },
        sampling: sampling(request)?,
        max_tokens: token_limit(request, "max_tokens")?,
        stop: stop_list(request.get("stop"))?,
        format: response_format(request)?,
    };
    let entry = model(shared, Some(name), Mode::Chat)?;
    let stream_flag = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (lease, mut events) = generate(shared, entry, &generate_request).await?;
    let id = new_id("cmpl-");
    let created = unix_now();
    let model_name = name.to_owned();
    let label = name.to_owned();
    let shared = shared.clone();
    let object = move |text: &str, finish: Value, usage: Option<Value>| {
        let mut v = json!({"id": id, "object": "text_completion", "created": created, "model": model_name,
                           "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]});
        if let Some(usage) = usage {
            v["usage"] = usage;
        }
        v
    };
    if !stream_flag {
        let mut text = String::new();
        loop {
            match events.next().await {
                Some(Ok(Event::Text { text: t })) => text.push_str(&t),
                Some(Ok(Event::Done {
                    finish_reason: reason,
                    usage,
                })) => {
                    drop(lease);
                    shared.metrics.generation(&label, &usage);
                    return Ok(axum::Json(object(
                        &text,
                        json!(finish_reason(reason, false)),
                        Some(usage_json(&usage)),
                    ))
                    .into_response());
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
    tokio::spawn(async move {
        let _lease = lease;
        loop {
            match events.next().await {
                Some(Ok(Event::Text { text })) => {
                    if tx
                        .send(sse(&object(&text, Value::Null, None)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Ok(Event::Done {
                    finish_reason: reason,
                    usage,
                })) => {
                    shared.metrics.generation(&label, &usage);
                    let _ = tx
                        .send(sse(&object(
                            "",
                            json!(finish_reason(reason, false)),
                            Some(usage_json(&usage)),
                        )))
                        .await;
                    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                    return;
                }
                Some(Ok(Event::Error { error })) => {
                    let e = from_client(&aistack_engine_api::ClientError::Refused(error));
                    let _ = tx.send(sse(&e.body(Api::OpenAi))).await;
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx.send(sse(&from_client(&e).body(Api::OpenAi))).await;
                    return;
                }
                None => return,
            }
        }
    });
    Ok(stream_body("text/event-stream", rx))
}

/// Texts to embed from `input`: a string or an array of strings.
pub(crate) fn embed_inputs(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match value {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::bad_request("`input` must be a string or an array of strings")
                })
            })
            .collect(),
        _ => Err(ApiError::bad_request(
            "`input` is required: a string or a non-empty array of strings",
        )),
    }
}

/// Embeds `texts` with the model `name`.
pub(crate) async fn embed(
    shared: &Shared,
    name: Option<&str>,
    texts: Vec<String>,
) -> Result<(Vec<Vec<f32>>, u32), ApiError> {
    let entry = model(shared, name, Mode::Embedding)?;
    let model_name = entry.config.name.clone();
    let lease = lease(shared, entry).await?;
    let response = lease
        .client
        .embed(&EmbedRequest { input: texts })
        .await
        .map_err(|e| from_client(&e))?;
    shared
        .metrics
        .prompt_tokens(&model_name, response.prompt_tokens);
    Ok((response.embeddings, response.prompt_tokens))
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(State(shared): State<Shared>, body: Body) -> Response {
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
        let base64 = match request.get("encoding_format").and_then(Value::as_str) {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`encoding_format` must be `float` or `base64`, not `{other}`"
                )));
            }
        };
        let (vectors, tokens) = embed(&shared, Some(&name), texts).await?;
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        Ok(
            axum::Json(json!({"object": "list", "data": data, "model": name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
            .into_response(),
        )
    }
    .await;
    match result {
        Ok(r) => labelled(r, &name),
        Err(e) => labelled(fail(&e), &name),
    }
}

fn model_object(config: &crate::ModelConfig) -> Value {
    json!({"id": config.name, "object": "model", "created": config.created, "owned_by": config.project})
}

/// `GET /v1/models`.
pub(crate) async fn list_models(State(shared): State<Shared>) -> Response {
    let data: Vec<Value> = shared
        .models
        .configs()
        .iter()
        .map(|e| model_object(&e.config))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{name}`.
pub(crate) async fn get_model(State(shared): State<Shared>, Path(name): Path<String>) -> Response {
    match shared.models.find(&name) {
        Ok(entry) => axum::Json(model_object(&entry.config)).into_response(),
        Err(e) => fail(&crate::common::unavailable(&name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_take_text_parts_and_tool_history() {
        let request = json!({"messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        ]});
        let messages = messages(&request).unwrap();
        assert_eq!(messages[0].content, "Be brief.");
        assert_eq!(messages[1].tool_calls[0].name, "get_weather");
        assert_eq!(messages[1].tool_calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(messages[2].tool_call_id.as_deref(), Some("call_1"));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let errors: Vec<String> = [
            json!({}),
            json!({"messages": []}),
            json!({"messages": [{"content": "hi"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        ]
        .iter()
        .map(|r| messages(r).unwrap_err().message)
        .collect();
        insta::assert_debug_snapshot!(errors);
        let negative = token_limit(&json!({"max_tokens": -5}), "max_tokens").unwrap_err();
        assert_eq!(negative.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(
            negative.message.contains("positive integer"),
            "{}",
            negative.message
        );
    }

    #[test]
    fn tool_choice_maps_to_a_constraint() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
        let (offered, format) =
            tool_choice(&json!({"tools": tools, "tool_choice": "required"})).unwrap();
        assert_eq!(offered.len(), 1);
        assert_eq!(
            format,
            Some(Format::ToolCall {
                names: vec!["get_weather".into()]
            })
        );
        let (offered, format) =
            tool_choice(&json!({"tools": tools, "tool_choice": "none"})).unwrap();
        assert!(offered.is_empty() && format.is_none());
        let (_, format) = tool_choice(&json!({"tools": tools})).unwrap();
        assert!(format.is_none(), "auto lets the model choose");
        assert!(tool_choice(&json!({"tool_choice": "required"})).is_err());
    }

    #[test]
    fn response_formats() {
        assert_eq!(
            response_format(&json!({"response_format": {"type": "json_object"}})).unwrap(),
            Some(Format::JsonObject)
        );
        let schema = json!({"type": "object", "required": ["a"]});
        assert_eq!(
            response_format(&json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})).unwrap(),
            Some(Format::JsonSchema { schema })
        );
        assert!(response_format(&json!({"response_format": {"type": "yaml"}})).is_err());
    }

    #[test]
    fn errors_in_each_dialect() {
        let e = ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "Model `x` is not served here",
        );
        insta::assert_json_snapshot!("not_found_openai", e.body(Api::OpenAi));
        insta::assert_json_snapshot!("not_found_ollama", e.body(Api::Ollama));
        insta::assert_json_snapshot!("not_found_anthropic", e.body(Api::Anthropic));
        let busy = ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy");
        assert_eq!(
            busy.body(Api::Anthropic)["error"]["type"],
            "overloaded_error"
        );
        assert_eq!(busy.body(Api::OpenAi)["error"]["type"], "server_error");
    }
}
