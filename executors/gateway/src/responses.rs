//! OpenAI's Responses API, `POST /v1/responses` (a decoder and an encoder for the driver),
//! stateless: each request carries its whole conversation.
//!
//! A request's `input` items become the engine's chat. Messages keep their role (`developer`
//! is a system message; text parts are kept, images and files dropped), a `function_call` item
//! joins the assistant message before it as one of its tool calls, and a
//! `function_call_output` item is a tool result. `instructions` and every system or developer
//! message become one system message that leads, since many chat templates accept only one. Function tools are offered as they are; a `namespace` tool's functions are offered
//! flat, as `{namespace}__{name}` (Codex's own flat form of a namespaced tool name), and a call
//! of one goes back split into `namespace` and `name` as OpenAI returns it. Hosted tools and
//! what a gateway that keeps nothing cannot do (`previous_response_id`, `store`, `reasoning`,
//! `include`, …) are ignored rather than refused, so clients written for OpenAI work unchanged.
//!
//! The answer is a `response` object, or the named events that build one item by item: the
//! message item with its text first, then one `function_call` item per tool call.

use std::collections::BTreeMap;

use aistack_engine_api::{
    FinishReason, Format, GenerateRequest, Input, Message, Tool, ToolCall, Usage,
};
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::driver::{Encoder, End, Generation, new_id, serve};
use crate::error::{Api, ApiError};
use crate::framing::Framing;
use crate::models::unix_now;
use crate::request::{Call, sampling, token_limit};
use crate::state::Shared;

/// `POST /v1/responses`.
pub(crate) async fn responses(State(shared): State<Shared>, body: Body) -> Response {
    serve(&shared, body, decode).await
}

fn decode(call: &Call) -> Result<Generation<ResponsesEncoder>, ApiError> {
    let request = &call.body;
    let offered = Offered::read(request)?;
    let (tools, tool_format) = tool_choice(request, &offered)?;
    let messages = messages(request)?;
    let format = match tool_format {
        Some(format) => Some(format),
        None => text_format(request)?,
    };
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(bad("`stream` must be true or false")),
    };
    Ok(Generation {
        request: GenerateRequest {
            input: Input::Chat { messages, tools },
            sampling: sampling(request)?,
            max_tokens: token_limit(request, "max_output_tokens")?,
            stop: Vec::new(),
            format,
        },
        stream,
        encoder: ResponsesEncoder::new(call.model.clone(), echo(request, &offered), offered),
    })
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// The name the model knows a namespaced function by: Codex's flat form, `{namespace}__{name}`
/// with the underscores around the join trimmed, so an MCP server's `mcp__fs__` namespace and
/// its `read` tool read `mcp__fs__read`, as Codex names MCP tools where it cannot keep the split.
fn flat_name(namespace: &str, name: &str) -> String {
    let namespace = namespace.trim_end_matches('_');
    let name = name.trim_start_matches('_');
    format!("{namespace}__{name}")
}

/// The function tools a request offers, as the engine knows them.
#[derive(Debug, Default)]
struct Offered {
    /// Every function, a namespaced one under its flat name.
    tools: Vec<Tool>,
    /// A namespaced function's namespace and own name, by its flat name.
    namespaced: BTreeMap<String, (String, String)>,
    /// The function and namespace tools as the request gave them, which the response echoes.
    given: Vec<Value>,
}

impl Offered {
    fn read(request: &Value) -> Result<Offered, ApiError> {
        let mut offered = Offered::default();
        let items = match request.get("tools") {
            None | Some(Value::Null) => return Ok(offered),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(bad(
                    "`tools` must be an array; help: send `tools: [{\"type\": \"function\", \"name\": ..., \"parameters\": {...}}]`",
                ));
            }
        };
        for (i, item) in items.iter().enumerate() {
            match item.get("type").and_then(Value::as_str) {
                Some("function") => offered.tools.push(function(item, &format!("tools[{i}]"))?),
                Some("namespace") => offered.namespace(item, i)?,
                // Hosted tools (`web_search`, `file_search`, …) and freeform `custom` tools:
                // nothing here runs them, and the model answers without them.
                Some(_) => continue,
                None => {
                    return Err(bad(format!(
                        "`tools[{i}]` has no `type`; help: a function tool is `{{\"type\": \"function\", \"name\": ..., \"parameters\": {{...}}}}`"
                    )));
                }
            }
            offered.given.push(item.clone());
        }
        Ok(offered)
    }

    /// A `namespace` tool's functions, flattened.
    fn namespace(&mut self, item: &Value, i: usize) -> Result<(), ApiError> {
        let Some(namespace) = item.get("name").and_then(Value::as_str) else {
            return Err(bad(format!(
                "`tools[{i}]` is a namespace without a `name`; help: name it, e.g. `\"name\": \"crm\"`"
            )));
        };
        let Some(inner) = item.get("tools").and_then(Value::as_array) else {
            return Err(bad(format!(
                "`tools[{i}]` is a namespace without a `tools` array; help: list its functions under `tools`"
            )));
        };
        for (j, tool) in inner.iter().enumerate() {
            // A namespace may hold freeform `custom` tools too, ignored as at the top level.
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                continue;
            }
            let mut tool = function(tool, &format!("tools[{i}].tools[{j}]"))?;
            let flat = flat_name(namespace, &tool.name);
            let own = std::mem::replace(&mut tool.name, flat.clone());
            self.namespaced.insert(flat, (namespace.to_owned(), own));
            self.tools.push(tool);
        }
        Ok(())
    }

    /// The flat name of the function a `tool_choice` names: its own name, or a namespaced
    /// function's name within its namespace when only one has it.
    fn resolve(&self, name: &str) -> Result<String, ApiError> {
        if self.tools.iter().any(|t| t.name == name) {
            return Ok(name.to_owned());
        }
        let mut within = self.namespaced.iter().filter(|(_, (_, own))| own == name);
        match (within.next(), within.next()) {
            (Some((flat, _)), None) => Ok(flat.clone()),
            _ => Err(bad(format!(
                "`tool_choice` names the function `{name}`, which `tools` does not offer; help: add it to `tools`, or send `tool_choice: \"auto\"`"
            ))),
        }
    }
}

