//! The JSON Schema accepts what `parse` accepts, and rejects what it rejects, for files
//! without interpolation.

use std::collections::BTreeMap;

use aistack_spec::{SourceFile, parse, schema, yaml};

const FULL: &str = include_str!("fixtures/full.yaml");

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema compiles")
}

/// `(parse accepts, schema accepts)` for `text`.
fn verdicts(validator: &jsonschema::Validator, text: &str) -> (bool, bool) {
    let parsed = parse(
        &[SourceFile {
            name: "a.yaml".into(),
            text: text.into(),
        }],
        &BTreeMap::new(),
    );
    let root = yaml::load(0, text).root.expect("loads");
    (parsed.is_ok(), validator.is_valid(&root.to_json()))
}

fn with_model(line: &str) -> String {
    format!("version: 1\nmodels:\n  m:\n    source: ai/x\n    {line}\n")
}

#[test]
fn schema_and_parse_agree() {
    let v = validator();
    let accepted = [
        FULL.to_owned(),
        "version: 1\n".to_owned(),
        "version: 1\nx-anchors: &a {source: ai/x}\nmodels:\n  m: {<<: *a}\n".to_owned(),
        "version: 1\nmodels:\nsandboxes:\ngateway:\n  cors_origins:\n  api_key_env:\n".to_owned(),
        "version: 1\nengines:\n  llama.cpp: {gpu_layers: 12}\n  vllm:\n  diffusers:\n".to_owned(),
        "version: 1\ngateway: {memory_budget: 1073741824, listen: \"localhost:8080\"}\n".to_owned(),
        "version: 1\ngateway: {memory_budget: 1.5 GiB}\n".to_owned(),
        "version: 1\ntemplates:\n  t: {from: ./r, env: {A: 1, B: true, C: x}}\n".to_owned(),
        with_model("keep_alive: 5m"),
        with_model("keep_alive: 0"),
        with_model("keep_alive: -1"),
        with_model("keep_alive: \"-1\""),
        with_model("keep_alive: 1h30m"),
        with_model("runtime_flags: [\"--temp=0\"]"),
        with_model("runtime_flags: [--mlock, -fa=off, --top-p=0.9, --seed=-1]"),
        with_model("engine: vllm"),
    ];
    for text in &accepted {
        assert_eq!(verdicts(&v, text), (true, true), "{text}");
    }
    let rejected = [
        "version: 2\n".to_owned(),
        "version: \"1\"\n".to_owned(),
        "models: {}\n".to_owned(),
        "version: 1\nmodelz: {}\n".to_owned(),
        "version: 1\nname: Bad Name\n".to_owned(),
        "version: 1\nmodels:\n  Bad: {source: ai/x}\n".to_owned(),
        "version: 1\ngateway: {listen: 8080}\n".to_owned(),
        "version: 1\ngateway: {memory_budget: -1}\n".to_owned(),
        "version: 1\ngateway: {memory_budget: 2XB}\n".to_owned(),
        "version: 1\nengines:\n  llama.cpp: {gpu_layers: \"12\"}\n".to_owned(),
        "version: 1\nengines:\n  vllm: {gpu_memory_utilization: 0}\n".to_owned(),
        "version: 1\nengines:\n  diffusers: {steps: 1}\n".to_owned(),
        "version: 1\nsandboxes:\n  s: {template: t, env: {1A: x}}\ntemplates:\n  t: {from: ./r}\n"
            .to_owned(),
        "version: 1\nmodels:\n  m: {}\n".to_owned(),
        with_model("keep_alive: 5"),
        with_model("keep_alive: 5d"),
        with_model("keep_alive: true"),
        with_model("context_size: 0"),
        with_model("context_size: \"4096\""),
        with_model("preload: yes"),
        with_model("mode: chatt"),
        with_model("runtime_flags: [temp]"),
        with_model("runtime_flags: --temp"),
        with_model("runtime_flags: [--temp]"),
        with_model("runtime_flags: [--mlock=1]"),
        with_model("runtime_flags: [--log-file=x]"),
    ];
    for text in &rejected {
        assert_eq!(verdicts(&v, text), (false, false), "{text}");
    }
}
