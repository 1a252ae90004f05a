//! A YAML tree that remembers where every key and value was written.
//!
//! serde-based loaders forget positions once a value parsed, but every diagnostic aistack
//! shows, even one found after decoding (a dangling reference, a cycle), must point at the
//! offending span. So the document is first loaded into [`Node`]s from saphyr-parser's
//! event stream, each carrying its [`Location`]. Loading is iterative (an explicit stack,
//! no recursion), nesting is bounded by [`MAX_DEPTH`] and alias expansion by [`MAX_NODES`],
//! so no document can overflow the stack or exhaust memory ("billion laughs"). Anchors,
//! aliases and `<<` merge keys are resolved here; duplicate keys and non-core tags are
//! reported here.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use crate::diagnostic::{Diagnostic, Location, codes};

/// Deepest nesting of mappings and sequences a document may have.
pub const MAX_DEPTH: usize = 128;
/// Most nodes that anchors and aliases may copy in one document ("billion laughs").
pub const MAX_NODES: usize = 100_000;

/// A YAML value with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it was written.
    pub location: Location,
}

/// The shape of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all.
    Null,
    /// A scalar other than null.
    Scalar(Scalar),
    /// A sequence.
    Sequence(Vec<Node>),
    /// A mapping, in written order, merge keys resolved.
    Mapping(Vec<Entry>),
    /// A value already reported as a problem (a failed interpolation): decoding skips it
    /// instead of reporting it again.
    Invalid,
}

/// A scalar's text and whether it was written plain (so `8080` is an integer but `"8080"`
/// a string).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The text, escapes and folding applied.
    pub text: String,
    /// Written without quotes (and not tagged `!!str`).
    pub plain: bool,
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Where the key was written.
    pub key_location: Location,
    /// The value.
    pub value: Node,
}

/// A scalar as the YAML 1.2 core schema reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved<'a> {
    /// A null.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer (decimal, `0x` or `0o`).
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// Anything else.
    Str(&'a str),
}

impl Scalar {
    /// The core-schema reading of the scalar: quoted scalars are always strings.
    pub fn resolve(&self) -> Resolved<'_> {
        if !self.plain {
            return Resolved::Str(&self.text);
        }
        resolve_plain(&self.text)
    }
}

fn resolve_plain(t: &str) -> Resolved<'_> {
    match t {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = t.strip_prefix("0x") {
        if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return i128::from_str_radix(hex, 16).map_or(Resolved::Str(t), Resolved::Int);
        }
        return Resolved::Str(t);
    }
    if let Some(oct) = t.strip_prefix("0o") {
        if !oct.is_empty() && oct.chars().all(|c| ('0'..='7').contains(&c)) {
            return i128::from_str_radix(oct, 8).map_or(Resolved::Str(t), Resolved::Int);
        }
        return Resolved::Str(t);
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        return t.parse::<i128>().map_or(Resolved::Str(t), Resolved::Int);
    }
    if is_float(digits) {
        return t.parse::<f64>().map_or(Resolved::Str(t), Resolved::Float);
    }
    Resolved::Str(t)
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_float(t: &str) -> bool {
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            int.chars().all(|c| c.is_ascii_digit())
                && frac.chars().all(|c| c.is_ascii_digit())
                && !(int.is_empty() && frac.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.chars().all(|c| c.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

impl Node {
    /// What the node is, for messages: `a string`, `an integer`, `a list`...
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Invalid => "an invalid value",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a mapping",
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => "null",
                Resolved::Bool(_) => "a boolean",
                Resolved::Int(_) => "an integer",
                Resolved::Float(_) => "a number",
                Resolved::Str(_) => "a string",
            },
        }
    }

    /// Whether the node is null.
    pub fn is_null(&self) -> bool {
        match &self.value {
            Value::Null => true,
            Value::Scalar(s) => s.resolve() == Resolved::Null,
            _ => false,
        }
    }

    /// The node as JSON, reading scalars by the core schema (as editors do before checking
    /// the JSON Schema). Integers beyond 64 bits and non-finite floats become strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null | Value::Invalid => J::Null,
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => J::Null,
                Resolved::Bool(b) => J::Bool(b),
                Resolved::Int(n) => i64::try_from(n)
                    .map(J::from)
                    .or_else(|_| u64::try_from(n).map(J::from))
                    .unwrap_or_else(|_| J::String(s.text.clone())),
                Resolved::Float(f) => serde_json::Number::from_f64(f)
                    .map_or_else(|| J::String(s.text.clone()), J::Number),
                Resolved::Str(t) => J::String(t.to_owned()),
            },
            Value::Sequence(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Mapping(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// `(nodes, height)` of the tree under this node. Recursion is bounded by the depth
    /// limit enforced while loading.
    fn measure(&self) -> (usize, usize) {
        match &self.value {
            Value::Null | Value::Invalid | Value::Scalar(_) => (1, 0),
            Value::Sequence(items) => items.iter().fold((1, 1), |(n, h), item| {
                let (cn, ch) = item.measure();
                (n + cn, h.max(ch + 1))
            }),
            Value::Mapping(entries) => entries.iter().fold((1, 1), |(n, h), e| {
                let (cn, ch) = e.value.measure();
                (n + cn + 1, h.max(ch + 1))
            }),
        }
    }
}

/// Byte offsets of each character index: saphyr's markers count characters.
struct Offsets<'t> {
    text: &'t str,
    table: Option<Vec<usize>>,
}