/// A function tool: `name`, `description` and the JSON Schema of its arguments, `parameters`.
fn function(item: &Value, at: &str) -> Result<Tool, ApiError> {
    let name = match item.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name,
        _ => {
            return Err(bad(format!(
                "`{at}` is a function without a `name`; help: name it, e.g. `\"name\": \"get_weather\"`"
            )));
        }
    };
    let parameters = match item.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(schema @ Value::Object(_)) => schema.clone(),
        Some(_) => {
            return Err(bad(format!(
                "`{at}.parameters` must be a JSON Schema object; help: e.g. `{{\"type\": \"object\", \"properties\": {{...}}}}`"
            )));
        }
    };
    Ok(Tool {
        name: name.to_owned(),
        description: item
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        parameters,
    })
}

/// `tool_choice`: the tools the engine is offered and the constraint the choice implies.
fn tool_choice(
    request: &Value,
    offered: &Offered,
) -> Result<(Vec<Tool>, Option<Format>), ApiError> {
    let mut tools = offered.tools.clone();
    let all = |tools: &[Tool]| tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    let format = match request.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => None,
            "none" => return Ok((Vec::new(), None)),
            "required" => Some(Format::ToolCall { names: all(&tools) }),
            other => {
                return Err(bad(format!(
                    "`tool_choice` `{other}` is not one this gateway knows; help: send `auto`, `none`, `required` or `{{\"type\": \"function\", \"name\": ...}}`"
                )));
            }
        },
        Some(choice) => match choice.get("type").and_then(Value::as_str) {
            Some("function") => {
                let Some(name) = choice.get("name").and_then(Value::as_str) else {
                    return Err(bad(
                        "`tool_choice` of type `function` needs the function's `name`; help: send `{\"type\": \"function\", \"name\": ...}`",
                    ));
                };
                Some(Format::ToolCall {
                    names: vec![offered.resolve(name)?],
                })
            }
            Some("allowed_tools") => {
                let mut allowed = Vec::new();
                let listed = choice.get("tools").and_then(Value::as_array);
                for tool in listed.into_iter().flatten() {
                    // Hosted tools in the list are ignored, as they are in `tools`.
                    if tool.get("type").and_then(Value::as_str) == Some("function")
                        && let Some(name) = tool.get("name").and_then(Value::as_str)
                    {
                        allowed.push(offered.resolve(name)?);
                    }
                }
                tools.retain(|t| allowed.contains(&t.name));
                match choice.get("mode").and_then(Value::as_str) {
                    None | Some("auto") => None,
                    Some("required") => Some(Format::ToolCall { names: all(&tools) }),
                    Some(other) => {
                        return Err(bad(format!(
                            "`tool_choice.mode` `{other}` is not one this gateway knows; help: send `auto` or `required`"
                        )));
                    }
                }
            }
            // A hosted tool's choice: the tool is ignored, and so is the choice of it.
            Some(_) => None,
            None => {
                return Err(bad(
                    "`tool_choice` has no `type`; help: send `auto`, `none`, `required` or `{\"type\": \"function\", \"name\": ...}`",
                ));
            }
        },
    };
    if format.is_some() && tools.is_empty() {
        return Err(bad(
            "`tool_choice` requires a function tool to call; help: offer one in `tools`, or send `tool_choice: \"auto\"`",
        ));
    }
    Ok((tools, format))
}

