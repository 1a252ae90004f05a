//! `plan`, `up`, `status`, `down` against the real model, the daemon and the store, and
//! what a killed process leaves behind.

use std::fs;
use std::time::Duration;

use aistack_tests::{TestEnv, terminate, wait_for, wait_gone};
use rustix::process::Signal;

const QUICKSTART: &str = "version: 1\nname: demo\nmodels:\n  chat:\n    source: ./models/smollm2.gguf\n    context_size: 4096\n";

fn resources(status: &serde_json::Value) -> Vec<(String, String, String)> {
    status["resources"]
        .as_array()
        .expect("resources is a list")
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (field("kind"), field("name"), field("state"))
        })
        .collect()
}

fn model_state(env: &TestEnv) -> Vec<(String, String, String)> {
    resources(&env.status())
}

/// Whether the project's record holds the model (the gateway is recorded before it).
fn recorded_model(env: &TestEnv) -> bool {
    fs::read(env.home().join("projects/demo/state.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|state| {
            state["resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["id"]["kind"] == "model"))
        })
}

/// Every blob in the store is named by the sha256 of its content: nothing partial.
fn assert_store_consistent(env: &TestEnv) {
    for (name, digest) in env.blobs() {
        assert_eq!(
            name, digest,
            "blob {name} does not match its content: a partial blob was left"
        );
    }
}

#[test]
fn up_imports_the_model_then_plan_is_empty_and_down_removes_the_project() {
    let env = TestEnv::new();
    env.write("aistack.yaml", &env.spec(QUICKSTART));
    env.link_model("smollm2.gguf");

    let plan = env.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2), "changes pending → exit 2");
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("+ model chat"), "{text}");
    assert!(
        text.ends_with("Plan: 2 to add, 0 to change, 0 to remove.\n"),
        "{text}"
    );
    assert_eq!(
        model_state(&env),
        vec![
            ("gateway".into(), "gateway".into(), "pending".into()),
            ("model".into(), "chat".into(), "pending".into())
        ]
    );

    let up = env.ok(&["up"]);
    assert!(up.contains("model chat: Created"), "{up}");
    assert!(
        up.contains("Apply complete: 2 added, 0 changed, 0 removed."),
        "{up}"
    );
    assert!(
        up.ends_with(&format!(
            "Gateway: http://127.0.0.1:{}\n",
            env.gateway_port()
        )),
        "{up}"
    );
    assert_eq!(
        model_state(&env),
        vec![
            ("gateway".into(), "gateway".into(), "running".into()),
            ("model".into(), "chat".into(), "ready".into())
        ]
    );

    // The artifact is a Docker Model Runner artifact in an OCI image layout.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(env.home().join("models/index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blob = |digest: &str| {
        env.home()
            .join("models/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&manifest_digest)).unwrap()).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.ai.model.config.v0.1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.docker.ai.gguf.v3"
    );
    assert_eq!(
        manifest["layers"][0]["digest"],
        "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    let config: serde_json::Value = serde_json::from_slice(
        &fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(config["config"]["format"], "gguf");
    assert_eq!(config["config"]["architecture"], "llama");
    assert_eq!(config["config"]["quantization"], "Q4_1");
    assert_store_consistent(&env);

    let again = env.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), "No changes.\n");

    // A serving setting changes in place; the artifact is not imported again.
    env.write(
        "aistack.yaml",
        &env.spec(&QUICKSTART.replace("4096", "2048")),
    );
    let changed = env.ok(&["plan"]);
    assert!(changed.contains("~ model chat"), "{changed}");
    assert!(changed.contains("context_size"), "{changed}");
    env.ok(&["up"]);
    assert_eq!(
        env.run(&["plan", "--detailed-exitcode"]).status.code(),
        Some(0)
    );

    let down = env.ok(&["down"]);
    assert!(down.contains("- model chat"), "{down}");
    assert!(
        !env.home().join("projects/demo").exists(),
        "down removes the project's record"
    );
    assert!(env.home().join("models/index.json").exists());
    assert_eq!(
        model_state(&env),
        vec![
            ("gateway".into(), "gateway".into(), "pending".into()),
            ("model".into(), "chat".into(), "pending".into())
        ]
    );
    // Models stay in the shared store unless asked: the next `up` finds the blob there.
    assert!(!env.blobs().is_empty());

    env.ok(&["up"]);
    let down_models = env.ok(&["down", "--models"]);
    assert!(down_models.contains("- model chat"), "{down_models}");
    assert!(
        env.blobs().is_empty(),
        "down --models deletes the artifact: {:?}",
        env.blobs()
    );
}

