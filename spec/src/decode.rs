//! Decoding the node tree into the typed model, collecting every problem.
//!
//! serde's `Deserialize` stops at the first error, so decoding is written by hand with a
//! small [`MapReader`]: each section asks for its keys, and `finish` reports the keys
//! nobody asked for. A value that fails to decode is reported and left out; decoding goes
//! on so that one run shows every problem.

use std::collections::{BTreeMap, BTreeSet};

use crate::diagnostic::{Diagnostic, Location, codes};
use crate::interpolate::is_env_name;
use crate::model::{
    AgentChoice, Credential, DiffusersDefaults, Engines, Gateway, LlamaCppDefaults, Model,
    NetworkPolicy, Sandbox, Spec, Template, VllmDefaults,
};
use crate::runtime_flags;
use crate::values::{
    Agent, ByteSize, EngineKind, GpuLayers, HostRule, InvalidValue, Isolation, KeepAlive,
    ModelMode, OciRef, PolicyDefault, PortMapping, Source, TemplateFrom, is_path,
    normalize_hostname, parse_listen,
};
use crate::yaml::{Entry, Node, Resolved, Value};

/// What decoding collects besides the model.
#[derive(Default)]
pub struct Cx {
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
    /// Where each value was written, by dotted path.
    pub locations: BTreeMap<String, Location>,
    /// Where each key was written, by dotted path.
    pub keys: BTreeMap<String, Location>,
}

/// The names declared in each section, decodable or not, for reference checks.
#[derive(Debug, Default)]
pub struct Declared {
    /// Model names.
    pub models: BTreeSet<String>,
    /// Template names.
    pub templates: BTreeSet<String>,
    /// Network policy names.
    pub policies: BTreeSet<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The closest of `options` to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, options: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    options
        .into_iter()
        .filter_map(|o| {
            let lower = o.to_lowercase();
            let edits = strsim::damerau_levenshtein(&word, &lower);
            let similarity = strsim::jaro_winkler(&word, &lower);
            let close = (edits <= 2 && edits < word.chars().count().max(2)) || similarity > 0.85;
            close.then_some((edits, -similarity, o))
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, _, o)| o)
}

impl Cx {
    fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    fn type_error(&mut self, node: &Node, path: &str, expected: &str, example: &str) {
        if node.value == Value::Invalid {
            return;
        }
        let found = node.kind();
        let mut help = format!("Write {expected}, e.g. `{example}`");
        if expected == "a string"
            && let Value::Scalar(s) = &node.value
        {
            help = format!("Quote the value to make it a string: `\"{}\"`", s.text);
        }
        self.push(
            Diagnostic::new(
                codes::TYPE,
                format!("Expected {expected} for `{path}`, found {found}"),
                node.location.clone(),
                found.to_string(),
            )
            .with_help(help),
        );
    }

    fn invalid(&mut self, node: &Node, path: &str, what: &str, text: &str, e: InvalidValue) {
        if node.value == Value::Invalid {
            return;
        }
        self.push(
            Diagnostic::new(
                codes::INVALID_VALUE,
                format!("Invalid {what} `{text}` for `{path}`"),
                node.location.clone(),
                e.reason,
            )
            .with_help(e.help),
        );
    }
}

// ---- scalar decoders -------------------------------------------------------------------

fn string(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    match &node.value {
        Value::Scalar(s) if matches!(s.resolve(), Resolved::Str(_)) => Some(s.text.clone()),
        _ => {
            cx.type_error(node, path, "a string", "text");
            None
        }
    }
}

fn integer(cx: &mut Cx, node: &Node, path: &str, example: &str) -> Option<i128> {
    match &node.value {
        Value::Scalar(s) => match s.resolve() {
            Resolved::Int(n) => Some(n),
            _ => {
                cx.type_error(node, path, "an integer", example);
                None
            }
        },
        _ => {
            cx.type_error(node, path, "an integer", example);
            None
        }
    }
}

