//! Google's Gemini API, the Generative Language API `v1beta` that the google-genai SDKs and
//! Gemini CLI speak: `models/{model}:generateContent` and `:streamGenerateContent?alt=sse` (a
//! decoder and an encoder for the driver), `:countTokens`, `:embedContent` and
//! `:batchEmbedContents`, and the model listing.
//!
//! Gemini CLI and the SDKs before google-genai 3 speak `/v1beta`; the google-genai Python SDK
//! 3 speaks `/v1`, whose `/v1/models` OpenAI's routes share: there a request is Gemini's when
//! it is a `POST` (OpenAI has none there) or comes from Google's clients ([`asks`]).
//!
//! The model is named in the path, not the body, as `chat` or `models/chat`, followed by the
//! method after a `:`. axum cannot route a `:` inside a segment, so one catch-all route takes
//! `/v1beta/models/{*rest}` and [`target`] splits it at the last `:` (a model may be called
//! `chat:latest`). The sandbox scope reads the path with the same function, so both agree on
//! the model whatever the spelling.

use aistack_engine_api::{
    FinishReason, Format, GenerateRequest, Input, Message, Mode, Sampling, TokenizeRequest, Tool,
    ToolCall, Usage,
};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::driver::{Encoder, End, Generation, generate, new_id};
use crate::embed::embed;
use crate::error::{Api, ApiError, from_client, unavailable};
use crate::framing::Framing;
use crate::models::Entry;
use crate::request::{Call, answer_for, token_limit};
use crate::state::Shared;

/// What a quiet stream sends (see [`GeminiEncoder`]'s `keep_alive`).
const KEEP_ALIVE: &[u8] =
    b"data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"\"}]},\"index\":0}]}\n\n";
/// Where the Gemini model routes start, in each version.
const MODELS: [&str; 2] = ["/v1beta/models/", "/v1/models/"];
/// The context a listing names for a model that is neither loaded nor given a
/// `context_size`: the most an engine gives it then (`min(trained, 4096)`).
const DEFAULT_CONTEXT: u32 = 4096;
/// Models a listing page holds when `pageSize` is absent or 0, and the most it may ask for,
/// as Google's.
const PAGE_SIZE: (usize, usize) = (50, 1000);

/// Whether `request` is for the Gemini API: anything under `/v1beta/`, and under `/v1/models`
/// a `POST` or a request from Google's clients, which mark every request with
/// `x-goog-api-client` (or carry a Google key).
pub(crate) fn asks(request: &Request) -> bool {
    let path = request.uri().path();
    if path.starts_with("/v1beta/") {
        return true;
    }
    if path != "/v1/models" && !path.starts_with("/v1/models/") {
        return false;
    }
    let headers = request.headers();
    request.method() == Method::POST
        || headers.contains_key("x-goog-api-client")
        || headers.contains_key("x-goog-api-key")
        || query_param(request.uri().query(), "key").is_some()
}

/// The model and the method (after the last `:`, for a `POST`) a path under
/// `/v1beta/models/` or `/v1/models/` names; the model without the `models/` prefix the SDKs
/// write. `None` for any other path. The path is read as it came (not percent-decoded), so
/// the scope check and the handler see the same name.
pub(crate) fn target<'a>(method: &Method, path: &'a str) -> Option<(&'a str, Option<&'a str>)> {
    let rest = MODELS.iter().find_map(|prefix| path.strip_prefix(prefix))?;
    let (model, action) = match rest.rsplit_once(':') {
        Some((model, action)) if method == Method::POST => (model, Some(action)),
        _ => (rest, None),
    };
    Some((model.strip_prefix("models/").unwrap_or(model), action))
}

/// The value of the query parameter `name` (the first, should it repeat), form-decoded:
/// `+` is a space, `%XX` a byte.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key) == name).then(|| form_decode(value))
    })
}

fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes.get(i + 1..i + 3))
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /v1beta/models`: the models served here, a page at a time.
pub(crate) async fn list_models(State(shared): State<Shared>, request: Request) -> Response {
    let query = request.uri().query();
    match listing(&shared.models.configs(), query) {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.render(Api::Gemini),
    }
}

fn listing(entries: &[std::sync::Arc<Entry>], query: Option<&str>) -> Result<Value, ApiError> {
    let size = match query_param(query, "pageSize") {
        None => PAGE_SIZE.0,
        Some(text) => match text.parse::<usize>() {
            Ok(0) => PAGE_SIZE.0,
            Ok(n) => n.min(PAGE_SIZE.1),
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "`pageSize` must be a whole number, not `{text}`"
                )));
            }
        },
    };
    let start = match query_param(query, "pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => token.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!(
                "`pageToken` `{token}` was not given by this gateway; help: send the `nextPageToken` of the previous page, or none for the first"
            ))
        })?,
    };
    let page: Vec<Value> = (entries.iter().skip(start).take(size))
        .map(|e| model_object(e))
        .collect();
    let mut body = json!({"models": page});
    if start.saturating_add(size) < entries.len() {
        body["nextPageToken"] = json!((start + size).to_string());
    }
    Ok(body)
}

/// A served model as a Gemini `Model`: its limits are its context (an engine generates until
/// the context is full), its methods those of its mode.
fn model_object(entry: &Entry) -> Value {
    let c = &entry.config;
    let context = (entry.loaded_info().map(|info| info.context_size))
        .or(c.context_size)
        .unwrap_or(DEFAULT_CONTEXT);
    let source = c.reference.clone().unwrap_or_else(|| {
        (c.model_path.file_name()).map_or_else(String::new, |f| f.to_string_lossy().into_owned())
    });
    let mut model = json!({
        "name": format!("models/{}", c.name),
        "baseModelId": c.name,
        "version": c.digest.trim_start_matches("sha256:").chars().take(12).collect::<String>(),
        "displayName": c.name,
        "description": format!("{source}, served by aistack for project `{}`", c.project),
        "inputTokenLimit": context,
        "outputTokenLimit": context,
    });
    match c.mode {
        Mode::Chat => {
            model["supportedGenerationMethods"] =
                json!(["generateContent", "streamGenerateContent", "countTokens"]);
            // llama.cpp's sampling defaults, which a request without them gets.
            model["temperature"] = json!(0.8);
            model["topP"] = json!(0.95);
            model["topK"] = json!(40);
        }
        Mode::Embedding => {
            model["supportedGenerationMethods"] = json!(["embedContent", "batchEmbedContents"]);
        }
    }
    model
}

/// `GET` and `POST /v1beta/models/{*rest}`: one model, or one of its methods.
pub(crate) async fn model_route(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Some((model, action)) = target(&parts.method, path) else {
        return no_method(&parts.method, path);
    };
    match (&parts.method, action) {
        (&Method::GET, None) => match shared.models.find(model) {
            Ok(entry) => axum::Json(model_object(&entry)).into_response(),
            Err(e) => unavailable(model, e).render(Api::Gemini),
        },
        (&Method::POST, Some("generateContent")) => generation(&shared, body, model, false).await,
        (&Method::POST, Some("streamGenerateContent")) => {
            if query_param(parts.uri.query(), "alt").as_deref() != Some("sse") {
                // Without `alt=sse` Google streams one JSON array; the SDKs and Gemini CLI
                // never ask for it, and the driver's framings are event by event.
                return ApiError::bad_request(
                    "`streamGenerateContent` streams server-sent events only; help: add `?alt=sse` to the URL, as the google-genai SDKs and Gemini CLI do",
                )
                .render(Api::Gemini);
            }
            generation(&shared, body, model, true).await
        }
        (&Method::POST, Some("countTokens")) => count_tokens(&shared, body, model).await,
        (&Method::POST, Some("embedContent")) => embed_contents(&shared, body, model, false).await,
        (&Method::POST, Some("batchEmbedContents")) => {
            embed_contents(&shared, body, model, true).await
        }
        _ => no_method(&parts.method, path),
    }
}

fn no_method(method: &Method, path: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "No route `{method} {path}`; help: `GET /v1beta/models/{{model}}`, or `POST` to `/v1beta/models/{{model}}:` `generateContent`, `streamGenerateContent?alt=sse`, `countTokens`, `embedContent` or `batchEmbedContents`"
        ),
    )
    .render(Api::Gemini)
}

/// `generateContent` and `streamGenerateContent`.
async fn generation(shared: &Shared, body: Body, model: &str, stream: bool) -> Response {
    answer_for(shared, body, Api::Gemini, Some(model), |call| async move {
        let generation = decode(&call, stream)?;
        generate(shared, &call, generation).await
    })
    .await
}

/// A `GenerateContentRequest` as the engine's request.
fn decode(call: &Call, stream: bool) -> Result<Generation<GeminiEncoder>, ApiError> {
    let request = &call.body;
    let (input, tool_format) = input(request)?;
    let config = GenerationConfig::of(request)?;
    Ok(Generation {
        request: GenerateRequest {
            input,
            sampling: config.sampling,
            max_tokens: config.max_tokens,
            stop: config.stop,
            // A forced call is a constraint of its own, as in the other dialects.
            format: tool_format.or(config.format),
        },
        stream,
        encoder: GeminiEncoder {
            model: call.model.clone(),
            id: new_id(""),
        },
    })
}

/// The chat, the tools offered and the constraint `toolConfig` puts on them.
fn input(request: &Value) -> Result<(Input, Option<Format>), ApiError> {
    if !request.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object with `contents`",
        ));
    }
    let mut messages = Vec::new();
    if let Some(system) = system_text(request.get("systemInstruction"))? {
        messages.push(Message::new("system", system));
    }
    contents(request.get("contents"), &mut messages)?;
    let (tools, format) = tool_choice(request)?;
    Ok((Input::Chat { messages, tools }, format))
}

fn system_text(value: Option<&Value>) -> Result<Option<String>, ApiError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text.clone(),
        Some(content @ Value::Object(_)) => {
            let texts = texts(content, "systemInstruction")?;
            texts.join("\n")
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`systemInstruction` must be a content: `{\"parts\": [{\"text\": ...}]}`",
            ));
        }
    };
    Ok((!text.is_empty()).then_some(text))
}

/// The `parts` of a content, checked to be an array of objects (absent: none).
fn parts<'a>(content: &'a Value, at: &str) -> Result<&'a [Value], ApiError> {
    let parts = match content.get("parts") {
        None | Some(Value::Null) => return Ok(&[]),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "`{at}.parts` must be an array of parts"
            )));
        }
    };
    for (j, part) in parts.iter().enumerate() {
        if !part.is_object() {
            return Err(ApiError::bad_request(format!(
                "`{at}.parts[{j}]` must be an object such as `{{\"text\": ...}}`"
            )));
        }
    }
    Ok(parts)
}

/// The text parts of a content, checked; other parts are left out.
fn texts<'a>(content: &'a Value, at: &str) -> Result<Vec<&'a str>, ApiError> {
    let mut texts = Vec::new();
    for (j, part) in parts(content, at)?.iter().enumerate() {
        if let Some(text) = part_text(part, &format!("{at}.parts[{j}]"))? {
            texts.push(text);
        }
    }
    Ok(texts)
}

/// A part's text, unless it has none or is a thought (a model's thoughts are not replayed).
fn part_text<'a>(part: &'a Value, at: &str) -> Result<Option<&'a str>, ApiError> {
    match part.get("text") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(_)) if part.get("thought") == Some(&Value::Bool(true)) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::bad_request(format!(
            "`{at}.text` must be a string"
        ))),
    }
}

