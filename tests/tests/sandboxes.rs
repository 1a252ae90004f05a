//! Sandboxes through the real binary: `up` imports a busybox template and starts a
//! namespace sandbox, `aistack exec` runs commands in it with the command's exit code,
//! a killed guest agent is repaired by the next `up` with the sandbox's files kept, and
//! `down` removes it.

use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use aistack_tests::sandbox::{busybox_rootfs, guest_bin};
use aistack_tests::{TestEnv, wait_for};

const SPEC: &str = "version: 1
name: sbx
templates:
  base:
    from: ./rootfs
    env: { GREETING: hello }
sandboxes:
  box:
    template: base
    agent: shell
    memory: 256MiB
    cpus: 1
    env: { WHO: sandbox }
";

/// Takes the sandbox down even when an assertion fails: a sandbox outlives the daemon.
struct Down<'a>(&'a TestEnv);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["down"]);
    }
}

fn env() -> TestEnv {
    let mut env = TestEnv::new();
    env.set_var("AISTACK_GUEST", guest_bin());
    busybox_rootfs(&env.project().join("rootfs"));
    env.write("aistack.yaml", &env.spec(SPEC));
    env
}

/// `aistack exec box -- sh -c SCRIPT`.
fn sh(env: &TestEnv, script: &str) -> std::process::Output {
    env.run(&["exec", "box", "--", "sh", "-c", script])
}

/// The same, asserting success; its stdout.
fn sh_ok(env: &TestEnv, script: &str) -> String {
    env.ok(&["exec", "box", "--", "sh", "-c", script])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// The host pids of processes running the guest agent for this test's home.
fn guest_pids(env: &TestEnv) -> Vec<i32> {
    let guest = guest_bin().to_string_lossy().into_owned();
    let home = format!("AISTACK_HOME={}\0", env.home().display());
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = fs::read(entry.path().join("environ")).unwrap_or_default();
        let mine = String::from_utf8_lossy(&environ).contains(&home);
        if String::from_utf8_lossy(&cmdline).starts_with(&guest) && mine {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn up_exec_repair_and_down() {
    let env = env();
    let _down = Down(&env);
    env.ok(&["up"]);

    let out = sh(&env, "echo $GREETING $WHO from $(pwd) as $(id -un); exit 5");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let project = env.project().canonicalize().unwrap();
    assert_eq!(
        text(&out.stdout),
        format!("hello sandbox from {} as agent", project.display())
    );

    let mut cat = env
        .cmd(&[
            "exec",
            "-i",
            "-e",
            "EXTRA=1",
            "-u",
            "root",
            "box",
            "--",
            "sh",
            "-c",
            "cat; echo $EXTRA $(id -u)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "piped\n1 0");

    // The workspace is the project directory; a file in the sandbox's own layer too.
    sh_ok(&env, "echo kept > note && echo layer > /home/agent/layer");
    assert_eq!(
        fs::read_to_string(env.project().join("note")).unwrap(),
        "kept\n"
    );

    // Killing the guest agent ends the sandbox; the next `up` starts it again.
    let pids = guest_pids(&env);
    assert!(!pids.is_empty(), "the guest agent runs");
    for pid in &pids {
        aistack_tests::terminate(*pid, rustix::process::Signal::KILL);
    }
    assert!(wait_for(Duration::from_secs(10), || guest_pids(&env).is_empty()));
    let failed = env.run(&["exec", "box", "--", "true"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        text(&failed.stderr).contains("Sandbox `box` is not running"),
        "{}",
        text(&failed.stderr)
    );
    let plan = env.ok(&["plan"]);
    assert!(plan.contains("+ sandbox box"), "{plan}");
    env.ok(&["up"]);
    let out = sh(&env, "cat note /home/agent/layer");
    assert_eq!(text(&out.stdout), "kept\nlayer", "{}", text(&out.stderr));

    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["sandbox", "ls", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "box");
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(listed[0]["isolation"], "namespace");
    let reason = listed[0]["isolation_reason"].as_str().unwrap();
    assert!(reason.starts_with("auto: "), "{reason}");
    // `sandbox stop` ends its processes and keeps its files; `up` starts it again.
    env.ok(&["sandbox", "stop", "box"]);
    assert!(wait_for(Duration::from_secs(10), || guest_pids(&env).is_empty()));
    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["sandbox", "ls", "--json"])).unwrap();
    assert_eq!(listed[0]["state"], "stopped");
    let log = env.ok(&["sandbox", "logs", "box"]);
    assert!(log.contains("aistack-guest: shutting down"), "{log}");
    env.ok(&["up"]);
    let out = env.run(&["exec", "box", "--", "cat", "/home/agent/layer"]);
    assert_eq!(text(&out.stdout), "layer", "{}", text(&out.stderr));
    let missing = env.run(&["sandbox", "logs", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("No sandbox `nope` in project `sbx`"));

    env.ok(&["down"]);
    assert!(wait_for(Duration::from_secs(10), || guest_pids(&env).is_empty()));
    assert!(!env.home().join("projects/sbx/sandboxes/box").exists());
    assert_eq!(
        fs::read_to_string(env.project().join("note")).unwrap(),
        "kept\n"
    );
}

#[test]
fn what_the_namespace_backend_cannot_do_yet_is_refused_before_anything_runs() {
    let env = env();
    let spec = SPEC.replace("agent: shell", "agent: claude");
    env.write("aistack.yaml", &env.spec(&spec));
    let out = env.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Agent `claude` sandboxes are not supported yet"),
        "{stderr}"
    );
    assert!(guest_pids(&env).is_empty());
}

/// The only way out is the sandbox's policy: allowed requests pass through the proxy
/// (found through the variables every command gets), others get its 403, direct
/// connections fail, and the network log names the sandbox.
#[test]
fn the_network_is_the_policy_proxy() {
    let port = aistack_tests::upstream::upstream();
    let env = env();
    let spec = format!(
        "{SPEC}    network_policy: local\nnetwork_policies:\n  local:\n    default: deny\n    allow: [\"127.0.0.1/32:{port}\"]\n"
    );
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    env.ok(&["up"]);

    let fetch = format!("wget -q -O - http://127.0.0.1:{port}/through-the-proxy");
    let out = sh(&env, &fetch);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("GET /through-the-proxy HTTP/1.1"),
        "{}",
        text(&out.stdout)
    );

    let denied = env.run(&[
        "exec",
        "box",
        "--",
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.2:9/",
    ]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied.stderr).contains("403"),
        "{}",
        text(&denied.stderr)
    );

    let direct = format!("env -u http_proxy wget -q -O - http://127.0.0.1:{port}/direct");
    let out = sh(&env, &direct);
    assert_ne!(out.status.code(), Some(0), "a direct connection must fail");

    let vars = sh_ok(
        &env,
        "echo $HTTPS_PROXY $https_proxy $SSL_CERT_FILE; grep -c BEGIN $NODE_EXTRA_CA_CERTS",
    );
    assert_eq!(
        vars.trim(),
        "http://127.0.0.1:3128 http://127.0.0.1:3128 /etc/ssl/certs/aistack-bundle.pem\n1"
    );

    // The log's writer batches lines; it holds both decisions within moments.
    let decided = |entries: &[serde_json::Value]| {
        entries
            .iter()
            .any(|e| e["decision"] == "allow" && e["source"] == "box")
            && entries
                .iter()
                .any(|e| e["decision"] == "deny" && e["host"] == "127.0.0.2")
    };
    let mut log = String::new();
    let found = wait_for(Duration::from_secs(5), || {
        log = env.ok(&["network", "log", "box", "--json"]);
        let entries: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        decided(&entries)
    });
    assert!(found, "{log}");
}

/// A loopback stand-in of an API that records the request heads it receives and answers
/// `ok`; it serves for at most two minutes.
fn recording_upstream() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            seen.lock().unwrap().push(head);
            let mut stream = stream;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, heads)
}