impl<'t> Offsets<'t> {
    fn new(text: &'t str) -> Self {
        let table = (!text.is_ascii()).then(|| {
            let mut t: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            t.push(text.len());
            t
        });
        Offsets { text, table }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.table {
            None => char_index.min(self.text.len()),
            Some(t) => t.get(char_index).copied().unwrap_or(self.text.len()),
        }
    }

    fn span(&self, span: Span) -> std::ops::Range<usize> {
        let start = self.byte(span.start.index());
        let end = self.byte(span.end.index()).max(start);
        start..end
    }

    /// The span of a quoted scalar starting at `start`: saphyr's end marker runs past
    /// trailing blanks and comments, so find the closing quote.
    fn quoted_end(&self, start: usize, fallback: usize) -> usize {
        let Some(rest) = self.text.get(start..) else {
            return fallback;
        };
        let mut chars = rest.char_indices();
        let Some((_, quote)) = chars.next() else {
            return fallback;
        };
        if quote != '"' && quote != '\'' {
            return fallback;
        }
        let mut escaped = false;
        while let Some((i, c)) = chars.next() {
            if quote == '"' {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    return start + i + 1;
                }
            } else if c == '\'' {
                if rest[i + 1..].starts_with('\'') {
                    chars.next();
                } else {
                    return start + i + 1;
                }
            }
        }
        fallback
    }
}

enum FrameKind {
    Sequence,
    Mapping,
}

struct Frame {
    kind: FrameKind,
    start: usize,
    anchor: usize,
    items: Vec<Node>,
}

/// The outcome of loading one file: its root (none after a fatal error) and the problems.
pub struct Loaded {
    /// The document's root node; `None` when the file could not be read as YAML.
    pub root: Option<Node>,
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
}

struct Loader<'t> {
    file: usize,
    offsets: Offsets<'t>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize, usize)>,
    nodes: usize,
    diagnostics: Vec<Diagnostic>,
}

/// Loads file number `file` with text `text` into a node tree.
pub fn load(file: usize, text: &str) -> Loaded {
    let mut loader = Loader {
        file,
        offsets: Offsets::new(text),
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        diagnostics: Vec::new(),
    };
    // saphyr-parser is fuzzed upstream, but a panic inside it must still not take the
    // caller down: it becomes a syntax diagnostic.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader.run(text)));
    let root = match run {
        Ok(root) => root,
        Err(_) => {
            loader.diagnostics.push(
                Diagnostic::new(
                    codes::SYNTAX,
                    "The YAML parser failed on this file",
                    Location::new(file, 0..0),
                    "unreadable YAML",
                )
                .with_help("Simplify the file's YAML (quoting, flow collections) and try again"),
            );
            None
        }
    };
    Loaded {
        root,
        diagnostics: loader.diagnostics,
    }
}