/// `contents` as messages: `user` and `model` turns with their text and function calls, and
/// a `tool` message for each `functionResponse`. `inlineData`, `fileData` and the other parts
/// a text model cannot read are left out, not refused, so that a client's history still goes.
fn contents(value: Option<&Value>, messages: &mut Vec<Message>) -> Result<(), ApiError> {
    let items = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "`contents` is required: at least one `{\"role\": \"user\", \"parts\": [{\"text\": ...}]}`",
            ));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`contents` must be an array of contents",
            ));
        }
    };
    for (i, content) in items.iter().enumerate() {
        let at = format!("contents[{i}]");
        if !content.is_object() {
            return Err(ApiError::bad_request(format!(
                "`{at}` must be an object with `role` and `parts`"
            )));
        }
        // `function` is the role older clients gave function responses.
        let role = match content.get("role") {
            None | Some(Value::Null) => "user",
            Some(Value::String(role)) => match role.as_str() {
                "" | "user" | "function" => "user",
                "model" => "assistant",
                other => {
                    return Err(ApiError::bad_request(format!(
                        "`{at}.role` must be `user` or `model`, not `{other}`"
                    )));
                }
            },
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "`{at}.role` must be `user` or `model`"
                )));
            }
        };
        let mut message = Message::new(role, "");
        let mut texts = Vec::new();
        let mut results = Vec::new();
        for (j, part) in parts(content, &at)?.iter().enumerate() {
            let at = format!("{at}.parts[{j}]");
            if let Some(text) = part_text(part, &at)? {
                texts.push(text);
            } else if let Some(call) = part.get("functionCall") {
                message.tool_calls.push(function_call(call, &at)?);
            } else if let Some(response) = part.get("functionResponse") {
                results.push(function_response(response, &at)?);
            }
        }
        // A reply streamed in pieces comes back as many parts of one text; a user's parts
        // are separate inputs.
        message.content = texts.join(if role == "assistant" { "" } else { "\n" });
        // Function responses answer the model's turn before, so they come first.
        messages.extend(results);
        push_turn(messages, message);
    }
    Ok(())
}

/// Adds a turn that says something. A model's turn right after another is one turn: the
/// google-genai chat keeps a streamed reply as one content per chunk, and a chat template
/// would show each as a reply of its own.
fn push_turn(messages: &mut Vec<Message>, message: Message) {
    if message.content.is_empty() && message.tool_calls.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some(last) if last.role == "assistant" && message.role == "assistant" => {
            last.content.push_str(&message.content);
            last.tool_calls.extend(message.tool_calls);
        }
        _ => messages.push(message),
    }
}

fn function_call(call: &Value, at: &str) -> Result<ToolCall, ApiError> {
    let name = (call.get("name").and_then(Value::as_str))
        .ok_or_else(|| ApiError::bad_request(format!("`{at}.functionCall.name` is required")))?;
    let arguments = match call.get("args") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(args @ Value::Object(_)) => args.to_string(),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "`{at}.functionCall.args` must be an object"
            )));
        }
    };
    Ok(ToolCall {
        id: (call.get("id").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned(),
        name: name.to_owned(),
        arguments,
    })
}

fn function_response(response: &Value, at: &str) -> Result<Message, ApiError> {
    let name = (response.get("name").and_then(Value::as_str)).ok_or_else(|| {
        ApiError::bad_request(format!("`{at}.functionResponse.name` is required"))
    })?;
    let content = match response.get("response") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(value) => value.to_string(),
    };
    let mut message = Message::new("tool", content);
    message.name = Some(name.to_owned());
    message.tool_call_id = (response.get("id").and_then(Value::as_str)).map(str::to_owned);
    Ok(message)
}

/// `tools[].functionDeclarations[]` and `toolConfig.functionCallingConfig`. Google's own
/// tools (`googleSearch`, `codeExecution`, ...) cannot run here and are left out.
fn tool_choice(request: &Value) -> Result<(Vec<Tool>, Option<Format>), ApiError> {
    let mut offered = Vec::new();
    let items = match request.get("tools") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::bad_request("`tools` must be an array of tools")),
    };
    for (i, item) in items.iter().enumerate() {
        let declarations = match item.get("functionDeclarations") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(declarations)) => declarations,
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "`tools[{i}].functionDeclarations` must be an array"
                )));
            }
        };
        for (j, declaration) in declarations.iter().enumerate() {
            offered.push(function_declaration(
                declaration,
                &format!("tools[{i}].functionDeclarations[{j}]"),
            )?);
        }
    }
    let config = request.pointer("/toolConfig/functionCallingConfig");
    let mode = match config.and_then(|c| c.get("mode")) {
        None | Some(Value::Null) => "AUTO",
        Some(Value::String(mode)) => mode.as_str(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`toolConfig.functionCallingConfig.mode` must be `AUTO`, `ANY` or `NONE`",
            ));
        }
    };
    let format = match mode {
        // `VALIDATED` constrains only the calls the model chooses to make, and the driver
        // takes only calls of offered tools anyway.
        "AUTO" | "MODE_UNSPECIFIED" | "VALIDATED" => None,
        "NONE" => return Ok((Vec::new(), None)),
        "ANY" => Some(Format::ToolCall {
            names: allowed_names(config, &offered)?,
        }),
        other => {
            return Err(ApiError::bad_request(format!(
                "`toolConfig.functionCallingConfig.mode` must be `AUTO`, `ANY` or `NONE`, not `{other}`"
            )));
        }
    };
    Ok((offered, format))
}

/// The functions mode `ANY` may call: `allowedFunctionNames`, each offered, else every one
/// offered.
fn allowed_names(config: Option<&Value>, offered: &[Tool]) -> Result<Vec<String>, ApiError> {
    if offered.is_empty() {
        return Err(ApiError::bad_request(
            "`toolConfig.functionCallingConfig.mode` `ANY` needs functions to call; help: declare them in `tools[].functionDeclarations`",
        ));
    }
    let names = match config.and_then(|c| c.get("allowedFunctionNames")) {
        None | Some(Value::Null) => return Ok(offered.iter().map(|t| t.name.clone()).collect()),
        Some(Value::Array(names)) if !names.is_empty() => names,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`toolConfig.functionCallingConfig.allowedFunctionNames` must be a non-empty array of function names",
            ));
        }
    };
    names
        .iter()
        .map(|name| match name.as_str() {
            Some(name) if offered.iter().any(|t| t.name == name) => Ok(name.to_owned()),
            Some(name) => Err(ApiError::bad_request(format!(
                "`toolConfig.functionCallingConfig.allowedFunctionNames` names `{name}`, which is not declared; help: declare it in `tools[].functionDeclarations`"
            ))),
            None => Err(ApiError::bad_request(
                "`toolConfig.functionCallingConfig.allowedFunctionNames` must hold strings",
            )),
        })
        .collect()
}

