//! A browser test: Open WebUI (PyPI `open-webui`) set up against the gateway as Docker Model
//! Runner's Open WebUI guide sets it up against Docker Model Runner (its OpenAI connection on
//! the gateway's `/engines/v1`, its Ollama connection on the gateway's root), and Debian's
//! Chromium, driven by Playwright (`tests/python/open_webui.py`), using it as a person would:
//! the model selector lists the project's model through both connections, and a chat with
//! each streams a reply. Everything stays on loopback: Open WebUI runs offline (no model
//! downloads, no telemetry, no update check) and the page may reach loopback only.
//!
//! `scripts/fetch-open-webui` installs Open WebUI and Playwright; scripts/test runs it and
//! exports `AISTACK_OPEN_WEBUI_VENV`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aistack_tests::{TestEnv, free_port};
use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::Value;

/// `--n-predict` caps replies (Open WebUI sends no `max_tokens` of its own), so that a chat
/// takes a second or two on a shared two-core machine.
const SPEC: &str = "version: 1
name: webui
engines:
  llama.cpp: { threads: 1 }
models:
  chat: { source: ./models/smollm2.gguf, context_size: 2048, runtime_flags: [--n-predict=24] }
";

/// How long Open WebUI may take to answer `/health` (it migrates a fresh database first).
const START_TIMEOUT: Duration = Duration::from_secs(180);

fn open_webui_venv() -> PathBuf {
    let venv = std::env::var_os("AISTACK_OPEN_WEBUI_VENV").map(PathBuf::from);
    match venv {
        Some(venv) if venv.join("bin/open-webui").is_file() => venv,
        _ => panic!(
            "AISTACK_OPEN_WEBUI_VENV must name the venv that `scripts/fetch-open-webui` makes (Open WebUI and Playwright): \
             run scripts/test, which sets it up"
        ),
    }
}

