//! Mutations of a valid file never make `parse` panic, and every diagnostic points inside
//! the text, on character boundaries.

use std::collections::BTreeMap;

use aistack_spec::{SourceFile, parse};
use proptest::prelude::*;

const FULL: &str = include_str!("fixtures/full.yaml");
const CONVENIENCES: &str = include_str!("fixtures/conveniences.yaml");

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    SwapLines(usize, usize),
    DuplicateLine(usize),
    ReplaceValue(usize, &'static str),
    Insert(usize, String),
    DeleteChar(usize),
    Nest(usize, usize),
}

fn char_boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len().max(1);
    match mutation {
        Mutation::Truncate(at) => text[..char_boundary(text, *at)].to_owned(),
        Mutation::SwapLines(a, b) => {
            let mut lines = lines.clone();
            if !lines.is_empty() {
                lines.swap(a % n, b % n);
            }
            lines.join("\n")
        }
        Mutation::DuplicateLine(a) => {
            let mut lines = lines.clone();
            if let Some(line) = lines.get(a % n).copied() {
                lines.insert(a % n, line);
            }
            lines.join("\n")
        }
        Mutation::ReplaceValue(a, value) => {
            let mut lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
            if let Some(line) = lines.get_mut(a % n)
                && let Some(i) = line.find(": ")
            {
                line.truncate(i + 2);
                line.push_str(value);
            }
            lines.join("\n")
        }
        Mutation::Insert(at, bytes) => {
            let at = char_boundary(text, *at);
            format!("{}{bytes}{}", &text[..at], &text[at..])
        }
        Mutation::DeleteChar(at) => {
            let at = char_boundary(text, *at);
            let mut out = text.to_owned();
            if at < out.len() {
                out.remove(at);
            }
            out
        }
        Mutation::Nest(at, depth) => {
            let at = char_boundary(text, *at);
            let open = "{a: [".repeat(*depth);
            let close = "]}".repeat(*depth);
            format!("{}{open}1{close}{}", &text[..at], &text[at..])
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let values = prop::sample::select(vec![
        "1",
        "-1",
        "0.5",
        "true",
        "null",
        "~",
        "\"\"",
        "[]",
        "{}",
        "[1, {a: b}]",
        "{x: [y]}",
        "*nope",
        "&a x",
        "!!binary x",
        "!tag x",
        "${UNSET}",
        "${SET:-4}",
        "$",
        "'unterminated",
        "\"\\u00e9\"",
        "é\u{0301}🦀",
        "0x1F",
        ".inf",
        "99999999999999999999999",
        "a: b: c",
        "|\n  block",
        "- item",
        "<<: *a",
    ]);
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), values).prop_map(|(a, v)| Mutation::ReplaceValue(a, v)),
        (any::<usize>(), any::<String>()).prop_map(|(a, s)| Mutation::Insert(a, s)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(a, b)| { Mutation::Insert(a, String::from_utf8_lossy(&b).into_owned()) }),
        (
            any::<usize>(),
            prop::sample::select(vec![
                ":", "-", "[", "{", "}", "]", "\t", "\n", "#", "&", "*", "!", "'", "\"", "? ",
                "---\n", "\u{FEFF}", "\u{2028}"
            ])
        )
            .prop_map(|(a, s)| Mutation::Insert(a, s.to_owned())),
        any::<usize>().prop_map(Mutation::DeleteChar),
        (any::<usize>(), 1usize..200).prop_map(|(a, d)| Mutation::Nest(a, d)),
    ]
}

/// Case count, raised with `MUTATION_CASES=100000` for a longer hunt.
fn cases(default: u32) -> u32 {
    std::env::var("MUTATION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn check(texts: &[String]) -> Result<(), TestCaseError> {
    let files: Vec<SourceFile> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| SourceFile {
            name: format!("f{i}.yaml"),
            text: t.clone(),
        })
        .collect();
    let env: BTreeMap<String, String> = [("SET".to_owned(), "2".to_owned())].into();
    match parse(&files, &env) {
        Ok(doc) => {
            for (path, l) in &doc.locations {
                let text = &texts[l.file];
                prop_assert!(
                    l.span.start <= l.span.end && l.span.end <= text.len(),
                    "{path}"
                );
                prop_assert!(
                    text.is_char_boundary(l.span.start) && text.is_char_boundary(l.span.end)
                );
            }
        }
        Err(diagnostics) => {
            prop_assert!(!diagnostics.is_empty());
            for d in &diagnostics {
                let Some(text) = texts.get(d.location.file) else {
                    return Err(TestCaseError::fail(format!("bad file index in {d:?}")));
                };
                let span = &d.location.span;
                prop_assert!(span.start <= span.end && span.end <= text.len(), "{d:?}");
                prop_assert!(
                    text.is_char_boundary(span.start) && text.is_char_boundary(span.end),
                    "{d:?}"
                );
                prop_assert!(d.code.starts_with("aistack::"));
                prop_assert!(!d.message.is_empty() && !d.message.contains('\n'), "{d:?}");
                let _ = d.location.line_col(text);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3000), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_full_file(mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut text = FULL.to_owned();
        for m in &mutations {
            text = apply(&text, m);
        }
        check(&[text])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(600), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_merged_files(m1 in mutation(), m2 in mutation()) {
        check(&[apply(FULL, &m1), apply(CONVENIENCES, &m2)])?;
    }
}