fn count(cx: &mut Cx, node: &Node, path: &str, min: u32) -> Option<u32> {
    let n = integer(cx, node, path, "4")?;
    match u32::try_from(n) {
        Ok(v) if v >= min => Some(v),
        _ => {
            cx.invalid(
                node,
                path,
                "number",
                &n.to_string(),
                InvalidValue {
                    reason: format!("must be between {min} and {}", u32::MAX),
                    help: format!("Write a whole number of at least {min}"),
                },
            );
            None
        }
    }
}

fn boolean(cx: &mut Cx, node: &Node, path: &str) -> Option<bool> {
    match &node.value {
        Value::Scalar(s) => match s.resolve() {
            Resolved::Bool(b) => Some(b),
            _ => {
                cx.type_error(node, path, "a boolean", "true");
                None
            }
        },
        _ => {
            cx.type_error(node, path, "a boolean", "true");
            None
        }
    }
}

fn parsed<T>(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
) -> Option<T> {
    let text = string(cx, node, path)?;
    match parse(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            cx.invalid(node, path, what, &text, e);
            None
        }
    }
}

fn enumeration<T>(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    names: &[&'static str],
    from_name: fn(&str) -> Option<T>,
) -> Option<T> {
    let example = names.first().copied().unwrap_or("");
    let Value::Scalar(s) = &node.value else {
        cx.type_error(node, path, "a string", example);
        return None;
    };
    if let Some(v) = from_name(&s.text) {
        return Some(v);
    }
    let list = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let help = match did_you_mean(&s.text, names.iter().copied()) {
        Some(m) => format!("Did you mean `{m}`? The choices are {list}"),
        None => format!("The choices are {list}"),
    };
    cx.push(
        Diagnostic::new(
            codes::INVALID_VALUE,
            format!("Invalid value `{}` for `{path}`", s.text),
            node.location.clone(),
            "not one of the choices",
        )
        .with_help(help),
    );
    None
}

fn size(cx: &mut Cx, node: &Node, path: &str) -> Option<ByteSize> {
    if let Value::Scalar(s) = &node.value
        && let Resolved::Int(n) = s.resolve()
    {
        return match ByteSize::from_integer(n) {
            Ok(b) => Some(b),
            Err(e) => {
                cx.invalid(node, path, "size", &s.text, e);
                None
            }
        };
    }
    match &node.value {
        Value::Scalar(s) if matches!(s.resolve(), Resolved::Str(_)) => {
            parsed(cx, node, path, "size", ByteSize::parse)
        }
        _ => {
            cx.type_error(node, path, "a size", "2GiB");
            None
        }
    }
}

const NAME_HELP: &str = "Names use lower-case letters, digits, `_`, `.` and `-`, start with a letter or digit, and have at most 63 characters";

/// Whether `name` can name a model, template, policy, sandbox or project.
pub fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

fn check_name(cx: &mut Cx, name: &str, location: &Location, what: &str) {
    if !is_name(name) {
        cx.push(
            Diagnostic::new(
                codes::INVALID_VALUE,
                format!("Invalid {what} name `{name}`"),
                location.clone(),
                "not a valid name",
            )
            .with_help(NAME_HELP),
        );
    }
}

fn env_name(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let name = string(cx, node, path)?;
    if is_env_name(&name) {
        return Some(name);
    }
    cx.push(
        Diagnostic::new(
            codes::INVALID_VALUE,
            format!("Invalid environment variable name `{name}` for `{path}`"),
            node.location.clone(),
            "not a variable name",
        )
        .with_help("Names use letters, digits and `_`, and do not start with a digit"),
    );
    None
}

// ---- collections -------------------------------------------------------------------------

fn list<T>(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    mut item: impl FnMut(&mut Cx, &Node, &str) -> Option<T>,
) -> Vec<T> {
    match &node.value {
        Value::Null => Vec::new(),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let p = join(path, &i.to_string());
                cx.locations.insert(p.clone(), n.location.clone());
                item(cx, n, &p)
            })
            .collect(),
        _ => {
            cx.type_error(node, path, "a list", "[]");
            Vec::new()
        }
    }
}

