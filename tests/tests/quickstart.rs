//! The quick start through the real binary: `aistack sandbox run AGENT [PATH]` in a
//! directory without `aistack.yaml` makes the directory's project from a built-in spec and
//! attaches the agent; a second run reuses the sandbox; the printed spec validates (ours
//! and the JSON Schema) and, committed, is the same project (`plan` has nothing to do);
//! `sandbox reset` removes every sandbox of the home, asking first.

use std::fs;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aistack_tests::sandbox::{Down, busybox_rootfs, guest_bin};
use aistack_tests::{TestEnv, aistack_bin, rendered, repo_root, wait_for};

/// `aistack ARGS` with `script` on its standard input (not a terminal).
fn with_stdin(env: &TestEnv, args: &[&str], script: &str) -> Output {
    let mut child = env
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aistack runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn sandboxes(env: &TestEnv) -> Vec<serde_json::Value> {
    serde_json::from_str(&env.ok(&["sandbox", "ls", "--json"])).expect("JSON")
}

/// check-jsonschema (installed by scripts/test) accepts `file`.
fn schema_accepts(file: &std::path::Path) {
    let out = Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(repo_root().join("schemas/aistack.schema.json"))
        .arg(file)
        .output()
        .expect("check-jsonschema is installed (scripts/test installs it from PyPI)");
    assert!(out.status.success(), "{}", rendered(&out));
}

#[test]
fn the_shell_quick_start_runs_reuses_its_sandbox_and_reset_removes_it() {
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    // The shell's template is its base alone: a tree on disk needs no network.
    let rootfs = busybox_rootfs(&env.home().with_file_name("rootfs"));
    let from = rootfs.display().to_string();
    let _down = Down(&env);
    let workspace = env.project().canonicalize().unwrap();
    assert_eq!(fs::read_dir(&workspace).unwrap().count(), 0);

    let out = with_stdin(
        &env,
        &["sandbox", "run", "shell", ".", "--from", &from],
        "echo made by $(id -un) in $(pwd) > quick.txt; echo kept > /home/agent/mark; exit 3\n",
    );
    assert_eq!(out.status.code(), Some(3), "{}", rendered(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Sandbox `shell` for ") && stderr.contains("  shell:\n    template: shell"),
        "the spec is printed: {stderr}"
    );
    assert_eq!(
        fs::read_to_string(workspace.join("quick.txt")).unwrap(),
        format!("made by agent in {}\n", workspace.display())
    );

    // Again in the same directory (PATH is `.` by default): the same sandbox, its files kept.
    let out = with_stdin(
        &env,
        &["sandbox", "run", "shell", "--from", &from],
        "cat /home/agent/mark\n",
    );
    assert!(out.status.success(), "{}", rendered(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("No changes."), "{stdout}");
    assert!(stdout.ends_with("kept\n"), "{stdout}");
    let listed = sandboxes(&env);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "shell");
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(listed[0]["workspace"], workspace.display().to_string());

    // A directory of the same name elsewhere would be the same project: refused, with `-p`
    // as the way out, before anything is made.
    let elsewhere = env.home().with_file_name("elsewhere").join("project");
    fs::create_dir_all(&elsewhere).unwrap();
    let out = env.run(&["sandbox", "run", "shell", &elsewhere.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Project `project` has sandbox `shell` for ")
            && stderr.contains("`-p NAME`"),
        "{stderr}"
    );

    // The printed spec, committed, is the same project: nothing to do, and `sandbox run`
    // of the spec attaches the same sandbox.
    let spec = env.ok(&["sandbox", "run", "shell", "--from", &from, "--print-spec"]);
    env.write("aistack.yaml", &spec);
    env.ok(&["validate"]);
    schema_accepts(&env.project().join("aistack.yaml"));
    let plan = env.ok(&["plan"]);
    assert!(plan.contains("No changes."), "{plan}");
    let out = with_stdin(&env, &["sandbox", "run", "shell"], "cat /home/agent/mark\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kept\n",
        "{}",
        rendered(&out)
    );
    fs::remove_file(env.project().join("aistack.yaml")).unwrap();

    // Not on a terminal, reset refuses without `--force`; with it, every sandbox goes.
    let out = env
        .cmd(&["sandbox", "reset"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("reset_without_a_terminal", rendered(&out));
    assert_eq!(sandboxes(&env).len(), 1);
    // On a terminal (util-linux's `script` makes one) it asks, and `n` keeps them.
    let mut asked = Command::new("script")
        .args([
            "-qec",
            &format!("{} sandbox reset", aistack_bin().display()),
            "/dev/null",
        ])
        .current_dir(env.project())
        .env("AISTACK_HOME", env.home())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    asked.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let out = asked.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(
            "Remove 1 sandbox (project/shell) with their own files? Workspaces stay. [y/N]"
        ) && said.contains("Nothing was removed"),
        "{said}"
    );
    assert_eq!(sandboxes(&env).len(), 1);
    let out = env.ok(&["sandbox", "reset", "--force"]);
    assert!(out.contains("Removed 1 sandbox"), "{out}");
    assert!(sandboxes(&env).is_empty());
    assert!(wait_for(Duration::from_secs(10), || {
        !env.home().join("projects/project/sandboxes/shell").exists()
    }));
    assert_eq!(
        fs::read_to_string(workspace.join("quick.txt")).unwrap(),
        format!("made by agent in {}\n", workspace.display()),
        "the workspace stays"
    );
    let again = env.run(&["sandbox", "reset"]);
    assert!(again.status.success(), "{}", rendered(&again));
}

#[test]
fn the_printed_spec_validates_and_is_a_snapshot() {
    let env = TestEnv::new();
    let spec = env.ok(&["sandbox", "run", "claude", "--print-spec"]);
    insta::assert_snapshot!("print_spec_claude", spec);
    env.link_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let local = env.ok(&[
        "sandbox",
        "run",
        "codex",
        "--model",
        "./models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "--print-spec",
    ]);
    insta::assert_snapshot!("print_spec_codex_on_a_local_model", local);
    for text in [&spec, &local] {
        env.write("aistack.yaml", text);
        env.ok(&["validate"]);
        schema_accepts(&env.project().join("aistack.yaml"));
    }
}

#[test]
fn quick_start_errors_say_what_to_do() {
    let env = TestEnv::new();
    let cases: [(&str, &[&str]); 4] = [
        ("unset_key", &["sandbox", "run", "claude"]),
        ("unknown_agent", &["sandbox", "run", "clade"]),
        (
            "missing_workspace",
            &["sandbox", "run", "shell", "./nowhere"],
        ),
        (
            "missing_model",
            &["sandbox", "run", "shell", "--model", "./m.gguf"],
        ),
    ];
    for (name, args) in cases {
        let out = env
            .cmd(args)
            .env_remove("ANTHROPIC_API_KEY")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", rendered(&out));
        insta::assert_snapshot!(format!("quick_start_{name}"), rendered(&out));
    }
    // In a directory with a spec, NAME is the spec's sandbox and the quick start's flags
    // are refused.
    env.write("aistack.yaml", "version: 1\n");
    let out = env.run(&["sandbox", "run", "shell", "--from", "./rootfs"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("quick_start_flag_with_a_spec", rendered(&out));
}

#[test]
fn a_quick_start_adds_to_the_directorys_project_and_removes_nothing() {
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    let rootfs = busybox_rootfs(&env.home().with_file_name("rootfs"));
    let _down = Down(&env);
    env.write(
        "aistack.yaml",
        "version: 1\nnetwork_policies:\n  keep: { default: deny }\n",
    );
    env.ok(&["up"]);
    fs::remove_file(env.project().join("aistack.yaml")).unwrap();

    let from = rootfs.display().to_string();
    let out = with_stdin(
        &env,
        &["sandbox", "run", "shell", "--from", &from],
        "exit\n",
    );
    assert!(out.status.success(), "{}", rendered(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("- proxy keep"),
        "{}",
        rendered(&out)
    );
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "--json", "-p", "project"])).unwrap();
    let kinds: Vec<_> = (status["resources"].as_array().unwrap().iter())
        .map(|r| {
            format!(
                "{} {}",
                r["kind"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            )
        })
        .collect();
    assert!(kinds.contains(&"proxy keep".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"sandbox shell".to_owned()), "{kinds:?}");
}
