//! Loopback HTTP/1.1 upstreams for proxy tests, plain and over TLS.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loopback HTTP/1.1 server that answers every request, keep-alive, with the request's
/// head as its body; it serves for at most five minutes.
pub fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    std::thread::spawn(move || serve(stream));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    port
}

fn serve(stream: TcpStream) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{head}",
            head.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The request heads a [`recording`] stand-in received, in order.
pub type Heads = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A stand-in of an API on loopback address `ip` that records the head of each request
/// and answers `status` (`"200 OK"`) with `body`, closing the connection; it serves for
/// at most five minutes.
pub fn recording(ip: &str, status: &str, body: &str) -> (u16, Heads) {
    stand_in(ip, status, body, |stream, seen, answer| {
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
        let _ = stream.write_all(answer.as_bytes());
    })
}

/// Listens on loopback address `ip` for five minutes and hands each connection, blocking
/// with a 10 s read timeout, to `serve` on a thread of its own, with where to record heads
/// and the whole answer to `status` with `body`.
fn stand_in(
    ip: &str,
    status: &str,
    body: &str,
    serve: impl Fn(TcpStream, &Heads, &str) + Send + Sync + 'static,
) -> (u16, Heads) {
    let listener = TcpListener::bind((ip, 0)).expect("bind the stand-in");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let heads = Heads::default();
    let seen = heads.clone();
    let answer: Arc<str> = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let (serve, seen, answer) = (Arc::clone(&serve), seen.clone(), Arc::clone(&answer));
            std::thread::spawn(move || {
                stream.set_nonblocking(false).unwrap();
                let timeout = Some(Duration::from_secs(10));
                stream.set_read_timeout(timeout).unwrap();
                serve(stream, &seen, &answer);
            });
        }
    });
    (port, heads)
}

/// A stand-in of an API over TLS on a loopback address, as [`recording`] is over plain
/// HTTP; its certificate (for `localhost` and that address) is signed by a CA of its own.
pub struct TlsStandIn {
    /// Its port.
    pub port: u16,
    /// The request heads it received, in order.
    pub heads: Heads,
    /// The CA's certificate, PEM, in the directory it was asked to write it to: what a
    /// client (and the proxy, through `AISTACK_EXTRA_CA_CERTS`) must trust.
    pub ca: PathBuf,
}

/// Starts a [`TlsStandIn`] on loopback address `ip` answering `status` with `body`,
/// writing its CA to `dir`; it serves for at most five minutes.
pub fn recording_tls(dir: &Path, ip: &str, status: &str, body: &str) -> TlsStandIn {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (params.distinguished_name).push(rcgen::DnType::CommonName, "aistack e2e stand-in CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let ca_path = dir.join("stand-in-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let names = vec!["localhost".to_owned(), ip.to_owned()];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = (rcgen::CertificateParams::new(names).unwrap())
        .signed_by(&leaf_key, &*ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    let config = Arc::new(config);
    let (port, heads) = stand_in(ip, status, body, move |stream, seen, answer| {
        let Ok(connection) = rustls::ServerConnection::new(Arc::clone(&config)) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(connection, stream);
        let mut head = Vec::new();
        let mut byte = [0];
        while !head.ends_with(b"\r\n\r\n") {
            match tls.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head);
        seen.lock().unwrap().push(head.trim_end().to_owned());
        let _ = tls.write_all(answer.as_bytes());
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    TlsStandIn {
        port,
        heads,
        ca: ca_path,
    }
}
