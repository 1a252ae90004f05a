//! The proxy as its clients see it: curl and raw sockets through a listener on loopback, to
//! loopback upstreams that the policies reach only through an explicit CIDR rule.

mod support;

use std::time::Duration;

use aistack_proxy::Config;
use aistack_spec::values::PolicyDefault::{Allow, Deny};
use futures_util::{SinkExt, StreamExt};
use support::{
    Harness, SECRET, TestCa, Upstream, ask, closed_within, curl, policy, raw, read_head, status,
    tunnel, with_credential,
};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn plain_http_reaches_a_loopback_upstream_allowed_by_a_cidr_rule() {
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[]), None).await;
    let url = format!("http://127.0.0.1:{}/hello?x=1", upstream.port());
    let (code, body, stderr) = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        "Proxy-Connection: keep-alive",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(body.contains(r#""path":"/hello""#), "{body}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("host"),
        Some(&*format!("127.0.0.1:{}", upstream.port()))
    );
    assert_eq!(
        seen[0].header("proxy-connection"),
        None,
        "hop-by-hop headers stay on the first hop"
    );
    let entries = proxy.entries().await;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(
        (entry.method.as_str(), entry.decision.as_str(), entry.status),
        ("GET", "allow", 200)
    );
    assert_eq!(entry.rule, "allow 127.0.0.0/8");
    assert_eq!(entry.address, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(entry.source, "agents");
    assert!(entry.bytes_down > 0, "{entry:?}");
}

#[tokio::test]
async fn a_host_rule_never_reaches_loopback_even_when_the_name_resolves_there() {
    let upstream = Upstream::http().await;
    // `api.test` resolves to 127.0.0.1; allowing the name does not allow the address.
    let proxy = Harness::start(&policy(Allow, &["api.test"], &[]), None).await;
    let url = format!("http://api.test:{}/", upstream.port());
    let (code, body, _) = curl(&["-x", &proxy.url(), "-w", "%{http_code}", &url]).await;
    assert_eq!(code, 0);
    assert!(body.ends_with("403"), "{body}");
    assert!(
        body.contains("Network policy `agents` denies `api.test:"),
        "{body}"
    );
    assert!(
        body.contains("block list 127.0.0.0/8 (127.0.0.1)"),
        "{body}"
    );
    assert!(body.contains("help: Only an IP or CIDR rule"), "{body}");
    assert!(upstream.seen().is_empty(), "nothing was dialled");
    let entries = proxy.entries().await;
    assert_eq!(entries[0].decision, "deny");
    assert_eq!(entries[0].rule, "block list 127.0.0.0/8 (127.0.0.1)");
    assert_eq!(entries[0].status, 403);
}

#[tokio::test]
async fn stub_resolved_private_and_metadata_addresses_are_refused_before_any_dial() {
    // The stub answers with addresses no test may dial; a 403 from the proxy itself shows
    // the request stopped at the decision.
    let proxy = Harness::start(&policy(Allow, &["*.test"], &[]), None).await;
    for (host, rule) in [
        ("private.test", "block list 10.0.0.0/8 (10.0.0.7)"),
        (
            "metadata.test",
            "block list 169.254.0.0/16 (169.254.169.254)",
        ),
        ("mixed.test", "block list 192.168.0.0/16 (192.168.1.1)"),
        ("mapped.test", "block list 127.0.0.0/8 (127.0.0.1)"),
    ] {
        let answer = raw(
            proxy.addr(),
            format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(status(&answer), 403, "{host}: {answer}");
        assert!(answer.contains(rule), "{host}: {answer}");
        let answer = raw(
            proxy.addr(),
            format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(status(&answer), 403, "CONNECT {host}: {answer}");
    }
    let entries = proxy.entries().await;
    assert_eq!(entries.len(), 8);
    assert!(
        entries
            .iter()
            .all(|e| e.decision == "deny" && e.address.is_none()),
        "{entries:?}"
    );
}

#[tokio::test]
async fn literal_forms_of_loopback_are_normalised_before_matching() {
    let upstream = Upstream::http().await;
    let port = upstream.port();
    let open = Harness::start(&policy(Allow, &[], &[]), None).await;
    let cidr = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[]), None).await;
    for host in [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "127.1",
        "127.0.0.1.",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ] {
        let request = format!(
            "GET http://{host}:{port}/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        );
        let answer = raw(open.addr(), request.as_bytes(), WAIT).await;
        assert_eq!(
            status(&answer),
            403,
            "default allow still blocks {host}: {answer}"
        );
        assert!(
            answer.contains("block list 127.0.0.0/8 (127.0.0.1)"),
            "{host}: {answer}"
        );
        let answer = raw(cidr.addr(), request.as_bytes(), WAIT).await;
        assert_eq!(
            status(&answer),
            200,
            "the CIDR rule allows {host}: {answer}"
        );
    }
    // A percent-encoded authority is no valid request target: refused before any decision.
    let request = format!("GET http://%31%32%37.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        status(&raw(open.addr(), request.as_bytes(), WAIT).await),
        400
    );
    // Whatever Host the client sent, the upstream hears the destination that was decided.
    assert!(
        upstream
            .seen()
            .iter()
            .all(|s| s.header("host") == Some(&*format!("127.0.0.1:{port}")))
    );
}

#[tokio::test]
async fn userinfo_does_not_change_the_destination() {
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&policy(Deny, &["allowed.test"], &[]), None).await;
    let request = format!(
        "GET http://allowed.test@127.0.0.1:{}/ HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n",
        upstream.port()
    );
    let answer = raw(proxy.addr(), request.as_bytes(), WAIT).await;
    assert_eq!(status(&answer), 403, "{answer}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn deny_beats_allow_and_ports_are_part_of_a_rule() {
    let upstream = Upstream::http().await;
    let port = upstream.port();
    let deny_port = format!("127.0.0.1:{port}");
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[&deny_port]), None).await;
    let answer = raw(
        proxy.addr(),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(status(&answer), 403, "{answer}");
    assert!(
        answer.contains(&format!("deny 127.0.0.1:{port}")),
        "{answer}"
    );
    let entries = proxy.entries().await;
    assert_eq!(entries[0].rule, format!("deny 127.0.0.1:{port}"));
}

#[tokio::test]
async fn an_unresolvable_name_gets_502() {
    let proxy = Harness::start(&policy(Allow, &[], &[]), None).await;
    let (code, body, _) = curl(&[
        "-x",
        &proxy.url(),
        "-w",
        "%{http_code}",
        "http://nowhere.test/",
    ])
    .await;
    assert_eq!(code, 0);
    assert!(body.ends_with("502"), "{body}");
    assert!(body.contains("Cannot resolve `nowhere.test`"), "{body}");
}

#[tokio::test]
async fn keep_alive_requests_share_one_upstream_connection() {
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[]), None).await;
    let a = format!("http://127.0.0.1:{}/a", upstream.port());
    let b = format!("http://127.0.0.1:{}/b", upstream.port());
    let (code, _, stderr) = curl(&["-x", &proxy.url(), &a, &b]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(upstream.seen().len(), 2);
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        proxy.entries().await.len(),
        2,
        "every request is decided and logged"
    );
}

