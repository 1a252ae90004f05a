//! Network policies through the real binary: `up` starts one loopback proxy per policy, a
//! host process of the daemon's user uses it with `HTTP_PROXY` (another user's is refused),
//! a changed policy applies in place, credentials go over TLS only, and `down` stops it.
//! The upstream is a loopback server of the test's own, reached only through an explicit
//! CIDR rule.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aistack_tests::upstream::{recording, recording_tls, upstream};
use aistack_tests::{TestEnv, terminate, wait_gone};

const SECRET: &str = "sk-e2e-5f1d3c-secret";

fn policy_spec(allow: &str, extra: &str) -> String {
    format!(
        "version: 1\nname: demo\nnetwork_policies:\n  local:\n    default: deny\n    allow: [{allow}]\n{extra}"
    )
}

fn proxy_endpoint(env: &TestEnv) -> (String, String) {
    let status = env.status();
    let proxy = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "proxy" && r["name"] == "local")
        .cloned()
        .unwrap_or_else(|| panic!("no proxy in {status}"));
    (
        proxy["state"].as_str().unwrap_or_default().to_owned(),
        proxy["endpoint"].as_str().unwrap_or_default().to_owned(),
    )
}

fn curl(proxy: &str, url: &str) -> (String, String) {
    curl_with(Command::new("curl"), proxy, url, &[])
}

/// curl as `command` (curl itself, or a wrapper that runs it), with `extra` arguments;
/// its body and status code.
fn curl_with(mut command: Command, proxy: &str, url: &str, extra: &[&str]) -> (String, String) {
    let out = command
        .args(extra)
        .args([
            "--silent",
            "--max-time",
            "10",
            "--noproxy",
            "",
            "-x",
            proxy,
            "-w",
            "\n%{http_code}",
            url,
        ])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_owned(), code.to_owned())
}

