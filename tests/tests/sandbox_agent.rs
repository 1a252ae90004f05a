//! sandbox-agent (Rivet's HTTP server for coding agents, `@sandbox-agent/cli` on npm) in a
//! sandbox, as Docker's guide runs it in Docker Sandboxes: a Debian template with it, Codex
//! and Claude Code and their ACP adapters from npm; the server inside, published on a
//! host loopback port; two ACP sessions, one per agent, prompted over its HTTP API and
//! their events read from its SSE streams; both agents on the project's local model, and
//! no vendor host even tried. The template and the sandbox are `examples/sandbox-agent`'s.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aistack_tests::TestEnv;
use aistack_tests::sandbox::{Down, debian_rootfs, guest_bin};
use serde_json::{Value, json};

/// The agents' test model (Qwen2.5-Coder-0.5B-Instruct, 32k context), linked into the
/// project as `models/coder.gguf`.
fn link_coder_model(env: &TestEnv) {
    let model = std::env::var("AISTACK_TEST_CODER_MODEL").unwrap_or_else(|_| {
        panic!("AISTACK_TEST_CODER_MODEL must name the Qwen2.5-Coder GGUF: run scripts/test, which fetches it with scripts/fetch-coder-model")
    });
    fs::create_dir_all(env.project().join("models")).unwrap();
    std::os::unix::fs::symlink(model, env.project().join("models/coder.gguf")).unwrap();
}

/// One HTTP/1.0 exchange with the published port (1.0: no chunked bodies to decode):
/// the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(900)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nhost: 127.0.0.1\r\naccept: application/json\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A JSON-RPC request to the ACP server `server` (bound to `agent` by its first POST).
fn acp(port: u16, server: &str, agent: &str, id: u64, method: &str, params: Value) -> Value {
    let envelope = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let (status, body) = http(
        port,
        "POST",
        &format!("/v1/acp/{server}?agent={agent}"),
        Some(&envelope),
    )
    .unwrap_or_else(|e| panic!("{agent} {method}: {e}"));
    assert_eq!(status, 200, "{agent} {method}: {body}");
    let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(answer.get("error").is_none(), "{agent} {method}: {answer}");
    answer
}

/// Reads the SSE stream of ACP server `server` into `events` (each `data:` line's JSON),
/// answering the agent's permission requests with their first option, until the stream
/// ends.
fn follow(port: u16, server: String, agent: String, events: Arc<Mutex<Vec<Value>>>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("SSE connect");
    write!(
        stream,
        "GET /v1/acp/{server} HTTP/1.0\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        if event["method"] == "session/request_permission" {
            let option = event["params"]["options"][0]["optionId"].clone();
            let answer = json!({"jsonrpc": "2.0", "id": event["id"],
                "result": {"outcome": {"outcome": "selected", "optionId": option}}});
            let _ = http(
                port,
                "POST",
                &format!("/v1/acp/{server}?agent={agent}"),
                Some(&answer),
            );
        }
        events.lock().unwrap().push(event);
    }
}

const PROMPT_ID: u64 = 3;