#[tokio::test]
async fn a_connect_tunnel_carries_tls_end_to_end_without_interception() {
    let ca = TestCa::new();
    let upstream = Upstream::https(&ca).await;
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[]), None).await;
    let url = format!("https://api.test:{}/tunnel", upstream.port());
    let cacert = ca.pem.to_str().unwrap();
    let (code, body, stderr) = curl(&["-x", &proxy.url(), "--cacert", cacert, &url]).await;
    assert_eq!(code, 0, "the upstream's own certificate arrives: {stderr}");
    assert!(body.contains(r#""path":"/tunnel""#), "{body}");
    let entries = proxy.entries().await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].method.as_str(), entries[0].status),
        ("CONNECT", 200)
    );
    assert!(!entries[0].intercepted);
    assert!(
        entries[0].bytes_up > 0 && entries[0].bytes_down > 0,
        "{:?}",
        entries[0]
    );
}

#[tokio::test]
async fn credentials_are_injected_into_intercepted_https_and_never_reach_the_client() {
    let ca = TestCa::new();
    let upstream = Upstream::https(&ca).await;
    let policy = with_credential(policy(Deny, &["127.0.0.0/8"], &[]), "api.test", &[]);
    let proxy = Harness::start(&policy, Some(&ca.pem)).await;
    let url = format!("https://api.test:{}/v1/messages", upstream.port());
    let aistack_ca = proxy.ca.to_str().unwrap();
    let (code, body, stderr) = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        aistack_ca,
        "-H",
        "x-api-key: forged-by-the-client",
        "-D",
        "-",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "the client trusts the project's CA: {stderr}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("x-api-key"),
        Some(SECRET),
        "the proxy's value replaces the client's"
    );
    assert_eq!(
        seen[0].header("host"),
        Some(&*format!("api.test:{}", upstream.port()))
    );
    // The upstream echoes what it got; the client must see it only because this test
    // upstream reflects headers. The proxy's own answers and log never carry it.
    assert!(body.contains("/v1/messages"), "{body}");
    let log = proxy.log_text().await;
    assert!(!log.contains(SECRET), "the secret is not logged");
    let entries = proxy.entries().await;
    assert_eq!(
        entries.len(),
        2,
        "the tunnel and the request inside: {entries:?}"
    );
    assert!(entries.iter().all(|e| e.intercepted));
    assert_eq!(entries[1].method, "GET");
    assert_eq!(entries[1].status, 200);
}