fn entries<'n>(cx: &mut Cx, node: &'n Node, path: &str) -> &'n [Entry] {
    match &node.value {
        Value::Null => &[],
        Value::Mapping(entries) => entries,
        _ => {
            cx.type_error(node, path, "a mapping", "{}");
            &[]
        }
    }
}

fn map<T>(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    key_check: impl Fn(&mut Cx, &str, &Location),
    mut value: impl FnMut(&mut Cx, &Entry, &str) -> Option<T>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    for entry in entries(cx, node, path) {
        let p = join(path, &entry.key);
        cx.locations.insert(p.clone(), entry.value.location.clone());
        cx.keys.insert(p.clone(), entry.key_location.clone());
        key_check(cx, &entry.key, &entry.key_location);
        if let Some(v) = value(cx, entry, &p) {
            out.insert(entry.key.clone(), v);
        }
    }
    out
}

fn env_map(cx: &mut Cx, node: &Node, path: &str) -> BTreeMap<String, String> {
    map(
        cx,
        node,
        path,
        |cx, key, location| {
            if !is_env_name(key) {
                cx.push(
                    Diagnostic::new(
                        codes::INVALID_VALUE,
                        format!("Invalid environment variable name `{key}`"),
                        location.clone(),
                        "not a variable name",
                    )
                    .with_help("Names use letters, digits and `_`, and do not start with a digit"),
                );
            }
        },
        |cx, entry, p| match &entry.value.value {
            Value::Scalar(s) if !matches!(s.resolve(), Resolved::Null) => Some(s.text.clone()),
            _ => {
                cx.type_error(&entry.value, p, "a string", "value");
                None
            }
        },
    )
}

/// Reads a mapping's keys one by one; [`MapReader::finish`] reports the unknown ones.
pub struct MapReader<'n> {
    path: String,
    entries: &'n [Entry],
    used: Vec<bool>,
    known: Vec<&'static str>,
    /// Where to report a missing key: the key of this mapping.
    anchor: Location,
}

impl<'n> MapReader<'n> {
    /// A reader for `node` at `path`; a null node reads as an empty mapping. `anchor` is
    /// where a missing key is reported (the mapping's own key).
    pub fn new(cx: &mut Cx, node: &'n Node, path: &str, anchor: Location) -> Self {
        let entries = entries(cx, node, path);
        MapReader {
            path: path.to_owned(),
            entries,
            used: vec![false; entries.len()],
            known: Vec::new(),
            anchor,
        }
    }

    fn take(&mut self, cx: &mut Cx, key: &'static str) -> Option<(&'n Node, String)> {
        self.known.push(key);
        let i = self.entries.iter().position(|e| e.key == key)?;
        if let Some(used) = self.used.get_mut(i) {
            *used = true;
        }
        let entry = self.entries.get(i)?;
        let path = join(&self.path, key);
        cx.locations
            .insert(path.clone(), entry.value.location.clone());
        cx.keys.insert(path.clone(), entry.key_location.clone());
        Some((&entry.value, path))
    }

    /// The value of `key` decoded with `f`; `None` if absent, null or invalid.
    pub fn optional<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        f: impl FnOnce(&mut Cx, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        let (node, path) = self.take(cx, key)?;
        if node.is_null() {
            return None;
        }
        f(cx, node, &path)
    }

    /// The value of `key` decoded with `f`, reporting it when absent or null.
    pub fn required<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        example: &str,
        f: impl FnOnce(&mut Cx, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        match self.take(cx, key) {
            Some((node, path)) if !node.is_null() => f(cx, node, &path),
            found => {
                let location = found.map_or(self.anchor.clone(), |(n, _)| n.location.clone());
                let within = if self.path.is_empty() {
                    "the file".to_owned()
                } else {
                    format!("`{}`", self.path)
                };
                cx.push(
                    Diagnostic::new(
                        codes::MISSING_KEY,
                        format!("Missing key `{key}` in {within}"),
                        location,
                        format!("`{key}` is required"),
                    )
                    .with_help(format!("Add `{key}: {example}`")),
                );
                None
            }
        }
    }