/// A `FunctionDeclaration`: its JSON Schema from `parametersJsonSchema` as it is, else from
/// `parameters` (Google's OpenAPI subset), else no arguments.
fn function_declaration(declaration: &Value, at: &str) -> Result<Tool, ApiError> {
    let name = (declaration.get("name").and_then(Value::as_str))
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("`{at}.name` is required")))?;
    let description = match declaration.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "`{at}.description` must be a string"
            )));
        }
    };
    let parameters = match (
        declaration
            .get("parametersJsonSchema")
            .filter(|v| !v.is_null()),
        declaration.get("parameters").filter(|v| !v.is_null()),
    ) {
        (Some(schema), _) => checked_schema(schema, &format!("{at}.parametersJsonSchema"))?.clone(),
        (None, Some(schema)) => json_schema(checked_schema(schema, &format!("{at}.parameters"))?),
        (None, None) => json!({"type": "object", "properties": {}}),
    };
    Ok(Tool {
        name: name.to_owned(),
        description,
        parameters,
    })
}

fn checked_schema<'a>(schema: &'a Value, at: &str) -> Result<&'a Value, ApiError> {
    if schema.is_object() {
        Ok(schema)
    } else {
        Err(ApiError::bad_request(format!(
            "`{at}` must be a schema object"
        )))
    }
}

/// Google's OpenAPI-subset `Schema` as the JSON Schema the engine's grammar reads: its
/// upper-case `type`s lowered, `nullable` folded into the type, the int64 bounds it writes as
/// strings made numbers, and its ordering hints dropped. Anything else is kept as it is.
fn json_schema(schema: &Value) -> Value {
    let Value::Object(fields) = schema else {
        return schema.clone();
    };
    let nullable = fields.get("nullable") == Some(&Value::Bool(true));
    let mut out = Map::new();
    for (key, value) in fields {
        let value = match (key.as_str(), value) {
            ("nullable" | "propertyOrdering", _) => continue,
            ("type", Value::String(kind)) => {
                let kind = kind.to_ascii_lowercase();
                if kind == "type_unspecified" {
                    continue;
                }
                if nullable {
                    json!([kind, "null"])
                } else {
                    json!(kind)
                }
            }
            // `format: enum` marks a string enum in OpenAPI; JSON Schema has `enum` alone.
            ("format", Value::String(format)) if format == "enum" => continue,
            ("properties" | "$defs" | "definitions", Value::Object(members)) => Value::Object(
                (members.iter())
                    .map(|(name, member)| (name.clone(), json_schema(member)))
                    .collect(),
            ),
            ("items" | "additionalProperties" | "not", member @ Value::Object(_)) => {
                json_schema(member)
            }
            ("anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(members)) => {
                Value::Array(members.iter().map(json_schema).collect())
            }
            (
                "minItems" | "maxItems" | "minLength" | "maxLength" | "minProperties"
                | "maxProperties",
                Value::String(n),
            ) => n
                .parse::<u64>()
                .map_or_else(|_| value.clone(), |n| json!(n)),
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    Value::Object(out)
}

/// What `generationConfig` asks of the engine.
struct GenerationConfig {
    sampling: Sampling,
    max_tokens: Option<u32>,
    stop: Vec<String>,
    format: Option<Format>,
}

impl GenerationConfig {
    fn of(request: &Value) -> Result<GenerationConfig, ApiError> {
        let empty = Value::Object(Map::new());
        let config = match request.get("generationConfig") {
            None | Some(Value::Null) => &empty,
            Some(config @ Value::Object(_)) => config,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "`generationConfig` must be an object",
                ));
            }
        };
        let number = |key: &str| -> Result<Option<f64>, ApiError> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    ApiError::bad_request(format!("`generationConfig.{key}` must be a number"))
                }),
            }
        };
        if let Some(n) = number("candidateCount")?
            && n != 1.0
        {
            return Err(ApiError::bad_request(format!(
                "`generationConfig.candidateCount` must be 1, not {n}; help: ask again for another candidate"
            )));
        }
        let float = |key: &str| number(key).map(|n| n.map(|n| n as f32));
        let sampling = Sampling {
            temperature: float("temperature")?,
            top_p: float("topP")?,
            top_k: number("topK")?.map(|n| n as i32),
            seed: number("seed")?.map(|n| n as i64 as u32),
            presence_penalty: float("presencePenalty")?,
            frequency_penalty: float("frequencyPenalty")?,
            ..Sampling::default()
        };
        let stop = match config.get("stopSequences") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "`generationConfig.stopSequences` must be an array of strings",
                ));
            }
        };
        Ok(GenerationConfig {
            sampling,
            max_tokens: token_limit(config, "maxOutputTokens")?,
            stop,
            format: response_format(config)?,
        })
    }
}