/// The chat: `instructions`, then the `input` items.
fn messages(request: &Value) -> Result<Vec<Message>, ApiError> {
    let mut messages = Vec::new();
    match request.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(Message::new("system", text.as_str())),
        Some(_) => {
            return Err(bad(
                "`instructions` must be a string; help: send the system prompt as one string",
            ));
        }
    }
    match request.get("input") {
        Some(Value::String(text)) => messages.push(Message::new("user", text.as_str())),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                push_item(&mut messages, item, &format!("input[{i}]"))?;
            }
        }
        None | Some(Value::Null) => {
            return Err(bad(
                "The request has no `input`; help: send the conversation as `input`, a string or a list of items",
            ));
        }
        Some(_) => {
            return Err(bad(
                "`input` must be a string or a list of items; help: e.g. `\"input\": [{\"role\": \"user\", \"content\": \"Hello\"}]`",
            ));
        }
    }
    Ok(system_first(messages))
}

/// The chat with its system text, wherever it was, joined into one system message that
/// leads: many chat templates take only a first one and refuse one later, yet Codex sends
/// `developer` messages mid-conversation too.
fn system_first(messages: Vec<Message>) -> Vec<Message> {
    let (system, mut chat): (Vec<Message>, Vec<Message>) =
        messages.into_iter().partition(|m| m.role == "system");
    let texts: Vec<String> = (system.into_iter().map(|m| m.content))
        .filter(|text| !text.is_empty())
        .collect();
    if !texts.is_empty() {
        chat.insert(0, Message::new("system", texts.join("\n\n")));
    }
    chat
}

/// A required string field of an input item.
fn required<'a>(item: &'a Value, key: &str, at: &str) -> Result<&'a str, ApiError> {
    item.get(key).and_then(Value::as_str).ok_or_else(|| {
        bad(format!(
            "`{at}` has no `{key}`; help: send it as a string, as the item's type requires"
        ))
    })
}

/// One `input` item, added to the chat.
fn push_item(messages: &mut Vec<Message>, item: &Value, at: &str) -> Result<(), ApiError> {
    if !item.is_object() {
        return Err(bad(format!(
            "`{at}` must be an object; help: e.g. `{{\"role\": \"user\", \"content\": \"Hello\"}}`"
        )));
    }
    // A message may leave out its `type` (OpenAI's "easy" input message).
    let kind = match item.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        None | Some(Value::Null) if item.get("role").is_some() => "message",
        _ => {
            return Err(bad(format!(
                "`{at}` has no `type`; help: send a `message`, `function_call` or `function_call_output` item"
            )));
        }
    };
    match kind {
        "message" => {
            let role = match required(item, "role", at)? {
                "user" => "user",
                "assistant" => "assistant",
                // Open models' templates know `system`, not `developer`.
                "system" | "developer" => "system",
                other => {
                    return Err(bad(format!(
                        "`{at}` has the role `{other}`; help: use `user`, `assistant`, `system` or `developer`"
                    )));
                }
            };
            let content = text_of(item.get("content"), &format!("{at}.content"))?;
            messages.push(Message::new(role, content));
        }
        "function_call" => {
            let name = required(item, "name", at)?;
            let name = match item.get("namespace").and_then(Value::as_str) {
                Some(namespace) => flat_name(namespace, name),
                None => name.to_owned(),
            };
            let arguments = match item.get("arguments") {
                None | Some(Value::Null) => "{}".to_owned(),
                Some(Value::String(arguments)) => arguments.clone(),
                Some(arguments) => arguments.to_string(),
            };
            let call = ToolCall {
                id: required(item, "call_id", at)?.to_owned(),
                name,
                arguments,
            };
            // An assistant's turn is a message and the calls after it: one engine message.
            match messages.last_mut() {
                Some(last) if last.role == "assistant" => last.tool_calls.push(call),
                _ => {
                    let mut message = Message::new("assistant", "");
                    message.tool_calls.push(call);
                    messages.push(message);
                }
            }
        }
        "function_call_output" => {
            let call_id = required(item, "call_id", at)?;
            let output = text_of(item.get("output"), &format!("{at}.output"))?;
            let mut result = Message::new("tool", output);
            result.name = (messages.iter().rev())
                .flat_map(|m| &m.tool_calls)
                .find(|c| c.id == call_id)
                .map(|c| c.name.clone());
            result.tool_call_id = Some(call_id.to_owned());
            messages.push(result);
        }
        // Reasoning, hosted tools' calls, references to stored items: nothing a stateless
        // gateway without those tools can show the model.
        _ => {}
    }
    Ok(())
}

/// The text of a message's `content` or a call's `output`: a string, or parts whose text parts
/// are kept (one a line) and the rest (images, files, audio) dropped.
fn text_of(value: Option<&Value>, at: &str) -> Result<String, ApiError> {
    let parts = match value {
        None | Some(Value::Null) => return Ok(String::new()),
        Some(Value::String(text)) => return Ok(text.clone()),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(bad(format!(
                "`{at}` must be a string or a list of parts; help: e.g. `[{{\"type\": \"input_text\", \"text\": \"Hello\"}}]`"
            )));
        }
    };
    let mut texts = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => match part.get("text") {
                Some(Value::String(text)) => texts.push(text.as_str()),
                _ => {
                    return Err(bad(format!(
                        "`{at}[{j}]` is a text part without a `text` string; help: send `{{\"type\": \"input_text\", \"text\": ...}}`"
                    )));
                }
            },
            Some(_) => {}
            None => {
                return Err(bad(format!(
                    "`{at}[{j}]` has no `type`; help: send `{{\"type\": \"input_text\", \"text\": ...}}`"
                )));
            }
        }
    }
    Ok(texts.join("\n"))
}