#[tokio::test]
async fn an_intercepted_upstream_is_verified() {
    // The upstream's CA is not given to the proxy: its certificate does not verify.
    let ca = TestCa::new();
    let upstream = Upstream::https(&ca).await;
    let policy = with_credential(policy(Deny, &["127.0.0.0/8"], &[]), "api.test", &[]);
    let proxy = Harness::start(&policy, None).await;
    let url = format!("https://api.test:{}/", upstream.port());
    let (code, body, _) = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        proxy.ca.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &url,
    ])
    .await;
    assert_eq!(code, 0);
    assert!(body.ends_with("502"), "{body}");
    assert!(body.contains("TLS with the upstream failed"), "{body}");
    assert!(
        upstream.seen().is_empty(),
        "no request reached an unverified upstream"
    );
}

#[tokio::test]
async fn bypass_hosts_are_tunnelled_without_interception_or_credentials() {
    let ca = TestCa::new();
    let upstream = Upstream::https(&ca).await;
    let policy = with_credential(
        policy(Deny, &["127.0.0.0/8"], &[]),
        "api.test",
        &["api.test"],
    );
    let proxy = Harness::start(&policy, Some(&ca.pem)).await;
    let url = format!("https://api.test:{}/", upstream.port());
    let (code, _, stderr) = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        ca.pem.to_str().unwrap(),
        &url,
    ])
    .await;
    assert_eq!(
        code, 0,
        "the upstream's certificate, not one of ours: {stderr}"
    );
    assert_eq!(upstream.seen()[0].header("x-api-key"), None);
    assert!(!proxy.entries().await[0].intercepted);
}

