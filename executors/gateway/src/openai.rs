//! The OpenAI API (and Docker Model Runner's, which is OpenAI's under `/engines/...`): chat
//! completions and completions (decoders and encoders for the driver), embeddings and models.

use aistack_engine_api::{FinishReason, Format, GenerateRequest, Input, Message, Tool, ToolCall};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::driver::{Encoder, End, Generation, new_id, serve};
use crate::embed::{embed, inputs};
use crate::error::{Api, ApiError, unavailable};
use crate::framing::Framing;
use crate::models::unix_now;
use crate::request::{Call, answer, sampling, stop_list, string_at, token_limit, tool};
use crate::state::Shared;

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
                        id: string_at(call, "/id"),
                        name: string_at(function, "/name"),
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
            let default_schema = json!({"type": "object", "properties": {}});
            offered.push(
                tool(function, "parameters", default_schema)
                    .ok_or_else(|| ApiError::bad_request("Every tool function needs a `name`"))?,
            );
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

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(shared): State<Shared>, body: Body) -> Response {
    serve(&shared, body, decode_chat).await
}

fn decode_chat(call: &Call) -> Result<Generation<ChatEncoder>, ApiError> {
    let request = &call.body;
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
    Ok(Generation {
        request: GenerateRequest {
            input: Input::Chat {
                messages,
                tools: offered,
            },
            sampling: sampling(request)?,
            max_tokens,
            stop: stop_list(request.get("stop"))?,
            format,
        },
        stream: flag(request, "/stream"),
        encoder: ChatEncoder {
            id: new_id("chatcmpl-"),
            created: unix_now(),
            model: call.model.clone(),
            include_usage: flag(request, "/stream_options/include_usage"),
        },
    })
}

/// `POST /v1/completions`.
pub(crate) async fn completions(State(shared): State<Shared>, body: Body) -> Response {
    serve(&shared, body, decode_completion).await
}

fn decode_completion(call: &Call) -> Result<Generation<CompletionEncoder>, ApiError> {
    let request = &call.body;
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
    Ok(Generation {
        request: GenerateRequest {
            input: Input::Text { prompt },
            sampling: sampling(request)?,
            max_tokens: token_limit(request, "max_tokens")?,
            stop: stop_list(request.get("stop"))?,
            format: response_format(request)?,
        },
        stream: flag(request, "/stream"),
        encoder: CompletionEncoder {
            id: new_id("cmpl-"),
            created: unix_now(),
            model: call.model.clone(),
        },
    })
}

/// A boolean field, false when absent.
fn flag(request: &Value, pointer: &str) -> bool {
    request
        .pointer(pointer)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn finish_reason(end: &End) -> &'static str {
    match (end.reason, end.calls.is_empty()) {
        (_, false) => "tool_calls",
        (FinishReason::Stop, true) => "stop",
        (FinishReason::Length, true) => "length",
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

/// A chat completion: a `chat.completion` body, or `chat.completion.chunk` events.
pub(crate) struct ChatEncoder {
    id: String,
    created: i64,
    model: String,
    /// `stream_options.include_usage`: a last chunk with the counts and no choices.
    include_usage: bool,
}

impl ChatEncoder {
    fn chunk(&self, delta: Value, finish: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    }
}

impl Encoder for ChatEncoder {
    const API: Api = Api::OpenAi;
    const FRAMING: Framing = Framing::Sse;
    const CALL_PREFIX: &'static str = "call_";

    fn whole(&self, end: &End) -> Value {
        let mut message = json!({"role": "assistant", "content": end.text});
        if !end.calls.is_empty() {
            message["tool_calls"] = calls_json(&end.calls, false);
            if end.text.is_empty() {
                message["content"] = Value::Null;
            }
        }
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(end)}],
            "usage": usage_json(&end.usage),
        })
    }

    fn start(&mut self) -> Vec<Value> {
        vec![self.chunk(json!({"role": "assistant", "content": ""}), Value::Null)]
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        vec![self.chunk(json!({"content": text}), Value::Null)]
    }

    fn finish(&mut self, end: &End) -> Vec<Value> {
        let mut events = Vec::new();
        if !end.text.is_empty() {
            events.extend(self.text(&end.text));
        }
        if !end.calls.is_empty() {
            let delta = json!({"tool_calls": calls_json(&end.calls, true)});
            events.push(self.chunk(delta, Value::Null));
        }
        events.push(self.chunk(json!({}), json!(finish_reason(end))));
        if self.include_usage {
            events.push(json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                               "model": self.model, "choices": [], "usage": usage_json(&end.usage)}));
        }
        events
    }
}

/// A text completion: one `text_completion` object, whole or as a stream of them.
pub(crate) struct CompletionEncoder {
    id: String,
    created: i64,
    model: String,
}

impl CompletionEncoder {
    fn object(&self, text: &str, finish: Value, usage: Option<Value>) -> Value {
        let mut v = json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                           "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]});
        if let Some(usage) = usage {
            v["usage"] = usage;
        }
        v
    }
}

impl Encoder for CompletionEncoder {
    const API: Api = Api::OpenAi;
    const FRAMING: Framing = Framing::Sse;
    const CALL_PREFIX: &'static str = "call_";

    fn whole(&self, end: &End) -> Value {
        self.object(
            &end.text,
            json!(finish_reason(end)),
            Some(usage_json(&end.usage)),
        )
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        vec![self.object(text, Value::Null, None)]
    }

    fn finish(&mut self, end: &End) -> Vec<Value> {
        vec![self.whole(end)]
    }
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(State(shared): State<Shared>, body: Body) -> Response {
    answer(&shared, body, Api::OpenAi, async |call| {
        let texts = inputs(call.body.get("input"))?;
        let base64 = match call.body.get("encoding_format").and_then(Value::as_str) {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`encoding_format` must be `float` or `base64`, not `{other}`"
                )));
            }
        };
        let (vectors, tokens) = embed(&shared, &call, texts).await?;
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
        let usage = json!({"prompt_tokens": tokens, "total_tokens": tokens});
        let body = json!({"object": "list", "data": data, "model": call.model, "usage": usage});
        Ok(axum::Json(body).into_response())
    })
    .await
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
        Err(e) => unavailable(&name, e).render(Api::OpenAi),
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
    fn a_streamed_chat_sends_its_text_then_its_tool_calls() {
        let chat = ChatEncoder {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "chat".into(),
            include_usage: true,
        };
        assert_eq!(
            crate::driver::replay::text_and_a_call(chat),
            r#"data: {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":7,"id":"chatcmpl-1","model":"chat","object":"chat.completion.chunk"}

data: {"choices":[{"delta":{"content":"Let me check.\n"},"finish_reason":null,"index":0,"logprobs":null}],"created":7,"id":"chatcmpl-1","model":"chat","object":"chat.completion.chunk"}

data: {"choices":[{"delta":{"content":"\n Done."},"finish_reason":null,"index":0,"logprobs":null}],"created":7,"id":"chatcmpl-1","model":"chat","object":"chat.completion.chunk"}

data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"city\":\"Paris\"}","name":"get_weather"},"id":"call_0","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":7,"id":"chatcmpl-1","model":"chat","object":"chat.completion.chunk"}

data: {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":7,"id":"chatcmpl-1","model":"chat","object":"chat.completion.chunk"}

data: {"choices":[],"created":7,"id":"chatcmpl-1","model":"chat","object":"chat.completion.chunk","usage":{"completion_tokens":3,"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":4},"total_tokens":13}}

data: [DONE]

"#
        );
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