    /// Reports every key that was not asked for.
    pub fn finish(self, cx: &mut Cx) {
        for (entry, used) in self.entries.iter().zip(&self.used) {
            if *used {
                continue;
            }
            let within = if self.path.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in `{}`", self.path)
            };
            let known = self.known.iter().copied();
            let help = match did_you_mean(&entry.key, known) {
                Some(m) => format!("Did you mean `{m}`?"),
                None if self.known.is_empty() => "No keys are allowed here; write `{}`".to_owned(),
                None => format!(
                    "The keys allowed here are {}",
                    self.known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            cx.push(
                Diagnostic::new(
                    codes::UNKNOWN_KEY,
                    format!("Unknown key `{}` {within}", entry.key),
                    entry.key_location.clone(),
                    "unknown key",
                )
                .with_help(help),
            );
        }
    }
}

// ---- the model ---------------------------------------------------------------------------

/// Decodes the merged root mapping. The result holds what decoded; `cx` holds the problems.
pub fn spec(cx: &mut Cx, root: &Node, declared: &mut Declared) -> Spec {
    let top_anchor = match &root.value {
        Value::Mapping(entries) => entries
            .first()
            .map_or(root.location.clone(), |e| e.key_location.clone()),
        _ => root.location.clone(),
    };
    let mut m = MapReader::new(cx, root, "", top_anchor);
    let version = m.required(cx, "version", "1", |cx, node, path| {
        let v = integer(cx, node, path, "1")?;
        if v == 1 {
            Some(1)
        } else {
            cx.push(
                Diagnostic::new(
                    codes::INVALID_VALUE,
                    format!("Unsupported version `{v}`"),
                    node.location.clone(),
                    "only version 1 exists",
                )
                .with_help("Write `version: 1`"),
            );
            None
        }
    });
    let name = m.optional(cx, "name", |cx, node, path| {
        let name = string(cx, node, path)?;
        check_name(cx, &name, &node.location, "project");
        Some(name)
    });
    let gateway = m
        .optional(cx, "gateway", |cx, node, path| {
            Some(gateway(cx, node, path))
        })
        .unwrap_or_default();
    let engines = m
        .optional(cx, "engines", |cx, node, path| {
            Some(engines(cx, node, path))
        })
        .unwrap_or_default();
    // Names first: a template's `from` and the references need them.
    for (key, set) in [
        ("models", &mut declared.models),
        ("templates", &mut declared.templates),
        ("network_policies", &mut declared.policies),
    ] {
        if let Value::Mapping(entries) = &root_value(root, key) {
            set.extend(entries.iter().map(|e| e.key.clone()));
        }
    }
    let models = m
        .optional(cx, "models", |cx, node, path| {
            Some(map(
                cx,
                node,
                path,
                |cx, k, l| check_name(cx, k, l, "model"),
                model,
            ))
        })
        .unwrap_or_default();
    let template_names = declared.templates.clone();
    let templates = m
        .optional(cx, "templates", |cx, node, path| {
            Some(map(
                cx,
                node,
                path,
                |cx, k, l| check_name(cx, k, l, "template"),
                |cx, e, p| template(cx, e, p, &template_names),
            ))
        })
        .unwrap_or_default();
    let network_policies = m
        .optional(cx, "network_policies", |cx, node, path| {
            Some(map(
                cx,
                node,
                path,
                |cx, k, l| check_name(cx, k, l, "network policy"),
                policy,
            ))
        })
        .unwrap_or_default();
    let sandboxes = m
        .optional(cx, "sandboxes", |cx, node, path| {
            Some(map(
                cx,
                node,
                path,
                |cx, k, l| check_name(cx, k, l, "sandbox"),
                sandbox,
            ))
        })
        .unwrap_or_default();
    m.finish(cx);
    Spec {
        version: version.unwrap_or(1),
        name,
        gateway,
        engines,
        models,
        templates,
        network_policies,
        sandboxes,
    }
}

fn root_value<'n>(root: &'n Node, key: &str) -> &'n Value {
    match &root.value {
        Value::Mapping(entries) => entries
            .iter()
            .find(|e| e.key == key)
            .map_or(&Value::Null, |e| &e.value.value),
        _ => &Value::Null,
    }
}

