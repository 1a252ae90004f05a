//! Chat templates rendered with a real Jinja engine (minijinja), as Hugging Face's
//! `transformers` renders them: llama-cpp-2's `apply_chat_template` uses llama.cpp's built-in
//! approximations, which drop e.g. SmolLM2's default system prompt.

use aistack_engine_api::tools::{CLOSE, OPEN, system_prompt};
use aistack_engine_api::{Message, Tool};
use minijinja::{Environment, Error, ErrorKind, Value};

use crate::jinja;
use serde::Serialize;

use crate::EngineError;

/// One chat message as a template sees it (`message['role']`, `message['content']`, and for
/// tool-aware templates `message['tool_calls']` in Hugging Face's shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text: empty, never `None`, for an assistant turn that only calls tools
    /// (Qwen 3, gpt-oss, Devstral and Granite templates fail on `None` content in
    /// `transformers` too, and GLM's and MiniMax's print it as `None`).
    pub content: String,
    /// `[{"id", "type": "function", "function": {"name", "arguments": {...}}}]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// For a `tool` message: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a `tool` message: the tool's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// ChatML, for models whose GGUF carries no template.
const FALLBACK_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Whether a template renders `tools` itself.
#[must_use]
pub fn supports_tools(template: &str) -> bool {
    template.contains("tools")
}

/// Renders a chat for the model: tools go to templates that know them, and for the rest into
/// the system prompt (with calls and results in the `<tool_call>` syntax as text).
///
/// # Errors
///
/// [`EngineError::Template`].
pub fn render_messages(
    template: Option<&str>,
    messages: &[Message],
    tools: &[Tool],
    tokens: &SpecialTokens,
) -> Result<String, EngineError> {
    let template = template.unwrap_or(FALLBACK_TEMPLATE);
    ChatContext::for_chat(template, messages, tools, tokens).render(template)
}

/// The special tokens a template may refer to (`bos_token`, `eos_token`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// The model's beginning-of-sequence token text.
    pub bos: String,
    /// The model's end-of-sequence token text.
    pub eos: String,
}

/// The variables a chat template is rendered with, named and shaped as `transformers`'
/// `apply_chat_template` passes them (so a template written for Hugging Face reads them as
/// it expects, and a test can hand the same context to Python's `jinja2`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatContext {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// `[{"type": "function", "function": {"name", "description", "parameters"}}]`, or `None`
    /// (not absent: templates test `tools is not none`) without tools.
    pub tools: Option<Vec<serde_json::Value>>,
    /// Whether the prompt ends with the opening of an assistant turn.
    pub add_generation_prompt: bool,
    /// The model's beginning-of-sequence token text.
    pub bos_token: String,
    /// The model's end-of-sequence token text.
    pub eos_token: String,
}

impl ChatContext {
    /// The context for generating the next turn of `messages`: with `tools` as such when
    /// `template` renders tools, else with the tools described in the system prompt and calls
    /// and results written as text in the `<tool_call>` syntax.
    #[must_use]
    pub fn for_chat(
        template: &str,
        messages: &[Message],
        tools: &[Tool],
        tokens: &SpecialTokens,
    ) -> Self {
        let (messages, tools) = if supports_tools(template) {
            let tools: Vec<serde_json::Value> = tools.iter().map(tool_schema).collect();
            (
                messages.iter().map(structured).collect(),
                (!tools.is_empty()).then_some(tools),
            )
        } else {
            (as_text(messages, tools), None)
        };
        Self {
            messages,
            tools,
            add_generation_prompt: true,
            bos_token: tokens.bos.clone(),
            eos_token: tokens.eos.clone(),
        }
    }

    /// Renders `template` with this context the way `transformers` does: `trim_blocks`,
    /// `lstrip_blocks`, loop controls, Python's string and dict methods, and its globals and
    /// filters (`raise_exception`, `strftime_now`, a `tojson` that writes what Python's
    /// `json.dumps` writes).
    ///
    /// # Errors
    ///
    /// [`EngineError::Template`] when the template does not parse, or raises while rendering.
    pub fn render(&self, template: &str) -> Result<String, EngineError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", jinja::strftime_now);
        env.add_filter("tojson", jinja::tojson);
        env.add_test("iterable", jinja::is_iterable);
        env.add_filter("string", jinja::string);
        env.set_formatter(jinja::format);
        let source = jinja::without_generation_tags(template);
        env.add_template("chat", &source)
            .map_err(EngineError::Template)?;
        let tmpl = env.get_template("chat").map_err(EngineError::Template)?;
        tmpl.render(Value::from_serialize(self))
            .map_err(EngineError::Template)
    }
}

/// A message with its calls as structured `tool_calls`, for a template that renders them.
fn structured(m: &Message) -> ChatMessage {
    ChatMessage {
        role: m.role.clone(),
        content: m.content.clone(),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": arguments(&c.arguments)},
                })
            })
            .collect(),
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
    }
}

fn tool_schema(t: &Tool) -> serde_json::Value {
    serde_json::json!({
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
    })
}

/// A call's arguments as the object Hugging Face templates expect, or as the text they were
/// when they are not JSON.
fn arguments(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// The chat for a template that knows no tools: the tools described in the system prompt,
/// calls and results as text in the `<tool_call>` syntax.
fn as_text(messages: &[Message], tools: &[Tool]) -> Vec<ChatMessage> {
    let mut chat: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    for m in messages {
        let mut content = m.content.clone();
        let role = if m.role == "tool" {
            content = format!("<tool_response>\n{content}\n</tool_response>");
            "user".to_owned()
        } else {
            m.role.clone()
        };
        for call in &m.tool_calls {
            let body =
                serde_json::json!({"name": call.name, "arguments": arguments(&call.arguments)});
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(&format!("{OPEN}\n{body}\n{CLOSE}"));
        }
        chat.push(ChatMessage::new(role, content));
    }
    if !tools.is_empty() {
        let instructions = system_prompt(tools);
        match chat.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{instructions}", first.content);
            }
            _ => chat.insert(0, ChatMessage::new("system", instructions)),
        }
    }
    chat
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Renders `template` for `messages` with no tools (see [`ChatContext::render`]).
///
/// # Errors
///
/// [`EngineError::Template`] when the template does not parse, or raises while rendering.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    tokens: &SpecialTokens,
) -> Result<String, EngineError> {
    ChatContext {
        messages: messages.to_vec(),
        tools: None,
        add_generation_prompt,
        bos_token: tokens.bos.clone(),
        eos_token: tokens.eos.clone(),
    }
    .render(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_exception_is_an_error() {
        let template =
            "{% if messages[0].role != 'user' %}{{ raise_exception('Need a user') }}{% endif %}";
        let err = render_chat(
            template,
            &[ChatMessage::new("assistant", "hi")],
            true,
            &SpecialTokens::default(),
        )
        .unwrap_err();
        assert!(matches!(err, EngineError::Template(_)));
        assert!(format!("{:#}", std::error::Error::source(&err).unwrap()).contains("Need a user"));
    }

    #[test]
    fn python_methods_and_blocks() {
        let template = "{% for m in messages %}\n  {% if m.role == 'user' %}{{ m.content.strip().upper() }}{% endif %}|{% endfor %}\n{{ bos_token }}";
        let out = render_chat(
            template,
            &[ChatMessage::new("user", "  hi ")],
            false,
            &SpecialTokens {
                bos: "<s>".into(),
                eos: "</s>".into(),
            },
        )
        .unwrap();
        assert_eq!(out, "HI|<s>");
    }
}
