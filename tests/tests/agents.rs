//! The slower sandbox test, on a Debian minbase template (debootstrap) built by `run:`
//! steps through a policy that allows Debian's mirror and npm's registry by host rule:
//! apt installs curl, npm installs a real agent CLI (OpenAI's codex), and one
//! non-interactive run of it reaches a loopback stand-in of its API over HTTPS through the
//! sandbox's proxy, which intercepts the TLS and sets the key: the stand-in sees the real
//! key, the sandbox never holds it.

use std::fs;

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
    let log = env.ok(&["network", "log", "--json"]);
    let entries: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
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

/// The agents' test model (Qwen2.5-Coder-0.5B-Instruct, 32k context, tool calling), linked
/// into the project as `models/coder.gguf`.
fn link_coder_model(env: &TestEnv) {
    let model = std::env::var("AISTACK_TEST_CODER_MODEL").unwrap_or_else(|_| {
        panic!("AISTACK_TEST_CODER_MODEL must name the Qwen2.5-Coder GGUF: run scripts/test, which fetches it with scripts/fetch-coder-model")
    });
    fs::create_dir_all(env.project().join("models")).unwrap();
    std::os::unix::fs::symlink(model, env.project().join("models/coder.gguf")).unwrap();
}

/// Codex from npm in a sandbox, on the project's local model with nothing set by hand: it
/// reads a file of the workspace through its shell tool and answers from it, and nothing
/// but the gateway's Responses API is reached.
#[test]
#[ignore = "slow and at the mercy of a 0.5B model: 4 to 15 minutes on 2 cores; run it with `cargo test -p aistack-tests --test agents -- --ignored`"]
fn codex_runs_a_tool_turn_on_a_local_model_and_reaches_no_vendor() {
    let debian = debian_rootfs();
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    link_coder_model(&env);
    env.write("notes.txt", "The launch code is PAPAYA-42.\n");
    let spec = format!(
        "version: 1
name: local-agents
engines:
  llama.cpp: {{ threads: 2 }}
models:
  coder:
    source: ./models/coder.gguf
    context_size: 32768
    # Greedy, and a turn of at most 1024 tokens: codex sets neither, and a small model
    # sampled at its defaults can ramble for the rest of a 32k window.
    runtime_flags: [--temp=0, --n-predict=1024]
templates:
  debian:
    from: {debian}
    network_policy: build
    run:
      - apt-get update
      - apt-get install -y --no-install-recommends ca-certificates nodejs npm
  codex:
    from: debian
    network_policy: build
    run:
      - npm install -g @openai/codex
network_policies:
  build:
    default: deny
    allow: [deb.debian.org, registry.npmjs.org]
sandboxes:
  coder:
    template: codex
    agent: {{ name: codex, model: coder }}
",
        debian = debian.display()
    );
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    env.ok(&["up"]);

    // `--dangerously-bypass-approvals-and-sandbox`: the sandbox is the sandbox, and codex's
    // own (Landlock, seccomp) would stack on ours.
    let prompt = "Run the shell command `cat notes.txt` and tell me the launch code it prints.";
    let workspace = env.project().canonicalize().unwrap();
    let run = format!(
        "cd {} && timeout 900 codex exec --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox '{prompt}' </dev/null",
        workspace.display()
    );
    let out = env.run(&["exec", "coder", "--", "sh", "-c", &run]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "codex exec failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("PAPAYA-42") || stderr.contains("PAPAYA-42"),
        "codex did not answer from the file:\n{stdout}\n{stderr}"
    );
    // The tool ran: codex prints each command it runs.
    assert!(stderr.contains("notes.txt"), "no tool call:\n{stderr}");

    // Its config came from aistack: the Responses API of the gateway, the model's window.
    let config = env.ok(&[
        "exec",
        "coder",
        "--",
        "cat",
        "/home/agent/.codex/config.toml",
    ]);
    assert!(config.contains("model_context_window = 32768"), "{config}");

    let log = env.ok(&["network", "log", "coder", "--json"]);
    let entries: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let model = |e: &&serde_json::Value| e["host"] == "models.aistack.internal";
    assert!(
        entries
            .iter()
            .filter(model)
            .all(|e| e["decision"] == "allow"),
        "{log}"
    );
    assert!(
        entries.iter().any(|e| model(&e)),
        "the model's requests are logged"
    );
    // Nothing else got out. Codex 0.171 still tries its plugin catalog (chatgpt.com) and
    // GitHub with analytics and plugins off; those attempts are refused and logged.
    let others: Vec<&serde_json::Value> = entries.iter().filter(|e| !model(e)).collect();
    assert!(
        others.iter().all(|e| e["decision"] == "deny"),
        "the sandbox reached something else than its model:\n{log}"
    );
    for e in &others {
        eprintln!("refused: {} {}", e["method"], e["host"]);
    }
}
