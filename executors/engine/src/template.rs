//! Chat templates rendered with a real Jinja engine (minijinja), as Hugging Face's
//! `transformers` renders them: llama-cpp-2's `apply_chat_template` uses llama.cpp's built-in
//! approximations, which drop e.g. SmolLM2's default system prompt.

use aistack_engine_api::tools::{CLOSE, OPEN, system_prompt};
use aistack_engine_api::{Message, Tool};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::EngineError;

/// One chat message as a template sees it (`message['role']`, `message['content']`, and for
/// tool-aware templates `message['tool_calls']` in Hugging Face's shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
    /// `[{"type": "function", "function": {"name", "arguments": {...}}}]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
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
    if supports_tools(template) {
        let chat: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
                tool_calls: m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let arguments = serde_json::from_str::<serde_json::Value>(&c.arguments)
                            .unwrap_or_else(|_| serde_json::Value::String(c.arguments.clone()));
                        Value::from_serialize(serde_json::json!({
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": arguments},
                        }))
                    })
                    .collect(),
                tool_call_id: m.tool_call_id.clone(),
                name: m.name.clone(),
            })
            .collect();
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                Value::from_serialize(serde_json::json!({
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }))
            })
            .collect();
        return render(
            template,
            &chat,
            (!tools.is_empty()).then_some(&tools[..]),
            true,
            tokens,
        );
    }
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
            let arguments = serde_json::from_str::<serde_json::Value>(&call.arguments)
                .unwrap_or_else(|_| serde_json::Value::String(call.arguments.clone()));
            let body = serde_json::json!({"name": call.name, "arguments": arguments});
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
    render(template, &chat, None, true, tokens)
}

/// The special tokens a template may refer to (`bos_token`, `eos_token`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// The model's beginning-of-sequence token text.
    pub bos: String,
    /// The model's end-of-sequence token text.
    pub eos: String,
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Renders `template` for `messages` the way `transformers`' `apply_chat_template` does
/// (`trim_blocks`, `lstrip_blocks`, Python string and dict methods, `raise_exception`).
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
    render(template, messages, None, add_generation_prompt, tokens)
}

fn render(
    template: &str,
    messages: &[ChatMessage],
    tools: Option<&[Value]>,
    add_generation_prompt: bool,
    tokens: &SpecialTokens,
) -> Result<String, EngineError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_template("chat", template)
        .map_err(EngineError::Template)?;
    let tmpl = env.get_template("chat").map_err(EngineError::Template)?;
    tmpl.render(minijinja::context! {
        messages => messages,
        tools => tools,
        add_generation_prompt => add_generation_prompt,
        bos_token => &tokens.bos,
        eos_token => &tokens.eos,
    })
    .map_err(EngineError::Template)
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