#[test]
fn up_refuses_kinds_without_executors_before_touching_anything() {
    let env = TestEnv::new();
    env.write(
        "aistack.yaml",
        &env.spec(
            "version: 1\nname: demo\nmodels:\n  chat:\n    source: ./models/smollm2.gguf\n    preload: true\n\
             \x20 big:\n    source: ai/qwen3\n    engine: vllm\n\
             templates:\n  dev:\n    from: 127.0.0.1:5000/sandbox/debian:bookworm\n\
             sandboxes:\n  coder:\n    template: dev\n    agent: shell\n",
        ),
    );
    env.link_model("smollm2.gguf");
    let plan = env.ok(&["plan"]);
    assert!(
        plan.contains("+ engine chat") && plan.contains("+ sandbox coder"),
        "a preloaded model plans its engine: {plan}"
    );
    let out = env.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Engine `vllm` is not supported yet"),
        "{stderr}"
    );
    assert!(stderr.contains("Nothing was applied"), "{stderr}");
    assert!(env.blobs().is_empty(), "the model was not imported");
    assert!(!env.home().join("projects/demo").exists());
}

#[test]
fn a_missing_local_file_is_reported_at_its_span_by_plan() {
    let env = TestEnv::new();
    env.write("aistack.yaml", &env.spec(QUICKSTART));
    let out = env.run(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr)
        .replace(&env.project().display().to_string(), "[PROJECT]");
    insta::assert_snapshot!("plan_missing_local_file", stderr);
    // validate checks the file alone.
    env.ok(&["validate"]);
}