#[test]
fn sandbox_agent_runs_codex_and_claude_sessions_on_a_local_model() {
    let debian = debian_rootfs();
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    link_coder_model(&env);
    let port = aistack_tests::free_port();
    let example =
        fs::read_to_string(aistack_tests::repo_root().join("examples/sandbox-agent/aistack.yaml"))
            .unwrap();
    // The example's spec, on the test's Debian tree and a free host port.
    let spec = example
        .replace(
            "from: debian:bookworm-slim",
            &format!("from: {}", debian.display()),
        )
        .replace("127.0.0.1:2468:2468", &format!("127.0.0.1:{port}:2468"));
    assert!(spec.contains(&format!("127.0.0.1:{port}:2468")), "{spec}");
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    let started = Instant::now();
    env.ok(&["up"]);
    eprintln!("up: {:?}", started.elapsed());

    env.ok(&[
        "exec",
        "-d",
        "agents",
        "--",
        "sandbox-agent",
        "server",
        "--no-token",
        "--no-telemetry",
    ]);
    let healthy = aistack_tests::wait_for(Duration::from_secs(60), || {
        http(port, "GET", "/v1/health", None).is_ok_and(|(s, _)| s == 200)
    });
    assert!(healthy, "sandbox-agent's health endpoint never answered");
    let (_, agents) = http(port, "GET", "/v1/agents", None).unwrap();
    eprintln!("agents: {agents}");

    let workspace = env.project().canonicalize().unwrap();
    let mut sessions = Vec::new();
    for agent in ["codex", "claude"] {
        let server = format!("{agent}-1");
        acp(
            port,
            &server,
            agent,
            1,
            "initialize",
            json!({"protocolVersion": 1, "clientCapabilities": {}}),
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let (s, a, e) = (server.clone(), agent.to_owned(), events.clone());
        std::thread::spawn(move || follow(port, s, a, e));
        let session = acp(
            port,
            &server,
            agent,
            2,
            "session/new",
            json!({"cwd": workspace, "mcpServers": []}),
        );
        let id = session["result"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("{agent}: no session id: {session}"))
            .to_owned();
        eprintln!("{agent}: session {id} ({:?})", started.elapsed());
        sessions.push((agent, server, id, events));
    }
    // Both prompts at once; each POST answers when its turn ends, and so does its stream.
    for (agent, server, id, _) in &sessions {
        let (agent, server, id) = (agent.to_string(), server.clone(), id.clone());
        std::thread::spawn(move || {
            let envelope = json!({"jsonrpc": "2.0", "id": PROMPT_ID, "method": "session/prompt",
                "params": {"sessionId": id, "prompt": [{"type": "text", "text": "Reply with the word OK."}]}});
            let answer = http(
                port,
                "POST",
                &format!("/v1/acp/{server}?agent={agent}"),
                Some(&envelope),
            );
            eprintln!("{agent} prompt: {answer:?}");
        });
    }
    let turn_ended = |events: &[Value]| {
        events.iter().any(|e| {
            e["id"] == PROMPT_ID && (e.get("result").is_some() || e.get("error").is_some())
        })
    };
    let ended = aistack_tests::wait_for(Duration::from_secs(900), || {
        sessions
            .iter()
            .all(|(_, _, _, events)| turn_ended(&events.lock().unwrap()))
    });
    eprintln!("turns: {:?}", started.elapsed());
    let log = env.run(&["network", "log", "agents", "--json"]);
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    for (agent, _, _, events) in &sessions {
        let events = events.lock().unwrap();
        let all = events
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(ended, "{agent}'s turn did not end:\n{all}\n{log}");
        let end = events.iter().find(|e| e["id"] == PROMPT_ID).unwrap();
        assert!(
            end["result"]["stopReason"].is_string(),
            "{agent}'s turn failed: {end}\n{all}\n{log}"
        );
        let said = events.iter().any(|e| {
            e["method"] == "session/update"
                && e["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
        });
        assert!(said, "{agent} sent no agent message:\n{all}");
        let text: String = (events.iter())
            .filter(|e| e["params"]["update"]["sessionUpdate"] == "agent_message_chunk")
            .filter_map(|e| e["params"]["update"]["content"]["text"].as_str())
            .collect();
        eprintln!("{agent} said: {text}");
    }

    let entries: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!entries.is_empty(), "the sandbox's requests are logged");
    // Nothing but the model: not the vendors' APIs, nor what Claude Code fetches at start
    // outside its minimal mode (its plugins' blocklist, from GitHub).
    assert!(
        (entries.iter()).all(|e| e["host"] == "models.aistack.internal"),
        "the sandbox tried to reach something else than its model:\n{log}"
    );
    let routed = |e: &Value| e["host"] == "models.aistack.internal" && e["decision"] == "allow";
    assert!(
        entries.iter().filter(|e| routed(e)).count() >= 2,
        "both agents reached the model:\n{log}"
    );
}