/// The proxy injects the policy's credential: the stand-in API receives the real key, and
/// nothing in the sandbox holds it (environment, files, any process's `/proc`).
#[test]
fn the_api_key_reaches_the_api_and_never_the_sandbox() {
    const KEY: &str = "sk-sandbox-e2e-7c41a9-secret";
    let (port, heads) = recording_upstream();
    let mut env = env();
    env.set_var("STANDIN_API_KEY", KEY);
    let spec = format!(
        "{SPEC}    network_policy: api\nnetwork_policies:\n  api:\n    default: deny\n    allow: [\"127.0.0.1/32:{port}\"]\n    credentials:\n      - {{ host: 127.0.0.1, header: x-api-key, from_env: STANDIN_API_KEY }}\n"
    );
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    env.ok(&["up"]);
    let call = format!(
        "wget -q -O - --header 'x-api-key: placeholder' http://127.0.0.1:{port}/v1/messages"
    );
    let out = sh(&env, &call);
    assert_eq!(text(&out.stdout), "ok", "{}", text(&out.stderr));
    let received = heads.lock().unwrap().join("\n");
    assert!(
        received
            .to_lowercase()
            .contains(&format!("x-api-key: {KEY}")),
        "{received}"
    );
    assert!(
        !received.contains("placeholder"),
        "the proxy replaces the header: {received}"
    );

    // The search must not carry the key itself: the shell joins it from two halves.
    let (first, second) = KEY.split_at(12);
    let search = format!(
        "env; cat /proc/*/environ /proc/*/cmdline; k={first}; k=${{k}}{second}; \
         grep -rlsF \"$k\" /bin /etc /home /root /run /tmp /usr /var {workspace} && echo FOUND; true",
        workspace = env.project().canonicalize().unwrap().display()
    );
    for user in ["agent", "root"] {
        let out = env.run(&["exec", "-u", user, "box", "--", "sh", "-c", &search]);
        let seen = String::from_utf8_lossy(&out.stdout);
        assert!(
            !seen.contains(KEY),
            "the key is visible to {user} inside: {seen}"
        );
    }
}

/// `ports:` publishes a sandbox port on the host through the agent's tunnel, and a
/// restarted daemon publishes it again.
#[test]
fn a_published_port_reaches_a_server_inside() {
    let host_port = aistack_tests::free_port();
    let env = env();
    let spec = format!("{SPEC}    ports: [\"127.0.0.1:{host_port}:3000\"]\n");
    env.write("aistack.yaml", &env.spec(&spec));
    let _down = Down(&env);
    env.ok(&["up"]);
    let serve = "mkdir -p /tmp/www && echo served-inside > /tmp/www/index.html && httpd -p 127.0.0.1:3000 -h /tmp/www";
    sh_ok(&env, serve);
    let get = || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", host_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).ok()?;
        answer.contains("served-inside").then_some(())
    };
    assert!(
        wait_for(Duration::from_secs(5), || get().is_some()),
        "the published port answers"
    );

    let daemon = env.daemon_pid().expect("the daemon runs");
    aistack_tests::terminate(daemon, rustix::process::Signal::KILL);
    assert!(aistack_tests::wait_gone(daemon, Duration::from_secs(10)));
    env.ok(&["up"]);
    assert!(
        wait_for(Duration::from_secs(5), || get().is_some()),
        "published again: {}",
        fs::read_to_string(env.home().join("logs/daemon.log")).unwrap_or_default()
    );
}