/// A CONNECT tunnel through the proxy, established.
fn tunnel(proxy: &str, target: &str) -> TcpStream {
    let address = proxy.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends one request through an open tunnel and returns the answer's status line.
fn through(stream: &mut TcpStream, path: &str) -> String {
    if write!(stream, "GET {path} HTTP/1.1\r\nHost: upstream\r\n\r\n").is_err() {
        return String::new();
    }
    let head = read_head(stream);
    let length: usize = (head.lines())
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    let _ = stream.read_exact(&mut body);
    head.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn up_runs_a_policy_proxy_that_a_host_process_uses_and_a_change_applies_in_place() {
    let env = TestEnv::new();
    let port = upstream();
    env.write("aistack.yaml", &policy_spec(r#""127.0.0.0/8""#, ""));

    let up = env.ok(&["up"]);
    assert!(up.contains("+ proxy local"), "{up}");
    let (state, endpoint) = proxy_endpoint(&env);
    assert_eq!(state, "running");
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert!(up.contains(&format!("Proxy `local`: {endpoint}")), "{up}");

    let (body, code) = curl(&endpoint, &format!("http://127.0.0.1:{port}/first"));
    assert_eq!(code, "200", "{body}");
    assert!(body.starts_with("GET /first HTTP/1.1"), "{body}");

    // A tunnel opened under the first policy.
    let mut open = tunnel(&endpoint, &format!("127.0.0.1:{port}"));
    assert!(through(&mut open, "/before").starts_with("HTTP/1.1 200"));

    // A change that still allows it: `~`, the same endpoint, and the tunnel goes on.
    env.write(
        "aistack.yaml",
        &policy_spec(r#""127.0.0.0/8", "example.com""#, ""),
    );
    let up = env.ok(&["up"]);
    assert!(up.contains("~ proxy local"), "{up}");
    assert_eq!(
        proxy_endpoint(&env).1,
        endpoint,
        "the listener keeps its port"
    );
    assert!(through(&mut open, "/during").starts_with("HTTP/1.1 200"));

    // A change that no longer allows it: the tunnel is closed, new requests are refused.
    env.write("aistack.yaml", &policy_spec(r#""example.com""#, ""));
    env.ok(&["up"]);
    assert_eq!(through(&mut open, "/after"), "", "the tunnel was closed");
    let (body, code) = curl(&endpoint, &format!("http://127.0.0.1:{port}/denied"));
    assert_eq!(code, "403");
    assert!(
        body.contains("block list 127.0.0.0/8 (127.0.0.1)"),
        "{body}"
    );

    // Every decision is in the network log, which the proxy writes in batches.
    let mut log = String::new();
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !entries.iter().any(|e| e["status"] == 403) {
        std::thread::sleep(Duration::from_millis(50));
        log = env.ok(&["network", "log", "--json"]);
        entries = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    }
    assert!(entries.len() >= 3, "{log}");
    assert!(entries.iter().all(|e| e["source"] == "local"));
    let denied = entries
        .iter()
        .find(|e| e["status"] == 403)
        .expect("a denial");
    assert_eq!(denied["rule"], "block list 127.0.0.0/8 (127.0.0.1)");
    let human = env.ok(&["network", "log", "local"]);
    assert!(
        human.contains("CONNECT") && human.contains("deny"),
        "{human}"
    );

    // The project's CA, for sandboxes and host processes to trust.
    let project = env.home().join("projects/demo");
    assert!(
        std::fs::read_to_string(project.join("ca.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let mode = std::fs::metadata(project.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // `down` stops the listener.
    let down = env.ok(&["down"]);
    assert!(down.contains("- proxy local"), "{down}");
    assert!(TcpStream::connect(endpoint.trim_start_matches("http://")).is_err());
}

/// Credentials go over TLS only: the stand-in API gets the key inside the intercepted
/// tunnel, the same request in plain HTTP is refused with the fix (issue 16), and the
/// value survives a daemon restart without reaching any file.
#[test]
fn credentials_reach_the_upstream_over_tls_only_and_survive_a_daemon_restart() {
    let mut env = TestEnv::new();
    let stand_in = recording_tls(&env.project(), "127.0.0.1", "200 OK", "{}");
    let port = stand_in.port;
    env.set_var("AISTACK_EXTRA_CA_CERTS", &stand_in.ca);
    let credentials =
        "    credentials:\n      - { host: localhost, header: x-api-key, from_env: E2E_API_KEY }\n";
    env.write(
        "aistack.yaml",
        &policy_spec(r#""127.0.0.0/8", "::1/128""#, credentials),
    );

    // Unset, `up` says which variable and where it is named, before anything starts.
    let out = env.run(&["up"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "`E2E_API_KEY`, named by `network_policies.local.credentials.0.from_env`, is not set"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("help: Export `E2E_API_KEY`"), "{stderr}");

    env.set_var("E2E_API_KEY", SECRET);
    env.ok(&["up"]);
    let (_, endpoint) = proxy_endpoint(&env);
    let ca = env.home().join("projects/demo/ca.pem");
    let ca = ca.to_str().unwrap();
    let https = format!("https://localhost:{port}/key");
    let (body, code) = curl_with(Command::new("curl"), &endpoint, &https, &["--cacert", ca]);
    assert_eq!(code, "200", "{body}");
    let heads = || {
        stand_in
            .heads
            .lock()
            .unwrap()
            .join("\n")
            .to_ascii_lowercase()
    };
    assert!(
        heads().contains(&format!("x-api-key: {SECRET}")),
        "{}",
        heads()
    );

    // Another local user is refused at CONNECT: the proxy adds the key for no one else.
    if rustix::process::geteuid().is_root() {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"])
            .args([
                "--silent",
                "--insecure",
                "--max-time",
                "10",
                "--noproxy",
                "",
                "-x",
            ])
            .args([endpoint.as_str(), "-w", "%{http_connect}", &https])
            .output()
            .expect("setpriv and curl run");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
        assert_eq!(
            stand_in.heads.lock().unwrap().len(),
            1,
            "nothing more arrived"
        );
    }

    // In plain HTTP the credential would cross the wire in clear: refused, with the fix.
    let (body, code) = curl(&endpoint, &format!("http://localhost:{port}/plain"));
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("The proxy adds the credential for `localhost` over https only, not to a plain-HTTP request"),
        "{body}"
    );
    assert!(
        body.contains(&format!("help: Use `https://localhost:{port}/`")),
        "{body}"
    );
    assert_eq!(
        stand_in.heads.lock().unwrap().len(),
        1,
        "nothing more arrived"
    );

    // The daemon restarts (a reboot): the next `up` starts it, the proxy listens on its
    // recorded port again and gets the credential back.
    let pid = env.daemon_pid().expect("a daemon");
    terminate(pid, rustix::process::Signal::TERM);
    assert!(wait_gone(pid, Duration::from_secs(10)));
    let up = env.ok(&["up"]);
    assert!(up.contains(&format!("Proxy `local`: {endpoint}")), "{up}");
    let again = format!("https://localhost:{port}/again");
    let (body, code) = curl_with(Command::new("curl"), &endpoint, &again, &["--cacert", ca]);
    assert_eq!(code, "200", "{body}");
    let last = stand_in
        .heads
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default();
    assert!(last.starts_with("GET /again"), "{last}");
    assert!(
        last.to_ascii_lowercase()
            .contains(&format!("x-api-key: {SECRET}")),
        "{last}"
    );

    // The secret is in no file aistack wrote.
    let (tx, rx) = mpsc::channel();
    walk(&env.home(), &tx);
    drop(tx);
    for path in rx {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "the secret leaked into {}",
            path.display()
        );
    }
}

/// A policy's listener is on loopback, where every local user can connect; it serves only
/// the daemon's user, so another user gets a 403 that says why, in the network log too,
/// and neither the upstream nor the credential (issue 16).
#[test]
fn a_policy_listener_serves_only_the_daemons_user() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: switching to another user needs root");
        return;
    }
    let env = TestEnv::new();
    let (port, heads) = recording("127.0.0.1", "200 OK", "{}");
    env.write("aistack.yaml", &policy_spec(r#""127.0.0.0/8""#, ""));
    env.ok(&["up"]);
    let (_, endpoint) = proxy_endpoint(&env);
    let url = format!("http://127.0.0.1:{port}/as-nobody");

    let mut nobody = Command::new("setpriv");
    nobody.args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"]);
    let (body, code) = curl_with(nobody, &endpoint, &url, &[]);
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("The proxy of `local` serves only uid 0, the user aistack runs as; this client runs as uid 65534"),
        "{body}"
    );
    assert!(body.contains("help: Run the client as uid 0"), "{body}");
    assert!(
        heads.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );

    let (body, code) = curl(&endpoint, &url);
    assert_eq!(code, "200", "the daemon's user is served: {body}");
    assert_eq!(heads.lock().unwrap().len(), 1);

    let mut refused = None;
    let logged = aistack_tests::wait_for(Duration::from_secs(5), || {
        let log = env.ok(&["network", "log", "--json"]);
        refused = (log.lines())
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["status"] == 403);
        refused.is_some()
    });
    assert!(logged, "the refusal is logged");
    let refused = refused.unwrap();
    assert_eq!(refused["rule"], "client uid 65534", "{refused}");
    assert_eq!(refused["decision"], "deny", "{refused}");
}

fn walk(dir: &std::path::Path, out: &mpsc::Sender<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.is_file() {
            let _ = out.send(path);
        }
    }
}