/// `responseMimeType` with `responseJsonSchema` (JSON Schema) or `responseSchema` (Google's
/// OpenAPI subset) through the engine's grammar.
fn response_format(config: &Value) -> Result<Option<Format>, ApiError> {
    let schema = match (
        config.get("responseJsonSchema").filter(|v| !v.is_null()),
        config.get("responseSchema").filter(|v| !v.is_null()),
    ) {
        (Some(schema), _) => {
            Some(checked_schema(schema, "generationConfig.responseJsonSchema")?.clone())
        }
        (None, Some(schema)) => Some(json_schema(checked_schema(
            schema,
            "generationConfig.responseSchema",
        )?)),
        (None, None) => None,
    };
    let mime = match config.get("responseMimeType") {
        None | Some(Value::Null) => "text/plain",
        Some(Value::String(mime)) => mime.as_str(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`generationConfig.responseMimeType` must be a string",
            ));
        }
    };
    match (mime, schema) {
        ("application/json", Some(schema)) => Ok(Some(Format::JsonSchema { schema })),
        ("application/json", None) => Ok(Some(Format::JsonObject)),
        ("text/plain" | "", None) => Ok(None),
        ("text/plain" | "", Some(_)) => Err(ApiError::bad_request(
            "A response schema needs `generationConfig.responseMimeType` `application/json`; help: set it, or leave the schema out",
        )),
        (other, _) => Err(ApiError::bad_request(format!(
            "`generationConfig.responseMimeType` `{other}` is not supported; help: use `text/plain`, or `application/json` with an optional `responseJsonSchema` or `responseSchema`"
        ))),
    }
}

/// A `GenerateContentResponse`, whole or as one per streamed piece: one candidate, its text
/// and function calls as parts, and on the last the finish reason and the counts.
///
/// Function calls carry no `id`: the Gemini API leaves it out, and the clients then make ids
/// of their own, unique across turns, which the driver's per-reply numbering is not.
pub(crate) struct GeminiEncoder {
    /// The model as the client named it, echoed as `modelVersion`.
    model: String,
    /// The `responseId` every frame of one answer shares.
    id: String,
}

impl GeminiEncoder {
    fn response(&self, parts: Vec<Value>, end: Option<&End>) -> Value {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        let mut response = json!({"modelVersion": self.model, "responseId": self.id});
        if let Some(end) = end {
            candidate["finishReason"] = json!(match end.reason {
                FinishReason::Stop => "STOP",
                FinishReason::Length => "MAX_TOKENS",
            });
            response["usageMetadata"] = usage_metadata(&end.usage);
        }
        response["candidates"] = json!([candidate]);
        response
    }
}

/// Text first, then each call; an answer with neither still has one (empty) text part, as
/// clients read `parts` without checking it is there.
fn parts_of(text: &str, calls: &[ToolCall]) -> Vec<Value> {
    let mut parts = Vec::new();
    if !text.is_empty() || calls.is_empty() {
        parts.push(json!({"text": text}));
    }
    for call in calls {
        let args = (serde_json::from_str::<Value>(&call.arguments).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        parts.push(json!({"functionCall": {"name": call.name, "args": args}}));
    }
    parts
}

fn usage_metadata(usage: &Usage) -> Value {
    json!({
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": usage.completion_tokens,
        "totalTokenCount": usage.prompt_tokens + usage.completion_tokens,
        "cachedContentTokenCount": usage.cached_tokens,
    })
}

impl Encoder for GeminiEncoder {
    const API: Api = Api::Gemini;
    const FRAMING: Framing = Framing::PlainSse;
    const CALL_PREFIX: &'static str = "call_";

    fn whole(&self, end: &End) -> Value {
        self.response(parts_of(&end.text, &end.calls), Some(end))
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        vec![self.response(vec![json!({"text": text})], None)]
    }

    /// A response with an empty text part: the SDKs read every SSE line as JSON, so a
    /// comment would fail them, while an empty text adds nothing to the reply (google-genai
    /// joins it in, Gemini CLI leaves such a part out of the turn it keeps).
    fn keep_alive() -> Option<Bytes> {
        Some(Bytes::from_static(KEEP_ALIVE))
    }

    /// One last response: what was held back, the calls, the finish reason and the counts.
    fn finish(&mut self, end: &End) -> Vec<Value> {
        vec![self.whole(end)]
    }
}

/// `countTokens`: the request's `contents`, or its whole `generateContentRequest` (system
/// instruction and tools count too), through the chat template as a generation renders it.
async fn count_tokens(shared: &Shared, body: Body, model: &str) -> Response {
    answer_for(shared, body, Api::Gemini, Some(model), async |call| {
        let request = match call.body.get("generateContentRequest") {
            None | Some(Value::Null) => &call.body,
            Some(request @ Value::Object(_)) => request,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "`generateContentRequest` must be an object",
                ));
            }
        };
        let (input, _) = input(request)?;
        let lease = call.lease(shared, Mode::Chat).await?;
        let counted = (lease.client.tokenize(&TokenizeRequest { input }).await)
            .map_err(|e| from_client(&e))?;
        let tokens = counted.tokens;
        let details = json!([{"modality": "TEXT", "tokenCount": tokens}]);
        Ok(
            axum::Json(json!({"totalTokens": tokens, "promptTokensDetails": details}))
                .into_response(),
        )
    })
    .await
}

/// `embedContent` (one `content`) and `batchEmbedContents` (`requests`, each for the model in
/// the path).
async fn embed_contents(shared: &Shared, body: Body, model: &str, batch: bool) -> Response {
    answer_for(shared, body, Api::Gemini, Some(model), async |call| {
        let requests = if batch {
            match call.body.get("requests") {
                Some(Value::Array(requests)) if !requests.is_empty() => requests.iter().collect(),
                _ => {
                    return Err(ApiError::bad_request(
                        "`requests` is required: a non-empty array of `{\"content\": {\"parts\": [{\"text\": ...}]}}`",
                    ));
                }
            }
        } else {
            vec![&call.body]
        };
        let mut texts = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            let at = if batch {
                format!("requests[{i}]")
            } else {
                String::new()
            };
            texts.push(embed_text(request, &at, &call.model)?);
        }
        let dimensions = requests
            .iter()
            .map(|r| r.get("outputDimensionality").filter(|v| !v.is_null()))
            .collect::<Vec<_>>();
        let (vectors, _) = embed(shared, &call, texts).await?;
        for (vector, asked) in vectors.iter().zip(dimensions) {
            if let Some(asked) = asked
                && asked.as_u64() != Some(vector.len() as u64)
            {
                return Err(ApiError::bad_request(format!(
                    "`outputDimensionality` {asked} is not this model's; help: leave it out, or ask for {}",
                    vector.len()
                )));
            }
        }
        let mut embeddings = vectors.into_iter().map(|v| json!({"values": v}));
        let body = if batch {
            json!({"embeddings": embeddings.collect::<Vec<_>>()})
        } else {
            json!({"embedding": embeddings.next().unwrap_or_else(|| json!({"values": []}))})
        };
        Ok(axum::Json(body).into_response())
    })
    .await
}

