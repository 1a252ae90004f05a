//! Output constraints as GBNF grammars: JSON Schemas through llama.cpp's own converter (the
//! one llama-server uses), and the tool-call syntax of `aistack_engine_api::tools` around a
//! schema of the allowed calls.

use aistack_engine_api::Tool;

use crate::EngineError;

/// A GBNF grammar (root rule `root`) a generation must follow: from its first token, or,
/// with trigger patterns, only from where the first of them matches on, as llama-server
/// holds a model to its tools' schemas once it starts a call and leaves it free until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grammar {
    /// The rules.
    pub rules: String,
    /// Regular expressions searched for in the output; the grammar applies from the first
    /// capture group of the first match. Empty: from the first token.
    pub triggers: Vec<String>,
}

impl Grammar {
    /// A grammar that holds from the first token.
    #[must_use]
    pub fn strict(rules: String) -> Self {
        Grammar {
            rules,
            triggers: Vec::new(),
        }
    }
}

/// The lazy grammar of a reply that may call `tools`: free text until the model opens a
/// call, with the tag, with a code fence (`` ```json ``, how small models often write one)
/// or with a bare `{"name"` as its first words, then a call of an offered tool whose
/// arguments follow its schema, closed as it was opened. `None` when a tool's schema is one
/// llama.cpp's converter cannot read: the calls then go unconstrained, as before.
#[must_use]
pub fn lazy_tool_call_grammar(tools: &[Tool]) -> Option<Grammar> {
    // The schema as text, so that `name` comes before `arguments`: the converter keeps the
    // order of `properties`, and the trigger has already written `{"name"`.
    let variants: Vec<String> = tools
        .iter()
        .map(|t| {
            format!(
                r#"{{"type":"object","properties":{{"name":{{"const":{}}},"arguments":{}}},"required":["name","arguments"],"additionalProperties":false}}"#,
                serde_json::Value::String(t.name.clone()),
                t.parameters
            )
        })
        .collect();
    let schema = match variants.as_slice() {
        [] => return None,
        [one] => one.clone(),
        many => format!(r#"{{"oneOf":[{}]}}"#, many.join(",")),
    };
    let body = llama_cpp_2::json_schema_to_grammar(&schema).ok()?;
    let body = rename_rule(&body, "root", "tool-call-body");
    let (open, close) = (
        aistack_engine_api::tools::OPEN,
        aistack_engine_api::tools::CLOSE,
    );
    Some(Grammar {
        rules: format!(
            "root ::= \"{open}\" [ \\t\\n]* tool-call-body [ \\t\\n]* \"{close}\" | \"```\" \"json\"? [ \\t\\n]* tool-call-body [ \\t\\n]* \"```\" | [ \\t\\n]* tool-call-body\n{body}"
        ),
        // Searched for, not matched whole: llama.cpp runs `std::regex_search` over all the
        // output so far at every token, and a `[\s\S]*?…[\s\S]*` frame around it (as
        // llama-server writes its patterns) makes libstdc++'s backtracking quadratic in the
        // output's length per token. A 1k-token reply after a tool result then took minutes.
        // A reply that opens with a bare `{"name"` is a call too (the gateway reads it as
        // one): small models write calls that way when a long prompt confuses them, often
        // with a tool name of their own, which the grammar then holds to an offered one.
        // Qwen2.5-Coder 1.5B may double the opening brace: the grammar then holds the call
        // from the second one (llama.cpp applies it from the first group that matched).
        triggers: vec![format!(
            r#"({}|```(?:json)?\s*\{{\s*"name"|^\s*\{{\s*"name")|^\s*\{{(\{{\s*"name")"#,
            regex_escape(open)
        )],
    })
}

/// `text` as a regular expression that matches it literally.
fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// A grammar for any JSON object.
///
/// # Errors
///
/// Never for this fixed schema, but llama.cpp's converter is fallible.
pub fn json_object_grammar() -> Result<String, EngineError> {
    schema_grammar(&serde_json::json!({ "type": "object" }))
}

/// A grammar for JSON matching `schema`.
///
/// # Errors
///
/// [`EngineError::Grammar`] when the schema is not one llama.cpp can convert.
pub fn schema_grammar(schema: &serde_json::Value) -> Result<String, EngineError> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(EngineError::Grammar(
            "a JSON schema must be an object".to_owned(),
        ));
    }
    llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map_err(|e| EngineError::Grammar(e.to_string()))
}

/// A grammar for one tool call: the opening tag, a JSON body matching `call_schema`, the
/// closing tag.
///
/// # Errors
///
/// [`EngineError::Grammar`] when a tool's parameters are not a schema llama.cpp can convert.
pub fn tool_call_grammar(call_schema: &serde_json::Value) -> Result<String, EngineError> {
    let body = schema_grammar(call_schema)?;
    // The converter's grammar starts at `root`; it becomes the call body under a new root.
    let body = rename_rule(&body, "root", "tool-call-body");
    let open = aistack_engine_api::tools::OPEN;
    let close = aistack_engine_api::tools::CLOSE;
    Ok(format!(
        "root ::= \"{open}\\n\" tool-call-body \"\\n{close}\"\n{body}"
    ))
}

/// Renames a rule's definition and every reference to it.
fn rename_rule(grammar: &str, from: &str, to: &str) -> String {
    grammar
        .lines()
        .map(|line| {
            let mut out = String::with_capacity(line.len());
            let mut rest = line;
            while let Some(at) = find_identifier(rest, from) {
                out.push_str(&rest[..at]);
                out.push_str(to);
                rest = &rest[at + from.len()..];
            }
            out.push_str(rest);
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The byte offset of `name` as a whole identifier outside string literals.
fn find_identifier(line: &str, name: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            _ if !in_string && line[i..].starts_with(name) => {
                let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                let before = i == 0 || !ident(bytes[i - 1]);
                let after = bytes.get(i + name.len()).is_none_or(|b| !ident(*b));
                if before && after {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_leaves_strings_and_longer_names_alone() {
        let g = "root ::= \"root\" root-x root\nroot-x ::= [a]";
        assert_eq!(
            rename_rule(g, "root", "body"),
            "body ::= \"root\" root-x body\nroot-x ::= [a]"
        );
    }

    #[test]
    fn a_lazy_tool_grammar_opens_at_the_tag_or_a_fence_with_the_name_first() {
        let tools = [Tool {
            name: "read".into(),
            description: None,
            parameters: serde_json::json!({
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"]
            }),
        }];
        let grammar = lazy_tool_call_grammar(&tools).unwrap();
        assert!(
            grammar.rules.starts_with("root ::= \"<tool_call>\""),
            "{}",
            grammar.rules
        );
        assert!(
            grammar.rules.contains("tool-call-body ::="),
            "{}",
            grammar.rules
        );
        let body = r#"tool-call-body ::= "{" space name-kv "," space arguments-kv"#;
        assert!(grammar.rules.contains(body), "{}", grammar.rules);
        assert_eq!(grammar.triggers.len(), 1);
        assert!(lazy_tool_call_grammar(&[]).is_none());
    }

    #[test]
    fn schemas_convert_and_garbage_is_an_error() {
        let g = schema_grammar(&serde_json::json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"]
        }))
        .unwrap();
        assert!(g.contains("root ::="), "{g}");
        assert!(matches!(
            schema_grammar(&serde_json::json!("not a schema")),
            Err(EngineError::Grammar(_))
        ));
        let tool = tool_call_grammar(&serde_json::json!({"type": "object"})).unwrap();
        assert!(
            tool.starts_with("root ::= \"<tool_call>\\n\" tool-call-body"),
            "{tool}"
        );
    }
}
