//! The binary's file-level commands: `validate` diagnostics, `schema`, and every example.

use std::fs;
use std::path::Path;
use std::process::Command;

use aistack_tests::{TestEnv, rendered, repo_root};

#[test]
fn schema_matches_the_committed_copy() {
    let env = TestEnv::new();
    let printed = env.ok(&["schema"]);
    let committed_path = repo_root().join("schemas/aistack.schema.json");
    if std::env::var_os("AISTACK_UPDATE_SCHEMA").is_some() {
        fs::write(&committed_path, &printed).expect("write schema");
    }
    let committed = fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        printed == committed,
        "`aistack schema` differs from schemas/aistack.schema.json; regenerate it with \
         `AISTACK_UPDATE_SCHEMA=1 cargo test -p aistack-tests --test cli schema` and commit it"
    );
}

/// Copies an example into a fresh project directory, with the test model linked where the
/// example expects local model files.
fn example_env(dir: &Path) -> TestEnv {
    let env = TestEnv::new();
    let text = fs::read_to_string(dir.join("aistack.yaml")).expect("example has aistack.yaml");
    env.write("aistack.yaml", &text);
    // The test model stands in for every local file an example names.
    let mut names: Vec<&str> = text
        .split("./models/")
        .skip(1)
        .filter_map(|rest| rest.split([' ', ',', '}', '\n', '$']).next())
        .filter(|name| name.ends_with(".gguf"))
        .collect();
    if text.contains("./models/${") {
        names.push("SmolLM2-135M-Instruct.Q4_1.gguf");
    }
    names.sort_unstable();
    names.dedup();
    for name in names {
        env.link_model(name);
    }
    env
}

fn examples() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = fs::read_dir(repo_root().join("examples"))
        .expect("examples/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("aistack.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 3,
        "examples/ should hold the quickstart, full and conveniences examples"
    );
    dirs
}

#[test]
fn every_example_carries_the_schema_modeline_and_validates() {
    for dir in examples() {
        let file = dir.join("aistack.yaml");
        let text = fs::read_to_string(&file).expect("read example");
        assert!(
            text.starts_with("# yaml-language-server: $schema=../../schemas/aistack.schema.json"),
            "{} lacks the schema modeline",
            file.display()
        );
        let env = example_env(&dir);
        env.ok(&["validate"]);
    }
}

#[test]
fn every_example_validates_with_a_third_party_json_schema_validator() {
    let schema = repo_root().join("schemas/aistack.schema.json");
    for dir in examples() {
        let out = Command::new("check-jsonschema")
            .arg("--schemafile")
            .arg(&schema)
            .arg(dir.join("aistack.yaml"))
            .output()
            .expect("check-jsonschema is installed (scripts/test installs it from PyPI)");
        assert!(
            out.status.success(),
            "check-jsonschema rejects {}:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_schema_rejects_what_validate_rejects() {
    let schema = repo_root().join("schemas/aistack.schema.json");
    let env = TestEnv::new();
    env.write(
        "aistack.yaml",
        "version: 1\nmodels:\n  chat:\n    source: ./m.gguf\n    context_sise: 4096\n",
    );
    assert_eq!(env.run(&["validate"]).status.code(), Some(1));
    let out = Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(&schema)
        .arg(env.project().join("aistack.yaml"))
        .output()
        .expect("check-jsonschema runs");
    assert!(
        !out.status.success(),
        "the schema must refuse unknown keys as validate does"
    );
}

#[test]
fn plan_text_of_every_example() {
    for dir in examples() {
        let env = example_env(&dir);
        let out = env.run(&["plan"]);
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("plan_{name}"), rendered(&out));
    }
}

/// One file per kind of problem `validate` reports; the rendered reports are snapshots.
const BAD_SPECS: &[(&str, &str)] = &[
    ("syntax_error", "version: 1\nmodels:\n  chat: [unclosed\n"),
    (
        "duplicate_key",
        "version: 1\nmodels:\n  chat:\n    source: ./a.gguf\n    source: ./b.gguf\n",
    ),
    (
        "unknown_key_did_you_mean",
        "version: 1\nmodels:\n  chat:\n    source: ./a.gguf\n    context_sise: 4096\n",
    ),
    (
        "wrong_type",
        "version: 1\nmodels:\n  chat:\n    source: ./a.gguf\n    context_size: lots\n",
    ),
    (
        "missing_required_key",
        "version: 1\nmodels:\n  chat:\n    context_size: 4096\n",
    ),
    (
        "invalid_size",
        "version: 1\ngateway:\n  memory_budget: 8 parsecs\n",
    ),
    (
        "invalid_duration",
        "version: 1\nmodels:\n  chat:\n    source: ./a.gguf\n    keep_alive: 5 minutes\n",
    ),
    (
        "invalid_cidr",
        "version: 1\nnetwork_policies:\n  p:\n    allow: [\"10.1.2.3/33\"]\n",
    ),
    (
        "invalid_listen",
        "version: 1\ngateway:\n  listen: 127.0.0.1\n",
    ),
    (
        "dangling_reference",
        "version: 1\ntemplates:\n  dev:\n    from: ./rootfs\nsandboxes:\n  coder:\n    template: deb\n",
    ),
    (
        "template_cycle",
        "version: 1\ntemplates:\n  a:\n    from: b\n  b:\n    from: a\n",
    ),
    (
        "unset_variable",
        "version: 1\nmodels:\n  chat:\n    source: ./${MODEL_FILE_UNSET_IN_TESTS}\n",
    ),
    (
        "several_problems_at_once",
        "version: 2\nmodels:\n  chat:\n    source: ./a.gguf\n    mode: chatty\nsandboxes:\n  coder:\n    template: nope\n    memory: 1KiB\n",
    ),
];

#[test]
fn validate_renders_every_problem_kind() {
    for (name, text) in BAD_SPECS {
        let env = TestEnv::new();
        env.write("aistack.yaml", text);
        let out = env
            .cmd(&["validate"])
            .env_remove("MODEL_FILE_UNSET_IN_TESTS")
            .output()
            .expect("runs");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: validate must fail\n{}",
            rendered(&out)
        );
        insta::assert_snapshot!(format!("validate_{name}"), rendered(&out));
    }
}

#[test]
fn a_missing_spec_file_says_what_to_do() {
    let env = TestEnv::new();
    let out = env.run(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("plan_without_spec", rendered(&out));
}