enum Fatal {
    Stop,
}

impl Loader<'_> {
    fn loc(&self, span: std::ops::Range<usize>) -> Location {
        Location::new(self.file, span)
    }

    fn run(&mut self, text: &str) -> Option<Node> {
        let mut parser = Parser::new_from_str(text);
        let mut root: Option<Node> = None;
        let mut documents = 0usize;
        loop {
            let (event, span) = match parser.next_event() {
                None => break,
                Some(Ok(pair)) => pair,
                Some(Err(e)) => {
                    let at = self.offsets.byte(e.marker().index());
                    let end = next_char_end(text, at);
                    self.diagnostics.push(
                        Diagnostic::new(
                            codes::SYNTAX,
                            "The file is not valid YAML",
                            self.loc(at..end),
                            e.info().to_owned(),
                        )
                        .with_help("Check the indentation, quoting and brackets near this point"),
                    );
                    return None;
                }
            };
            let range = self.offsets.span(span);
            let result = match event {
                Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => {
                    Ok(None)
                }
                Event::DocumentStart(_) => {
                    documents += 1;
                    Ok(None)
                }
                Event::Alias(id) => self.alias(id, range),
                Event::Scalar(text, style, anchor, tag) => {
                    self.scalar(&text, style, anchor, tag.as_deref(), range)
                }
                Event::SequenceStart(anchor, tag) => {
                    self.start(FrameKind::Sequence, anchor, tag.as_deref(), range)
                }
                Event::MappingStart(anchor, tag) => {
                    self.start(FrameKind::Mapping, anchor, tag.as_deref(), range)
                }
                Event::SequenceEnd | Event::MappingEnd => self.end(range),
            };
            match result {
                Err(Fatal::Stop) => return None,
                Ok(None) => {}
                Ok(Some(node)) => {
                    if documents > 1 && !node.is_null() {
                        self.diagnostics.push(
                            Diagnostic::new(
                                codes::SYNTAX,
                                "The file holds more than one YAML document",
                                node.location.clone(),
                                "second document",
                            )
                            .with_help(
                                "Keep one document per file; combine files with `-f a.yaml -f b.yaml`",
                            ),
                        );
                        return None;
                    }
                    if root.is_none() {
                        root = Some(node);
                    }
                }
            }
        }
        match root {
            Some(node) if !node.is_null() => Some(node),
            _ => {
                self.diagnostics.push(
                    Diagnostic::new(
                        codes::EMPTY,
                        "The file is empty",
                        self.loc(0..0),
                        "no content",
                    )
                    .with_help(
                        "A minimal file is `version: 1` followed by `models: { chat: { source: ai/smollm2 } }`",
                    ),
                );
                None
            }
        }
    }

    /// Checks a tag: only the core schema's are allowed. Returns the tag's suffix.
    fn tag<'a>(&mut self, tag: Option<&'a Tag>, range: &std::ops::Range<usize>) -> Option<&'a str> {
        let tag = tag?;
        const CORE: &[&str] = &["str", "int", "float", "bool", "null", "map", "seq"];
        if tag.is_yaml_core_schema() && CORE.contains(&tag.suffix.as_str()) {
            return Some(tag.suffix.as_str());
        }
        if tag.handle.is_empty() && tag.suffix == "!" {
            // The non-specific tag `!`: a string.
            return Some("str");
        }
        self.diagnostics.push(
            Diagnostic::new(
                codes::TAG,
                format!("Unsupported YAML tag `{tag}`"),
                self.loc(range.clone()),
                "tagged here",
            )
            .with_help("Remove the tag; only the core tags (`!!str`, `!!int`, ...) are allowed"),
        );
        None
    }

    fn count(&mut self, n: usize, range: &std::ops::Range<usize>) -> Result<(), Fatal> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.diagnostics.push(
                Diagnostic::new(
                    codes::TOO_LARGE,
                    format!("Aliases expand the document past {MAX_NODES} values"),
                    self.loc(range.clone()),
                    "expansion limit reached here",
                )
                .with_help("Use fewer or smaller aliases; an aistack file needs far fewer values"),
            );
            return Err(Fatal::Stop);
        }
        Ok(())
    }

    fn scalar(
        &mut self,
        text: &str,
        style: ScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        mut range: std::ops::Range<usize>,
    ) -> Result<Option<Node>, Fatal> {
        let quoted = matches!(style, ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted);
        if quoted {
            range.end = self.offsets.quoted_end(range.start, range.end);
        }
        let plain = style == ScalarStyle::Plain;
        let value = match self.tag(tag, &range) {
            Some("str") => Value::Scalar(Scalar {
                text: text.to_owned(),
                plain: false,
            }),
            Some("null") => Value::Null,
            Some("int" | "float" | "bool") => Value::Scalar(Scalar {
                text: text.to_owned(),
                plain: true,
            }),
            Some(other) => {
                self.diagnostics.push(
                    Diagnostic::new(
                        codes::TAG,
                        format!("The tag `!!{other}` does not fit a scalar"),
                        self.loc(range.clone()),
                        "a scalar",
                    )
                    .with_help("Remove the tag"),
                );
                Value::Null
            }
            None if plain && resolve_plain(text) == Resolved::Null => Value::Null,
            None => Value::Scalar(Scalar {
                text: text.to_owned(),
                plain,
            }),
        };
        let node = Node {
            value,
            location: self.loc(range),
        };
        self.finish_node(node, anchor)
    }

    fn alias(&mut self, id: usize, range: std::ops::Range<usize>) -> Result<Option<Node>, Fatal> {
        let Some((node, size, height)) = self.anchors.get(&id) else {
            self.diagnostics.push(
                Diagnostic::new(
                    codes::SYNTAX,
                    "The alias refers to an anchor that is not defined",
                    self.loc(range),
                    "unknown anchor",
                )
                .with_help("Define the anchor (`&name`) before its alias (`*name`)"),
            );
            return Err(Fatal::Stop);
        };
        let (size, height) = (*size, *height);
        if self.stack.len() + height > MAX_DEPTH {
            return Err(self.too_deep(range));
        }
        let mut node = node.clone();
        self.count(size, &range)?;
        node.location = self.loc(range);
        self.finish_node(node, 0)
    }

    fn too_deep(&mut self, range: std::ops::Range<usize>) -> Fatal {
        self.diagnostics.push(
            Diagnostic::new(
                codes::TOO_LARGE,
                format!("The document nests deeper than {MAX_DEPTH} levels"),
                self.loc(range),
                "too deep",
            )
            .with_help("Flatten the structure; an aistack file nests a few levels at most"),
        );
        Fatal::Stop
    }

    fn start(
        &mut self,
        kind: FrameKind,
        anchor: usize,
        tag: Option<&Tag>,
        range: std::ops::Range<usize>,
    ) -> Result<Option<Node>, Fatal> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.too_deep(range));
        }
        let expected = match kind {
            FrameKind::Sequence => "seq",
            FrameKind::Mapping => "map",
        };
        if let Some(suffix) = self.tag(tag, &range)
            && suffix != expected
        {
            self.diagnostics.push(
                Diagnostic::new(
                    codes::TAG,
                    format!("The tag `!!{suffix}` does not fit this value"),
                    self.loc(range.clone()),
                    "tagged here",
                )
                .with_help("Remove the tag"),
            );
        }
        self.stack.push(Frame {
            kind,
            start: range.start,
            anchor,
            items: Vec::new(),
        });
        Ok(None)
    }

    fn end(&mut self, range: std::ops::Range<usize>) -> Result<Option<Node>, Fatal> {
        let Some(frame) = self.stack.pop() else {
            return Ok(None);
        };
        let last_end = frame
            .items
            .last()
            .map_or(frame.start, |n| n.location.span.end);
        // Flow collections end at their closing bracket; block ones at their last value.
        let end = if range.end > range.start {
            range.end
        } else {
            last_end
        }
        .max(frame.start);
        let location = self.loc(frame.start..end);
        let value = match frame.kind {
            FrameKind::Sequence => Value::Sequence(frame.items),
            FrameKind::Mapping => Value::Mapping(self.mapping(frame.items)),
        };
        self.finish_node(Node { value, location }, frame.anchor)
    }

    fn finish_node(&mut self, node: Node, anchor: usize) -> Result<Option<Node>, Fatal> {
        if anchor > 0 {
            let (size, height) = node.measure();
            self.count(size, &node.location.span.clone())?;
            self.anchors.insert(anchor, (node.clone(), size, height));
        }
        match self.stack.last_mut() {
            Some(frame) => {
                frame.items.push(node);
                Ok(None)
            }
            None => Ok(Some(node)),
        }
    }

    /// The dotted path of the mapping being built, for messages.
    fn path(&self) -> String {
        let mut parts = Vec::new();
        for frame in &self.stack {
            match frame.kind {
                FrameKind::Sequence => parts.push(frame.items.len().to_string()),
                FrameKind::Mapping => {
                    if frame.items.len() % 2 == 1
                        && let Some(Node {
                            value: Value::Scalar(s),
                            ..
                        }) = frame.items.last()
                    {
                        parts.push(s.text.clone());
                    }
                }
            }
        }
        parts.join(".")
    }

    /// Pairs keys with values, reports duplicate and non-string keys, applies `<<` merges.
    fn mapping(&mut self, items: Vec<Node>) -> Vec<Entry> {
        let path = self.path();
        let mut entries: Vec<Entry> = Vec::new();
        let mut merges: Vec<Node> = Vec::new();
        let mut seen: HashMap<String, Location> = HashMap::new();
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            let text = match key.value {
                Value::Scalar(s) if s.plain && s.text == "<<" => {
                    merges.push(value);
                    continue;
                }
                Value::Scalar(s) => s.text,
                _ => {
                    let kind = key.kind();
                    self.diagnostics.push(
                        Diagnostic::new(
                            codes::TYPE,
                            format!("Expected a string key, found {kind}"),
                            key.location,
                            "not a string",
                        )
                        .with_help("Write keys as plain names"),
                    );
                    continue;
                }
            };
            if let Some(first) = seen.get(&text) {
                let line = first.line_col(self.offsets.text).0;
                let within = if path.is_empty() {
                    String::new()
                } else {
                    format!(" in `{path}`")
                };
                self.diagnostics.push(
                    Diagnostic::new(
                        codes::DUPLICATE_KEY,
                        format!("Duplicate key `{text}`{within}"),
                        key.location,
                        "written again here",
                    )
                    .with_help(format!(
                        "The first `{text}` is on line {line}; remove one of them"
                    )),
                );
                continue;
            }
            seen.insert(text.clone(), key.location.clone());
            entries.push(Entry {
                key: text,
                key_location: key.location,
                value,
            });
        }
        for merge in merges {
            let sources = match merge.value {
                Value::Mapping(m) => vec![m],
                Value::Sequence(items)
                    if items.iter().all(|i| matches!(i.value, Value::Mapping(_))) =>
                {
                    items
                        .into_iter()
                        .filter_map(|i| match i.value {
                            Value::Mapping(m) => Some(m),
                            _ => None,
                        })
                        .collect()
                }
                _ => {
                    let kind = merge.kind();
                    self.diagnostics.push(
                        Diagnostic::new(
                            codes::TYPE,
                            format!(
                                "Expected a mapping or a list of mappings for `<<`, found {kind}"
                            ),
                            merge.location,
                            "merged here",
                        )
                        .with_help("Merge an anchored mapping: `<<: *name`"),
                    );
                    continue;
                }
            };
            for source in sources {
                for entry in source {
                    if !seen.contains_key(&entry.key) {
                        seen.insert(entry.key.clone(), entry.key_location.clone());
                        entries.push(entry);
                    }
                }
            }
        }
        entries
    }
}