fn key_anchor(cx: &Cx, path: &str, node: &Node) -> Location {
    cx.keys
        .get(path)
        .cloned()
        .unwrap_or_else(|| node.location.clone())
}

fn gateway(cx: &mut Cx, node: &Node, path: &str) -> Gateway {
    let anchor = key_anchor(cx, path, node);
    let mut m = MapReader::new(cx, node, path, anchor);
    let default = Gateway::default();
    let g = Gateway {
        listen: m
            .optional(cx, "listen", |cx, n, p| {
                parsed(cx, n, p, "listen address", parse_listen)
            })
            .unwrap_or(default.listen),
        cors_origins: m
            .optional(cx, "cors_origins", |cx, n, p| Some(list(cx, n, p, string)))
            .unwrap_or_default(),
        api_key_env: m.optional(cx, "api_key_env", env_name),
        memory_budget: m.optional(cx, "memory_budget", size),
    };
    m.finish(cx);
    g
}

fn engines(cx: &mut Cx, node: &Node, path: &str) -> Engines {
    let anchor = key_anchor(cx, path, node);
    let mut m = MapReader::new(cx, node, path, anchor);
    let llama_cpp = m
        .optional(cx, "llama.cpp", |cx, n, p| {
            let anchor = key_anchor(cx, p, n);
            let mut r = MapReader::new(cx, n, p, anchor);
            let d = LlamaCppDefaults {
                threads: r.optional(cx, "threads", |cx, n, p| count(cx, n, p, 1)),
                parallel: r.optional(cx, "parallel", |cx, n, p| count(cx, n, p, 1)),
                gpu_layers: r
                    .optional(cx, "gpu_layers", |cx, n, p| match &n.value {
                        Value::Scalar(s) if matches!(s.resolve(), Resolved::Int(_)) => {
                            count(cx, n, p, 0).map(GpuLayers::Count)
                        }
                        Value::Scalar(s) if s.text == "auto" => Some(GpuLayers::Auto),
                        _ => {
                            cx.type_error(n, p, "a layer count or `auto`", "auto");
                            None
                        }
                    })
                    .unwrap_or_default(),
            };
            r.finish(cx);
            Some(d)
        })
        .unwrap_or_default();
    let vllm = m
        .optional(cx, "vllm", |cx, n, p| {
            let anchor = key_anchor(cx, p, n);
            let mut r = MapReader::new(cx, n, p, anchor);
            let d = VllmDefaults {
                gpu_memory_utilization: r.optional(cx, "gpu_memory_utilization", fraction),
                tensor_parallel_size: r
                    .optional(cx, "tensor_parallel_size", |cx, n, p| count(cx, n, p, 1)),
                hf_overrides: r
                    .optional(cx, "hf_overrides", |cx, n, p| {
                        Some(map(
                            cx,
                            n,
                            p,
                            |_, _, _| {},
                            |cx, e, p| json(cx, &e.value, p),
                        ))
                    })
                    .unwrap_or_default(),
            };
            r.finish(cx);
            Some(d)
        })
        .unwrap_or_default();
    let diffusers = m
        .optional(cx, "diffusers", |cx, n, p| {
            let anchor = key_anchor(cx, p, n);
            MapReader::new(cx, n, p, anchor).finish(cx);
            Some(DiffusersDefaults {})
        })
        .unwrap_or_default();
    m.finish(cx);
    Engines {
        llama_cpp,
        vllm,
        diffusers,
    }
}

fn fraction(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let value = match &node.value {
        Value::Scalar(s) => match s.resolve() {
            Resolved::Int(n) => Some(n as f64),
            Resolved::Float(f) => Some(f),
            _ => None,
        },
        _ => None,
    };
    let Some(v) = value else {
        cx.type_error(node, path, "a number", "0.9");
        return None;
    };
    if v > 0.0 && v <= 1.0 {
        return Some(v);
    }
    cx.push(
        Diagnostic::new(
            codes::INVALID_VALUE,
            format!("Invalid fraction `{v}` for `{path}`"),
            node.location.clone(),
            "must be above 0 and at most 1",
        )
        .with_help("Write a fraction such as `0.9`"),
    );
    None
}

