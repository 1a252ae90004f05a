//! The Anthropic Messages API: `/v1/messages` (with its streaming events) and
//! `/v1/messages/count_tokens`. Tool use maps onto the engine's tool calls.

use aistack_engine_api::{
    Event, FinishReason, Format, GenerateRequest, Input, Message, Mode, TokenizeRequest, Tool,
    ToolCall, tools,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::common::{
    Api, ApiError, from_client, generate, lease, model, new_id, read_json, sampling, stop_list,
    stream_body, token_limit,
};
use crate::metrics::ModelLabel;
use crate::state::Shared;

fn fail(e: &ApiError) -> Response {
    e.render(Api::Anthropic)
}

fn labelled(mut response: Response, model: &str) -> Response {
    response
        .extensions_mut()
        .insert(ModelLabel(model.to_owned()));
    response
}

fn blocks_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The chat, tools and constraint of a Messages request.
fn input(request: &Value) -> Result<(Input, Vec<Tool>, Option<Format>), ApiError> {
    let Some(items) = request.get("messages").and_then(Value::as_array) else {
        return Err(ApiError::bad_request("messages: Field required"));
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "messages: at least one message is required",
        ));
    }
    let mut messages = Vec::new();
    if let Some(system) = request.get("system") {
        let text = blocks_text(system);
        if !text.is_empty() {
            messages.push(Message::new("system", text));
        }
    }
    for m in items {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("messages: every message needs a `role`"))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let Value::Array(blocks) = content else {
            messages.push(Message::new(role, blocks_text(content)));
            continue;
        };
        let mut message = Message::new(role, "");
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if !message.content.is_empty() {
                        message.content.push('\n');
                    }
                    message.content.push_str(
                        block
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    );
                }
                Some("tool_use") => message.tool_calls.push(ToolCall {
                    id: block
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    name: block
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: block
                        .get("input")
                        .map_or_else(|| "{}".to_owned(), Value::to_string),
                }),
                Some("tool_result") => {
                    let mut result = Message::new(
                        "tool",
                        blocks_text(block.get("content").unwrap_or(&Value::Null)),
                    );
                    result.tool_call_id = block
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    messages.push(result);
                }
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "Content blocks of type `{other}` are not supported"
                    )));
                }
                None => return Err(ApiError::bad_request("A content block has no `type`")),
            }
        }
        if !message.content.is_empty() || !message.tool_calls.is_empty() {
            messages.push(message);
        }
    }
    let mut offered = Vec::new();
    for tool in request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("tools: every tool needs a `name`"))?;
        offered.push(Tool {
            name: name.to_owned(),
            description: tool
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            parameters: tool
                .get("input_schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"})),
        });
    }
    let format = match request.pointer("/tool_choice/type").and_then(Value::as_str) {
        None | Some("auto") => None,
        Some("none") => {
            offered.clear();
            None
        }
        Some("any") => Some(Format::ToolCall {
            names: offered.iter().map(|t| t.name.clone()).collect(),
        }),
        Some("tool") => {
            let name = request
                .pointer("/tool_choice/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad_request("tool_choice: `name` is required for type `tool`")
                })?;
            Some(Format::ToolCall {
                names: vec![name.to_owned()],
            })
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "tool_choice: unknown type `{other}`"
            )));
        }
    };
    if format.is_some() && offered.is_empty() {
        return Err(ApiError::bad_request("tool_choice requires `tools`"));
    }
    Ok((
        Input::Chat {
            messages,
            tools: offered.clone(),
        },
        offered,
        format,
    ))
}

fn stop_reason(reason: FinishReason, called: bool, stopped_by_sequence: bool) -> &'static str {
    match (reason, called) {
        (_, true) => "tool_use",
        (FinishReason::Length, false) => "max_tokens",
        (FinishReason::Stop, false) if stopped_by_sequence => "stop_sequence",
        (FinishReason::Stop, false) => "end_turn",
    }
}

fn content_blocks(parsed: &tools::Parsed) -> Vec<Value> {
    let mut blocks = Vec::new();
    if !parsed.content.is_empty() || parsed.calls.is_empty() {
        blocks.push(json!({"type": "text", "text": parsed.content}));
    }
    for call in &parsed.calls {
        let input: Value = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
        blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
    }
    blocks
}

/// Anthropic counts cache reads apart from `input_tokens`; together they are the prompt.
fn usage_json(usage: &aistack_engine_api::Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens.saturating_sub(usage.cached_tokens),
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    })
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// `POST /v1/messages`.
pub(crate) async fn messages(State(shared): State<Shared>, body: Body) -> Response {
    let request: Value = match read_json(&shared, body).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let name = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match run(&shared, &request, &name).await {
        Ok(r) => labelled(r, &name),
        Err(e) => labelled(fail(&e), &name),
    }
}

