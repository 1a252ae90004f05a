//! The tool-call syntax the engine asks a model to use, and parsing it back into structured
//! calls. It is the Hermes syntax most open chat templates already teach:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! Templates that render `tools` themselves get the tools as they are; for the rest the engine
//! adds [`system_prompt`] to the first system message. A model that must call a tool
//! (`tool_choice: required` or a named function) is held to the syntax by a grammar built from
//! [`call_schema`].

use serde_json::{Value, json};

use crate::protocol::{Tool, ToolCall};

/// Opens a call.
pub const OPEN: &str = "<tool_call>";
/// Closes a call.
pub const CLOSE: &str = "</tool_call>";

/// Instructions describing `tools` and the call syntax, for templates that do not render
/// tools themselves.
pub fn system_prompt(tools: &[Tool]) -> String {
    let mut out = String::from(
        "You may call one or more functions to assist with the user query. The functions, as \
         JSON Schema, are:\n<tools>\n",
    );
    for tool in tools {
        let mut function = json!({ "name": tool.name, "parameters": tool.parameters });
        if let Some(description) = &tool.description {
            function["description"] = Value::String(description.clone());
        }
        out.push_str(&json!({ "type": "function", "function": function }).to_string());
        out.push('\n');
    }
    out.push_str(
        "</tools>\nTo call a function, reply with a JSON object with its name and arguments \
         between <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, \
         \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
}

/// The JSON Schema of one call's body (`{"name": ..., "arguments": {...}}`) restricted to the
/// tools named in `names`.
pub fn call_schema(tools: &[Tool], names: &[String]) -> Value {
    let variants: Vec<Value> = tools
        .iter()
        .filter(|t| names.contains(&t.name))
        .map(|t| {
            json!({
                "type": "object",
                "properties": {
                    "name": { "const": t.name },
                    "arguments": t.parameters,
                },
                "required": ["name", "arguments"],
            })
        })
        .collect();
    match <[Value; 1]>::try_from(variants) {
        Ok([one]) => one,
        Err(variants) => json!({ "oneOf": variants }),
    }
}

/// Text and tool calls of a finished reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// The text outside any call, trimmed.
    pub content: String,
    /// The calls, in order.
    pub calls: Vec<ToolCall>,
}

/// Splits a finished reply into text and calls. A reply that is nothing but one JSON call of
/// an offered tool, bare or in a code fence, counts as a call too (small models often drop
/// the tags: Qwen2.5-Coder 0.5B answers Codex with a fenced call). A block that does not
/// parse stays in the text, so nothing the model said is lost.
pub fn parse(text: &str, tools: &[Tool], id_prefix: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut content = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        content.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let (body, next) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
            None => (after, ""),
        };
        match call_from_json(body.trim(), tools) {
            Some((name, arguments)) => parsed.calls.push(ToolCall {
                id: format!("{id_prefix}{}", parsed.calls.len()),
                name,
                arguments,
            }),
            None => content.push_str(&rest[start..rest.len() - next.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    if parsed.calls.is_empty()
        && let Some((name, arguments)) = bare_call(&content, tools)
    {
        parsed.calls.push(ToolCall {
            id: format!("{id_prefix}0"),
            name,
            arguments,
        });
        content.clear();
    }
    parsed.content = content.trim().to_owned();
    parsed
}

/// The body of a Markdown code fence (```` ```json ````…```` ``` ````) that is the whole of
/// `text`, else `text`.
fn unfenced(text: &str) -> &str {
    let Some(inner) = text.strip_prefix("```").and_then(|t| t.strip_suffix("```")) else {
        return text;
    };
    // The fence's first line names a language, if anything.
    match inner.split_once('\n') {
        Some((language, body)) if !language.contains('{') => body.trim(),
        _ => inner.trim(),
    }
}

/// A reply that is one call without tags, bare or in a code fence. Qwen2.5-Coder 1.5B may
/// open a bare call with a doubled brace (`{{"name": …}`), as if escaping a template; the
/// lazy grammar holds the call from the second brace on, so the first is the one stray.
fn bare_call(text: &str, tools: &[Tool]) -> Option<(String, String)> {
    let body = unfenced(text.trim());
    call_from_json(body, tools).or_else(|| {
        let inner = body.strip_prefix('{').filter(|b| b.starts_with('{'))?;
        call_from_json(inner, tools)
    })
}

fn call_from_json(body: &str, tools: &[Tool]) -> Option<(String, String)> {
    let value: Value = serde_json::from_str(body).ok()?;
    let name = value.get("name")?.as_str()?;
    if !tools.iter().any(|t| t.name == name) {
        return None;
    }
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Object(_)) => v.to_string(),
        None => "{}".to_owned(),
        Some(_) => return None,
    };
    Some((name.to_owned(), arguments))
}

/// Streams a reply's text while holding back anything that may be a tool call: text before
/// the first [`OPEN`] goes out as it comes (less a tail that could be the start of the tag);
/// from the tag on, everything waits for [`Splitter::finish`]. A reply that opens with `{`
/// or a code fence may be a call without tags (see [`parse`]): it waits whole.
#[derive(Debug, Default)]
pub struct Splitter {
    text: String,
    emitted: usize,
    in_call: bool,
}

impl Splitter {
    /// A splitter for one reply.
    pub fn new() -> Self {
        Splitter::default()
    }