/// A node as JSON; recursion is bounded by the loader's depth limit.
fn json(cx: &mut Cx, node: &Node, path: &str) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match &node.value {
        Value::Invalid => return None,
        Value::Null => J::Null,
        Value::Scalar(s) => match s.resolve() {
            Resolved::Null => J::Null,
            Resolved::Bool(b) => J::Bool(b),
            Resolved::Int(n) => match i64::try_from(n) {
                Ok(i) => J::from(i),
                Err(_) => match u64::try_from(n) {
                    Ok(u) => J::from(u),
                    Err(_) => J::String(s.text.clone()),
                },
            },
            Resolved::Float(f) => match serde_json::Number::from_f64(f) {
                Some(n) => J::Number(n),
                None => {
                    cx.invalid(
                        node,
                        path,
                        "number",
                        &s.text,
                        InvalidValue {
                            reason: "not a finite number".to_owned(),
                            help: "JSON has no infinities or NaN; write a finite number".to_owned(),
                        },
                    );
                    return None;
                }
            },
            Resolved::Str(t) => J::String(t.to_owned()),
        },
        Value::Sequence(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.push(json(cx, item, &join(path, &i.to_string()))?);
            }
            J::Array(out)
        }
        Value::Mapping(entries) => {
            let mut out = serde_json::Map::new();
            for e in entries {
                out.insert(e.key.clone(), json(cx, &e.value, &join(path, &e.key))?);
            }
            J::Object(out)
        }
    })
}

fn model(cx: &mut Cx, entry: &Entry, path: &str) -> Option<Model> {
    let mut m = MapReader::new(cx, &entry.value, path, entry.key_location.clone());
    let source = m.required(cx, "source", "ai/smollm2", |cx, n, p| {
        parsed(cx, n, p, "model source", Source::parse)
    });
    let engine = m.optional(cx, "engine", |cx, n, p| {
        enumeration(cx, n, p, EngineKind::NAMES, EngineKind::from_name)
    });
    let context_size = m.optional(cx, "context_size", |cx, n, p| count(cx, n, p, 1));
    let parallel = m.optional(cx, "parallel", |cx, n, p| count(cx, n, p, 1));
    let keep_alive = m.optional(cx, "keep_alive", keep_alive);
    let preload = m.optional(cx, "preload", boolean).unwrap_or(false);
    let mode = m
        .optional(cx, "mode", |cx, n, p| {
            enumeration(cx, n, p, ModelMode::NAMES, ModelMode::from_name)
        })
        .unwrap_or_default();
    let runtime_flags = m
        .optional(cx, "runtime_flags", |cx, n, p| {
            let entries = list(cx, n, p, |cx, n, p| {
                string(cx, n, p).map(|flag| (flag, n.location.clone()))
            });
            // Other engines' flags are checked when those engines are served.
            if matches!(engine, None | Some(EngineKind::LlamaCpp)) {
                let flags: Vec<String> = entries.iter().map(|(flag, _)| flag.clone()).collect();
                for e in runtime_flags::parse(&flags).err().unwrap_or_default() {
                    cx.push(
                        Diagnostic::new(
                            codes::INVALID_VALUE,
                            e.message,
                            entries[e.index].1.clone(),
                            e.label,
                        )
                        .with_help(e.help),
                    );
                }
            }
            Some(entries.into_iter().map(|(flag, _)| flag).collect())
        })
        .unwrap_or_default();
    m.finish(cx);
    Some(Model {
        source: source?,
        engine,
        context_size,
        parallel,
        keep_alive,
        preload,
        mode,
        runtime_flags,
    })
}

