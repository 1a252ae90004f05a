//! The slower sandbox test, on a Debian minbase template (debootstrap) built by `run:`
//! steps through a policy that allows Debian's mirror and npm's registry by host rule:
//! apt installs curl, npm installs a real agent CLI (OpenAI's codex), and one
//! non-interactive run of it reaches a loopback stand-in of its API over HTTPS through the
//! sandbox's proxy, which intercepts the TLS and sets the key: the stand-in sees the real
//! key, the sandbox never holds it.

use std::fs;
use std::path::PathBuf;

use serde_json::Value;

use aistack_tests::TestEnv;
use aistack_tests::sandbox::{Down, assert_no_key, debian_rootfs, guest_bin, key_search};

const KEY: &str = "sk-agent-e2e-91f3c2-secret";

#[test]
fn codex_from_npm_reaches_its_api_with_the_key_the_proxy_sets() {
    let debian = debian_rootfs();
    let mut env = TestEnv::new();
    // 127.0.0.2: not in the sandbox's `NO_PROXY`, so its clients use the proxy for it.
    // Credentials go over TLS only: the stand-in speaks HTTPS, with a CA the proxy trusts.
    let stand_in = aistack_tests::upstream::recording_tls(
        &env.project(),
        "127.0.0.2",
        "400 Bad Request",
        r#"{"error":{"message":"the stand-in answers nothing","type":"invalid_request_error"}}"#,
    );
    let (port, heads) = (stand_in.port, stand_in.heads.clone());
    env.set_var("AISTACK_EXTRA_CA_CERTS", &stand_in.ca);
    env.set_var("AISTACK_GUEST", guest_bin());
    env.set_var("STANDIN_AUTH", format!("Bearer {KEY}"));
    let spec = format!(
        "version: 1
name: agents
templates:
  debian:
    from: {debian}
    network_policy: build
    run:
      - apt-get update
      - apt-get install -y --no-install-recommends curl ca-certificates
  agent:
    from: debian
    network_policy: build
    run:
      - apt-get install -y --no-install-recommends nodejs npm
      - npm install -g @openai/codex
network_policies:
  build:
    default: deny
    allow: [deb.debian.org, registry.npmjs.org]
  api:
    default: deny
    allow: [\"127.0.0.2/32:{port}\"]
    credentials:
      - {{ host: 127.0.0.2, header: authorization, from_env: STANDIN_AUTH }}
sandboxes:
  coder:
    template: agent
    agent: codex
    network_policy: api
    env: {{ OPENAI_BASE_URL: \"https://127.0.0.2:{port}/v1\" }}
",
        debian = debian.display()
    );
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    env.ok(&["up"]);

    // apt's and npm's requests went through the build's policy and are logged as its.
    let (log, entries) = network_log(&env, None);
    let allowed = |host: &str| {
        entries.iter().any(|e| {
            let source = e["source"].as_str().unwrap_or_default();
            e["host"] == host && e["decision"] == "allow" && source.starts_with("template:")
        })
    };
    assert!(allowed("deb.debian.org"), "{log}");
    assert!(allowed("registry.npmjs.org"), "{log}");
    let curl = env.ok(&["exec", "coder", "--", "curl", "--version"]);
    assert!(curl.starts_with("curl "), "{curl}");

    // One non-interactive run; the stand-in refuses it, which is all the test needs.
    // codex reads its API's address from a provider of its config, set to the base URL
    // the sandbox's `env:` names (as a user points it at a local server).
    let run = "mkdir -p ~/.codex && printf '%s\\n' 'model_provider = \"standin\"' \
               '[model_providers.standin]' 'name = \"standin\"' \"base_url = \\\"$OPENAI_BASE_URL\\\"\" \
               'env_key = \"OPENAI_API_KEY\"' 'wire_api = \"responses\"' > ~/.codex/config.toml && \
               timeout 60 codex exec --skip-git-repo-check 'Say hi' </dev/null";
    let out = env.run(&["exec", "coder", "--", "sh", "-c", run]);
    let received = heads.lock().unwrap().join("\n");
    assert!(
        received
            .to_lowercase()
            .contains(&format!("authorization: bearer {}", KEY.to_lowercase())),
        "the stand-in got no request with the key: {received}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(received.contains("POST /v1/"), "{received}");
    assert!(!received.contains("aistack-placeholder"), "{received}");

    // Nowhere inside: not in any process's environment or command line, nor any file.
    let dirs = format!(
        "/etc /home /root /run /tmp /usr/local /var {}",
        env.project().canonicalize().unwrap().display()
    );
    let search = key_search(KEY, &dirs);
    let out = env.run(&["exec", "-u", "root", "coder", "--", "sh", "-c", &search]);
    assert_no_key(&String::from_utf8_lossy(&out.stdout), KEY, "root");
    // The template's layers hold no project CA: another project may use them.
    let layers = fs::read_dir(env.home().join("templates")).unwrap();
    for layer in layers.filter_map(Result::ok) {
        assert!(
            !layer
                .path()
                .join("layer/usr/local/share/ca-certificates/aistack.crt")
                .exists()
        );
    }
}

/// The network log, of one sandbox or of the whole project: its text and its entries.
fn network_log(env: &TestEnv, sandbox: Option<&str>) -> (String, Vec<Value>) {
    let mut args = vec!["network", "log", "--json"];
    args.extend(sandbox);
    let log = env.ok(&args);
    let entries = (log.lines())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (log, entries)
}

/// The gateway's lines on the replies it finished, from the daemon's log.
fn replies(env: &TestEnv) -> Vec<String> {
    let log = fs::read_to_string(env.home().join("logs/daemon.log")).unwrap_or_default();
    (log.lines())
        .filter(|l| l.contains("Reply finished"))
        .map(str::to_owned)
        .collect()
}

/// Whether a log entry is a request to the project's models.
fn to_model(entry: &Value) -> bool {
    entry["host"] == "models.aistack.internal"
}

/// The agent CLIs' model, linked into the project as `models/coder.gguf`:
/// Qwen2.5-Coder-1.5B-Instruct (32k context, tool calling), from `AISTACK_TEST_AGENT_MODEL`
/// or fetched by `scripts/fetch-coder-model 1.5b`. Under these agents' prompts 0.5B calls
/// tools that were not offered, or the right ones with made-up arguments.
fn link_agent_model(env: &TestEnv) {
    let model = match std::env::var_os("AISTACK_TEST_AGENT_MODEL").filter(|m| !m.is_empty()) {
        Some(model) => PathBuf::from(model),
        None => aistack_tests::script_path("fetch-coder-model", &["1.5b"]),
    };
    fs::create_dir_all(env.project().join("models")).unwrap();
    std::os::unix::fs::symlink(model, env.project().join("models/coder.gguf")).unwrap();
}

/// The file each agent is asked to read: the code in it cannot be guessed.
const NOTES: &str = "The launch code is PAPAYA-42.\n";

/// A project whose sandboxes each run one agent CLI from npm on its local model.
/// Node.js comes from npm's `node` package (its binary from npm's registry too): Debian
/// bookworm's is 18, and Claude Code and Copilot want 22, Gemini CLI 20.
fn local_agents_project(agents: &[&str]) -> TestEnv {
    let debian = debian_rootfs();
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    // The gateway's account of each reply (its tool calls by name), for a failure to show.
    env.set_var("AISTACK_LOG", "info,aistack_gateway=debug");
    link_agent_model(&env);
    env.write("notes.txt", NOTES);
    let packages: Vec<&str> = agents.iter().map(|a| package(a)).collect();
    let sandboxes: String = agents
        .iter()
        .map(|a| {
            format!("  {a}:\n    template: agents\n    agent: {{ name: {a}, model: coder }}\n")
        })
        .collect();
    let spec = format!(
        "version: 1
name: local-agents
engines:
  llama.cpp: {{ threads: 2 }}
models:
  coder:
    source: ./models/coder.gguf
    context_size: 32768
    # Greedy, and a turn of at most 1024 tokens: agents set neither, and a small model
    # sampled at its defaults can ramble for the rest of a 32k window.
    runtime_flags: [--temp=0, --n-predict=1024]
templates:
  debian:
    from: {debian}
    network_policy: build
    run:
      - apt-get update
      - apt-get install -y --no-install-recommends ca-certificates nodejs npm
  agents:
    from: debian
    network_policy: build
    run:
      - npm install -g node@22
      - npm install -g {packages}
network_policies:
  build:
    default: deny
    allow: [deb.debian.org, registry.npmjs.org]
sandboxes:
{sandboxes}",
        debian = debian.display(),
        packages = packages.join(" "),
    );
    env.write("aistack.yaml", &env.spec(&spec));
    env
}

/// An agent's npm package.
fn package(agent: &str) -> &'static str {
    match agent {
        "claude" => "@anthropic-ai/claude-code",
        "codex" => "@openai/codex",
        "copilot" => "@github/copilot",
        "gemini" => "@google/gemini-cli",
        "opencode" => "opencode-ai",
        other => panic!("no package for {other}"),
    }
}

/// The one-turn, non-interactive run of an agent, approving its own tool calls (the
/// sandbox is the boundary; an agent's own sandbox, such as Codex's Landlock and seccomp,
/// would stack on it). `$PROMPT` holds the task.
fn one_turn(agent: &str) -> &'static str {
    match agent {
        "claude" => "claude -p \"$PROMPT\" --dangerously-skip-permissions",
        "codex" => {
            "codex exec --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox \"$PROMPT\""
        }
        "copilot" => "copilot -p \"$PROMPT\" --allow-all-tools",
        "gemini" => "gemini -p \"$PROMPT\" --yolo",
        "opencode" => "opencode run \"$PROMPT\"",
        other => panic!("no command for {other}"),
    }
}

/// What went wrong with one agent's run, if anything: it must exit 0, answer from the file
/// (which only a tool call can have read: the model cannot guess the code), and reach
/// nothing but the project's model. It may only have tried `refused` hosts, which the
/// policy denied.
fn tool_turn(env: &TestEnv, agent: &str, refused: &[&str]) -> Result<String, String> {
    let prompt =
        "Use your shell tool to run `cat notes.txt`, then tell me the launch code it prints.";
    // The sandboxes share the workspace, and a small model may overwrite the file with a
    // wrong tool (OpenCode's `write`): each turn starts from the file as written.
    env.write("notes.txt", NOTES);
    let workspace = env.project().canonicalize().unwrap();
    let run = format!(
        "PROMPT='{prompt}'; cd {} && timeout 900 {} </dev/null",
        workspace.display(),
        one_turn(agent)
    );
    let replies_before = replies(env).len();
    let started = std::time::Instant::now();
    let out = env.run(&["exec", agent, "--", "sh", "-c", &run]);
    let took = started.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // Whatever else went wrong, it must have reached nothing but the model. Its requests
    // (one line each, with their sizes) and the gateway's account of its replies (the tools
    // they called) tell a turn that never called a tool, or called the wrong ones.
    let (requests, entries) = network_log(env, Some(agent));
    let log = format!("{requests}{}", replies(env)[replies_before..].join("\n"));
    let expected = |e: &&Value| {
        (to_model(e) && e["decision"] == "allow")
            || (e["decision"] == "deny"
                && refused.contains(&e["host"].as_str().unwrap_or_default()))
    };
    if let Some(other) = entries.iter().find(|e| !expected(e)) {
        return Err(format!("{agent} tried to reach {other}:\n{log}"));
    }
    if !out.status.success() {
        return Err(format!(
            "{agent} failed ({}):\n{stdout}\n{stderr}\n{log}",
            out.status
        ));
    }
    if !stdout.contains("PAPAYA-42") {
        return Err(format!(
            "{agent} did not answer from the file:\n{stdout}\n{stderr}\n{log}"
        ));
    }
    if !entries.iter().any(to_model) {
        return Err(format!(
            "{agent}: no request to the model is logged:\n{log}"
        ));
    }
    Ok(format!(
        "{agent}: {:.0} s, {} requests to the model",
        took.as_secs_f64(),
        entries.iter().filter(|e| to_model(e)).count()
    ))
}

/// Claude Code, OpenCode, Copilot CLI and Gemini CLI from npm, each in its sandbox on the
/// project's local model with nothing set by hand: each reads a file of the workspace
/// through a tool and answers from it, exits 0, and reaches nothing but the gateway.
#[test]
#[ignore = "slow: each agent sends 10k to 15k tokens a turn to a 1.5B model, 5 to 15 minutes each on 2 cores; run it with `cargo test -p aistack-tests --test agents -- --ignored`"]
fn agent_clis_run_a_tool_turn_on_a_local_model_and_reach_no_vendor() {
    // AISTACK_TEST_AGENTS=copilot,gemini runs some of them.
    let chosen = std::env::var("AISTACK_TEST_AGENTS").unwrap_or_default();
    let agents: Vec<&str> = ["claude", "opencode", "copilot", "gemini"]
        .into_iter()
        .filter(|a| chosen.is_empty() || chosen.split(',').any(|c| c.trim() == *a))
        .collect();
    assert!(!agents.is_empty(), "AISTACK_TEST_AGENTS names none of them");
    let env = local_agents_project(&agents);
    let _down = Down(&env);
    env.ok(&["up"]);
    let results: Vec<Result<String, String>> =
        agents.iter().map(|a| tool_turn(&env, a, &[])).collect();
    for done in results.iter().flatten() {
        eprintln!("{done}");
    }
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{}",
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

/// Codex from npm in a sandbox, on the project's local model with nothing set by hand, as
/// above. Codex 0.171 still tries its plugin catalog (chatgpt.com) and GitHub with
/// analytics and plugins off: those attempts are refused and logged, and only they.
#[test]
#[ignore = "slow: 5 to 15 minutes on 2 cores; run it with `cargo test -p aistack-tests --test agents -- --ignored`"]
fn codex_runs_a_tool_turn_on_a_local_model_and_reaches_no_vendor() {
    let env = local_agents_project(&["codex"]);
    let _down = Down(&env);
    env.ok(&["up"]);
    let config = env.ok(&[
        "exec",
        "codex",
        "--",
        "cat",
        "/home/agent/.codex/config.toml",
    ]);
    assert!(config.contains("model_context_window = 32768"), "{config}");
    let done = tool_turn(&env, "codex", &["chatgpt.com", "api.github.com"]);
    eprintln!("{}", done.unwrap_or_else(|failure| panic!("{failure}")));
}
