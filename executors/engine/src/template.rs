//! Chat templates rendered with a real Jinja engine (minijinja), as Hugging Face's
//! `transformers` renders them: llama-cpp-2's `apply_chat_template` uses llama.cpp's built-in
//! approximations, which drop e.g. SmolLM2's default system prompt.

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::EngineError;

/// One chat message as a template sees it (`message['role']`, `message['content']`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
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
