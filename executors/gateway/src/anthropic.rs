//! The Anthropic Messages API: `/v1/messages` (a decoder and an encoder for the driver, with
//! its named streaming events) and `/v1/messages/count_tokens`. Tool use maps onto the
//! engine's tool calls.

use aistack_engine_api::{
    FinishReason, Format, GenerateRequest, Input, Message, Mode, TokenizeRequest, ToolCall,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::driver::{Encoder, End, Generation, new_id, serve};
use crate::error::{Api, ApiError, from_client};
use crate::framing::Framing;
use crate::request::{Call, answer, sampling, stop_list, string_at, token_limit, tool};
use crate::state::Shared;

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

/// Claude Code opens its system prompt with a line for Anthropic's billing
/// (`x-anthropic-billing-header: cc_version=…; cch=…;`) whose hash changes every request.
/// Kept, it would change the prompt's first tokens on every turn and no cached prefix of a
/// conversation would survive; it tells the model nothing.
const BILLING_LINE: &str = "x-anthropic-billing-header:";

/// The text of `system`, without Claude Code's billing line.
fn system_text(value: &Value) -> String {
    match value {
        Value::Array(blocks) => blocks_text(&Value::Array(
            (blocks.iter())
                .filter(|b| {
                    !(b.get("text").and_then(Value::as_str))
                        .is_some_and(|t| t.starts_with(BILLING_LINE))
                })
                .cloned()
                .collect(),
        )),
        other => blocks_text(other),
    }
}

/// The chat, tools and constraint of a Messages request. What the engine cannot use is
/// dropped rather than refused, as a client such as Claude Code sends it on every turn:
/// `thinking` and `redacted_thinking` blocks it echoes back, images and documents (the
/// engine reads text), and block types newer than this decoder. System text, whether in
/// `system` or in `system`-role messages, becomes the one system message chat templates
/// expect first.
fn input(request: &Value) -> Result<(Input, Option<Format>), ApiError> {
    let Some(items) = request.get("messages").and_then(Value::as_array) else {
        return Err(ApiError::bad_request("messages: Field required"));
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "messages: at least one message is required",
        ));
    }
    let mut system: Vec<String> = request.get("system").map(system_text).into_iter().collect();
    let mut messages = Vec::new();
    for m in items {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("messages: every message needs a `role`"))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        if role == "system" {
            system.push(blocks_text(content));
            continue;
        }
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
                    id: string_at(block, "/id"),
                    name: string_at(block, "/name"),
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
                Some(_) => {}
                None => return Err(ApiError::bad_request("A content block has no `type`")),
            }
        }
        if !message.content.is_empty() || !message.tool_calls.is_empty() {
            messages.push(message);
        }
    }
    system.retain(|text| !text.is_empty());
    if !system.is_empty() {
        messages.insert(0, Message::new("system", system.join("\n\n")));
    }
    // Server tools (`web_search_…`, `code_execution_…`) run at Anthropic; only the client's
    // own tools, typed `custom` or untyped, reach the model.
    let items = request.get("tools").and_then(Value::as_array);
    let items = (items.into_iter().flatten()).filter(|item| {
        matches!(
            item.get("type").and_then(Value::as_str),
            None | Some("custom")
        )
    });
    let mut offered = items
        .map(|item| {
            tool(item, "input_schema", json!({"type": "object"}))
                .ok_or_else(|| ApiError::bad_request("tools: every tool needs a `name`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
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
    let input = Input::Chat {
        messages,
        tools: offered,
    };
    Ok((input, format))
}

/// `POST /v1/messages`.
pub(crate) async fn messages(State(shared): State<Shared>, body: Body) -> Response {
    serve(&shared, body, decode).await
}

fn decode(call: &Call) -> Result<Generation<MessagesEncoder>, ApiError> {
    let request = &call.body;
    let max_tokens = token_limit(request, "max_tokens")?
        .ok_or_else(|| ApiError::bad_request("max_tokens: Field required"))?;
    let (input, format) = input(request)?;
    let stop = stop_list(request.get("stop_sequences"))?;
    let encoder = MessagesEncoder {
        id: new_id("msg_"),
        model: call.model.clone(),
        stop_sequences: !stop.is_empty(),
        text_open: false,
        index: 0,
    };
    Ok(Generation {
        request: GenerateRequest {
            input,
            sampling: sampling(request)?,
            max_tokens: Some(max_tokens),
            stop,
            format,
        },
        stream: request
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        encoder,
    })
}

fn content_blocks(end: &End) -> Vec<Value> {
    let mut blocks = Vec::new();
    if !end.text.is_empty() || end.calls.is_empty() {
        blocks.push(json!({"type": "text", "text": end.text}));
    }
    for call in &end.calls {
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

/// A `message` body, or the named events that build one: content blocks opened, filled and
/// closed in order, text first, then each tool use.
pub(crate) struct MessagesEncoder {
    id: String,
    model: String,
    /// Whether the request gave `stop_sequences`.
    stop_sequences: bool,
    /// Whether a text block is open in the stream.
    text_open: bool,
    /// The index of the stream's current content block.
    index: usize,
}

impl MessagesEncoder {
    fn stop_reason(&self, end: &End) -> &'static str {
        match (end.reason, end.calls.is_empty()) {
            (_, false) => "tool_use",
            (FinishReason::Length, true) => "max_tokens",
            // The engine does not say whether a stop string or the end of the turn stopped it:
            // with stop strings given and text generated, a stop string is the better guess.
            (FinishReason::Stop, true) if self.stop_sequences && end.generated => "stop_sequence",
            (FinishReason::Stop, true) => "end_turn",
        }
    }

    /// Events of one whole content block, which closes it.
    fn block(&mut self, block: Value, delta: Value) -> Vec<Value> {
        let index = self.index;
        self.index += 1;
        vec![
            json!({"type": "content_block_start", "index": index, "content_block": block}),
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
            json!({"type": "content_block_stop", "index": index}),
        ]
    }
}

impl Encoder for MessagesEncoder {
    const API: Api = Api::Anthropic;
    const FRAMING: Framing = Framing::NamedSse;
    const CALL_PREFIX: &'static str = "toolu_";

    fn whole(&self, end: &End) -> Value {
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": content_blocks(end),
            "stop_reason": self.stop_reason(end),
            "stop_sequence": null,
            "usage": usage_json(&end.usage),
        })
    }

    /// Anthropic's clients expect `ping` events, as its own streams send.
    fn keep_alive() -> Option<Bytes> {
        Some(Self::FRAMING.frame(&json!({"type": "ping"})))
    }

    fn start(&mut self) -> Vec<Value> {
        vec![
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            json!({"type": "ping"}),
        ]
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        let mut events = Vec::new();
        if !self.text_open {
            self.text_open = true;
            events.push(json!({"type": "content_block_start", "index": self.index, "content_block": {"type": "text", "text": ""}}));
        }
        events.push(json!({"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": text}}));
        events
    }

    fn finish(&mut self, end: &End) -> Vec<Value> {
        let mut events = Vec::new();
        if !end.text.is_empty() {
            events.extend(self.text(&end.text));
        }
        if self.text_open {
            events.push(json!({"type": "content_block_stop", "index": self.index}));
            self.index += 1;
        }
        for call in &end.calls {
            events.extend(self.block(
                json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}),
                json!({"type": "input_json_delta", "partial_json": call.arguments}),
            ));
        }
        events.push(json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop_reason(end), "stop_sequence": null},
            "usage": usage_json(&end.usage)}));
        events.push(json!({"type": "message_stop"}));
        events
    }
}