/// `text.format`: plain text, any JSON object, or JSON matching a schema.
fn text_format(request: &Value) -> Result<Option<Format>, ApiError> {
    let format = match request.get("text") {
        None | Some(Value::Null) => return Ok(None),
        Some(text @ Value::Object(_)) => match text.get("format") {
            None | Some(Value::Null) => return Ok(None),
            Some(format) => format,
        },
        Some(_) => {
            return Err(bad(
                "`text` must be an object; help: e.g. `\"text\": {\"format\": {\"type\": \"json_object\"}}`",
            ));
        }
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Format::JsonObject)),
        Some("json_schema") => match format.get("schema") {
            Some(schema @ Value::Object(_)) => Ok(Some(Format::JsonSchema {
                schema: schema.clone(),
            })),
            _ => Err(bad(
                "`text.format.schema` must be a JSON Schema object; help: send `{\"type\": \"json_schema\", \"name\": ..., \"schema\": {...}}`",
            )),
        },
        _ => Err(bad(
            "`text.format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

/// The request's settings as OpenAI echoes them in a response, so that SDK models parse it;
/// what this gateway does not do reads as not done (nothing stored, no previous response).
fn echo(request: &Value, offered: &Offered) -> Map<String, Value> {
    let given = |key: &str, default: Value| {
        (request.get(key).filter(|v| !v.is_null()))
            .cloned()
            .unwrap_or(default)
    };
    let format = (request.pointer("/text/format").filter(|v| !v.is_null()))
        .cloned()
        .unwrap_or_else(|| json!({"type": "text"}));
    [
        ("background", json!(false)),
        ("instructions", given("instructions", Value::Null)),
        ("max_output_tokens", given("max_output_tokens", Value::Null)),
        ("metadata", given("metadata", json!({}))),
        (
            "parallel_tool_calls",
            given("parallel_tool_calls", json!(true)),
        ),
        ("previous_response_id", Value::Null),
        ("reasoning", json!({"effort": null, "summary": null})),
        ("store", json!(false)),
        ("temperature", given("temperature", Value::Null)),
        ("text", json!({"format": format})),
        ("tool_choice", given("tool_choice", json!("auto"))),
        ("tools", Value::Array(offered.given.clone())),
        ("top_p", given("top_p", Value::Null)),
        ("truncation", json!("disabled")),
        ("user", given("user", Value::Null)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// A generation that hit its token limit is `incomplete`, OpenAI's word for it.
fn status(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "completed",
        FinishReason::Length => "incomplete",
    }
}

/// A `response` body, or the events that build one. The ids of the response and its items
/// share one key, so a call's `call_id` is unique across the turns of a conversation.
pub(crate) struct ResponsesEncoder {
    key: String,
    created_at: i64,
    /// The time of completion (a fixed one in tests).
    clock: fn() -> i64,
    model: String,
    /// The request's settings, as the response echoes them.
    echo: Map<String, Value>,
    /// A namespaced function's namespace and own name, by the flat name the model calls it by.
    namespaced: BTreeMap<String, (String, String)>,
    /// The next event's `sequence_number`.
    sequence: u64,
    /// The text so far of the message item a stream has open (always output 0: text comes
    /// before calls).
    message: Option<String>,
}

impl ResponsesEncoder {
    fn new(model: String, echo: Map<String, Value>, offered: Offered) -> Self {
        ResponsesEncoder {
            key: new_id(""),
            created_at: unix_now(),
            clock: unix_now,
            model,
            echo,
            namespaced: offered.namespaced,
            sequence: 0,
            message: None,
        }
    }

    fn message_id(&self) -> String {
        format!("msg_{}", self.key)
    }

    /// The message item; `text` is `None` while its content part is not added yet.
    fn message_item(&self, text: Option<&str>, status: &str) -> Value {
        json!({"type": "message", "id": self.message_id(), "status": status, "role": "assistant",
               "content": text.map(output_text).into_iter().collect::<Vec<_>>()})
    }

    /// The `function_call` item of the `n`th call.
    fn call_item(&self, n: usize, call: &ToolCall, arguments: &str, status: &str) -> Value {
        let mut item = json!({"type": "function_call", "id": format!("fc_{}_{n}", self.key),
            "call_id": format!("call_{}_{n}", self.key), "name": call.name,
            "arguments": arguments, "status": status});
        if let Some((namespace, name)) = self.namespaced.get(&call.name) {
            item["namespace"] = json!(namespace);
            item["name"] = json!(name);
        }
        item
    }

    fn response(&self, status: &str, output: Vec<Value>, usage: Option<&Usage>) -> Value {
        let mut response = self.echo.clone();
        let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
        let completed_at = (status == "completed").then(|| json!((self.clock)()));
        response.extend([
            ("id".to_owned(), json!(format!("resp_{}", self.key))),
            ("object".to_owned(), json!("response")),
            ("created_at".to_owned(), json!(self.created_at)),
            ("completed_at".to_owned(), completed_at.unwrap_or_default()),
            ("model".to_owned(), json!(self.model)),
            ("status".to_owned(), json!(status)),
            ("error".to_owned(), Value::Null),
            (
                "incomplete_details".to_owned(),
                incomplete.unwrap_or_default(),
            ),
            ("output".to_owned(), Value::Array(output)),
            (
                "usage".to_owned(),
                usage.map(usage_json).unwrap_or_default(),
            ),
        ]);
        Value::Object(response)
    }

    /// An event of the stream, numbered.
    fn event(&mut self, kind: &str, mut fields: Value) -> Value {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        fields
    }

    /// The events that open the message item and its one text part.
    fn open_message(&mut self) -> Vec<Value> {
        self.message = Some(String::new());
        let item = self.message_item(None, "in_progress");
        let id = self.message_id();
        vec![
            self.event(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            ),
            self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "part": output_text("")}),
            ),
        ]
    }
}

impl Encoder for ResponsesEncoder {
    const API: Api = Api::OpenAi;
    const FRAMING: Framing = Framing::NamedSse;
    // The splitter's ids go unused: calls are numbered under the response's key instead, so
    // their ids stay unique across the turns of a conversation.
    const CALL_PREFIX: &'static str = "call_";

    fn whole(&self, end: &End) -> Value {
        let status = status(end.reason);
        let mut output = Vec::new();
        if !end.text.is_empty() || end.calls.is_empty() {
            output.push(self.message_item(Some(&end.text), status));
        }
        for (n, call) in end.calls.iter().enumerate() {
            output.push(self.call_item(n, call, &call.arguments, "completed"));
        }
        self.response(status, output, Some(&end.usage))
    }

    fn start(&mut self) -> Vec<Value> {
        let response = self.response("in_progress", Vec::new(), None);
        vec![
            self.event("response.created", json!({"response": response})),
            self.event("response.in_progress", json!({"response": response})),
        ]
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        let mut events = Vec::new();
        if self.message.is_none() {
            events.extend(self.open_message());
        }
        if let Some(message) = &mut self.message {
            message.push_str(text);
        }
        let id = self.message_id();
        events.push(self.event(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": []}),
        ));
        events
    }

    fn finish(&mut self, end: &End) -> Vec<Value> {
        let status = status(end.reason);
        let mut events = Vec::new();
        if !end.text.is_empty() {
            events.extend(self.text(&end.text));
        } else if self.message.is_none() && end.calls.is_empty() {
            // Nothing said and nothing called is still an answer: an empty message.
            events.extend(self.open_message());
        }
        let mut output = Vec::new();
        if let Some(text) = self.message.take() {
            let id = self.message_id();
            let item = self.message_item(Some(&text), status);
            events.push(self.event(
                "response.output_text.done",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            ));
            events.push(self.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "part": output_text(&text)}),
            ));
            events.push(self.event(
                "response.output_item.done",
                json!({"output_index": 0, "item": item}),
            ));
            output.push(item);
        }
        for (n, call) in end.calls.iter().enumerate() {
            let index = output.len();
            let added = self.call_item(n, call, "", "in_progress");
            let id = added["id"].clone();
            let item = self.call_item(n, call, &call.arguments, "completed");
            events.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": added}),
            ));
            events.push(self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": index, "delta": call.arguments}),
            ));
            events.push(self.event(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "arguments": call.arguments}),
            ));
            events.push(self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            ));
            output.push(item);
        }
        let response = self.response(status, output, Some(&end.usage));
        let kind = match end.reason {
            FinishReason::Stop => "response.completed",
            FinishReason::Length => "response.incomplete",
        };
        events.push(self.event(kind, json!({"response": response})));
        events
    }

    /// OpenAI ends a failed stream with `response.failed`, its error inside the response.
    fn fail(&mut self, error: &ApiError) -> Vec<Value> {
        let output = (self.message.take())
            .map(|text| self.message_item(Some(&text), "incomplete"))
            .into_iter()
            .collect();
        let mut response = self.response("failed", output, None);
        let code = if error.status.is_server_error() {
            "server_error"
        } else {
            "invalid_prompt"
        };
        response["error"] = json!({"code": code, "message": error.message});
        vec![self.event("response.failed", json!({"response": response}))]
    }
}