fn next_char_end(text: &str, at: usize) -> usize {
    text.get(at..)
        .and_then(|rest| rest.chars().next())
        .filter(|c| *c != '\n')
        .map_or(at, |c| at + c.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        let loaded = load(0, text);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        loaded.root.expect("root")
    }

    fn entries(node: &Node) -> &[Entry] {
        match &node.value {
            Value::Mapping(e) => e,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    #[test]
    fn spans_are_byte_ranges() {
        let text = "# é\na: \"ü1\"  # c\nb: 'x''y'\n";
        let node = root(text);
        let e = entries(&node);
        assert_eq!(&text[e[0].key_location.span.clone()], "a");
        assert_eq!(&text[e[0].value.location.span.clone()], "\"ü1\"");
        assert_eq!(&text[e[1].value.location.span.clone()], "'x''y'");
    }

    #[test]
    fn plain_and_quoted() {
        let node = root("a: 8080\nb: \"8080\"\nc:\nd: !!str 1\n");
        let e = entries(&node);
        assert_eq!(e[0].value.kind(), "an integer");
        assert_eq!(e[1].value.kind(), "a string");
        assert!(e[2].value.is_null());
        assert_eq!(e[3].value.kind(), "a string");
    }

    #[test]
    fn merge_keys_explicit_wins() {
        let node = root("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\n");
        let m = &entries(&node)[1].value;
        let keys: Vec<_> = entries(m).iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["x", "y"]);
        assert_eq!(
            entries(m)[0].value.value,
            Value::Scalar(Scalar {
                text: "3".into(),
                plain: true
            })
        );
    }

    #[test]
    fn merge_sequence() {
        let node = root("a: &a {x: 1}\nb: &b {x: 2, y: 2}\nm: {<<: [*a, *b]}\n");
        let m = &entries(&node)[2].value;
        assert_eq!(entries(m).len(), 2);
        assert_eq!(entries(m)[0].value.location.span, 10..11);
    }

    #[test]
    fn duplicate_key() {
        let loaded = load(0, "a: 1\nb: 2\na: 3\n");
        assert_eq!(loaded.diagnostics.len(), 1);
        assert_eq!(loaded.diagnostics[0].code, codes::DUPLICATE_KEY);
        assert_eq!(loaded.diagnostics[0].location.span, 10..11);
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let loaded = load(0, &text);
        assert!(loaded.root.is_none());
        assert_eq!(loaded.diagnostics[0].code, codes::TOO_LARGE);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let flow = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let loaded = load(0, &flow);
        assert!(loaded.root.is_none());
        assert!(!loaded.diagnostics.is_empty());
        let block: String = (0..200)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let loaded = load(0, &block);
        assert!(loaded.root.is_none());
        assert_eq!(loaded.diagnostics[0].code, codes::TOO_LARGE);
    }

    #[test]
    fn custom_tag() {
        let loaded = load(0, "a: !foo x\n");
        assert_eq!(loaded.diagnostics[0].code, codes::TAG);
    }

    #[test]
    fn empty_and_syntax() {
        assert_eq!(load(0, "# only\n").diagnostics[0].code, codes::EMPTY);
        assert_eq!(load(0, "a: [1\n").diagnostics[0].code, codes::SYNTAX);
        assert_eq!(
            load(0, "a: 1\n---\nb: 2\n").diagnostics[0].code,
            codes::SYNTAX
        );
    }

    #[test]
    fn core_schema() {
        assert_eq!(resolve_plain("0x1f"), Resolved::Int(31));
        assert_eq!(resolve_plain("-12"), Resolved::Int(-12));
        assert_eq!(resolve_plain("1.5e3"), Resolved::Float(1500.0));
        assert_eq!(resolve_plain("yes"), Resolved::Str("yes"));
        assert_eq!(resolve_plain("5m"), Resolved::Str("5m"));
        assert_eq!(resolve_plain("."), Resolved::Str("."));
    }
}