/// The text of one embed request: its content's text parts, for the model of the path.
fn embed_text(request: &Value, at: &str, model: &str) -> Result<String, ApiError> {
    let field = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    if let Some(named) = request.get("model").and_then(Value::as_str) {
        let named = named.strip_prefix("models/").unwrap_or(named);
        if !named.is_empty() && named != model {
            return Err(ApiError::bad_request(format!(
                "`{}` names `{named}` but the path names `{model}`; help: embed with one model per request",
                field("model")
            )));
        }
    }
    let content = request
        .get("content")
        .filter(|c| c.is_object())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{}` is required: `{{\"parts\": [{{\"text\": ...}}]}}`",
                field("content")
            ))
        })?;
    Ok(texts(content, &field("content"))?.join("\n"))
}

#[cfg(test)]
mod tests {
    use aistack_engine_api::Event;

    use super::*;
    use crate::driver::replay::{USAGE, replay, text_and_a_call, weather};

    fn call(body: Value) -> Call {
        Call {
            body,
            model: "chat".into(),
        }
    }

    fn encoder() -> GeminiEncoder {
        GeminiEncoder {
            model: "chat".into(),
            id: "r1".into(),
        }
    }

    fn error(body: Value) -> String {
        match decode(&call(body), false) {
            Ok(_) => panic!("decoded"),
            Err(e) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
                e.message
            }
        }
    }

    #[test]
    fn paths_name_a_model_and_a_method_after_the_last_colon() {
        let post = |path| target(&Method::POST, path);
        assert_eq!(
            post("/v1beta/models/chat:generateContent"),
            Some(("chat", Some("generateContent")))
        );
        assert_eq!(
            post("/v1beta/models/models/chat:countTokens"),
            Some(("chat", Some("countTokens")))
        );
        assert_eq!(
            post("/v1beta/models/chat:latest:streamGenerateContent"),
            Some(("chat:latest", Some("streamGenerateContent")))
        );
        assert_eq!(post("/v1beta/models/chat"), Some(("chat", None)));
        assert_eq!(
            target(&Method::GET, "/v1beta/models/chat:latest"),
            Some(("chat:latest", None)),
            "a model's own page has no method"
        );
        assert_eq!(
            post("/v1/models/chat:generateContent"),
            Some(("chat", Some("generateContent")))
        );
        assert_eq!(post("/engines/v1/models/chat:generateContent"), None);
    }

    #[test]
    fn on_v1_models_only_posts_and_googles_clients_are_gemini() {
        let asks = |method: Method, uri: &str, header: Option<&str>| {
            let mut request = Request::builder().method(method).uri(uri);
            if let Some(name) = header {
                request = request.header(name, "x");
            }
            asks(&request.body(Body::empty()).expect("a request"))
        };
        assert!(asks(Method::GET, "/v1beta/models", None));
        assert!(asks(Method::POST, "/v1/models/chat:generateContent", None));
        assert!(asks(Method::GET, "/v1/models", Some("x-goog-api-client")));
        assert!(asks(Method::GET, "/v1/models/chat", Some("x-goog-api-key")));
        assert!(asks(Method::GET, "/v1/models?key=k", None));
        assert!(!asks(Method::GET, "/v1/models", None));
        assert!(!asks(Method::GET, "/v1/models/chat", Some("authorization")));
        assert!(!asks(
            Method::POST,
            "/v1/chat/completions",
            Some("x-goog-api-client")
        ));
    }

    #[test]
    fn query_parameters_are_form_decoded() {
        let query = Some("alt=sse&key=a%2Bb+c%3D&empty&bad=%zz%4");
        assert_eq!(query_param(query, "alt").as_deref(), Some("sse"));
        assert_eq!(query_param(query, "key").as_deref(), Some("a+b c="));
        assert_eq!(query_param(query, "empty").as_deref(), Some(""));
        assert_eq!(query_param(query, "bad").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(query_param(None, "alt"), None);
        assert_eq!(
            query_param(Some("k=%C3%A9%E2"), "k").as_deref(),
            Some("é\u{fffd}")
        );
    }

    #[test]
    fn contents_become_a_chat_with_calls_and_their_responses() {
        let generation = decode(
            &call(json!({
                "systemInstruction": {"parts": [{"text": "Be brief."}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "Weather in Paris?"}, {"inlineData": {"mimeType": "image/png", "data": "AA=="}}, {"text": "And Oslo?"}]},
                    {"role": "model", "parts": [{"text": "Thinking", "thought": true}, {"text": "Let me "}]},
                    {"role": "model", "parts": [{"text": ""}]},
                    {"role": "model", "parts": [{"text": "check."},
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                        {"functionCall": {"id": "c2", "name": "get_weather", "args": {"city": "Oslo"}}}]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"output": "Sunny"}}},
                        {"functionResponse": {"id": "c2", "name": "get_weather", "response": {"output": "Snow"}}},
                        {"text": "Thanks"}]},
                    {"role": "model", "parts": []},
                ],
                "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
                "someFutureField": true,
            })),
            true,
        )
        .unwrap();
        assert!(generation.stream);
        let Input::Chat { messages, tools } = generation.request.input else {
            panic!("a chat");
        };
        assert!(tools.is_empty());
        let call = |id: &str, city: &str| ToolCall {
            id: id.into(),
            name: "get_weather".into(),
            arguments: format!(r#"{{"city":"{city}"}}"#),
        };
        let mut model = Message::new("assistant", "Let me check.");
        model.tool_calls = vec![call("", "Paris"), call("c2", "Oslo")];
        let result = |id: Option<&str>, output: &str| Message {
            name: Some("get_weather".into()),
            tool_call_id: id.map(str::to_owned),
            ..Message::new("tool", format!(r#"{{"output":"{output}"}}"#))
        };
        assert_eq!(
            messages,
            vec![
                Message::new("system", "Be brief."),
                Message::new("user", "Weather in Paris?\nAnd Oslo?"),
                model,
                result(None, "Sunny"),
                result(Some("c2"), "Snow"),
                Message::new("user", "Thanks"),
            ]
        );
    }

    #[test]
    fn generation_config_maps_to_sampling_limits_and_stops() {
        let generation = decode(
            &call(json!({
                "contents": [{"parts": [{"text": "Hi"}]}],
                "generationConfig": {"temperature": 0, "topP": 0.5, "topK": 7, "seed": 42,
                    "maxOutputTokens": 12, "stopSequences": ["\n\n"], "candidateCount": 1,
                    "presencePenalty": 0.5, "thinkingConfig": {"thinkingBudget": 0}},
            })),
            false,
        )
        .unwrap();
        let request = generation.request;
        assert_eq!(
            request.sampling,
            Sampling {
                temperature: Some(0.0),
                top_p: Some(0.5),
                top_k: Some(7),
                seed: Some(42),
                presence_penalty: Some(0.5),
                ..Sampling::default()
            }
        );
        assert_eq!(request.max_tokens, Some(12));
        assert_eq!(request.stop, vec!["\n\n".to_owned()]);
        assert_eq!(request.format, None);
        assert!(!generation.stream);
    }

    #[test]
    fn function_declarations_are_lowered_to_json_schema_and_modes_constrain() {
        let tools = json!([
            {"googleSearch": {}},
            {"functionDeclarations": [
                {"name": "get_weather", "description": "Weather in a city",
                 "parameters": {"type": "OBJECT", "propertyOrdering": ["city"], "required": ["city"], "properties": {
                    "city": {"type": "STRING", "description": "The city"},
                    "days": {"type": "INTEGER", "nullable": true},
                    "units": {"type": "STRING", "format": "enum", "enum": ["C", "F"]},
                    "tags": {"type": "ARRAY", "minItems": "1", "items": {"type": "STRING"}}}}},
                {"name": "now"},
                {"name": "search", "parametersJsonSchema": {"type": "object", "properties": {"q": {"type": "string"}}}},
            ]},
        ]);
        let decoded = |config: Value| {
            decode(
                &call(json!({"contents": [{"parts": [{"text": "Hi"}]}], "tools": tools, "toolConfig": config})),
                false,
            )
            .unwrap()
            .request
        };
        let request = decoded(Value::Null);
        let Input::Chat { tools: offered, .. } = &request.input else {
            panic!("a chat");
        };
        assert_eq!(
            offered[0].parameters,
            json!({"type": "object", "required": ["city"], "properties": {
                "city": {"type": "string", "description": "The city"},
                "days": {"type": ["integer", "null"]},
                "units": {"type": "string", "enum": ["C", "F"]},
                "tags": {"type": "array", "minItems": 1, "items": {"type": "string"}}}})
        );
        assert_eq!(offered[0].description.as_deref(), Some("Weather in a city"));
        assert_eq!(
            offered[1].parameters,
            json!({"type": "object", "properties": {}})
        );
        assert_eq!(
            offered[2].parameters,
            json!({"type": "object", "properties": {"q": {"type": "string"}}})
        );
        assert_eq!(request.format, None, "AUTO lets the model choose");
        let names = |names: &[&str]| {
            Some(Format::ToolCall {
                names: names.iter().map(|n| (*n).to_owned()).collect(),
            })
        };
        let any = json!({"functionCallingConfig": {"mode": "ANY"}});
        assert_eq!(
            decoded(any).format,
            names(&["get_weather", "now", "search"])
        );
        let allowed =
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["now"]}});
        assert_eq!(decoded(allowed).format, names(&["now"]));
        let none = decoded(json!({"functionCallingConfig": {"mode": "NONE"}}));
        assert!(matches!(&none.input, Input::Chat { tools, .. } if tools.is_empty()));
        assert_eq!(none.format, None);
    }

    #[test]
    fn json_responses_go_through_the_grammar() {
        let format = |config: Value| {
            decode(
                &call(
                    json!({"contents": [{"parts": [{"text": "Hi"}]}], "generationConfig": config}),
                ),
                false,
            )
            .unwrap()
            .request
            .format
        };
        assert_eq!(
            format(json!({"responseMimeType": "application/json"})),
            Some(Format::JsonObject)
        );
        assert_eq!(
            format(json!({"responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT", "properties": {"n": {"type": "NUMBER"}}}})),
            Some(Format::JsonSchema {
                schema: json!({"type": "object", "properties": {"n": {"type": "number"}}})
            })
        );
        let schema = json!({"type": "array", "items": {"type": "integer"}});
        assert_eq!(
            format(json!({"responseMimeType": "application/json", "responseJsonSchema": schema})),
            Some(Format::JsonSchema { schema })
        );
        assert_eq!(format(json!({"responseMimeType": "text/plain"})), None);
    }

    #[test]
    fn malformed_requests_are_refused_naming_the_field() {
        let hi = json!([{"parts": [{"text": "Hi"}]}]);
        let messages: Vec<String> = [
            json!([]),
            json!({}),
            json!({"contents": []}),
            json!({"contents": "Hi"}),
            json!({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}),
            json!({"contents": [{"parts": "Hi"}]}),
            json!({"contents": [{"parts": ["Hi"]}]}),
            json!({"contents": [{"parts": [{"text": 5}]}]}),
            json!({"contents": [{"role": "model", "parts": [{"functionCall": {"args": {}}}]}]}),
            json!({"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f", "args": "{}"}}]}]}),
            json!({"contents": [{"parts": [{"functionResponse": {"response": {}}}]}]}),
            json!({"contents": hi, "systemInstruction": 3}),
            json!({"contents": hi, "tools": {}}),
            json!({"contents": hi, "tools": [{"functionDeclarations": [{"description": "x"}]}]}),
            json!({"contents": hi, "tools": [{"functionDeclarations": [{"name": "f", "parameters": "object"}]}]}),
            json!({"contents": hi, "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}),
            json!({"contents": hi, "tools": [{"functionDeclarations": [{"name": "f"}]}],
                   "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["g"]}}}),
            json!({"contents": hi, "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}}),
            json!({"contents": hi, "generationConfig": []}),
            json!({"contents": hi, "generationConfig": {"candidateCount": 2}}),
            json!({"contents": hi, "generationConfig": {"temperature": "hot"}}),
            json!({"contents": hi, "generationConfig": {"maxOutputTokens": 0}}),
            json!({"contents": hi, "generationConfig": {"stopSequences": "\n"}}),
            json!({"contents": hi, "generationConfig": {"responseSchema": {"type": "OBJECT"}}}),
            json!({"contents": hi, "generationConfig": {"responseMimeType": "text/x.enum"}}),
            json!({"contents": hi, "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": true}}),
        ]
        .into_iter()
        .map(error)
        .collect();
        insta::assert_snapshot!(messages.join("\n"));
    }

    #[test]
    fn a_stream_sends_each_piece_then_the_calls_the_reason_and_the_counts() {
        assert_eq!(
            text_and_a_call(encoder()),
            r#"data: {"candidates":[{"content":{"parts":[{"text":"Let me check.\n"}],"role":"model"},"index":0}],"modelVersion":"chat","responseId":"r1"}

data: {"candidates":[{"content":{"parts":[{"text":"\n Done."},{"functionCall":{"args":{"city":"Paris"},"name":"get_weather"}}],"role":"model"},"finishReason":"STOP","index":0}],"modelVersion":"chat","responseId":"r1","usageMetadata":{"cachedContentTokenCount":4,"candidatesTokenCount":3,"promptTokenCount":10,"totalTokenCount":13}}

"#
        );
    }

    #[test]
    fn a_stream_cut_at_the_limit_ends_with_max_tokens_and_no_trailer() {
        let events = vec![
            Event::Text { text: "Hi".into() },
            Event::Done {
                finish_reason: FinishReason::Length,
                usage: USAGE,
            },
        ];
        assert_eq!(
            replay(encoder(), Vec::new(), events),
            r#"data: {"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}],"modelVersion":"chat","responseId":"r1"}

data: {"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"MAX_TOKENS","index":0}],"modelVersion":"chat","responseId":"r1","usageMetadata":{"cachedContentTokenCount":4,"candidatesTokenCount":3,"promptTokenCount":10,"totalTokenCount":13}}

"#
        );
    }

    #[test]
    fn a_quiet_stream_is_kept_alive_with_an_empty_text_not_a_comment() {
        let ping = GeminiEncoder::keep_alive().expect("a Gemini stream is kept alive");
        assert_eq!(
            ping,
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"\"}]},\"index\":0}]}\n\n"
        );
        let payload = ping.strip_prefix(b"data: ").expect("a data frame");
        let payload: Value = serde_json::from_slice(payload).expect("JSON, as clients read it");
        assert_eq!(
            payload["candidates"][0]["content"]["parts"],
            json!([{"text": ""}])
        );
    }

    #[test]
    fn a_failure_mid_stream_is_a_google_error_frame() {
        let events = vec![Event::Error {
            error: aistack_engine_api::ErrorBody::new(
                aistack_engine_api::ErrorKind::Internal,
                "The engine failed",
            ),
        }];
        assert_eq!(
            replay(encoder(), weather(), events),
            "data: {\"error\":{\"code\":500,\"message\":\"The engine failed\",\"status\":\"INTERNAL\"}}\n\n"
        );
    }

    #[test]
    fn a_whole_answer_holds_text_or_calls() {
        let end = |text: &str, calls: Vec<ToolCall>| End {
            text: text.into(),
            calls,
            reason: FinishReason::Stop,
            usage: USAGE,
            generated: true,
        };
        assert_eq!(
            encoder().whole(&end("Paris.", Vec::new())).to_string(),
            r#"{"candidates":[{"content":{"parts":[{"text":"Paris."}],"role":"model"},"finishReason":"STOP","index":0}],"modelVersion":"chat","responseId":"r1","usageMetadata":{"cachedContentTokenCount":4,"candidatesTokenCount":3,"promptTokenCount":10,"totalTokenCount":13}}"#
        );
        let call = ToolCall {
            id: "call_0".into(),
            name: "now".into(),
            arguments: "not json".into(),
        };
        assert_eq!(
            encoder().whole(&end("", vec![call]))["candidates"][0]["content"]["parts"],
            json!([{"functionCall": {"name": "now", "args": {}}}])
        );
    }

    #[test]
    fn errors_take_googles_shape() {
        let body = |status: u16| {
            ApiError::new(StatusCode::from_u16(status).unwrap(), "Why").body(Api::Gemini)
        };
        assert_eq!(
            body(404),
            json!({"error": {"code": 404, "message": "Why", "status": "NOT_FOUND"}})
        );
        let statuses: Vec<Value> = [400, 401, 403, 413, 429, 500, 503]
            .into_iter()
            .map(|s| body(s)["error"]["status"].clone())
            .collect();
        assert_eq!(
            statuses,
            json!([
                "INVALID_ARGUMENT",
                "UNAUTHENTICATED",
                "PERMISSION_DENIED",
                "INVALID_ARGUMENT",
                "RESOURCE_EXHAUSTED",
                "INTERNAL",
                "UNAVAILABLE"
            ])
            .as_array()
            .unwrap()
            .clone()
        );
    }
}
