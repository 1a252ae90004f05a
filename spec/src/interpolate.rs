//! Compose's conveniences: `${VAR}` interpolation, `.env` files, `x-` keys, and merging
//! several files in order.
//!
//! Interpolation applies to scalar values, never to keys, and keeps a scalar's style: a
//! plain `${CTX:-4096}` becomes the plain scalar `4096`, an integer, as if written so.

use std::collections::BTreeMap;

use crate::diagnostic::{Diagnostic, Location, codes};
use crate::yaml::{Entry, Node, Resolved, Value};

/// Deepest nesting of `${A:-${B:-...}}` defaults.
const MAX_NESTING: usize = 16;

/// Why a `${...}` could not be substituted.
#[derive(Debug, Clone, PartialEq)]
struct Problem {
    /// The expression as written, to find its span.
    expression: String,
    message: String,
    label: String,
    help: String,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `name` is a valid environment variable name.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

fn unset(name: &str, expression: &str) -> Problem {
    Problem {
        expression: expression.to_owned(),
        message: format!("Variable `{name}` is not set"),
        label: "used here".to_owned(),
        help: format!(
            "Set `{name}` in the environment or in `.env` beside the file, or write `${{{name}:-default}}`"
        ),
    }
}

/// Substitutes the variables in `text`.
fn substitute(text: &str, env: &BTreeMap<String, String>, depth: usize) -> Result<String, Problem> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let Some(close) = matching_brace(body_and_tail) else {
                return Err(Problem {
                    expression: rest[i..].to_owned(),
                    message: "Unclosed `${` in an interpolation".to_owned(),
                    label: "no matching `}`".to_owned(),
                    help: "Close it with `}`, or write `$$` for a literal `$`".to_owned(),
                });
            };
            let body = &body_and_tail[..close];
            let expression = format!("${{{body}}}");
            out.push_str(&braced(body, &expression, env, depth)?);
            rest = &body_and_tail[close + 1..];
        } else if after.starts_with(is_name_start) {
            let end = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
            let name = &after[..end];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => return Err(unset(name, &format!("${name}"))),
            }
            rest = &after[end..];
        } else {
            return Err(Problem {
                expression: rest[i..].chars().take(2).collect(),
                message: "Invalid interpolation: `$` is not followed by a variable name".to_owned(),
                label: "here".to_owned(),
                help: "Write `${NAME}` for a variable or `$$` for a literal `$`".to_owned(),
            });
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` closing a `${`, counting nested braces.
fn matching_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn braced(
    body: &str,
    expression: &str,
    env: &BTreeMap<String, String>,
    depth: usize,
) -> Result<String, Problem> {
    let end = body.find(|c| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..end];
    let op = &body[end..];
    let invalid = || Problem {
        expression: expression.to_owned(),
        message: format!("Invalid interpolation `{expression}`"),
        label: "not a variable reference".to_owned(),
        help: "Write `${NAME}`, `${NAME:-default}` or `${NAME:?message}`; `$$` is a literal `$`"
            .to_owned(),
    };
    if !is_env_name(name) {
        return Err(invalid());
    }
    let value = env.get(name);
    let empty = value.is_none_or(|v| v.is_empty());
    let nested = |text: &str| {
        if depth >= MAX_NESTING {
            return Err(Problem {
                expression: expression.to_owned(),
                message: "Interpolation nests too deeply".to_owned(),
                label: "too deep".to_owned(),
                help: format!("Nest at most {MAX_NESTING} defaults"),
            });
        }
        substitute(text, env, depth + 1)
    };
    let required = |message: &str, is_empty: bool| {
        let state = if is_empty { "empty" } else { "not set" };
        Problem {
            expression: expression.to_owned(),
            message: if message.is_empty() {
                format!("Variable `{name}` is {state}")
            } else {
                message.to_owned()
            },
            label: format!("`{name}` is {state}"),
            help: format!("Set `{name}` in the environment or in `.env` beside the file"),
        }
    };
    if op.is_empty() {
        return value.cloned().ok_or_else(|| unset(name, expression));
    }
    if let Some(default) = op.strip_prefix(":-") {
        return if empty {
            nested(default)
        } else {
            Ok(value.cloned().unwrap_or_default())
        };
    }
    if let Some(default) = op.strip_prefix('-') {
        return match value {
            Some(v) => Ok(v.clone()),
            None => nested(default),
        };
    }
    if let Some(message) = op.strip_prefix(":?") {
        return if empty {
            Err(required(message, value.is_some()))
        } else {
            Ok(value.cloned().unwrap_or_default())
        };
    }
    if let Some(message) = op.strip_prefix('?') {
        return value.cloned().ok_or_else(|| required(message, false));
    }
    if let Some(alternative) = op.strip_prefix(":+") {
        return if empty {
            Ok(String::new())
        } else {
            nested(alternative)
        };
    }
    if let Some(alternative) = op.strip_prefix('+') {
        return if value.is_none() {
            Ok(String::new())
        } else {
            nested(alternative)
        };
    }
    Err(invalid())
}

/// Interpolates every scalar value under `node` (not keys), collecting problems.
pub fn interpolate(
    node: &mut Node,
    env: &BTreeMap<String, String>,
    texts: &[&str],
    diagnostics: &mut Vec<Diagnostic>,
) {
    match &mut node.value {
        Value::Null | Value::Invalid => {}
        Value::Sequence(items) => {
            for item in items {
                interpolate(item, env, texts, diagnostics);
            }
        }
        Value::Mapping(entries) => {
            for entry in entries {
                interpolate(&mut entry.value, env, texts, diagnostics);
            }
        }
        Value::Scalar(scalar) => {
            if !scalar.text.contains('$') {
                return;
            }
            match substitute(&scalar.text, env, 0) {
                Ok(text) => {
                    scalar.text = text;
                    if scalar.resolve() == Resolved::Null {
                        node.value = Value::Null;
                    }
                }
                Err(problem) => {
                    let location = narrow(&node.location, texts, &problem.expression);
                    diagnostics.push(
                        Diagnostic::new(
                            codes::INTERPOLATION,
                            problem.message,
                            location,
                            problem.label,
                        )
                        .with_help(problem.help),
                    );
                    node.value = Value::Invalid;
                }
            }
        }
    }
}

/// The span of `expression` within `location`, if it is written there verbatim.
fn narrow(location: &Location, texts: &[&str], expression: &str) -> Location {
    let written = texts
        .get(location.file)
        .and_then(|t| t.get(location.span.clone()));
    match written.and_then(|w| w.find(expression)) {
        Some(i) if !expression.is_empty() => {
            let start = location.span.start + i;
            Location::new(location.file, start..start + expression.len())
        }
        _ => location.clone(),
    }
}

/// Drops top-level keys starting with `x-`: they exist to hold anchors.
pub fn drop_extensions(root: &mut Node) {
    if let Value::Mapping(entries) = &mut root.value {
        entries.retain(|e| !e.key.starts_with("x-"));
    }
}

/// Merges `over` into `base` as Compose merges `-f` files: mappings deep-merged, anything
/// else replaced by the later value.
pub fn merge(base: &mut Node, over: Node) {
    match (&mut base.value, over.value) {
        (Value::Mapping(entries), Value::Mapping(more)) => {
            for entry in more {
                match entries.iter_mut().find(|e| e.key == entry.key) {
                    Some(existing) => {
                        existing.key_location = entry.key_location;
                        merge(&mut existing.value, entry.value);
                    }
                    None => entries.push(Entry { ..entry }),
                }
            }
            base.location = over.location;
        }
        (_, value) => {
            *base = Node {
                value,
                location: over.location,
            };
        }
    }
}

/// Parses a `.env` file: `KEY=VALUE` lines, an optional `export ` prefix, `#` comments,
/// blank lines, and single- (literal) or double-quoted (`\n`, `\"` escapes) values.
pub fn parse_dotenv(file: usize, text: &str) -> Result<BTreeMap<String, String>, Diagnostic> {
    let mut vars = BTreeMap::new();
    let mut offset = 0;
    for raw in text.split_inclusive('\n') {
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let body = trimmed
            .strip_prefix("export ")
            .map_or(trimmed, str::trim_start);
        let body_start = line_start + indent + (trimmed.len() - body.len());
        let error = |message: String, help: &str, span: std::ops::Range<usize>| {
            Diagnostic::new(codes::DOTENV, message, Location::new(file, span), "here")
                .with_help(help.to_owned())
        };
        let Some((key, value)) = body.split_once('=') else {
            return Err(error(
                "Expected `KEY=VALUE` in the `.env` file".to_owned(),
                "Write one `KEY=VALUE` per line; comments start with `#`",
                body_start..line_start + line.len(),
            ));
        };
        let key_trimmed = key.trim();
        if !is_env_name(key_trimmed) {
            return Err(error(
                format!("Invalid variable name `{key_trimmed}` in the `.env` file"),
                "Names use letters, digits and `_`, and do not start with a digit",
                body_start..body_start + key.len(),
            ));
        }
        let value_start = body_start + key.len() + 1;
        let value = value.trim_start();
        let value_start = value_start + (body.len() - key.len() - 1 - value.len());
        let parsed = if let Some(inner) = value.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = inner.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some('r') => out.push('\r'),
                        Some(other) => out.push(other),
                        None => {}
                    },
                    c => out.push(c),
                }
            }
            let trailing = chars.as_str().trim();
            if !closed || !(trailing.is_empty() || trailing.starts_with('#')) {
                return Err(error(
                    format!("Unterminated quoted value for `{key_trimmed}` in the `.env` file"),
                    "Close the quote on the same line, and put comments after it",
                    value_start..line_start + line.len(),
                ));
            }
            out
        } else if let Some(inner) = value.strip_prefix('\'') {
            let Some((literal, trailing)) = inner.split_once('\'') else {
                return Err(error(
                    format!("Unterminated quoted value for `{key_trimmed}` in the `.env` file"),
                    "Close the quote on the same line",
                    value_start..line_start + line.len(),
                ));
            };
            let trailing = trailing.trim();
            if !(trailing.is_empty() || trailing.starts_with('#')) {
                return Err(error(
                    format!("Unexpected text after the quoted value of `{key_trimmed}`"),
                    "Put comments after a space and `#`",
                    value_start..line_start + line.len(),
                ));
            }
            literal.to_owned()
        } else {
            let without_comment = match value.find(" #").or_else(|| value.find("\t#")) {
                Some(i) => &value[..i],
                None if value.starts_with('#') => "",
                None => value,
            };
            without_comment.trim().to_owned()
        };
        vars.insert(key_trimmed.to_owned(), parsed);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn forms() {
        let e = env(&[("A", "a"), ("EMPTY", "")]);
        let s = |t: &str| substitute(t, &e, 0);
        assert_eq!(s("x${A}y").unwrap(), "xay");
        assert_eq!(s("$A-$A").unwrap(), "a-a");
        assert_eq!(s("$$A").unwrap(), "$A");
        assert_eq!(s("${B:-d}").unwrap(), "d");
        assert_eq!(s("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(s("${EMPTY-d}").unwrap(), "");
        assert_eq!(s("${B-d}").unwrap(), "d");
        assert_eq!(s("${B:-${A}}").unwrap(), "a");
        assert_eq!(s("${A:+alt}").unwrap(), "alt");
        assert_eq!(s("${B:+alt}").unwrap(), "");
        assert_eq!(s("${B}").unwrap_err().message, "Variable `B` is not set");
        assert_eq!(s("${B:?need B}").unwrap_err().message, "need B");
        assert_eq!(s("${EMPTY?x}").unwrap(), "");
        assert_eq!(
            s("${EMPTY:?}").unwrap_err().message,
            "Variable `EMPTY` is empty"
        );
        assert!(s("${A").is_err());
        assert!(s("${1}").is_err());
        assert!(s("$ ").is_err());
        assert!(s("${A:x}").is_err());
    }

    #[test]
    fn dotenv() {
        let text = "# c\n\nexport A=1\nB = \"two \\\"q\\\"\" # c\nC='lit $x'\nD=plain # c\nE=\n";
        let vars = parse_dotenv(1, text).unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two \"q\"");
        assert_eq!(vars["C"], "lit $x");
        assert_eq!(vars["D"], "plain");
        assert_eq!(vars["E"], "");
        let err = parse_dotenv(1, "A=1\nnot a line\n").unwrap_err();
        assert_eq!(err.location.span, 4..14);
        assert_eq!(err.location.file, 1);
        assert!(parse_dotenv(0, "1A=x").is_err());
        assert!(parse_dotenv(0, "A=\"x").is_err());
    }
}