/// `GET url` with curl: the status code (0 when nothing answered) and the body.
fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Open WebUI serving on a free loopback port, in a process group of its own that drop
/// ends.
struct OpenWebUi {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl OpenWebUi {
    fn start(venv: &Path, dir: &Path, gateway: &str) -> OpenWebUi {
        use std::os::unix::process::CommandExt;
        let data = dir.join("data");
        fs::create_dir_all(&data).expect("Open WebUI's data dir");
        let log = dir.join("open-webui.log");
        let port = free_port();
        let out = fs::File::create(&log).expect("Open WebUI's log");
        let err = out.try_clone().expect("Open WebUI's log");
        let mut cmd = Command::new(venv.join("bin/open-webui"));
        cmd.args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(&data)
            // Nothing of the test's environment: only what is set here.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &data)
            .env("LANG", "C.UTF-8")
            .envs([
                // Docker Model Runner's guide: Ollama at the root, OpenAI at `/engines/v1`.
                ("OLLAMA_BASE_URL", gateway.to_owned()),
                ("ENABLE_OLLAMA_API", "true".into()),
                ("OPENAI_API_BASE_URL", format!("{gateway}/engines/v1")),
                ("OPENAI_API_KEY", "unused".into()),
                ("ENABLE_OPENAI_API", "true".into()),
                ("WEBUI_AUTH", "False".into()),
                ("WEBUI_SECRET_KEY", "open-webui-browser-test".into()),
                ("DATA_DIR", data.to_string_lossy().into_owned()),
            ])
            .envs([
                // Offline: no model downloads (embeddings, reranking, Whisper), no plugin
                // installs, no telemetry, no update check; the "slim" mode (no local
                // inference stack, which scripts/fetch-open-webui leaves out).
                ("OFFLINE_MODE", "true"),
                ("HF_HUB_OFFLINE", "1"),
                ("USE_SLIM_DOCKER", "true"),
                ("RAG_EMBEDDING_MODEL_AUTO_UPDATE", "false"),
                ("RAG_RERANKING_MODEL_AUTO_UPDATE", "false"),
                ("ENABLE_VERSION_UPDATE_CHECK", "false"),
                ("SCARF_NO_ANALYTICS", "true"),
                ("DO_NOT_TRACK", "true"),
                ("ANONYMIZED_TELEMETRY", "false"),
                // Whatever would still reach for the network goes to a closed loopback port.
                ("HTTP_PROXY", "http://127.0.0.1:9"),
                ("HTTPS_PROXY", "http://127.0.0.1:9"),
                ("ALL_PROXY", "http://127.0.0.1:9"),
                ("NO_PROXY", "127.0.0.1,localhost"),
                // One chat, one request: no title, tag, follow-up or autocomplete requests
                // to the model, and no built-in tools (their ~6,400 tokens of definitions
                // would not fit the test's context; see README.md).
                ("ENABLE_TITLE_GENERATION", "false"),
                ("ENABLE_TAGS_GENERATION", "false"),
                ("ENABLE_FOLLOW_UP_GENERATION", "false"),
                ("ENABLE_AUTOCOMPLETE_GENERATION", "false"),
                (
                    "DEFAULT_MODEL_METADATA",
                    r#"{"capabilities": {"builtin_tools": false}}"#,
                ),
                ("GLOBAL_LOG_LEVEL", "WARNING"),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().expect("open-webui starts");
        let mut ui = OpenWebUi { child, port, log };
        ui.wait_ready();
        ui
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("Open WebUI's status") {
                panic!("Open WebUI exited with {status}:\n{}", self.log());
            }
            if get(&format!("{}health", self.url())).0 == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Open WebUI did not answer /health within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for OpenWebUi {
    fn drop(&mut self) {
        // The group: uvicorn's workers and anything it started go too.
        let group = Pid::from_raw(self.child.id() as i32).expect("a pid");
        let _ = kill_process_group(group, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill_process_group(group, Signal::KILL);
        let _ = self.child.wait();
    }
}

/// The value of the Prometheus sample `name{labels}` in `metrics`.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn open_webui_in_chromium_lists_the_models_and_streams_a_chat() {
    let venv = open_webui_venv();
    let env = TestEnv::new();
    env.write("aistack.yaml", &env.spec(SPEC));
    env.link_model("smollm2.gguf");
    env.ok(&["up", "-q"]);
    let gateway = format!("http://127.0.0.1:{}", env.gateway_port());

    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let ui = OpenWebUi::start(&venv, dir.path(), &gateway);
    eprintln!("Open WebUI ready in {:?}", started.elapsed());
    let started = Instant::now();
    let script = aistack_tests::repo_root().join("tests/python/open_webui.py");
    let out = Command::new(venv.join("bin/python"))
        .arg(&script)
        .arg(ui.url())
        // The OpenAI connection lists the model as `chat`, the Ollama one as `chat:latest`.
        .args(["chat", "chat:latest"])
        .output()
        .expect("tests/python/open_webui.py runs");
    assert!(
        out.status.success(),
        "tests/python/open_webui.py failed with {}:\n{}\nOpen WebUI's log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        ui.log()
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    });
    eprintln!("the browser session took {:?}", started.elapsed());

    eprintln!("tests/python/open_webui.py: {r}");
    let listed: Vec<&str> = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"chat") && listed.contains(&"chat:latest"),
        "the selector lists {listed:?}"
    );
    for model in ["chat", "chat:latest"] {
        let reply = &r["chats"][model];
        assert!(
            !reply["text"].as_str().unwrap().is_empty(),
            "{model}: {reply}"
        );
        assert!(
            reply["partials"].as_u64().unwrap() >= 2,
            "{model}: the reply appeared at once, not streamed: {reply}"
        );
    }
    assert_eq!(
        r["off_loopback"],
        serde_json::json!([]),
        "the page left loopback"
    );

    // The chats reached the gateway, each through its API, and every request succeeded.
    let (code, metrics) = get(&format!("{gateway}/metrics"));
    assert_eq!(code, 200);
    let total = "aistack_requests_total";
    let openai = sample(&metrics, total, r#"model="chat",api="openai",code="200""#);
    let ollama = sample(
        &metrics,
        total,
        r#"model="chat:latest",api="ollama",code="200""#,
    );
    assert_eq!(openai, Some(1.0), "{metrics}");
    assert_eq!(ollama, Some(1.0), "{metrics}");
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with(total))
            .all(|l| l.contains(r#"code="200""#)),
        "{metrics}"
    );
    for model in ["chat", "chat:latest"] {
        let tokens = sample(
            &metrics,
            "aistack_completion_tokens_total",
            &format!(r#"model="{model}""#),
        );
        assert!(tokens.is_some_and(|t| t > 0.0), "{model}: {metrics}");
    }
    drop(ui);
}
