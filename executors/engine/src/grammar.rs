//! Output constraints as GBNF grammars: JSON Schemas through llama.cpp's own converter (the
//! one llama-server uses), and the tool-call syntax of `aistack_engine_api::tools` around a
//! schema of the allowed calls.

use crate::EngineError;

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
