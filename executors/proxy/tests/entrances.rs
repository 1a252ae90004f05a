//! Who comes in, and how many (issue 16): a TCP listener serves only its own user's
//! processes, a unix entrance at most its limit of clients at once (the next wait), and
//! both go on serving after the process ran out of descriptors.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aistack_proxy::Proxy;
use aistack_spec::values::PolicyDefault::Deny;
use support::{Harness, Upstream, policy, raw, status};

const WAIT: Duration = Duration::from_secs(5);

/// An origin-form request: every proxy answers it itself (400, how to use it), so it
/// shows that the listener serves without any upstream.
const PROBE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// Sends [`PROBE`] on `stream` and returns the answer's status, 0 when none came within
/// `wait`.
fn probe(mut stream: UnixStream, wait: Duration) -> u16 {
    if stream.write_all(PROBE).is_err() {
        return 0;
    }
    answer(&mut stream, wait)
}

/// The status of the answer read from `stream` until it closes, 0 when nothing came
/// within `wait`.
fn answer(stream: &mut UnixStream, wait: Duration) -> u16 {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buffer) {
        answer.extend_from_slice(&buffer[..n]);
    }
    status(&String::from_utf8_lossy(&answer))
}

#[tokio::test]
async fn a_client_of_another_user_is_refused_and_logged() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: switching to another user needs root");
        return;
    }
    let upstream = Upstream::http().await;
    let proxy = Harness::start(&policy(Deny, &["127.0.0.0/8"], &[]), None).await;
    let url = format!("http://127.0.0.1:{}/as-nobody", upstream.port());
    let nobody = tokio::task::spawn_blocking({
        let (proxy, url) = (proxy.url(), url.clone());
        move || {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"])
                .args(["--silent", "--max-time", "10", "--noproxy", "", "-x"])
                .args([&proxy, "-w", "\n%{http_code}", &url])
                .output()
                .expect("setpriv and curl run")
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&nobody.stdout).into_owned();
    assert!(text.ends_with("\n403"), "{text}");
    assert!(
        text.contains("The proxy of `agents` serves only uid 0, the user aistack runs as; this client runs as uid 65534"),
        "{text}"
    );
    assert!(text.contains("help: Run the client as uid 0"), "{text}");
    assert!(upstream.seen().is_empty(), "nothing reached the upstream");

    // The proxy's own user goes through.
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(
        status(&raw(proxy.addr(), request.as_bytes(), WAIT).await),
        200
    );
    let entries = proxy.entries().await;
    let refused = (entries.iter().find(|e| e.status == 403)).expect("the refusal is logged");
    assert_eq!(refused.rule, "client uid 65534");
    assert_eq!(refused.host, "127.0.0.1");
}

#[tokio::test]
async fn a_unix_entrance_serves_its_limit_at_once_and_the_next_waits() {
    let harness = Harness::start(&policy(Deny, &[], &[]), None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let task = harness.proxy.entrance().serve(listener, 2);
    let outcome = tokio::task::spawn_blocking(move || {
        // Two clients hold connections; a third is queued, not served.
        let held: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut third = UnixStream::connect(&path).unwrap();
        third.write_all(PROBE).unwrap();
        let waiting = answer(&mut third, Duration::from_millis(500));
        drop(held);
        let served = answer(&mut third, WAIT);
        (
            waiting,
            served,
            probe(UnixStream::connect(&path).unwrap(), WAIT),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        outcome,
        (0, 400, 400),
        "(while two are open, after, a new one)"
    );
    task.abort();
}

/// The child of [`accept_loops_outlive_running_out_of_descriptors`]: a proxy with a TCP
/// listener and a unix entrance in a process allowed a few more descriptors than it has.
/// It prints where it listens and serves until its stdin closes.
fn descriptor_starved_child() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let harness = Harness::start(&policy(Deny, &[], &[]), None).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let task =
            (harness.proxy.entrance()).serve(tokio::net::UnixListener::bind(&path).unwrap(), 1000);
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(open + 16),
                maximum: Some(open + 16),
            },
        )
        .unwrap();
        println!("{} {}", harness.addr(), path.display());
        tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0]))
            .await
            .unwrap()
            .unwrap();
        task.abort();
        let Harness { proxy, .. } = harness;
        Proxy::shutdown(proxy).await;
    });
}

/// A listener whose process runs out of descriptors stops accepting for a while, and
/// serves again once clients close theirs (issue 16); it does not end.
#[test]
fn accept_loops_outlive_running_out_of_descriptors() {
    const CHILD: &str = "AISTACK_TEST_DESCRIPTOR_STARVED";
    if std::env::var_os(CHILD).is_some() {
        return descriptor_starved_child();
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "accept_loops_outlive_running_out_of_descriptors",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    while !line.contains(".sock") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the child ended");
    }
    let (tcp, unix) = line.trim().split_once(' ').unwrap();
    let unix = PathBuf::from(unix);
    let pid = child.id();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let limit = || {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        line.split_whitespace()
            .nth(3)
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };

    // More clients than the child has descriptors for, on both entrances.
    let mut held = (Vec::new(), Vec::new());
    for _ in 0..40 {
        held.0.push(std::net::TcpStream::connect(tcp).unwrap());
        held.1.push(UnixStream::connect(&unix).unwrap());
    }
    let deadline = Instant::now() + WAIT;
    // The count may pass the limit by the descriptors open before it was set.
    while fds() + 1 < limit() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(fds() + 1 >= limit(), "the child ran out of descriptors");
    drop(held);

    // Once they are closed, both serve again.
    let deadline = Instant::now() + WAIT;
    let mut answers = (0, 0);
    while answers != (400, 400) && Instant::now() < deadline {
        let mut stream = std::net::TcpStream::connect(tcp).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        stream.write_all(PROBE).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answers = (
            status(&answer),
            probe(UnixStream::connect(&unix).unwrap(), Duration::from_secs(1)),
        );
    }
    drop(child.stdin.take());
    let _ = child.wait();
    assert_eq!(
        answers,
        (400, 400),
        "(TCP, unix) after the descriptors were freed"
    );
}
