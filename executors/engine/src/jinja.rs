//! What Jinja is under `transformers`, so that chat templates written for Hugging Face render
//! the same bytes here: values print as Python's `str` prints them, `none` is not iterable,
//! and `transformers`' own additions: its `tojson` (Python's `json.dumps`, not Jinja's
//! HTML-escaping filter), `strftime_now`, and its `{% generation %}` block.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Output, State, Value};
use time::OffsetDateTime;

/// How `json.dumps` lays out what it writes.
struct Layout {
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// `value | tojson(indent=None, separators=None, sort_keys=False, ensure_ascii=False)`, as
/// `transformers` defines it: `json.dumps` with those arguments.
pub(crate) fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let indent = match indent.or(kwargs.get::<Option<Value>>("indent")?) {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(text) => text.to_owned(),
            None => " ".repeat(v.as_usize().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: `indent` must be a count or a string",
                )
            })?),
        }),
    };
    let (item, key) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(pair) if pair.len() == 2 => (pair[0].clone(), pair[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: `separators` must be two strings",
            ));
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let layout = Layout {
        indent,
        item,
        key,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_value(&mut out, value, &layout, 0)?;
    Ok(out)
}

fn write_value(
    out: &mut String,
    value: &Value,
    layout: &Layout,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => write!(out, "{value}").expect("a String"),
        ValueKind::Number => out.push_str(&python_float(f64::try_from(value.clone())?)),
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), layout),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), &items, layout, depth, |out, item| {
                write_value(out, item, layout, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = value
                .try_iter()?
                .map(|k| Ok((key_text(&k)?, value.get_item(&k)?)))
                .collect::<Result<_, Error>>()?;
            if layout.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, ('{', '}'), &entries, layout, depth, |out, (k, v)| {
                write_string(out, k, layout);
                out.push_str(&layout.key);
                write_value(out, v, layout, depth + 1)
            })?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of kind {kind} is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

/// `[a, b]`, or with an indent each item on its own line, as `json.dumps` writes them.
fn write_container<T>(
    out: &mut String,
    (open, close): (char, char),
    items: &[T],
    layout: &Layout,
    depth: usize,
    mut write_item: impl FnMut(&mut String, &T) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(indent) = &layout.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&layout.item);
        }
        newline(out, depth + 1);
        write_item(out, item)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A dict key as `json.dumps` turns it into a string.
fn key_text(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::None => "null".to_owned(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
        ValueKind::Number if key.is_integer() => key.to_string(),
        ValueKind::Number => python_float(f64::try_from(key.clone())?),
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
            ));
        }
    })
}

fn write_string(out: &mut String, text: &str, layout: &Layout) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' || (layout.ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").expect("a String");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it: the shortest digits that read back, positional for
/// exponents from -4 to 15 (always with a fraction), scientific beyond (`1e-05`, `1e+16`).
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    if (-4..16).contains(&exponent) {
        let positional = format!("{f}");
        return if positional.contains('.') {
            positional
        } else {
            format!("{positional}.0")
        };
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

/// Writes `{{ value }}` as Jinja under Python does: `str(value)`, so `None`, `True`, and dicts
/// and lists in Python's notation (templates print tool lists with `{{ tools }}`).
pub(crate) fn format(out: &mut Output, _: &State, value: &Value) -> Result<(), Error> {
    out.write_str(&string(value)?).map_err(Error::from)
}

/// `value | string`: Python's `str(value)`, as [`format`] prints it.
pub(crate) fn string(value: &Value) -> Result<String, Error> {
    let mut text = String::new();
    python_str(&mut text, value)?;
    Ok(text)
}

/// `x is iterable` as Python answers it: `None` is not (minijinja iterates it as empty).
pub(crate) fn is_iterable(value: &Value) -> bool {
    !value.is_none() && !value.is_undefined() && value.try_iter().is_ok()
}

/// Python's `str(value)`: strings as they are, everything else as `repr`.
fn python_str(out: &mut String, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        _ => python_repr(out, value)?,
    }
    Ok(())
}

/// Python's `repr(value)` for what JSON and templates make: `None`, `True`, `1.0`, `'text'`,
/// `[…]` and `{'key': …}`.
fn python_repr(out: &mut String, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if value.is_integer() => write!(out, "{value}").expect("a String"),
        ValueKind::Number => out.push_str(&match f64::try_from(value.clone())? {
            f if f.is_nan() => "nan".to_owned(),
            f if f.is_infinite() => if f > 0.0 { "inf" } else { "-inf" }.to_owned(),
            f => python_float(f),
        }),
        ValueKind::String => python_string_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &key)?;
                out.push_str(": ");
                python_repr(out, &value.get_item(&key)?)?;
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &item)?;
            }
            out.push(']');
        }
        _ => write!(out, "{value}").expect("a String"),
    }
    Ok(())
}