/// Credentials go over TLS only (issue 16): a plain-HTTP request to a host that has one
/// is refused with the fix, logged, and never reaches the upstream, with or without it.
/// A route (`models.aistack.internal`) through CONNECT to its port 80, as Bun's `fetch`
/// (Claude Code's) sends plain http through a proxy: the requests inside reach the route's
/// address, with its headers, whatever host they name; port 443 stays refused.
#[tokio::test]
async fn a_connect_to_a_routes_plain_http_port_serves_the_route_inside() {
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&policy(Deny, &[], &[]), None).await;
    let mut config = Config::new("agents", &policy(Deny, &[], &[]));
    config.routes.push(aistack_proxy::Route {
        host: "models.aistack.internal".to_owned(),
        address: format!("127.0.0.1:{}", upstream.port()).parse().unwrap(),
        headers: vec![("x-aistack-models".to_owned(), "coder".to_owned())],
    });
    proxy.proxy.update(config);
    let mut stream = tunnel(proxy.addr(), "models.aistack.internal:80").await;
    for path in ["/v1/messages?beta=true", "/v1/models"] {
        let (code, body) = ask(&mut stream, path).await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(&format!(r#""path":"{}""#, path.split('?').next().unwrap())),
            "{body}"
        );
    }
    let seen = upstream.seen();
    assert_eq!(
        seen.len(),
        2,
        "both requests of the tunnel reached the route"
    );
    assert_eq!(seen[0].header("x-aistack-models"), Some("coder"));
    let entries = proxy.entries().await;
    assert!(
        (entries.iter()).all(|e| e.method == "GET"
            && e.host == "models.aistack.internal"
            && e.decision == "allow"),
        "{entries:?}"
    );

    let answer = raw(
        proxy.addr(),
        b"CONNECT models.aistack.internal:443 HTTP/1.1\r\nHost: models.aistack.internal:443\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(status(&answer), 400, "{answer}");
}

#[tokio::test]
async fn plain_http_to_a_credential_host_is_refused_and_logged() {
    let upstream = Upstream::http().await;
    let credential = with_credential(policy(Deny, &["127.0.0.0/8"], &[]), "api.test", &[]);
    let proxy = Harness::start(&credential, None).await;
    let url = format!("http://api.test:{}/v1/messages", upstream.port());
    let answer = raw(
        proxy.addr(),
        format!("GET {url} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n").as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(status(&answer), 403, "{answer}");
    assert!(
        answer.contains(
            "The proxy adds the credential for `api.test` over https only, not to a plain-HTTP request"
        ),
        "{answer}"
    );
    assert!(
        answer.contains(&format!(
            "help: Use `https://api.test:{}/`",
            upstream.port()
        )),
        "{answer}"
    );
    assert!(upstream.seen().is_empty(), "nothing reached the upstream");
    let entries = proxy.entries().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].status, 403);
    assert_eq!(entries[0].decision, "deny");
    assert_eq!(entries[0].rule, "credentials go over https only");
    assert!(!proxy.log_text().await.contains(SECRET));

    // A bypassed host is not intercepted, so it has no credential to protect: plain HTTP
    // goes through, without the header.
    let bypassed = with_credential(
        policy(Deny, &["127.0.0.0/8"], &[]),
        "api.test",
        &["api.test"],
    );
    let proxy = Harness::start(&bypassed, None).await;
    let (code, _, stderr) = curl(&["-x", &proxy.url(), &url]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(upstream.seen()[0].header("x-api-key"), None);
}

#[tokio::test]
async fn websocket_upgrades_pass_through_absolute_form_requests() {
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[]), None).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let request = format!(
        "GET http://127.0.0.1:{}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        upstream.port()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        stream,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("ping through the proxy"))
        .await
        .unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(
        echoed.into_text().unwrap().as_str(),
        "ping through the proxy"
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_over_connect_with_a_real_client() {
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[]), None).await;
    let target = format!("127.0.0.1:{}", upstream.port());
    let stream = tunnel(proxy.addr(), &target).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{target}/ws"), stream)
        .await
        .unwrap();
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().len(), 100_000);
}

#[tokio::test]
async fn a_policy_change_keeps_allowed_tunnels_and_closes_the_rest() {
    let upstream = Upstream::http().await;
    let first = policy(Deny, &["127.0.0.0/8"], &[]);
    let proxy = Harness::start(&first, None).await;
    let target = format!("127.0.0.1:{}", upstream.port());
    let mut open = tunnel(proxy.addr(), &target).await;
    // A change that still allows the tunnel's address: it goes on.
    let widened = policy(Deny, &["127.0.0.0/8", "example.com"], &[]);
    assert_eq!(proxy.proxy.update(Config::new("agents", &widened)), 0);
    let (code, body) = ask(&mut open, "/still-open").await;
    assert_eq!(code, 200, "{body}");
    // A change that denies it: closed, and new requests are refused.
    let narrowed = policy(Deny, &["example.com"], &[]);
    assert_eq!(proxy.proxy.update(Config::new("agents", &narrowed)), 1);
    assert!(
        closed_within(&mut open, WAIT).await.is_some(),
        "the tunnel is closed"
    );
    let answer = raw(
        proxy.addr(),
        format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", upstream.port()).as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(status(&answer), 403);
}

#[tokio::test]
async fn origin_form_requests_are_told_how_to_use_the_proxy() {
    let proxy = Harness::start(&policy(Allow, &[], &[]), None).await;
    let answer = raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(status(&answer), 400, "{answer}");
    assert!(
        answer.contains("help: Set `HTTP_PROXY` and `HTTPS_PROXY`"),
        "{answer}"
    );
}