fn keep_alive(cx: &mut Cx, node: &Node, path: &str) -> Option<KeepAlive> {
    let (text, result) = match &node.value {
        Value::Scalar(s) => match s.resolve() {
            Resolved::Int(n) => (s.text.clone(), KeepAlive::from_integer(n)),
            Resolved::Str(t) => (t.to_owned(), KeepAlive::parse(t)),
            _ => {
                cx.type_error(node, path, "a duration", "5m");
                return None;
            }
        },
        _ => {
            cx.type_error(node, path, "a duration", "5m");
            return None;
        }
    };
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            cx.invalid(node, path, "duration", &text, e);
            None
        }
    }
}

fn reference(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    string(cx, node, path)
}

fn template(
    cx: &mut Cx,
    entry: &Entry,
    path: &str,
    templates: &BTreeSet<String>,
) -> Option<Template> {
    let mut m = MapReader::new(cx, &entry.value, path, entry.key_location.clone());
    let from = m.required(cx, "from", "docker/sandbox-templates:shell", |cx, n, p| {
        let text = string(cx, n, p)?;
        if templates.contains(&text) {
            return Some(TemplateFrom::Template(text));
        }
        if is_path(&text) {
            return Some(TemplateFrom::Path(text));
        }
        let bare = !text.contains(['/', ':', '@']);
        if bare
            && let Some(close) = did_you_mean(&text, templates.iter().map(String::as_str)) {
                cx.push(
                    Diagnostic::new(
                        codes::UNRESOLVED_REFERENCE,
                        format!("Template `{text}` is not defined"),
                        n.location.clone(),
                        "no template of this name",
                    )
                    .with_help(format!(
                        "Did you mean `{close}`? For the image, write `docker.io/library/{text}`"
                    )),
                );
                return None;
            }
        match OciRef::parse_image(&text) {
            Ok(r) => Some(TemplateFrom::Image(r)),
            Err(mut e) => {
                e.help = "Write the name of a template of this file, a directory starting with `./`, or an image reference such as `debian:bookworm`".to_owned();
                cx.invalid(n, p, "template base", &text, e);
                None
            }
        }
    });
    let run = m
        .optional(cx, "run", |cx, n, p| Some(list(cx, n, p, string)))
        .unwrap_or_default();
    let network_policy = m.optional(cx, "network_policy", reference);
    let env = m
        .optional(cx, "env", |cx, n, p| Some(env_map(cx, n, p)))
        .unwrap_or_default();
    m.finish(cx);
    Some(Template {
        from: from?,
        run,
        network_policy,
        env,
    })
}