#[test]
fn a_file_that_is_not_gguf_fails_cleanly_and_leaves_the_store_empty() {
    let env = TestEnv::new();
    env.write("aistack.yaml", &env.spec(QUICKSTART));
    env.write("models/smollm2.gguf", "this is not a model\n");
    let out = env.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GGUF"), "{stderr}");
    assert!(stderr.contains("help:"), "{stderr}");
    assert!(env.blobs().is_empty());
    assert!(
        fs::read_dir(env.home().join("models/ingest"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );

    // A truncated real model: the header parses, the copy is short of the promised tensors.
    let real = fs::read(aistack_tests::test_model()).unwrap();
    env.write("models/smollm2.gguf", "");
    fs::write(
        env.project().join("models/smollm2.gguf"),
        &real[..real.len() / 3],
    )
    .unwrap();
    let out = env.run(&["up"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        env.blobs().is_empty(),
        "a truncated model leaves nothing in the store"
    );
}

fn ingest_has_a_file(env: &TestEnv) -> bool {
    fs::read_dir(env.home().join("models/ingest"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// The model's copy is under way: the store also writes small files (its index) through
/// `ingest/`, so only a temporary file past 1 MiB shows the import itself.
fn import_in_progress(env: &TestEnv) -> bool {
    fs::read_dir(env.home().join("models/ingest")).is_ok_and(|dir| {
        dir.filter_map(Result::ok)
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 1 << 20))
    })
}

/// Starts `aistack up` of the quickstart model and returns once the model's copy runs.
fn up_until_the_import_runs(env: &TestEnv) -> std::process::Child {
    env.write("aistack.yaml", &env.spec(QUICKSTART));
    env.link_model("smollm2.gguf");
    let up = env
        .cmd(&["up"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || import_in_progress(env)),
        "the import never started"
    );
    up
}

#[test]
fn kill_9_of_the_daemon_during_an_import_leaves_nothing_partial_and_the_next_up_converges() {
    let env = TestEnv::new();
    let mut up = up_until_the_import_runs(&env);
    let pid = env.daemon_pid().expect("the daemon wrote its pid");
    terminate(pid, Signal::KILL);
    assert!(wait_gone(pid, Duration::from_secs(5)));
    let status = up.wait().unwrap();
    assert!(!status.success(), "up reports that the daemon went away");

    assert_store_consistent(&env);
    assert!(
        env.blobs().is_empty(),
        "no blob was committed: {:?}",
        env.blobs()
    );
    assert!(
        !recorded_model(&env),
        "the model was not recorded as applied"
    );

    env.ok(&["up"]);
    assert!(
        !ingest_has_a_file(&env),
        "the restarted daemon cleared the leftover temporary file"
    );
    assert_store_consistent(&env);
    assert_eq!(
        env.run(&["plan", "--detailed-exitcode"]).status.code(),
        Some(0)
    );
}

#[test]
fn kill_9_of_up_during_an_import_leaves_the_daemon_to_finish_and_the_next_up_converges() {
    let env = TestEnv::new();
    let mut up = up_until_the_import_runs(&env);
    terminate(up.id() as i32, Signal::KILL);
    let _ = up.wait();

    // The daemon finishes the import on its own and records it.
    assert!(
        wait_for(Duration::from_secs(30), || env
            .home()
            .join("projects/demo/state.json")
            .exists()
            && env.run(&["plan", "--detailed-exitcode"]).status.code()
                == Some(0)),
        "the daemon did not finish the import"
    );
    assert_store_consistent(&env);
    let out = env.ok(&["up"]);
    assert!(out.starts_with("No changes.\n"), "{out}");
}

#[test]
fn ctrl_c_during_up_cancels_and_the_next_up_converges() {
    let env = TestEnv::new();
    let up = up_until_the_import_runs(&env);
    let pid = up.id() as i32;
    terminate(pid, Signal::INT);
    let out = up.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled apply is not a success"
    );
    assert!(
        env.daemon_pid()
            .is_some_and(|pid| !wait_gone(pid, Duration::from_millis(50))),
        "the daemon survives Ctrl-C in the terminal"
    );
    env.ok(&["up"]);
    assert_store_consistent(&env);
    assert_eq!(
        env.run(&["plan", "--detailed-exitcode"]).status.code(),
        Some(0)
    );
}

#[test]
fn up_watch_converges_again_when_the_spec_changes() {
    let env = TestEnv::new();
    env.write("aistack.yaml", &env.spec(QUICKSTART));
    env.link_model("smollm2.gguf");
    let mut watch = env
        .cmd(&["up", "--watch"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = env.home().join("projects/demo/state.json");
    assert!(
        wait_for(Duration::from_secs(30), || recorded_model(&env)),
        "the first convergence"
    );
    let before = fs::read_to_string(&state).unwrap();
    // mtime granularity: make sure the rewrite is seen as a change.
    std::thread::sleep(Duration::from_millis(20));
    env.write(
        "aistack.yaml",
        &env.spec(&QUICKSTART.replace("4096", "1024")),
    );
    assert!(
        wait_for(Duration::from_secs(30), || fs::read_to_string(&state)
            .is_ok_and(|s| s != before)),
        "up --watch did not apply the changed spec"
    );
    assert!(
        wait_for(Duration::from_secs(30), || fs::read_to_string(&state)
            .is_ok_and(|s| s.contains("1024"))),
        "up --watch did not record the new context size"
    );
    terminate(watch.id() as i32, Signal::INT);
    let status = watch.wait().unwrap();
    assert!(status.success(), "Ctrl-C ends the watch cleanly: {status}");
    assert_eq!(
        env.run(&["plan", "--detailed-exitcode"]).status.code(),
        Some(0)
    );
}

#[test]
fn dotenv_beside_the_spec_fills_variables_and_the_environment_wins() {
    let env = TestEnv::new();
    env.write(
        "aistack.yaml",
        &env.spec("version: 1\nname: demo\nmodels:\n  chat:\n    source: ./models/${MODEL_FILE}\n    context_size: ${CTX:-512}\n"),
    );
    env.write(".env", "# the model\nMODEL_FILE=smollm2.gguf\nCTX=2048\n");
    env.link_model("smollm2.gguf");
    let plan = env.run(&["plan", "--json"]);
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let model = |json: &serde_json::Value| {
        json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"]["kind"] == "model")
            .unwrap()["desired"]["payload"]["settings"]["context_size"]
            .clone()
    };
    assert_eq!(model(&json), 2048);
    let overridden = env
        .cmd(&["plan", "--json"])
        .env("CTX", "4096")
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&overridden.stdout).unwrap();
    assert_eq!(model(&json), 4096);
}

#[test]
fn a_corrupt_project_record_is_a_clear_error_that_says_how_to_recover() {
    let env = TestEnv::new();
    env.write("aistack.yaml", &env.spec(QUICKSTART));
    env.link_model("smollm2.gguf");
    fs::create_dir_all(env.home().join("projects/demo")).unwrap();
    fs::write(env.home().join("projects/demo/state.json"), "{ torn").unwrap();
    for command in [&["plan"][..], &["up"][..]] {
        let out = env.run(command);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is corrupt"), "{stderr}");
        assert!(stderr.contains("help: Move"), "{stderr}");
    }
    fs::remove_file(env.home().join("projects/demo/state.json")).unwrap();
    env.ok(&["up"]);
}
