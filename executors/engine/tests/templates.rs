//! The chat templates of the model families agents run on, rendered by the engine and by the
//! reference (Python's `jinja2` in the environment `transformers` gives templates,
//! tests/python/render_templates.py) from the same context: the bytes must be equal, and a
//! template that refuses a conversation must refuse it in both.
//!
//! The corpus is the one llama.cpp's sources carry under `models/templates/` (real
//! `tokenizer.chat_template`s: Qwen, Llama 3.x, Mistral, Gemma, Phi, DeepSeek, Granite, …),
//! fetched by scripts/fetch-templates; scripts/test sets `AISTACK_TEST_TEMPLATES` and
//! `AISTACK_PYTHON`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use aistack_engine::{ChatContext, SpecialTokens};
use aistack_engine_api::{Message, Tool, ToolCall};
use serde_json::{Value, json};

/// Where minijinja cannot be made to agree: in Python, `"…"|safe + text` HTML-escapes `text`
/// (`Markup.__add__`), and functionary v3.1 adds its tools' JSON to safe strings, so
/// `transformers` gives that model `&#34;`-escaped tool schemas; minijinja concatenates.
const KNOWN: &[&str] = &["meetkai-functionary-medium-v3.1"];

/// The families coding agents run on locally: every conversation renders alike, unless the
/// template itself refuses it (`raise_exception`: Llama 3.x takes one call at a time).
const MAINSTREAM: &[&str] = &[
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-Qwen3-0.6B",
    "Qwen3-Coder",
    "meta-llama-Llama-3.1-8B-Instruct",
    "meta-llama-Llama-3.2-3B-Instruct",
    "meta-llama-Llama-3.3-70B-Instruct",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "Mistral-Small-3.2-24B-Instruct-2506",
    "unsloth-mistral-Devstral-Small-2507",
    "google-gemma-4-31B-it",
    "microsoft-Phi-3.5-mini-instruct",
    "deepseek-ai-DeepSeek-V3.1",
    "ibm-granite-granite-4.0",
    "openai-gpt-oss-120b",
];

fn tools() -> Vec<Tool> {
    vec![
        Tool {
            name: "get_weather".into(),
            description: Some("Get the current weather in a city.".into()),
            parameters: json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city"]
            }),
        },
        Tool {
            name: "read_file".into(),
            description: Some("Read a file of the workspace.".into()),
            parameters: json!({
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"]
            }),
        },
    ]
}

fn call(id: &str, name: &str, arguments: Value) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.to_string(),
    }
}

fn calling(calls: Vec<ToolCall>) -> Message {
    Message {
        tool_calls: calls,
        ..Message::new("assistant", "")
    }
}

fn result(id: &str, name: &str, content: &str) -> Message {
    Message {
        tool_call_id: Some(id.into()),
        name: Some(name.into()),
        ..Message::new("tool", content)
    }
}

/// The conversations agents hold: plain chat, several turns, tools offered, a tool round
/// trip, and parallel calls followed by more turns. Call ids are nine letters and digits,
/// which Mistral's templates require.
fn scenarios() -> Vec<(&'static str, Vec<Message>, Vec<Tool>)> {
    let system = Message::new("system", "You are a coding agent. Be brief.");
    let ask = Message::new("user", "What is the weather in Paris?");
    vec![
        (
            "chat",
            vec![system.clone(), Message::new("user", "Say hi.")],
            vec![],
        ),
        (
            "turns",
            vec![
                Message::new("user", "Hi"),
                Message::new("assistant", "Hello! How can I help?"),
                Message::new("user", "Name a colour."),
            ],
            vec![],
        ),
        ("tools", vec![system.clone(), ask.clone()], tools()),
        (
            "tool_round",
            vec![
                system.clone(),
                ask.clone(),
                calling(vec![call(
                    "call0001a",
                    "get_weather",
                    json!({"city": "Paris"}),
                )]),
                result("call0001a", "get_weather", "Sunny, 21 °C."),
            ],
            tools(),
        ),
        (
            "parallel_calls",
            vec![
                system,
                Message::new("user", "Weather in Paris and what does README.md say?"),
                calling(vec![
                    call(
                        "call0001a",
                        "get_weather",
                        json!({"city": "Paris", "unit": "celsius"}),
                    ),
                    call("call0002b", "read_file", json!({"path": "README.md"})),
                ]),
                result("call0001a", "get_weather", "Sunny, 21 °C."),
                result("call0002b", "read_file", "# Demo\n\"quoted\" <b>text</b>"),
                Message::new("assistant", "Sunny; the README is a demo."),
                Message::new("user", "Thanks."),
            ],
            tools(),
        ),
    ]
}