async fn run(shared: &Shared, request: &Value, name: &str) -> Result<Response, ApiError> {
    let max_tokens = token_limit(request, "max_tokens")?
        .ok_or_else(|| ApiError::bad_request("max_tokens: Field required"))?;
    let (input, offered, format) = input(request)?;
    let stop = stop_list(request.get("stop_sequences"))?;
    let generate_request = GenerateRequest {
        input,
        sampling: sampling(request)?,
        max_tokens: Some(max_tokens),
        stop: stop.clone(),
        format,
    };
    let entry = model(shared, Some(name), Mode::Chat)?;
    let streaming = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (lease, mut events) = generate(shared, entry, &generate_request).await?;
    let id = new_id("msg_");
    let model_name = name.to_owned();
    let by_sequence = move |text: &str, reason: FinishReason| {
        reason == FinishReason::Stop && !stop.is_empty() && !text.is_empty()
    };
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
                    shared.metrics.generation(&model_name, &usage);
                    let sequence = by_sequence(&text, finish_reason);
                    let parsed = if offered.is_empty() {
                        tools::Parsed {
                            content: text,
                            calls: Vec::new(),
                        }
                    } else {
                        tools::parse(&text, &offered, "toolu_")
                    };
                    let called = !parsed.calls.is_empty();
                    return Ok(axum::Json(json!({
                        "id": id, "type": "message", "role": "assistant", "model": model_name,
                        "content": content_blocks(&parsed),
                        "stop_reason": stop_reason(finish_reason, called, sequence),
                        "stop_sequence": null,
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
        let start = json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model_name, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}});
        if tx.send(event("message_start", &start)).await.is_err() {
            return;
        }
        let _ = tx.send(event("ping", &json!({"type": "ping"}))).await;
        let mut splitter = tools::Splitter::new();
        let mut text_open = false;
        let mut index = 0usize;
        let mut all_text = String::new();
        loop {
            match events.next().await {
                Some(Ok(Event::Text { text })) => {
                    all_text.push_str(&text);
                    let visible = if offered.is_empty() {
                        text.clone()
                    } else {
                        splitter.push(&text).to_owned()
                    };
                    if visible.is_empty() {
                        continue;
                    }
                    if !text_open {
                        text_open = true;
                        let _ = tx.send(event("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}))).await;
                    }
                    let delta = json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": visible}});
                    if tx.send(event("content_block_delta", &delta)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Event::Done {
                    finish_reason,
                    usage,
                })) => {
                    shared.metrics.generation(&model_name, &usage);
                    let mut calls = Vec::new();
                    if !offered.is_empty() {
                        let (parsed, unshown) = splitter.finish(&offered, "toolu_");
                        if !unshown.is_empty() {
                            if !text_open {
                                text_open = true;
                                let _ = tx.send(event("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}))).await;
                            }
                            let _ = tx.send(event("content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": unshown}}))).await;
                        }
                        calls = parsed.calls;
                    }
                    if text_open {
                        let _ = tx
                            .send(event(
                                "content_block_stop",
                                &json!({"type": "content_block_stop", "index": index}),
                            ))
                            .await;
                        index += 1;
                    }
                    for call in &calls {
                        let _ = tx.send(event("content_block_start", &json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}}))).await;
                        let _ = tx
                            .send(event(
                                "content_block_delta",
                                &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": call.arguments}}),
                            ))
                            .await;
                        let _ = tx
                            .send(event(
                                "content_block_stop",
                                &json!({"type": "content_block_stop", "index": index}),
                            ))
                            .await;
                        index += 1;
                    }
                    let reason = stop_reason(
                        finish_reason,
                        !calls.is_empty(),
                        by_sequence(&all_text, finish_reason),
                    );
                    let _ = tx
                        .send(event(
                            "message_delta",
                            &json!({"type": "message_delta",
                        "delta": {"stop_reason": reason, "stop_sequence": null},
                        "usage": usage_json(&usage)}),
                        ))
                        .await;
                    let _ = tx
                        .send(event("message_stop", &json!({"type": "message_stop"})))
                        .await;
                    return;
                }
                Some(Ok(Event::Error { error })) => {
                    let e = from_client(&aistack_engine_api::ClientError::Refused(error));
                    let _ = tx.send(event("error", &e.body(Api::Anthropic))).await;
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx
                        .send(event("error", &from_client(&e).body(Api::Anthropic)))
                        .await;
                    return;
                }
                None => return,
            }
        }
    });
    Ok(stream_body("text/event-stream", rx))
}

/// `POST /v1/messages/count_tokens`.
pub(crate) async fn count_tokens(State(shared): State<Shared>, body: Body) -> Response {
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
        let (input, _, _) = input(&request)?;
        let entry = model(&shared, Some(&name), Mode::Chat)?;
        let lease = lease(&shared, entry).await?;
        let counted = lease
            .client
            .tokenize(&TokenizeRequest { input })
            .await
            .map_err(|e| from_client(&e))?;
        Ok(axum::Json(json!({"input_tokens": counted.tokens})).into_response())
    }
    .await;
    match result {
        Ok(r) => labelled(r, &name),
        Err(e) => labelled(fail(&e), &name),
    }
}
