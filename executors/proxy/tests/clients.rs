//! The official Python HTTP clients, `requests` and `httpx`, through the proxy as agents
//! use them: plain HTTP, HTTPS with the credential injected behind the project's CA, and
//! a destination the policy denies. Python comes from `AISTACK_PYTHON` (scripts/test sets
//! up the venv); only loopback is dialled.

mod support;

use std::time::Duration;

use aistack_spec::values::PolicyDefault::Deny;
use serde_json::Value;
use support::{Harness, SECRET, TestCa, Upstream, policy, with_credential};

fn python() -> String {
    std::env::var("AISTACK_PYTHON").unwrap_or_else(|_| {
        panic!(
            "AISTACK_PYTHON must name a Python with the `requests` and `httpx` packages: run scripts/test, which sets it up"
        )
    })
}

/// The variables through which Python's clients would pick a proxy or a CA bundle of
/// their own; the scripts get only what they are given.
const AMBIENT: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Runs `script` with `args` (off the async runtime, whose threads serve the proxy) and
/// parses the one JSON object it prints.
async fn run(script: &str, args: &[&str]) -> Value {
    let python = python();
    let script = format!("{PRELUDE}\n{script}");
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    let child = tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(&python);
        command.arg("-c").arg(&script).args(&args);
        for name in AMBIENT {
            command.env_remove(name);
        }
        command.env("NO_PROXY", "").env("no_proxy", "");
        command
            .output()
            .unwrap_or_else(|e| panic!("{python} runs: {e}"))
    });
    let output = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the Python script ends within 60s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python failed: {stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

/// What every script starts with: the clients, and `attempt`, which turns a call into a
/// JSON-able result (the status and body, or the exception's type and text).
const PRELUDE: &str = r#"
import json, ssl, sys
import httpx, requests

def attempt(call):
    try:
        response = call()
        return {"status": response.status_code, "body": response.text}
    except Exception as error:
        return {"error": type(error).__module__ + "." + type(error).__qualname__, "text": str(error)}

def strict(cafile):
    # As Python 3.13 verifies by default, so that the project's CA suits newer agents too.
    context = ssl.create_default_context(cafile=cafile)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context
"#;

/// A result's status, panicking with the result when it is an exception.
fn status(result: &Value) -> u64 {
    result["status"]
        .as_u64()
        .unwrap_or_else(|| panic!("a response: {result}"))
}

/// The JSON body the test upstream echoes.
fn echoed(result: &Value) -> Value {
    let body = result["body"]
        .as_str()
        .unwrap_or_else(|| panic!("a body: {result}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_httpx_send_plain_http_through_the_proxy() {
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[]), None).await;
    let script = r#"
proxy, url = sys.argv[1], sys.argv[2]
out = {"requests": attempt(lambda: requests.get(url + "/requests?x=1", proxies={"http": proxy}, timeout=10))}
with httpx.Client(proxy=proxy, timeout=10) as client:
    out["httpx"] = attempt(lambda: client.get(url + "/httpx?x=1"))
print(json.dumps(out))
"#;
    let url = format!("http://127.0.0.1:{}", upstream.port());
    let out = run(script, &[&proxy.url(), &url]).await;
    for client in ["requests", "httpx"] {
        assert_eq!(status(&out[client]), 200, "{client}: {}", out[client]);
        let echoed = echoed(&out[client]);
        assert_eq!(echoed["path"], format!("/{client}"), "{client}: {echoed}");
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(
            s.header("host"),
            Some(&*format!("127.0.0.1:{}", upstream.port()))
        );
        assert_eq!(s.header("proxy-connection"), None, "{s:?}");
    }
    let entries = proxy.entries().await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|e| e.method == "GET" && e.decision == "allow" && e.status == 200),
        "{entries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_httpx_get_the_credential_injected_into_https() {
    let ca = TestCa::new();
    let upstream = Upstream::https(&ca).await;
    let policy = with_credential(policy(Deny, &["127.0.0.0/8"], &[]), "api.test", &[]);
    let proxy = Harness::start(&policy, Some(&ca.pem)).await;
    let script = r#"
proxy, url, ca = sys.argv[1], sys.argv[2], sys.argv[3]
forged = {"x-api-key": "forged-by-the-client"}
out = {"requests": attempt(lambda: requests.get(
    url + "/requests", proxies={"https": proxy}, verify=ca, headers=forged, timeout=10))}
with httpx.Client(proxy=proxy, verify=strict(ca), timeout=10) as client:
    out["httpx"] = attempt(lambda: client.get(url + "/httpx", headers=forged))
print(json.dumps(out))
"#;
    let url = format!("https://api.test:{}/v1", upstream.port());
    let out = run(script, &[&proxy.url(), &url, proxy.ca.to_str().unwrap()]).await;
    for client in ["requests", "httpx"] {
        assert_eq!(
            status(&out[client]),
            200,
            "{client} trusts the project's CA: {}",
            out[client]
        );
        assert_eq!(echoed(&out[client])["path"], format!("/v1/{client}"));
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(
            s.header("x-api-key"),
            Some(SECRET),
            "the proxy's value replaces the client's: {s:?}"
        );
        assert_eq!(
            s.header("host"),
            Some(&*format!("api.test:{}", upstream.port()))
        );
    }
    assert!(
        !proxy.log_text().await.contains(SECRET),
        "the secret is not logged"
    );
    let entries = proxy.entries().await;
    assert_eq!(
        entries.len(),
        4,
        "a tunnel and a request in it, per client: {entries:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e.intercepted && e.decision == "allow"),
        "{entries:?}"
    );
    assert_eq!(entries.iter().filter(|e| e.method == "CONNECT").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_httpx_see_403_for_a_denied_destination() {
    let upstream = Upstream::http().await;
    // `api.test` resolves to the upstream's loopback address, which the CIDR rule allows:
    // only the deny rule stands between the clients and it.
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &["api.test"]), None).await;
    let script = r#"
proxy, port = sys.argv[1], sys.argv[2]
http, https = f"http://api.test:{port}/denied", f"https://api.test:{port}/denied"
proxies = {"http": proxy, "https": proxy}
out = {
    "requests_http": attempt(lambda: requests.get(http, proxies=proxies, timeout=10)),
    "requests_https": attempt(lambda: requests.get(https, proxies=proxies, timeout=10)),
}
with httpx.Client(proxy=proxy, timeout=10) as client:
    out["httpx_http"] = attempt(lambda: client.get(http))
    out["httpx_https"] = attempt(lambda: client.get(https))
print(json.dumps(out))
"#;
    let out = run(script, &[&proxy.url(), &upstream.port().to_string()]).await;
    for client in ["requests_http", "httpx_http"] {
        assert_eq!(status(&out[client]), 403, "{client}: {}", out[client]);
        let body = out[client]["body"].as_str().unwrap();
        assert!(
            body.contains("Network policy `agents` denies `api.test:"),
            "{client}: {body}"
        );
        assert!(body.contains("help: "), "{client}: {body}");
    }
    // Over CONNECT the clients get no response object: they raise, naming the 403.
    let requests = &out["requests_https"];
    assert_eq!(
        requests["error"], "requests.exceptions.ProxyError",
        "{requests}"
    );
    assert!(
        requests["text"].as_str().unwrap().contains("403"),
        "{requests}"
    );
    let httpx = &out["httpx_https"];
    assert_eq!(httpx["error"], "httpx.ProxyError", "{httpx}");
    assert!(httpx["text"].as_str().unwrap().contains("403"), "{httpx}");
    assert!(upstream.seen().is_empty(), "nothing reached the upstream");
    let entries = proxy.entries().await;
    assert_eq!(entries.len(), 4, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|e| e.decision == "deny" && e.status == 403 && e.address.is_none()),
        "{entries:?}"
    );
    assert!(
        entries.iter().all(|e| e.rule == "deny api.test"),
        "{entries:?}"
    );
}