fn corpus() -> Vec<PathBuf> {
    let dir = std::env::var("AISTACK_TEST_TEMPLATES").unwrap_or_else(|_| {
        panic!("AISTACK_TEST_TEMPLATES must name the chat-template corpus: run scripts/test, which fetches it with scripts/fetch-templates")
    });
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jinja"))
        .collect();
    paths.sort();
    assert!(paths.len() > 50, "{dir} holds {} templates", paths.len());
    paths
}

fn is_mainstream(case: &str) -> bool {
    MAINSTREAM
        .iter()
        .any(|m| case.starts_with(&format!("{m} /")))
}

/// The reference renderings of `jobs`, each `{"ok": text}` or `{"error": message}`.
fn reference(jobs: &[Value]) -> Vec<Value> {
    let python = std::env::var("AISTACK_PYTHON").unwrap_or_else(|_| {
        panic!(
            "AISTACK_PYTHON must name a Python with `jinja2`: run scripts/test, which sets it up"
        )
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/render_templates.py"
    );
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(jobs).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{script} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Where two renderings part, with some context.
fn first_difference(ours: &str, theirs: &str) -> String {
    let at = ours
        .char_indices()
        .zip(theirs.chars())
        .find(|((_, a), b)| a != b)
        .map_or(ours.len().min(theirs.len()), |((i, _), _)| i);
    let from = ours.floor_char_boundary(at.saturating_sub(60));
    let context = |text: &str| {
        let end = text.ceil_char_boundary((at + 60).min(text.len()));
        format!("{:?}", &text[from.min(end)..end])
    };
    format!(
        "at byte {at}:\n      ours: {}\n    jinja2: {}",
        context(ours),
        context(theirs)
    )
}

#[test]
fn every_template_of_the_corpus_renders_as_transformers_renders_it() {
    let tokens = SpecialTokens {
        bos: "<s>".into(),
        eos: "</s>".into(),
    };
    let mut cases = Vec::new();
    for path in corpus() {
        let template = std::fs::read_to_string(&path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        for (scenario, messages, tools) in scenarios() {
            let context = ChatContext::for_chat(&template, &messages, &tools, &tokens);
            cases.push((format!("{name} / {scenario}"), template.clone(), context));
        }
    }
    let jobs: Vec<Value> = cases
        .iter()
        .map(|(_, template, context)| json!({"template": template, "context": context}))
        .collect();
    let expected = reference(&jobs);

    let mut mismatches = Vec::new();
    let mut rendered = 0;
    let mut lenient = Vec::new();
    let mut mainstream = 0;
    let mut refused = Vec::new();
    for ((case, template, context), expected) in cases.iter().zip(&expected) {
        if KNOWN
            .iter()
            .any(|known| case.starts_with(&format!("{known} /")))
        {
            continue;
        }
        let refusal = expected["error"].as_str().unwrap_or_default();
        match (
            context.render(template),
            expected.get("ok").and_then(Value::as_str),
        ) {
            (Ok(ours), Some(theirs)) if ours == theirs => {
                rendered += 1;
                mainstream += usize::from(is_mainstream(case));
            }
            (Ok(ours), Some(theirs)) => {
                mismatches.push(format!("{case}: {}", first_difference(&ours, theirs)));
            }
            (Err(_), None) => {
                let meant = refusal.starts_with("TemplateError");
                mainstream += usize::from(meant && is_mainstream(case));
                refused.push(format!("{case}: {refusal}"));
            }
            // Python's stricter types fail where minijinja goes on (iterating `None`,
            // serialising a generator): a template's slip, not a refusal it means.
            (Ok(_), None) if refusal.starts_with("TypeError") => lenient.push(case.as_str()),
            (Ok(_), None) => {
                mismatches.push(format!("{case}: jinja2 refuses ({refusal}), ours renders"));
            }
            (Err(e), Some(_)) => {
                let source = std::error::Error::source(&e).map(|s| format!("{s:#}"));
                mismatches.push(format!(
                    "{case}: ours fails ({}), jinja2 renders",
                    source.unwrap_or_default()
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} renderings differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    assert_eq!(
        mainstream,
        MAINSTREAM.len() * scenarios().len(),
        "every conversation renders on the mainstream families, or their templates refuse it; refused by both:\n{}",
        refused.join("\n")
    );
    // The corpus is for rendering, not refusing: most of it must render alike.
    assert!(
        rendered * 10 > cases.len() * 8,
        "only {rendered} of {} rendered alike; rendered where jinja2 fails on a type: {lenient:?}",
        cases.len()
    );
}