fn rules(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<HostRule>> {
    Some(list(cx, node, path, |cx, n, p| {
        parsed(cx, n, p, "host rule", HostRule::parse)
    }))
}

fn policy(cx: &mut Cx, entry: &Entry, path: &str) -> Option<NetworkPolicy> {
    let mut m = MapReader::new(cx, &entry.value, path, entry.key_location.clone());
    let default = m
        .optional(cx, "default", |cx, n, p| {
            enumeration(cx, n, p, PolicyDefault::NAMES, PolicyDefault::from_name)
        })
        .unwrap_or_default();
    let allow = m.optional(cx, "allow", rules).unwrap_or_default();
    let deny = m.optional(cx, "deny", rules).unwrap_or_default();
    let bypass = m.optional(cx, "bypass", rules).unwrap_or_default();
    let credentials = m
        .optional(cx, "credentials", |cx, n, p| {
            Some(list(cx, n, p, |cx, n, p| {
                let anchor = n.location.clone();
                let mut c = MapReader::new(cx, n, p, anchor);
                let host = c.required(cx, "host", "api.example.com", |cx, n, p| {
                    parsed(cx, n, p, "host", normalize_hostname)
                });
                let header = c.required(cx, "header", "authorization", |cx, n, p| {
                    let h = string(cx, n, p)?;
                    let token = !h.is_empty()
                        && h.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
                    if token {
                        return Some(h);
                    }
                    cx.push(
                        Diagnostic::new(
                            codes::INVALID_VALUE,
                            format!("Invalid header name `{h}` for `{p}`"),
                            n.location.clone(),
                            "not an HTTP header name",
                        )
                        .with_help("Write a header name such as `authorization` or `x-api-key`"),
                    );
                    None
                });
                let from_env = c.required(cx, "from_env", "API_KEY", env_name);
                c.finish(cx);
                Some(Credential {
                    host: host?,
                    header: header?,
                    from_env: from_env?,
                })
            }))
        })
        .unwrap_or_default();
    m.finish(cx);
    Some(NetworkPolicy {
        default,
        allow,
        deny,
        bypass,
        credentials,
    })
}

/// `agent: codex` or `agent: {name: codex, model: coder}`.
fn agent_choice(cx: &mut Cx, node: &Node, path: &str) -> Option<AgentChoice> {
    let name =
        |cx: &mut Cx, n: &Node, p: &str| enumeration(cx, n, p, Agent::NAMES, Agent::from_name);
    if !matches!(node.value, Value::Mapping(_)) {
        return name(cx, node, path).map(AgentChoice::from);
    }
    let mut m = MapReader::new(cx, node, path, node.location.clone());
    let agent = m.required(cx, "name", "codex", name);
    let model = m.optional(cx, "model", reference);
    m.finish(cx);
    Some(AgentChoice {
        name: agent?,
        model,
    })
}

/// The smallest memory a sandbox may have.
pub const MIN_SANDBOX_MEMORY: u64 = 64 << 20;

fn sandbox(cx: &mut Cx, entry: &Entry, path: &str) -> Option<Sandbox> {
    let mut m = MapReader::new(cx, &entry.value, path, entry.key_location.clone());
    let template = m.required(cx, "template", "dev", reference);
    let agent = m.optional(cx, "agent", agent_choice).unwrap_or_default();
    let args = m
        .optional(cx, "args", |cx, n, p| Some(list(cx, n, p, string)))
        .unwrap_or_default();
    let workspace = m
        .optional(cx, "workspace", |cx, n, p| {
            let w = string(cx, n, p)?;
            if w.is_empty() {
                cx.push(
                    Diagnostic::new(
                        codes::INVALID_VALUE,
                        format!("Empty workspace for `{p}`"),
                        n.location.clone(),
                        "empty",
                    )
                    .with_help("Write a directory, e.g. `.`"),
                );
                return None;
            }
            Some(w)
        })
        .unwrap_or_else(|| ".".to_owned());
    let isolation = m
        .optional(cx, "isolation", |cx, n, p| {
            enumeration(cx, n, p, Isolation::NAMES, Isolation::from_name)
        })
        .unwrap_or_default();
    let cpus = m.optional(cx, "cpus", |cx, n, p| count(cx, n, p, 1));
    let memory = m.optional(cx, "memory", |cx, n, p| {
        let s = size(cx, n, p)?;
        if s.0 >= MIN_SANDBOX_MEMORY {
            return Some(s);
        }
        cx.push(
            Diagnostic::new(
                codes::INVALID_VALUE,
                format!("Sandbox memory for `{p}` is below 64MiB"),
                n.location.clone(),
                format!("{} bytes", s.0),
            )
            .with_help("Give the sandbox at least `64MiB`; agents usually need `1GiB` or more"),
        );
        None
    });
    let network_policy = m.optional(cx, "network_policy", reference);
    let models = m
        .optional(cx, "models", |cx, n, p| Some(list(cx, n, p, reference)))
        .unwrap_or_default();
    let ports = m
        .optional(cx, "ports", |cx, n, p| {
            Some(list(cx, n, p, |cx, n, p| {
                parsed(cx, n, p, "port mapping", PortMapping::parse)
            }))
        })
        .unwrap_or_default();
    let env = m
        .optional(cx, "env", |cx, n, p| Some(env_map(cx, n, p)))
        .unwrap_or_default();
    m.finish(cx);
    Some(Sandbox {
        template: template?,
        agent,
        args,
        workspace,
        isolation,
        cpus,
        memory,
        network_policy,
        models,
        ports,
        env,
    })
}
