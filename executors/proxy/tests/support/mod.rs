//! What the proxy's tests run against: loopback upstreams (HTTP, HTTPS with a test CA,
//! WebSocket) that record what they receive, a resolver stub whose non-loopback answers are
//! never dialled, and the proxy itself on an ephemeral loopback port.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aistack_proxy::authority::{Authority, upstream_config};
use aistack_proxy::netlog::{self, Entry, NetworkLog};
use aistack_proxy::resolve::{Addresses, Resolve};
use aistack_proxy::{Config, Limits, Proxy, Settings};
use aistack_spec::model::{Credential, NetworkPolicy};
use aistack_spec::values::{HostRule, PolicyDefault};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The secret the tests' credential holds; it must reach upstreams and nothing else.
pub const SECRET: &str = "sk-test-0123456789-secret";
/// The variable it is read from.
pub const SECRET_ENV: &str = "TEST_API_KEY";

/// A network policy from rule texts.
pub fn policy(default: PolicyDefault, allow: &[&str], deny: &[&str]) -> NetworkPolicy {
    let rules = |texts: &[&str]| {
        texts
            .iter()
            .map(|t| HostRule::parse(t).expect("rule"))
            .collect()
    };
    NetworkPolicy {
        default,
        allow: rules(allow),
        deny: rules(deny),
        bypass: Vec::new(),
        credentials: Vec::new(),
    }
}

/// `policy` with a credential for `host` (header `x-api-key`), and `bypass` rules.
pub fn with_credential(mut policy: NetworkPolicy, host: &str, bypass: &[&str]) -> NetworkPolicy {
    policy.credentials.push(Credential {
        host: host.to_owned(),
        header: "x-api-key".to_owned(),
        from_env: SECRET_ENV.to_owned(),
    });
    policy.bypass = bypass
        .iter()
        .map(|t| HostRule::parse(t).expect("rule"))
        .collect();
    policy
}

/// Answers from a table; a name not in it has no address.
pub struct StubResolver(pub HashMap<String, Vec<IpAddr>>);

impl Resolve for StubResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> Addresses<'a> {
        let found = self.0.get(name).cloned().unwrap_or_default();
        Box::pin(async move { Ok(found) })
    }
}

/// The names the stub knows. Only the loopback ones may ever be dialled; the rest exist
/// to be refused.
pub fn stub() -> StubResolver {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    StubResolver(HashMap::from([
        ("api.test".to_owned(), vec![ip("127.0.0.1")]),
        ("other.test".to_owned(), vec![ip("127.0.0.1")]),
        ("private.test".to_owned(), vec![ip("10.0.0.7")]),
        ("metadata.test".to_owned(), vec![ip("169.254.169.254")]),
        (
            "mixed.test".to_owned(),
            vec![ip("93.184.216.34"), ip("192.168.1.1")],
        ),
        ("mapped.test".to_owned(), vec![ip("::ffff:127.0.0.1")]),
    ]))
}

/// A running proxy with its log and CA in a temporary home.
pub struct Harness {
    pub proxy: Proxy,
    pub log: NetworkLog,
    pub home: tempfile::TempDir,
    pub ca: PathBuf,
}

/// Limits short enough for tests to see them act.
pub fn test_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

impl Harness {
    /// A proxy enforcing `policy`, trusting `extra_ca` for intercepted upstreams.
    pub async fn start(policy: &NetworkPolicy, extra_ca: Option<&std::path::Path>) -> Harness {
        Harness::with_limits(policy, extra_ca, test_limits()).await
    }

    pub async fn with_limits(
        policy: &NetworkPolicy,
        extra_ca: Option<&std::path::Path>,
        limits: Limits,
    ) -> Harness {
        let home = tempfile::tempdir().expect("tempdir");
        let project = home.path().join("projects/demo");
        let authority = Arc::new(Authority::load_or_create(&project).expect("authority"));
        let ca = authority.cert_path().to_owned();
        let log = NetworkLog::open(
            netlog::path(&home.path().join("logs"), "demo"),
            netlog::DEFAULT_MAX_BYTES,
        )
        .expect("log");
        let settings = Settings {
            limits,
            resolver: Arc::new(stub()),
            log: log.clone(),
            authority,
            upstream_tls: upstream_config(extra_ca).expect("upstream tls"),
            secrets: Arc::new(|name: &str| (name == SECRET_ENV).then(|| SECRET.to_owned())),
            own: aistack_proxy::OwnListeners::new(),
        };
        let proxy = Proxy::bind(
            "127.0.0.1:0".parse().unwrap(),
            Config::new("agents", policy),
            settings,
        )
        .await
        .expect("bind");
        Harness {
            proxy,
            log,
            home,
            ca,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.local_addr().expect("a TCP listener")
    }

    /// Every entry logged once the open connections have ended (a tunnel is logged when
    /// it closes, a moment after its client has gone).
    pub async fn entries(&self) -> Vec<Entry> {
        for _ in 0..100 {
            if self.proxy.connections() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.log.flush().await;
        netlog::read(self.log.path()).expect("read log")
    }

    /// The raw text of the log, for checks that a secret is absent.
    pub async fn log_text(&self) -> String {
        self.log.flush().await;
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// A request an upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback upstream that records requests and counts connections.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Plain HTTP.
    pub async fn http() -> Upstream {
        Upstream::start(None).await
    }

    /// HTTPS with a certificate for `api.test`, `other.test` and 127.0.0.1 from `ca`.
    pub async fn https(ca: &TestCa) -> Upstream {
        Upstream::start(Some(ca.server_config())).await
    }

    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen2, connections2) = (Arc::clone(&seen), Arc::clone(&connections));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections2.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&seen2);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| respond(Arc::clone(&seen), request));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                        Some(config) => {
                            let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                            else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
        }
    }
}

