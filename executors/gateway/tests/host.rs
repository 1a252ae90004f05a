//! DNS rebinding: a gateway without a key answers only requests addressed to `localhost`,
//! an IP address, or (with a sandbox's scope) `models.aistack.internal`; refusals are 403 in
//! the dialect's error shape. Real listeners, raw HTTP/1.x on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use aistack_gateway::{Auth, DEFAULT_BODY_LIMIT, Gateway, Launcher, Settings};
use serde_json::Value;

async fn gateway(auth: Auth) -> Gateway {
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        cors_origins: vec!["*".to_owned()],
        auth,
        memory_budget: 1 << 30,
        body_limit: DEFAULT_BODY_LIMIT,
    };
    let launcher = Launcher {
        program: "/bin/false".into(),
        args: Vec::new(),
        run_dir: std::env::temp_dir(),
        log_dir: std::env::temp_dir(),
        user: None,
        env: Vec::new(),
    };
    Gateway::start(settings, launcher).await.unwrap()
}

/// Sends `head` (the request line and headers, without the blank line) and returns the
/// status and the JSON body.
async fn exchange(addr: SocketAddr, head: String) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "{head}\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

async fn get(addr: SocketAddr, path: &str, host: &str) -> (u16, Value) {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: {host}")).await
}

#[tokio::test]
async fn a_gateway_without_a_key_refuses_other_host_names() {
    let gateway = gateway(Auth::LoopbackOnly).await;
    let addr = gateway.addr();
    let port = addr.port();

    let (status, body) = get(addr, "/v1/models", "evil.example").await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert!(
        message.contains("Host `evil.example` is refused"),
        "{message}"
    );
    assert!(
        message.contains(&format!("help: call it at `http://{addr}`")),
        "{message}"
    );
    let (status, body) = get(addr, "/api/tags", &format!("evil.example:{port}")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string(), "Ollama's shape: {body}");
    let (status, body) = exchange(
        addr,
        format!(
            "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: evil.example:{port}\r\n\
             Origin: http://evil.example:{port}\r\nAccess-Control-Request-Method: POST"
        ),
    )
    .await;
    assert_eq!(status, 403, "a rebinding page's preflight: {body}");
    let (status, _) = exchange(
        addr,
        format!("GET http://evil.example:{port}/v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}"),
    )
    .await;
    assert_eq!(status, 403, "the host in an absolute target counts too");

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = get(addr, "/v1/models", &host).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (status, _) = exchange(addr, "GET /v1/models HTTP/1.0".to_owned()).await;
    assert_eq!(status, 200, "HTTP/1.0 without a Host");

    // What a sandbox's proxy sends on the models route.
    let (status, body) = exchange(
        addr,
        format!(
            "GET /v1/models HTTP/1.1\r\nHost: models.aistack.internal:{port}\r\nx-aistack-models: chat"
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = get(addr, "/v1/models", "models.aistack.internal").await;
    assert_eq!(status, 403, "the sandboxes' name without their scope");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_gateway_with_a_key_serves_any_name_to_its_holders() {
    let gateway = gateway(Auth::Key("k3y".to_owned())).await;
    let addr = gateway.addr();
    let (status, _) = get(addr, "/v1/models", "evil.example").await;
    assert_eq!(status, 401, "no key");
    let (status, body) = exchange(
        addr,
        "GET /v1/models HTTP/1.1\r\nHost: gpu-box.lan:12434\r\nAuthorization: Bearer k3y"
            .to_owned(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    gateway.shutdown().await;
}