/// `POST /v1/messages/count_tokens`.
pub(crate) async fn count_tokens(State(shared): State<Shared>, body: Body) -> Response {
    answer(&shared, body, Api::Anthropic, async |call| {
        let (input, _) = input(&call.body)?;
        let lease = call.lease(&shared, Mode::Chat).await?;
        let counted = lease
            .client
            .tokenize(&TokenizeRequest { input })
            .await
            .map_err(|e| from_client(&e))?;
        Ok(axum::Json(json!({"input_tokens": counted.tokens})).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::replay::text_and_a_call;

    /// The chat a request decodes into, as the engine receives it.
    fn chat(request: Value) -> Value {
        let (input, _) = input(&request).expect("the request decodes");
        serde_json::to_value(input).expect("an input serializes")
    }

    #[test]
    fn blocks_the_engine_cannot_read_are_dropped_not_refused() {
        let request = json!({"messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
                {"type": "document", "source": {"type": "text", "data": "a PDF"}},
                {"type": "text", "text": "What is this?"},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Hmm.", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "c2VjcmV0"},
                {"type": "text", "text": "A picture."},
                {"type": "a_block_from_next_year"},
            ]},
            {"role": "user", "content": [{"type": "image", "source": {}}]},
        ]});
        assert_eq!(
            chat(request)["messages"],
            json!([
                {"role": "user", "content": "What is this?"},
                {"role": "assistant", "content": "A picture."},
            ])
        );
    }

    #[test]
    fn system_text_from_anywhere_becomes_the_first_message() {
        let request = json!({
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "system", "content": [{"type": "text", "text": "Reply in French."}]},
                {"role": "assistant", "content": "Salut"},
            ],
        });
        assert_eq!(
            chat(request)["messages"],
            json!([
                {"role": "system", "content": "You are terse.\n\nReply in French."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Salut"},
            ])
        );
    }

    #[test]
    fn claude_codes_billing_line_is_not_part_of_the_prompt() {
        let turn = |hash: &str| {
            chat(json!({
                "system": [
                    {"type": "text", "text": format!("x-anthropic-billing-header: cc_version=2.1.332.a1b; cc_entrypoint=sdk-cli; cch={hash};")},
                    {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
                ],
                "messages": [{"role": "user", "content": "Hi"}],
            }))["messages"]
                .clone()
        };
        assert_eq!(
            turn("5f1c2"),
            json!([
                {"role": "system", "content": "You are Claude Code."},
                {"role": "user", "content": "Hi"},
            ])
        );
        assert_eq!(turn("5f1c2"), turn("9e0d7"));
    }

    #[test]
    fn server_tools_stay_with_anthropic_and_client_tools_reach_the_model() {
        let request = json!({
            "messages": [{"role": "user", "content": "Search"}],
            "tools": [
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                {"type": "custom", "name": "Read", "input_schema": {"type": "object"}},
                {"name": "Bash", "input_schema": {"type": "object"}},
            ],
        });
        let names: Vec<Value> = (chat(request)["tools"].as_array().expect("tools"))
            .iter()
            .map(|tool| tool["name"].clone())
            .collect();
        assert_eq!(names, [json!("Read"), json!("Bash")]);
    }

    #[test]
    fn a_block_without_a_type_is_still_refused() {
        let request = json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}]});
        let error = input(&request).expect_err("a block needs a type");
        assert_eq!(
            error.body(Api::Anthropic)["error"]["message"],
            "A content block has no `type`"
        );
    }

    #[test]
    fn a_streamed_message_closes_its_text_block_before_each_tool_use() {
        let message = MessagesEncoder {
            id: "msg_1".into(),
            model: "chat".into(),
            stop_sequences: false,
            text_open: false,
            index: 0,
        };
        assert_eq!(
            text_and_a_call(message),
            r#"event: message_start
data: {"message":{"content":[],"id":"msg_1","model":"chat","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"input_tokens":0,"output_tokens":0}},"type":"message_start"}

event: ping
data: {"type":"ping"}

event: content_block_start
data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

event: content_block_delta
data: {"delta":{"text":"Let me check.\n","type":"text_delta"},"index":0,"type":"content_block_delta"}

event: content_block_delta
data: {"delta":{"text":"\n Done.","type":"text_delta"},"index":0,"type":"content_block_delta"}

event: content_block_stop
data: {"index":0,"type":"content_block_stop"}

event: content_block_start
data: {"content_block":{"id":"toolu_0","input":{},"name":"get_weather","type":"tool_use"},"index":1,"type":"content_block_start"}

event: content_block_delta
data: {"delta":{"partial_json":"{\"city\":\"Paris\"}","type":"input_json_delta"},"index":1,"type":"content_block_delta"}

event: content_block_stop
data: {"index":1,"type":"content_block_stop"}

event: message_delta
data: {"delta":{"stop_reason":"tool_use","stop_sequence":null},"type":"message_delta","usage":{"cache_read_input_tokens":4,"input_tokens":6,"output_tokens":3}}

event: message_stop
data: {"type":"message_stop"}

"#
        );
    }
}
