//! One input per kind of problem, and the diagnostics it yields, as
//! `code line:col message | label | help`.

use std::collections::BTreeMap;

use aistack_spec::{SourceFile, parse};

fn render_with_env(files: &[&str], env: &[(&str, &str)]) -> String {
    let sources: Vec<SourceFile> = files
        .iter()
        .enumerate()
        .map(|(i, text)| SourceFile {
            name: format!("file{i}.yaml"),
            text: (*text).to_owned(),
        })
        .collect();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    match parse(&sources, &env) {
        Ok(_) => "ok".to_owned(),
        Err(diagnostics) => diagnostics
            .iter()
            .map(|d| {
                let text = &sources[d.location.file].text;
                let (line, col) = d.location.line_col(text);
                let file = if sources.len() > 1 {
                    format!("{}:", d.location.file)
                } else {
                    String::new()
                };
                format!(
                    "{} {file}{line}:{col} {} | {} | {}",
                    d.code,
                    d.message,
                    d.label,
                    d.help.as_deref().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn render(text: &str) -> String {
    render_with_env(&[text], &[])
}

macro_rules! case {
    ($name:ident, $text:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(render($text));
        }
    };
}

case!(syntax_error, "version: 1\nmodels:\n  chat: [ai/x\n");
case!(
    syntax_bad_indentation,
    "version: 1\nmodels:\n  chat:\n    source: a\n   bad: 1\n"
);
case!(empty_file, "# nothing here\n");
case!(not_a_mapping, "- version: 1\n");
case!(
    duplicate_key,
    "version: 1\nmodels:\n  chat:\n    source: ai/x\n    source: ai/y\n"
);
case!(
    unknown_key_did_you_mean,
    "version: 1\nmodels:\n  chat:\n    sauce: ai/x\n    source: ai/x\nsandbox: {}\n"
);
case!(
    section_types,
    "version: 1\nmodels: [chat]\nengines:\n  diffusers: {steps: 20}\n  vllm: {hf_overrides: [1]}\n"
);
case!(
    unknown_key_without_suggestion,
    "version: 1\ngateway:\n  zzz: 1\n"
);
case!(
    wrong_type,
    "version: 1\nmodels:\n  chat:\n    source: ai/x\n    context_size: \"4096\"\n    preload: yes\n    runtime_flags: --x\n"
);
case!(
    runtime_flags_outside_the_allowlist,
    "version: 1\nmodels:\n  chat:\n    source: ai/x\n    runtime_flags: [--temp, \"0.7\", --tmep=1, --log-file=/tmp/x, --top-p=2, --mlock, -fa=off]\n  other:\n    source: ai/y\n    engine: vllm\n    runtime_flags: [--max-model-len=4096]\n"
);
case!(string_expected, "version: 1\nname: 123\n");
case!(
    missing_required_key,
    "version: 1\nmodels:\n  chat:\n    context_size: 4096\n"
);
case!(missing_version, "models: {}\n");
case!(wrong_version, "version: 2\n");
case!(
    invalid_size,
    "version: 1\ngateway:\n  memory_budget: 8XB\nsandboxes:\n  s: { template: t, memory: 1MiB }\ntemplates:\n  t: { from: ./r }\n"
);
case!(
    invalid_duration,
    "version: 1\nmodels:\n  a: { source: ai/x, keep_alive: 5 }\n  b: { source: ai/x, keep_alive: 5d }\n  c: { source: ai/x, keep_alive: 300 }\n"
);
case!(
    invalid_cidr,
    "version: 1\nnetwork_policies:\n  p:\n    allow: [\"203.0.113.1/24\", \"10.0.0.0/33\", \"a*.b\"]\n"
);
case!(
    invalid_listen,
    "version: 1\ngateway:\n  listen: example.com:80\n"
);
case!(
    invalid_port,
    "version: 1\ntemplates:\n  t: { from: ./r }\nsandboxes:\n  s:\n    template: t\n    ports: [\"8080:70000\", \"3000\", \"1.2.3:1:2\"]\n"
);
case!(
    invalid_reference,
    "version: 1\nmodels:\n  a: { source: AI/Smollm2 }\n  b: { source: \"ai/x@sha256:abc\" }\n  c: { source: \"ai/x:\" }\n"
);
case!(
    invalid_enum,
    "version: 1\nmodels:\n  a: { source: ai/x, engine: llamacpp, mode: chatt }\n"
);
case!(
    invalid_names,
    "version: 1\nname: My Project\nmodels:\n  Chat: { source: ai/x }\ntemplates:\n  t:\n    from: ./r\n    env: { 1BAD: x }\n"
);
case!(
    dangling_references,
    "version: 1\nmodels:\n  chat: { source: ai/x }\ntemplates:\n  dev: { from: ./r, network_policy: biuld }\nnetwork_policies:\n  build: {}\nsandboxes:\n  s:\n    template: deb\n    network_policy: nope\n    models: [chat, caht]\n"
);
case!(
    template_typo_is_not_an_image,
    "version: 1\ntemplates:\n  dev: { from: ./r }\n  app: { from: dve }\n"
);
case!(
    cycle,
    "version: 1\ntemplates:\n  a: { from: b }\n  b: { from: c }\n  c: { from: a }\n  d: { from: d }\n  e: { from: a }\n"
);
case!(
    conflicts,
    "version: 1\ntemplates:\n  t: { from: ./r }\nnetwork_policies:\n  p:\n    bypass: [\"*.anthropic.com\"]\n    credentials:\n      - { host: api.anthropic.com, header: x-api-key, from_env: KEY }\nsandboxes:\n  a: { template: t, ports: [\"8080:1\"] }\n  b: { template: t, ports: [\"0.0.0.0:8080:2\", \"12434:3\"] }\n"
);
case!(unsupported_tag, "version: !custom 1\n");
case!(
    billion_laughs,
    "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
);
case!(
    several_problems_together,
    "version: 1\ngateway:\n  listen: 127.0.0.1\n  lisen: x\nmodels:\n  chat:\n    engine: vlm\n    context_size: big\n    keep_alive: forever\nsandboxes:\n  s:\n    template: nowhere\n    cpus: 0\n    memory: lots\n"
);

#[test]
fn interpolation_of_unset_variable() {
    let text = "version: 1\nmodels:\n  chat:\n    source: ai/${MODEL}\n    context_size: ${CTX:?set CTX to the context size}\n    parallel: $\n";
    insta::assert_snapshot!(render_with_env(&[text], &[]));
}

#[test]
fn interpolation_keeps_plain_scalars_typed() {
    let text = "version: 1\nmodels:\n  chat:\n    source: ai/x\n    context_size: ${CTX:-4096}\n";
    assert_eq!(render_with_env(&[text], &[]), "ok");
    assert_eq!(render_with_env(&[text], &[("CTX", "x")]).lines().count(), 1);
}

#[test]
fn problems_in_several_files() {
    let a = "version: 1\nmodels:\n  chat: { source: ai/x }\n";
    let b = "models:\n  chat: { context_size: -1 }\n  other: { sorce: ai/y }\n";
    insta::assert_snapshot!(render_with_env(&[a, b], &[]));
}

#[test]
fn dotenv_error() {
    let d = aistack_spec::parse_dotenv(2, "A=1\n  export B 2\n").unwrap_err();
    insta::assert_snapshot!(format!(
        "{} {}:{:?} {} | {} | {}",
        d.code,
        d.location.file,
        d.location.span,
        d.message,
        d.label,
        d.help.unwrap_or_default()
    ));
}