#[cfg(test)]
mod tests {
    use aistack_engine_api::{ErrorBody, ErrorKind, Event};

    use super::*;
    use crate::driver::replay::{USAGE, replay, text_and_a_call, weather};

    fn decoded(body: Value) -> Result<Generation<ResponsesEncoder>, ApiError> {
        decode(&Call {
            body,
            model: "chat".into(),
        })
    }

    fn chat(body: Value) -> (Vec<Message>, Vec<Tool>) {
        match decoded(body).unwrap().request.input {
            Input::Chat { messages, tools } => (messages, tools),
            Input::Text { .. } => unreachable!("responses are chats"),
        }
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn a_string_input_is_one_user_message_after_the_instructions() {
        let (messages, tools) =
            chat(json!({"model": "chat", "instructions": "Be brief.", "input": "Hi"}));
        assert_eq!(
            messages,
            [
                Message::new("system", "Be brief."),
                Message::new("user", "Hi")
            ]
        );
        assert!(tools.is_empty());
    }

    #[test]
    fn input_items_become_messages_tool_calls_and_tool_results() {
        let (messages, _) = chat(
            json!({"model": "chat", "instructions": "Be brief.", "input": [
                {"type": "message", "role": "developer", "content": "Use tools."},
                {"role": "user", "content": [
                    {"type": "input_text", "text": "Weather in Oslo?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    {"type": "input_text", "text": "And Paris?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call", "call_id": "call_2", "namespace": "mcp__weather__", "name": "forecast",
                 "arguments": {"city": "Paris"}},
                {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
                {"type": "function_call_output", "call_id": "call_2",
                 "output": [{"type": "input_text", "text": "Rain"}, {"type": "input_image", "image_url": "x"}]},
                {"type": "function_call", "call_id": "call_3", "name": "get_weather"},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {"role": "developer", "content": [{"type": "input_text", "text": "Mind the rain."}]},
            ]}),
        );
        let mut checking = Message::new("assistant", "Checking.");
        checking.tool_calls = vec![
            call("call_1", "get_weather", r#"{"city":"Oslo"}"#),
            call("call_2", "mcp__weather__forecast", r#"{"city":"Paris"}"#),
        ];
        let result = |id: &str, name: &str, text: &str| Message {
            tool_call_id: Some(id.into()),
            name: Some(name.into()),
            ..Message::new("tool", text)
        };
        let mut again = Message::new("assistant", "");
        again.tool_calls = vec![call("call_3", "get_weather", "{}")];
        assert_eq!(
            messages,
            [
                Message::new("system", "Be brief.\n\nUse tools.\n\nMind the rain."),
                Message::new("user", "Weather in Oslo?\nAnd Paris?"),
                checking,
                result("call_1", "get_weather", "Sunny"),
                result("call_2", "mcp__weather__forecast", "Rain"),
                again,
            ]
        );
    }

    #[test]
    fn function_tools_are_offered_namespaces_flattened_and_hosted_tools_ignored() {
        let request = json!({"model": "chat", "input": "Hi", "tools": [
            {"type": "function", "name": "get_weather", "description": "Weather",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true},
            {"type": "web_search"},
            {"type": "namespace", "name": "mcp__fs__", "description": "Files", "tools": [
                {"type": "function", "name": "read", "parameters": null},
                {"type": "custom", "name": "apply_patch"}]},
            {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
        ]});
        let (_, tools) = chat(request.clone());
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "mcp__fs__read"]);
        assert_eq!(tools[0].description.as_deref(), Some("Weather"));
        assert_eq!(
            tools[1].parameters,
            json!({"type": "object", "properties": {}})
        );
        let encoder = decoded(request.clone()).unwrap().encoder;
        assert_eq!(
            encoder.namespaced["mcp__fs__read"],
            ("mcp__fs__".to_owned(), "read".to_owned())
        );
        let echoed = &encoder.echo["tools"];
        assert_eq!(echoed, &json!([request["tools"][0], request["tools"][2]]));
        assert_eq!(flat_name("crm", "_find"), "crm__find");
    }

    #[test]
    fn tool_choice_maps_to_the_engines_tool_call_constraint() {
        let tools = json!([
            {"type": "function", "name": "get_weather"},
            {"type": "namespace", "name": "crm", "description": "CRM", "tools": [{"type": "function", "name": "find"}]},
        ]);
        let choose = |choice: Value| {
            let request =
                json!({"model": "chat", "input": "Hi", "tools": tools, "tool_choice": choice});
            let generation = decoded(request)?;
            let Input::Chat { tools, .. } = generation.request.input else {
                unreachable!("responses are chats")
            };
            let names: Vec<String> = tools.into_iter().map(|t| t.name).collect();
            Ok::<_, ApiError>((names, generation.request.format))
        };
        let names = |names: &[&str]| names.iter().map(|&n| n.to_owned()).collect::<Vec<_>>();
        let call = |of: &[&str]| Some(Format::ToolCall { names: names(of) });
        let both = names(&["get_weather", "crm__find"]);
        assert_eq!(choose(json!("auto")).unwrap(), (both.clone(), None));
        assert_eq!(choose(json!("none")).unwrap(), (Vec::new(), None));
        assert_eq!(
            choose(json!("required")).unwrap(),
            (both.clone(), call(&["get_weather", "crm__find"]))
        );
        assert_eq!(
            choose(json!({"type": "function", "name": "get_weather"})).unwrap(),
            (both.clone(), call(&["get_weather"]))
        );
        // A namespaced function may be named by its own name or its flat one.
        for name in ["find", "crm__find"] {
            assert_eq!(
                choose(json!({"type": "function", "name": name})).unwrap(),
                (both.clone(), call(&["crm__find"]))
            );
        }
        assert_eq!(
            choose(json!({"type": "allowed_tools", "mode": "required",
                          "tools": [{"type": "function", "name": "find"}, {"type": "web_search"}]}))
            .unwrap(),
            (names(&["crm__find"]), call(&["crm__find"]))
        );
        assert_eq!(
            choose(json!({"type": "web_search_preview"})).unwrap(),
            (both, None),
            "a hosted tool's choice is ignored with the tool"
        );
        let unknown = choose(json!({"type": "function", "name": "send_mail"})).unwrap_err();
        assert!(
            unknown.message.contains("`send_mail`"),
            "{}",
            unknown.message
        );
        let request = json!({"model": "chat", "input": "Hi", "tool_choice": "required"});
        assert!(decoded(request).is_err(), "nothing to call");
    }

    #[test]
    fn text_formats_map_to_the_engines_grammars() {
        let format = |format: Value| {
            decoded(json!({"model": "chat", "input": "Hi", "text": {"format": format}}))
                .map(|g| g.request.format)
        };
        let schema =
            json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
        assert_eq!(
            format(json!({"type": "json_schema", "name": "a", "schema": schema, "strict": true}))
                .unwrap(),
            Some(Format::JsonSchema { schema })
        );
        assert_eq!(
            format(json!({"type": "json_object"})).unwrap(),
            Some(Format::JsonObject)
        );
        assert_eq!(format(json!({"type": "text"})).unwrap(), None);
        assert!(format(json!({"type": "json_schema", "name": "a"})).is_err());
        assert!(format(json!({"type": "yaml"})).is_err());
    }

    #[test]
    fn sampling_limits_and_unknown_options_are_read_or_ignored() {
        let generation = decoded(json!({
            "model": "chat", "input": "Hi", "stream": true,
            "max_output_tokens": 12, "temperature": 0.2, "top_p": 0.9,
            "text": {"format": {"type": "text"}, "verbosity": "low"},
            "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "high"},
            "store": true, "previous_response_id": "resp_0", "parallel_tool_calls": false,
            "truncation": "auto", "metadata": {"run": "1"}, "user": "u", "service_tier": "auto",
            "prompt_cache_key": "k", "background": false, "stream_options": {"include_obfuscation": false},
        }))
        .unwrap();
        assert!(generation.stream);
        let request = generation.request;
        assert_eq!(request.max_tokens, Some(12));
        assert_eq!(request.sampling.temperature, Some(0.2));
        assert_eq!(request.sampling.top_p, Some(0.9));
        assert_eq!(request.format, None);
        let echo = Value::Object(generation.encoder.echo);
        assert_eq!(echo["parallel_tool_calls"], false);
        assert_eq!(echo["metadata"], json!({"run": "1"}));
        assert_eq!(echo["store"], false, "nothing is stored");
        assert_eq!(echo["previous_response_id"], Value::Null, "nor read");
        assert_eq!(echo["tool_choice"], "auto");
    }

    #[test]
    fn bad_requests_say_what_is_wrong_and_how_to_fix_it() {
        let errors: Vec<String> = [
            json!({"model": "chat"}),
            json!({"model": "chat", "input": 3}),
            json!({"model": "chat", "input": ["Hi"]}),
            json!({"model": "chat", "input": [{"content": "Hi"}]}),
            json!({"model": "chat", "input": [{"role": "tool", "content": "Hi"}]}),
            json!({"model": "chat", "input": [{"role": "user", "content": [{"text": "Hi"}]}]}),
            json!({"model": "chat", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
            json!({"model": "chat", "input": [{"type": "function_call", "name": "f"}]}),
            json!({"model": "chat", "input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}),
            json!({"model": "chat", "input": "Hi", "instructions": ["Be brief."]}),
            json!({"model": "chat", "input": "Hi", "tools": {}}),
            json!({"model": "chat", "input": "Hi", "tools": [{"name": "f"}]}),
            json!({"model": "chat", "input": "Hi", "tools": [{"type": "function"}]}),
            json!({"model": "chat", "input": "Hi", "tools": [{"type": "function", "name": "f", "parameters": "{}"}]}),
            json!({"model": "chat", "input": "Hi", "tools": [{"type": "namespace", "name": "n"}]}),
            json!({"model": "chat", "input": "Hi", "tool_choice": "sometimes"}),
            json!({"model": "chat", "input": "Hi", "tool_choice": {"type": "function"}}),
            json!({"model": "chat", "input": "Hi", "text": "json"}),
            json!({"model": "chat", "input": "Hi", "max_output_tokens": 0}),
            json!({"model": "chat", "input": "Hi", "temperature": "hot"}),
            json!({"model": "chat", "input": "Hi", "stream": "yes"}),
        ]
        .into_iter()
        .map(|body| match decoded(body) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => {
                assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
                e.message
            }
        })
        .collect();
        insta::assert_debug_snapshot!(errors);
    }

    /// An encoder for a request with only `input`, its ids under the key `1`.
    fn encoder() -> ResponsesEncoder {
        let request = json!({"model": "chat", "input": "Hi"});
        let offered = Offered::read(&request).unwrap();
        ResponsesEncoder {
            key: "1".into(),
            created_at: 7,
            clock: || 9,
            ..ResponsesEncoder::new("chat".into(), echo(&request, &offered), offered)
        }
    }

    fn end(text: &str, calls: Vec<ToolCall>, reason: FinishReason) -> End {
        End {
            text: text.into(),
            calls,
            reason,
            usage: USAGE,
            generated: true,
        }
    }

    #[test]
    fn a_whole_response_holds_a_message_item_then_function_call_items() {
        let calls = vec![call("call_0", "get_weather", r#"{"city":"Paris"}"#)];
        let response = encoder().whole(&end("Let me check.", calls, FinishReason::Stop));
        insta::assert_json_snapshot!(response);
        let called = encoder().whole(&end(
            "",
            vec![call("call_0", "get_weather", "{}")],
            FinishReason::Stop,
        ));
        let output = called["output"].as_array().unwrap();
        assert_eq!(output.len(), 1, "no empty message beside a call");
        assert_eq!(output[0]["type"], "function_call");
    }

    #[test]
    fn a_response_cut_by_the_token_limit_is_incomplete() {
        let response = encoder().whole(&end("The capital", Vec::new(), FinishReason::Length));
        assert_eq!(response["status"], "incomplete");
        assert_eq!(
            response["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(response["completed_at"], Value::Null);
        assert_eq!(response["output"][0]["status"], "incomplete");
        let events = replay(
            encoder(),
            Vec::new(),
            vec![
                Event::Text {
                    text: "The capital".into(),
                },
                Event::Done {
                    finish_reason: FinishReason::Length,
                    usage: USAGE,
                },
            ],
        );
        let last = events.trim_end().rsplit("\n\n").next().unwrap();
        assert!(last.starts_with("event: response.incomplete\n"), "{last}");
    }

    #[test]
    fn a_namespaced_call_goes_back_as_its_namespace_and_name() {
        let request = json!({"model": "chat", "input": "Hi", "tools": [
            {"type": "namespace", "name": "mcp__fs__", "description": "Files",
             "tools": [{"type": "function", "name": "read"}]}]});
        let mut encoder = decoded(request).unwrap().encoder;
        encoder.key = "1".into();
        let response = encoder.whole(&end(
            "",
            vec![call("call_0", "mcp__fs__read", r#"{"path":"a"}"#)],
            FinishReason::Stop,
        ));
        assert_eq!(
            response["output"],
            json!([{"type": "function_call", "id": "fc_1_0", "call_id": "call_1_0", "namespace": "mcp__fs__",
                    "name": "read", "arguments": "{\"path\":\"a\"}", "status": "completed"}])
        );
    }

    #[test]
    fn a_stream_fails_with_response_failed() {
        let failed = Event::Error {
            error: ErrorBody::new(ErrorKind::Internal, "The engine failed")
                .with_help("see its log"),
        };
        let events = replay(
            encoder(),
            Vec::new(),
            vec![Event::Text { text: "Hi".into() }, failed],
        );
        let last = events.trim_end().rsplit("\n\n").next().unwrap();
        let data: Value =
            serde_json::from_str(last.strip_prefix("event: response.failed\ndata: ").unwrap())
                .unwrap();
        assert_eq!(data["sequence_number"], 5);
        assert_eq!(data["response"]["status"], "failed");
        assert_eq!(
            data["response"]["error"],
            json!({"code": "server_error", "message": "The engine failed; help: see its log"})
        );
        assert_eq!(data["response"]["output"][0]["content"][0]["text"], "Hi");
    }

    #[test]
    fn a_stream_with_nothing_to_say_still_has_its_message() {
        let events = replay(
            encoder(),
            weather(),
            vec![Event::Done {
                finish_reason: FinishReason::Stop,
                usage: USAGE,
            }],
        );
        let names: Vec<&str> = events
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
    }

    #[test]
    fn a_streamed_response_sends_its_message_then_each_function_call() {
        insta::assert_snapshot!(text_and_a_call(encoder()));
    }
}