    /// Adds generated text; returns the text that is safe to show now.
    pub fn push(&mut self, delta: &str) -> &str {
        self.text.push_str(delta);
        if self.in_call {
            return "";
        }
        if self.emitted == 0 {
            match self.text.trim_start().chars().next() {
                // Leading whitespace says nothing yet.
                None => return "",
                Some('{' | '`') => {
                    self.in_call = true;
                    return "";
                }
                Some(_) => {}
            }
        }
        let start = self.emitted;
        let end = match self.text[start..].find(OPEN) {
            Some(at) => {
                self.in_call = true;
                start + at
            }
            None => {
                let mut end = self.text.len();
                for k in (1..OPEN.len()).rev() {
                    if end - start >= k
                        && self.text.is_char_boundary(end - k)
                        && OPEN.starts_with(&self.text[end - k..])
                    {
                        end -= k;
                        break;
                    }
                }
                end
            }
        };
        self.emitted = end;
        &self.text[start..end]
    }

    /// Whether a call has started.
    pub fn in_call(&self) -> bool {
        self.in_call
    }

    /// The whole reply parsed, and the part of its text not yet shown. When the reply is a
    /// bare JSON call (see [`parse`]) and nothing was shown yet, nothing more is shown.
    pub fn finish(self, tools: &[Tool], id_prefix: &str) -> (Parsed, String) {
        let parsed = parse(&self.text, tools, id_prefix);
        let unshown = if parsed.calls.is_empty() {
            self.text[self.emitted..].to_owned()
        } else if self.emitted == 0 {
            parsed.content.clone()
        } else {
            // Text already shown stays shown; what follows it outside calls is the rest.
            let shown = self.text[..self.emitted].trim_start();
            parsed
                .content
                .strip_prefix(shown.trim_end())
                .unwrap_or_default()
                .to_owned()
        };
        (parsed, unshown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<Tool> {
        vec![Tool {
            name: "get_weather".into(),
            description: Some("Weather".into()),
            parameters: json!({"type":"object","properties":{"city":{"type":"string"}}}),
        }]
    }

    #[test]
    fn tagged_calls_are_parsed_and_text_kept() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let parsed = parse(text, &tools(), "call_");
        assert_eq!(parsed.content, "Let me check.");
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.calls[0].id, "call_0");
        assert_eq!(parsed.calls[0].name, "get_weather");
        assert_eq!(parsed.calls[0].arguments, r#"{"city":"Paris"}"#);
    }

    #[test]
    fn unknown_tool_or_broken_json_stays_text() {
        let text = "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>";
        let parsed = parse(text, &tools(), "c");
        assert!(parsed.calls.is_empty());
        assert_eq!(parsed.content, text);
        let parsed = parse("<tool_call>{not json", &tools(), "c");
        assert!(parsed.calls.is_empty());
        assert_eq!(parsed.content, "<tool_call>{not json");
    }

    #[test]
    fn bare_json_call_counts() {
        let parsed = parse(
            r#" {"name":"get_weather","arguments":{"city":"Oslo"}} "#,
            &tools(),
            "c",
        );
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.content, "");
        // With the doubled opening brace Qwen2.5-Coder 1.5B writes under Gemini CLI's prompt.
        let reply = r#"{{"name": "get_weather", "arguments": {"city": "Oslo"}}"#;
        let parsed = parse(reply, &tools(), "c");
        assert_eq!(parsed.calls.len(), 1, "{parsed:?}");
        assert_eq!(parsed.calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(parsed.content, "");
        // Balanced double braces are not a call: the text stays as it was.
        let reply = r#"{{"name": "get_weather", "arguments": {"city": "Oslo"}}}"#;
        assert_eq!(parse(reply, &tools(), "c").content, reply);
    }

    #[test]
    fn a_fenced_call_counts_and_is_not_shown_as_text() {
        let reply =
            "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n```";
        let mut s = Splitter::new();
        for piece in ["\n", &reply[..3], &reply[3..15], &reply[15..]] {
            assert_eq!(s.push(piece), "", "{piece:?}");
        }
        let (parsed, unshown) = s.finish(&tools(), "c");
        assert_eq!(parsed.calls.len(), 1, "{parsed:?}");
        assert_eq!(parsed.calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(unshown, "");
        // Code that is not a call is text, shown when the reply ends.
        let mut s = Splitter::new();
        assert_eq!(s.push("```rust\nfn main() {}\n```"), "");
        let (parsed, unshown) = s.finish(&tools(), "c");
        assert!(parsed.calls.is_empty());
        assert_eq!(unshown, "```rust\nfn main() {}\n```");
        assert_eq!(unfenced("```{\"a\":1}```"), "{\"a\":1}");
    }

    #[test]
    fn splitter_holds_back_a_partial_tag_and_the_call() {
        let mut s = Splitter::new();
        assert_eq!(s.push("Sure <tool"), "Sure ");
        assert_eq!(s.push("_call>{\"name\":\"get_weather\","), "");
        assert!(s.in_call());
        assert_eq!(s.push("\"arguments\":{}}</tool_call>"), "");
        let (parsed, unshown) = s.finish(&tools(), "c");
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(unshown, "");
        let mut s = Splitter::new();
        assert_eq!(s.push("a <b"), "a <b");
        let (parsed, unshown) = s.finish(&tools(), "c");
        assert!(parsed.calls.is_empty());
        assert_eq!(unshown, "");
    }

    #[test]
    fn schema_of_one_tool_is_not_wrapped() {
        let schema = call_schema(&tools(), &["get_weather".to_owned()]);
        assert_eq!(schema["properties"]["name"]["const"], "get_weather");
    }
}