/// A string as Python's `repr` quotes it: single quotes unless it holds one and no double.
fn python_string_repr(out: &mut String, text: &str) {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                write!(out, "\\x{:02x}", c as u32).expect("a String");
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// `strftime_now(format)`: the time now, in UTC (an engine has no local zone of its own), for
/// the formats templates use.
pub(crate) fn strftime_now(format: &str) -> String {
    strftime(OffsetDateTime::now_utc(), format)
}

fn strftime(at: OffsetDateTime, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[usize::from(u8::from(at.month())) - 1];
    let weekday = at.weekday().to_string();
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => write!(out, "{}", at.year()),
            Some('y') => write!(out, "{:02}", at.year().rem_euclid(100)),
            Some('m') => write!(out, "{:02}", u8::from(at.month())),
            Some('d') => write!(out, "{:02}", at.day()),
            Some('B') => write!(out, "{month}"),
            Some('b') => write!(out, "{}", &month[..3]),
            Some('A') => write!(out, "{weekday}"),
            Some('a') => write!(out, "{}", &weekday[..3]),
            Some('H') => write!(out, "{:02}", at.hour()),
            Some('M') => write!(out, "{:02}", at.minute()),
            Some('S') => write!(out, "{:02}", at.second()),
            Some('j') => write!(out, "{:03}", at.ordinal()),
            Some('%') => write!(out, "%"),
            // As glibc's strftime does, an unknown directive is written as it is.
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        }
        .expect("a String");
    }
    out
}

/// The template without `transformers`' `{% generation %}` … `{% endgeneration %}` block tags,
/// which only mark the assistant's text for training masks and render their body unchanged.
/// Each becomes an `if true` block with the same whitespace control, so the bytes around it
/// are trimmed exactly as before.
pub(crate) fn without_generation_tags(template: &str) -> std::borrow::Cow<'_, str> {
    if !template.contains("generation") {
        return template.into();
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let keyword = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let replacement = match keyword {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(replacement) => {
                out.push_str("{%");
                out.push_str(&inner.replacen(keyword, replacement, 1));
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out.into()
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;
    use time::macros::datetime;

    use super::*;

    fn render(source: &str, context: Value) -> String {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        env.render_str(source, context).unwrap()
    }

    #[test]
    fn tojson_writes_what_json_dumps_writes() {
        let value = Value::from_serialize(serde_json::json!({
            "name": "é<&>'\"\n", "n": 3, "f": 0.5, "tiny": 1e-5, "big": 1e16, "whole": 2.0,
            "list": [true, null, []], "empty": {}
        }));
        // Keys keep their order: serde_json's map is sorted, so this is that order.
        assert_eq!(
            render(
                "{{ v | tojson }}",
                minijinja::context! { v => value.clone() }
            ),
            r#"{"big": 1e+16, "empty": {}, "f": 0.5, "list": [true, null, []], "n": 3, "name": "é<&>'\"\n", "tiny": 1e-05, "whole": 2.0}"#
        );
        assert_eq!(
            render(
                "{{ v.list | tojson(indent=2) }}|{{ v.n | tojson(2) }}|{{ v.name | tojson(ensure_ascii=true) }}",
                minijinja::context! { v => value }
            ),
            "[\n  true,\n  null,\n  []\n]|3|\"\\u00e9<&>'\\\"\\n\""
        );
        assert_eq!(
            render(
                "{{ {'b': 1, 'a': [1, 2]} | tojson(separators=[',', ':']) }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}",
                Value::UNDEFINED
            ),
            r#"{"b":1,"a":[1,2]}|{"a": 2, "b": 1}"#
        );
    }

    #[test]
    fn values_print_as_python_prints_them() {
        let mut env = Environment::new();
        env.set_formatter(format);
        env.add_test("iterable", is_iterable);
        env.add_filter("string", string);
        let tools = Value::from_serialize(serde_json::json!([
            {"name": "f", "required": true, "none": null, "x": 1.5, "q": "it's \"q\"\n"}
        ]));
        let out = env
            .render_str(
                "{{ tools }}|{{ none }}|{{ true }}|{{ nothing }}|{{ none is iterable }}|{{ tools is iterable }}|{{ tools[0] | string }}",
                minijinja::context! { tools => tools },
            )
            .unwrap();
        assert_eq!(
            out,
            r#"[{'name': 'f', 'none': None, 'q': 'it\'s "q"\n', 'required': True, 'x': 1.5}]|None|True||False|True|{'name': 'f', 'none': None, 'q': 'it\'s "q"\n', 'required': True, 'x': 1.5}"#
        );
    }

    #[test]
    fn strftime_writes_the_formats_templates_use() {
        let at = datetime!(2026-12-05 04:39:45 UTC);
        assert_eq!(strftime(at, "%d %b %Y"), "05 Dec 2026");
        assert_eq!(strftime(at, "%B %d, %Y"), "December 05, 2026");
        assert_eq!(
            strftime(at, "%Y-%m-%d %H:%M:%S %a %j %% %Q"),
            "2026-12-05 04:39:45 Sat 339 % %Q"
        );
    }

    #[test]
    fn generation_tags_render_their_body_with_the_same_trimming() {
        let source =
            "A\n{%- generation -%}\n B {% endgeneration %}C{% if x %}generation{% endif %}";
        let rewritten = without_generation_tags(source);
        assert_eq!(
            rewritten,
            "A\n{%- if true -%}\n B {% endif %}C{% if x %}generation{% endif %}"
        );
        assert_eq!(render(&rewritten, Value::UNDEFINED), "AB C");
    }
}