type TestBody = BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `/bytes/N`: N bytes; `/reset`: a promised 1 MiB that breaks off after 64 KiB; `/ws`: a
/// WebSocket echo; `/upload`: the number of bytes received; anything else: the request as
/// JSON.
async fn respond(
    seen: Arc<Mutex<Vec<Seen>>>,
    mut request: Request<Incoming>,
) -> Result<Response<TestBody>, std::io::Error> {
    let headers = (request.headers().iter())
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect::<Vec<_>>();
    let path = request.uri().path().to_owned();
    seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        path: path.clone(),
        headers: headers.clone(),
    });
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = (0..n.div_ceil(chunk.len())).map(move |i| {
            let len = (n - i * chunk.len()).min(chunk.len());
            Ok::<_, std::io::Error>(Frame::data(chunk.slice(..len)))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let mut response = Response::new(BodyExt::boxed(body));
        response.headers_mut().insert("content-length", n.into());
        return Ok(response);
    }
    if path == "/reset" {
        // The error comes a moment after the first 64 KiB, once hyper has sent them: an
        // error in the same poll would abort the connection before anything was written.
        let frames =
            futures_util::stream::iter([Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))])
                .chain(futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Err(std::io::Error::other("the upstream breaks off"))
                }));
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        response
            .headers_mut()
            .insert("content-length", (1024 * 1024).into());
        return Ok(response);
    }
    if path == "/upload" {
        let body = request
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?;
        return Ok(Response::new(full(body.to_bytes().len().to_string())));
    }
    if path == "/ws" {
        let key = request.headers().get("sec-websocket-key").cloned();
        let Some(key) = key else {
            return Ok(Response::builder()
                .status(400)
                .body(full("not a websocket request"))
                .unwrap());
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                } else if message.is_close() {
                    return;
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(Bytes::new()))
            .unwrap());
    }
    let json = serde_json::json!({
        "method": request.method().to_string(),
        "path": path,
        "headers": headers.iter().map(|(n, v)| [n, v]).collect::<Vec<_>>(),
    });
    Ok(Response::new(full(json.to_string())))
}

/// A CA of the tests' own, standing in for a public CA behind an upstream.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub pem: PathBuf,
    cert: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "aistack test upstream CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("upstream-ca.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        TestCa { dir, pem, cert }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut params = rcgen::CertificateParams::new(vec![
            "api.test".to_owned(),
            "other.test".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "upstream");
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &*self.cert).unwrap();
        let chain = vec![leaf.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }
}

/// Writes `request` to the proxy and reads the answer until the proxy closes or `wait`
/// passes without a byte.
pub async fn raw(proxy: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect proxy");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buffer = [0; 16 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(wait, stream.read(&mut buffer)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw answer.
pub fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Runs curl with `args` (off the async runtime); returns its exit code, stdout, stderr.
pub async fn curl(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--max-time",
                "20",
                "--noproxy",
                "",
            ])
            .args(&args)
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .output()
            .expect("curl runs");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Reads a response head (up to the blank line) byte by byte, leaving the rest unread.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        if stream.read_exact(&mut byte).await.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Opens a CONNECT tunnel through the proxy to `target` (`host:port`) and checks the 200.
pub async fn tunnel(proxy: SocketAddr, target: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect proxy");
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write CONNECT");
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream))
        .await
        .expect("the CONNECT answer within 10s");
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT {target}: {head}");
    stream
}

/// Sends one keep-alive `GET path` on `stream` (origin-form, as inside a tunnel) and reads
/// the answer: its status and body (by `content-length`); status 0 when the connection
/// ended or nothing came within 5 s.
pub async fn ask(stream: &mut tokio::net::TcpStream, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: upstream\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let answer = async {
        let head = read_head(stream).await;
        let length = (head.lines())
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return (0, String::new());
        }
        (status(&head), String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .unwrap_or((0, String::new()))
}

/// Reads (and discards) until the peer closes or resets `stream`; how long that took, or
/// none when it was still open after `limit`.
pub async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buffer = [0; 16 * 1024];
    let closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, closed)
        .await
        .ok()
        .map(|()| start.elapsed())
}

/// Writes `request` on a new connection and reads everything until the proxy closes it:
/// the answer, or none when the connection was still open after `limit` (a hang).
pub async fn until_closed(proxy: SocketAddr, request: &[u8], limit: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect proxy");
    // The proxy may answer and close before it has read everything: a failed write is
    // part of what is tested, not a test failure.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let mut buffer = [0; 16 * 1024];
    let read = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buffer[..n]),
            }
        }
    };
    let done = tokio::time::timeout(limit, read).await.is_ok();
    done.then(|| String::from_utf8_lossy(&out).into_owned())
}

/// The number of file descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}
