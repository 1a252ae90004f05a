//! Bad input and faults: each test checks that the client gets an error, that the proxy
//! goes on serving (a normal request through the same listener succeeds afterwards), and,
//! where it matters, that connections already open are not disturbed. Everything stays on
//! loopback and every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aistack_proxy::Limits;
use aistack_spec::values::PolicyDefault::Deny;
use futures_util::StreamExt;
use support::{
    Harness, SECRET, TestCa, Upstream, ask, closed_within, curl, open_fds, policy, raw, status,
    test_limits, tunnel, until_closed, with_credential,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::RwLock;

const WAIT: Duration = Duration::from_secs(5);

/// The descriptor count is the whole process's: the test that counts takes this for
/// writing, every other test for reading, so no other test opens or closes descriptors
/// while it counts.
static DESCRIPTORS: RwLock<()> = RwLock::const_new(());

/// The policy of most tests: loopback upstreams reached through a CIDR rule.
fn loopback() -> aistack_spec::model::NetworkPolicy {
    policy(Deny, &["127.0.0.0/8"], &[])
}

/// A plain forwarded request through `proxy` to `upstream` gets the upstream's 200.
async fn assert_serves(proxy: SocketAddr, upstream: &Upstream) {
    let request = format!(
        "GET http://127.0.0.1:{}/still-serving HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        upstream.port()
    );
    let answer = raw(proxy, request.as_bytes(), WAIT).await;
    assert_eq!(status(&answer), 200, "the proxy still serves: {answer}");
    assert!(answer.contains(r#""path":"/still-serving""#), "{answer}");
}

/// The open tunnel `stream` still carries a request to its upstream.
async fn assert_tunnel_works(stream: &mut tokio::net::TcpStream, path: &str) {
    let (code, body) = ask(stream, path).await;
    assert_eq!(code, 200, "the open tunnel still works ({path}): {body}");
    assert!(body.contains(&format!(r#""path":"{path}""#)), "{body}");
}

#[tokio::test]
async fn malformed_request_lines_get_400_or_a_close_and_never_hang() {
    let _counting = DESCRIPTORS.read().await;
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&loopback(), None).await;
    let mut open = tunnel(proxy.addr(), &format!("127.0.0.1:{}", upstream.port())).await;
    assert_tunnel_works(&mut open, "/before").await;
    let port = upstream.port();
    let mut garbage = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    garbage.extend((0u32..2000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    garbage.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage bytes", garbage),
        ("a method and nothing else", b"GET\r\n\r\n".to_vec()),
        (
            "no version",
            format!("GET http://127.0.0.1:{port}/\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "HTTP/3.0",
            format!("GET http://127.0.0.1:{port}/ HTTP/3.0\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "HTTP/1.x",
            format!("GET http://127.0.0.1:{port}/ HTTP/1.x\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "lower-case version",
            format!("GET http://127.0.0.1:{port}/ http/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "a NUL in the target",
            format!("GET http://127.0.0.1:{port}/a\0b HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "a NUL in the host",
            format!("GET http://127.0.0\0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "a space in the method",
            b"G T http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "a header without a colon",
            format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost x\r\n\r\n").into_bytes(),
        ),
    ];
    for (what, request) in cases {
        let started = Instant::now();
        let answer = until_closed(proxy.addr(), &request, WAIT)
            .await
            .unwrap_or_else(|| panic!("{what}: the connection was still open after {WAIT:?}"));
        let code = status(&answer);
        assert!(
            answer.is_empty() || code == 400,
            "{what}: 400 or a close, got {answer:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert_tunnel_works(&mut open, "/during").await;
    }
    assert_serves(proxy.addr(), &upstream).await;
    drop(open);
    assert!(
        upstream
            .seen()
            .iter()
            .all(|s| s.path != "/a\0b" && s.path != "/"),
        "{:?}",
        upstream.seen()
    );
}

#[tokio::test]
async fn an_oversized_header_gets_431_and_an_oversized_target_414() {
    let _counting = DESCRIPTORS.read().await;
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&loopback(), None).await;
    let mut open = tunnel(proxy.addr(), &format!("127.0.0.1:{}", upstream.port())).await;
    let port = upstream.port();
    // 100 KiB of one header: past Limits::max_head_bytes (64 KiB), though one read of
    // hyper's can take it in whole.
    let big = "a".repeat(100 * 1024);
    let request = format!(
        "GET http://127.0.0.1:{port}/big-header HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    let answer = until_closed(proxy.addr(), request.as_bytes(), WAIT)
        .await
        .expect("closed, no hang");
    assert_eq!(status(&answer), 431, "{}", &answer[..answer.len().min(300)]);
    assert!(answer.contains("longer than 65536 bytes"), "{answer}");
    assert_tunnel_works(&mut open, "/after-431").await;
    // 1 MiB: hyper gives up reading once its buffer is full, and answers itself.
    let request = format!(
        "GET http://127.0.0.1:{port}/huge-header HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        big.repeat(10)
    );
    let answer = until_closed(proxy.addr(), request.as_bytes(), WAIT)
        .await
        .expect("closed, no hang");
    assert_eq!(status(&answer), 431, "{}", &answer[..answer.len().min(300)]);
    assert_tunnel_works(&mut open, "/after-hypers-431").await;
    // A target one byte past Limits::max_uri_bytes, inside the head limit.
    let max = Limits::default().max_uri_bytes;
    let prefix = format!("http://127.0.0.1:{port}/");
    let target = format!("{prefix}{}", "p".repeat(max + 1 - prefix.len()));
    assert_eq!(target.len(), max + 1);
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = until_closed(proxy.addr(), request.as_bytes(), WAIT)
        .await
        .expect("closed, no hang");
    assert_eq!(status(&answer), 414, "{answer:?}");
    assert!(
        answer.contains(&format!("longer than {max} bytes")),
        "{answer}"
    );
    // Exactly at the limit is forwarded.
    let target = format!("{prefix}{}", "p".repeat(max - prefix.len()));
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = until_closed(proxy.addr(), request.as_bytes(), WAIT)
        .await
        .expect("closed, no hang");
    assert_eq!(status(&answer), 200, "{}", &answer[..answer.len().min(300)]);
    assert_tunnel_works(&mut open, "/after-414").await;
    assert_serves(proxy.addr(), &upstream).await;
    let seen = upstream.seen();
    assert!(
        seen.iter().all(|s| !s.path.ends_with("-header")),
        "the oversized requests went nowhere"
    );
    assert_eq!(
        seen.iter().filter(|s| s.path.starts_with("/ppp")).count(),
        1,
        "only the one at the limit"
    );
}

#[tokio::test]
async fn an_oversized_head_inside_an_intercepted_tunnel_gets_431_too() {
    let _counting = DESCRIPTORS.read().await;
    let ca = TestCa::new();
    let upstream = Upstream::https(&ca).await;
    let policy = with_credential(loopback(), "api.test", &[]);
    let proxy = Harness::start(&policy, Some(&ca.pem)).await;
    let cacert = proxy.ca.to_str().unwrap().to_owned();
    let url = format!("https://api.test:{}/", upstream.port());
    let big = format!("X-Big: {}", "a".repeat(100 * 1024));
    let (code, body, stderr) = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        &cacert,
        "-H",
        &big,
        "-w",
        "%{http_code}",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(body.ends_with("431"), "{body}");
    assert!(upstream.seen().is_empty(), "nothing reached the upstream");
    let (code, body, stderr) = curl(&["-x", &proxy.url(), "--cacert", &cacert, &url]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(body.contains(r#""path":"/""#), "{body}");
    assert_eq!(upstream.seen()[0].header("x-api-key"), Some(SECRET));
}

#[tokio::test]
async fn invalid_connect_targets_get_400_naming_the_problem_and_are_logged() {
    let _counting = DESCRIPTORS.read().await;
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&loopback(), None).await;
    let mut open = tunnel(proxy.addr(), &format!("127.0.0.1:{}", upstream.port())).await;
    // The proxy's own answer names the problem; a target that is no URI authority at all
    // (an unclosed `[`, a bare IPv6 address) is refused by hyper's parser with a bare 400
    // before the proxy sees the request, so it has no body and no log entry.
    let cases = [
        ("nohost", Some("`nohost` names no port")),
        ("host:0", Some("`0` is not a port")),
        ("host:99999", Some("`99999` is not a port")),
        ("host:-1", Some("`-1` is not a port")),
        (
            "user@127.0.0.1:80",
            Some("a CONNECT target has no userinfo"),
        ),
        (
            "127.0.0.1:80@host:443",
            Some("a CONNECT target has no userinfo"),
        ),
        ("[zz::1]:443", Some("`zz::1` is not an IPv6 address")),
        (
            "bad_name!:443",
            Some("`bad_name!` is not a valid host name label"),
        ),
        ("[::1", None),
        ("[::1:443", None),
        ("::1:443", None),
    ];
    for (target, problem) in cases {
        let request =
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        let answer = until_closed(proxy.addr(), request.as_bytes(), WAIT)
            .await
            .unwrap_or_else(|| panic!("CONNECT {target}: still open after {WAIT:?}"));
        assert_eq!(status(&answer), 400, "CONNECT {target}: {answer}");
        match problem {
            Some(problem) => {
                assert!(
                    answer.contains(&format!("Invalid destination `{target}`: ")),
                    "CONNECT {target}: {answer}"
                );
                assert!(
                    answer.contains(problem),
                    "CONNECT {target}: the body names `{problem}`: {answer}"
                );
                assert!(answer.contains("help: "), "{answer}");
            }
            None => assert!(
                answer.ends_with("\r\n\r\n"),
                "CONNECT {target}: hyper's bare 400: {answer}"
            ),
        }
        assert_tunnel_works(&mut open, "/during").await;
    }
    assert_serves(proxy.addr(), &upstream).await;
    drop(open);
    let entries = proxy.entries().await;
    for (target, problem) in cases {
        let entry = (entries.iter()).find(|e| e.method == "CONNECT" && e.host == target);
        let Some(problem) = problem else {
            assert!(entry.is_none(), "{entry:?}");
            continue;
        };
        let entry = entry.unwrap_or_else(|| panic!("CONNECT {target} is logged: {entries:?}"));
        assert_eq!(
            (entry.decision.as_str(), entry.status, entry.port),
            ("deny", 400, 0),
            "{entry:?}"
        );
        assert!(
            entry.rule.starts_with("invalid destination: ") && entry.rule.ends_with(problem),
            "{entry:?}"
        );
        assert!(entry.address.is_none(), "nothing was dialled: {entry:?}");
    }
    let invalid = entries
        .iter()
        .filter(|e| e.rule.starts_with("invalid destination"))
        .count();
    assert_eq!(
        invalid,
        cases.iter().filter(|(_, p)| p.is_some()).count(),
        "{entries:?}"
    );
}

#[tokio::test]
async fn tls_garbage_in_an_intercepted_tunnel_closes_it_and_is_logged() {
    let _counting = DESCRIPTORS.read().await;
    let ca = TestCa::new();
    let upstream = Upstream::https(&ca).await;
    let plain = Upstream::http().await;
    let policy = with_credential(loopback(), "api.test", &[]);
    let proxy = Harness::start(&policy, Some(&ca.pem)).await;
    let mut open = tunnel(proxy.addr(), &format!("127.0.0.1:{}", plain.port())).await;
    let mut intercepted = tunnel(proxy.addr(), &format!("api.test:{}", upstream.port())).await;
    // Not a TLS record: the first byte is no TLS content type.
    let garbage: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8 | 0x80)
        .collect();
    intercepted
        .write_all(&garbage)
        .await
        .expect("write garbage");
    let closed = closed_within(&mut intercepted, WAIT).await;
    assert!(
        closed.is_some(),
        "the proxy closes a tunnel that does not speak TLS"
    );
    assert_tunnel_works(&mut open, "/beside-the-garbage").await;
    drop(open);
    // Interception still works on the same listener, credential and all.
    let url = format!("https://api.test:{}/after-garbage", upstream.port());
    let (code, body, stderr) = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        proxy.ca.to_str().unwrap(),
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(body.contains("/after-garbage"), "{body}");
    let seen = upstream.seen();
    assert_eq!(
        seen.len(),
        1,
        "nothing of the garbage reached the upstream: {seen:?}"
    );
    assert_eq!(seen[0].header("x-api-key"), Some(SECRET));
    assert_serves(proxy.addr(), &plain).await;
    let entries = proxy.entries().await;
    let garbled = (entries.iter())
        .find(|e| e.method == "CONNECT" && e.host == "api.test" && e.error.is_some())
        .unwrap_or_else(|| panic!("the garbled tunnel is logged with an error: {entries:?}"));
    let error = garbled.error.as_deref().unwrap();
    assert!(error.contains("TLS handshake"), "{garbled:?}");
    assert!(garbled.intercepted && garbled.status == 200, "{garbled:?}");
    assert!(!proxy.log_text().await.contains(SECRET));
}

#[tokio::test]
async fn an_upstream_that_resets_mid_body_fails_the_client_not_the_proxy() {
    let _counting = DESCRIPTORS.read().await;
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&loopback(), None).await;
    let mut open = tunnel(proxy.addr(), &format!("127.0.0.1:{}", upstream.port())).await;
    let url = format!("http://127.0.0.1:{}/reset", upstream.port());
    let (code, _, stderr) = curl(&["-x", &proxy.url(), "-o", "/dev/null", &url]).await;
    assert!(
        code == 18 || code == 56,
        "curl sees a partial body: exit {code}, {stderr}"
    );
    assert_tunnel_works(&mut open, "/beside-the-reset").await;
    drop(open);
    assert_serves(proxy.addr(), &upstream).await;
    let entries = proxy.entries().await;
    let reset = (entries.iter())
        .find(|e| {
            e.method == "GET" && e.status == 200 && e.bytes_down < 1024 * 1024 && e.error.is_some()
        })
        .unwrap_or_else(|| panic!("the broken exchange is logged with an error: {entries:?}"));
    assert!(reset.bytes_down <= 64 * 1024, "{reset:?}");
}

#[tokio::test]
async fn an_upstream_that_closes_without_answering_gets_502() {
    let _counting = DESCRIPTORS.read().await;
    let upstream = Upstream::http().await;
    // Reads a request, then hangs up without a byte of answer.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = mute.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
            });
        }
    });
    let proxy = Harness::start(&loopback(), None).await;
    let mut open = tunnel(proxy.addr(), &format!("127.0.0.1:{}", upstream.port())).await;
    let url = format!("http://127.0.0.1:{mute_port}/mute");
    let (code, body, stderr) = curl(&["-x", &proxy.url(), "-w", "%{http_code}", &url]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(body.ends_with("502"), "{body}");
    assert!(
        body.contains(&format!("The upstream `127.0.0.1:{mute_port}` failed")),
        "{body}"
    );
    assert_tunnel_works(&mut open, "/beside-the-mute-upstream").await;
    drop(open);
    assert_serves(proxy.addr(), &upstream).await;
    let entries = proxy.entries().await;
    let failed = (entries.iter())
        .find(|e| e.port == mute_port)
        .expect("logged");
    assert_eq!(failed.status, 502, "{failed:?}");
    assert!(failed.error.is_some(), "{failed:?}");
}

#[tokio::test]
async fn a_client_that_stops_mid_head_is_cut_after_the_header_timeout() {
    let _counting = DESCRIPTORS.read().await;
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&loopback(), None).await;
    assert_eq!(test_limits().header_timeout, Duration::from_secs(2));
    let mut open = tunnel(proxy.addr(), &format!("127.0.0.1:{}", upstream.port())).await;
    let head = format!(
        "GET http://127.0.0.1:{}/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        upstream.port()
    );
    // One client sends part of a head and then nothing.
    let mut silent = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    silent.write_all(head.as_bytes()).await.unwrap();
    // Another trickles a byte every 300 ms: the timeout is for the whole head.
    let mut trickling = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let started = Instant::now();
    let trickle = async {
        for byte in head.bytes().chain(std::iter::repeat(b'a')).take(40) {
            if trickling.write_all(&[byte]).await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        None
    };
    let (silent_closed, trickle_broken) =
        tokio::join!(closed_within(&mut silent, Duration::from_secs(6)), trickle);
    let silent_closed = silent_closed.expect("the silent client is disconnected within 6s");
    assert!(
        silent_closed >= Duration::from_millis(1900),
        "not before the timeout: {silent_closed:?}"
    );
    let trickle_broken = trickle_broken.expect("the trickling client is disconnected within 12s");
    assert!(
        trickle_broken >= Duration::from_millis(1900) && trickle_broken < Duration::from_secs(7),
        "{trickle_broken:?}"
    );
    assert_tunnel_works(&mut open, "/beside-the-slow-clients").await;
    assert_serves(proxy.addr(), &upstream).await;
    assert!(upstream.seen().iter().all(|s| s.path != "/slow"));
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    let _counting = DESCRIPTORS.read().await;
    let upstream = Upstream::http().await;
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..test_limits()
    };
    let proxy = Harness::with_limits(&loopback(), None, limits).await;
    let target = format!("127.0.0.1:{}", upstream.port());
    let mut idle = tunnel(proxy.addr(), &target).await;
    let mut busy = tunnel(proxy.addr(), &target).await;
    assert_tunnel_works(&mut idle, "/once").await;
    let started = Instant::now();
    let keep_busy = async {
        // Three times the idle timeout, a request every 300 ms.
        for i in 0..10 {
            assert_tunnel_works(&mut busy, &format!("/busy-{i}")).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let (closed, ()) = tokio::join!(closed_within(&mut idle, Duration::from_secs(5)), keep_busy);
    let closed = closed.expect("the idle tunnel is closed within 5s");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
        "{closed:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the busy tunnel outlived three idle timeouts"
    );
    assert_tunnel_works(&mut busy, "/still-busy").await;
    drop(busy);
    assert_serves(proxy.addr(), &upstream).await;
    let entries = proxy.entries().await;
    let idled: Vec<_> = (entries.iter())
        .filter(|e| e.error.as_deref() == Some("idle for 1s"))
        .collect();
    assert_eq!(idled.len(), 1, "{entries:?}");
    assert_eq!(
        (idled[0].method.as_str(), idled[0].status),
        ("CONNECT", 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tunnels_open_together_and_release_every_descriptor() {
    let _counting = DESCRIPTORS.write().await;
    // Four descriptors a tunnel, all in this process: the client's socket, the proxy's two,
    // and the upstream's.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .expect("raise the soft descriptor limit to the hard one");
    let wanted = 1000;
    let tunnels = if hard < 5000 {
        let fit = usize::try_from(hard.saturating_sub(256) / 4).unwrap_or(0);
        eprintln!("The hard descriptor limit is {hard}: opening {fit} tunnels, not {wanted}");
        fit.min(wanted)
    } else {
        wanted
    };
    assert!(
        tunnels >= 100,
        "too few descriptors for the test: hard limit {hard}"
    );
    let upstream = Upstream::http().await;
    // A dial waits out a dropped SYN (the kernel retransmits after 1 s, then 3 s).
    let limits = Limits {
        connect_timeout: Duration::from_secs(10),
        ..test_limits()
    };
    let proxy = Harness::with_limits(&loopback(), None, limits).await;
    let target = format!("127.0.0.1:{}", upstream.port());
    // Warm up (the runtime's and the log's lazily made parts), then count.
    let mut first = tunnel(proxy.addr(), &target).await;
    assert_tunnel_works(&mut first, "/warm-up").await;
    drop(first);
    let wait_settled = async |start: Option<usize>| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (connections, fds) = (proxy.proxy.connections(), open_fds());
            if (connections == 0 && start.is_none_or(|s| fds <= s)) || Instant::now() >= deadline {
                return (connections, fds);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (connections, before) = wait_settled(None).await;
    assert_eq!(connections, 0);
    let started = Instant::now();
    // All open together, though opened 100 at a time: a thousand SYNs at once overflow
    // the listen backlog (1024) of the proxy or the upstream, and the kernel drops them.
    let mut opened: Vec<_> =
        futures_util::stream::iter((0..tunnels).map(|_| tunnel(proxy.addr(), &target)))
            .buffered(100)
            .collect()
            .await;
    eprintln!("{tunnels} tunnels open in {:?}", started.elapsed());
    assert_eq!(
        proxy.proxy.connections(),
        tunnels,
        "every tunnel is open at once"
    );
    // The upstream may not have accepted every connection yet: three a tunnel at least.
    assert!(
        open_fds() >= before + 3 * tunnels,
        "{} descriptors, {before} before",
        open_fds()
    );
    let last = opened.len() - 1;
    assert_tunnel_works(&mut opened[last], "/the-last").await;
    assert_tunnel_works(&mut opened[0], "/the-first").await;
    assert_serves(proxy.addr(), &upstream).await;
    drop(opened);
    let (connections, after) = wait_settled(Some(before)).await;
    eprintln!(
        "{tunnels} tunnels opened and released in {:?}",
        started.elapsed()
    );
    assert_eq!(connections, 0, "every tunnel ended");
    // Fewer is no leak: the warm-up's upstream end may still have been open at `before`.
    assert!(
        after <= before,
        "every descriptor is released: {after} after, {before} before"
    );
    let entries = proxy.entries().await;
    assert_eq!(
        entries.iter().filter(|e| e.method == "CONNECT").count(),
        tunnels + 1,
        "each tunnel is logged"
    );
    assert_eq!(proxy.log.dropped(), 0);
}
