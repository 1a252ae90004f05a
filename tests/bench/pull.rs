//! `aistack model pull` of the 98 MB SmolLM2 GGUF from a loopback registry (Debian's CNCF
//! distribution), against `skopeo copy` of the same artifact to a `dir:` directory, in the
//! same run, interleaved (A B A B …), each into a fresh destination.
//!
//! Target: aistack no slower than skopeo (median ratio ≤ 1.0). Then a re-pull of the present
//! model, through a counting TCP relay: blob bytes transferred must be 0 (only the manifest
//! crosses the wire).
//!
//!     AISTACK_TEST_MODEL=$(scripts/fetch-model) cargo bench -p aistack-tests --bench pull

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aistack_tests::TestEnv;
use aistack_tests::bench::wait_idle;
use aistack_tests::registry::Registry;

const ROUNDS: usize = 7;
const REPO_TAG: &str = "ai/smollm2:135M-Q4_1";
/// How long to wait for the machine to go idle before timing anything.
const IDLE_WAIT: Duration = Duration::from_secs(180);

/// A home with an empty Docker config.
struct Home {
    env: TestEnv,
    docker: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let docker = tempfile::tempdir().expect("docker config dir");
        fs::write(docker.path().join("config.json"), r#"{"auths":{}}"#).expect("config.json");
        Home {
            env: TestEnv::new(),
            docker,
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .env
            .cmd(args)
            .env("DOCKER_CONFIG", self.docker.path())
            .output()
            .expect("aistack runs");
        check(&format!("aistack {}", args.join(" ")), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "`{what}` failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One `aistack model pull` into a fresh home.
fn time_aistack(reference: &str) -> Duration {
    let home = Home::new();
    let start = Instant::now();
    home.ok(&["model", "pull", "--quiet", reference]);
    start.elapsed()
}

/// One `skopeo copy` into a fresh `dir:` directory.
fn time_skopeo(reference: &str, auth: &std::path::Path) -> Duration {
    let dest = tempfile::tempdir().expect("skopeo destination");
    let start = Instant::now();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.path().join("copy").display()))
        .env("REGISTRY_AUTH_FILE", auth)
        .output()
        .expect("skopeo runs (apt-get install skopeo)");
    let took = start.elapsed();
    check("skopeo copy", &out);
    took
}

/// What a relay counted: bytes sent downstream, `GET …/blobs/…` requests sent upstream.
#[derive(Default)]
struct Counts {
    down: AtomicU64,
    blob_gets: AtomicU64,
}

/// A TCP relay to `upstream` on a loopback port.
fn relay(upstream: String) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let addr = listener.local_addr().expect("relay addr").to_string();
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = shared.clone();
            std::thread::spawn(move || pipe(c, s, &up, false));
            let down = shared.clone();
            std::thread::spawn(move || pipe(server, client, &down, true));
        }
    });
    (addr, counts)
}

fn pipe(mut from: TcpStream, mut to: TcpStream, counts: &Counts, downstream: bool) {
    let mut buf = vec![0u8; 64 << 10];
    let mut line = Vec::new();
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        if downstream {
            counts.down.fetch_add(n as u64, Ordering::SeqCst);
            continue;
        }
        for &byte in &buf[..n] {
            if byte == b'\n' {
                let text = String::from_utf8_lossy(&line);
                if text.starts_with("GET /v2/") && text.contains("/blobs/") {
                    counts.blob_gets.fetch_add(1, Ordering::SeqCst);
                }
                line.clear();
            } else if line.len() < 4096 {
                line.push(byte);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn main() {
    let model = aistack_tests::test_model();
    let size = fs::metadata(&model).expect("the model").len();
    // Build (or find) the binary before anything is timed.
    aistack_tests::aistack_bin();

    let registry = Registry::start();
    let reference = format!("{}/{REPO_TAG}", registry.addr());
    let publisher = Home::new();
    publisher.ok(&[
        "model",
        "package",
        "--gguf",
        model.to_str().expect("UTF-8 path"),
        "--push",
        &reference,
    ]);
    let auth = tempfile::NamedTempFile::new().expect("skopeo auth file");
    fs::write(auth.path(), r#"{"auths":{}}"#).expect("write auth file");

    // Warm the page cache of the registry's storage and both programs once, untimed.
    time_aistack(&reference);
    time_skopeo(&reference, auth.path());

    let load = wait_idle(IDLE_WAIT);
    let mut aistack = Vec::with_capacity(ROUNDS);
    let mut skopeo = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        aistack.push(time_aistack(&reference));
        skopeo.push(time_skopeo(&reference, auth.path()));
    }
    let (a, s) = (median(aistack.clone()), median(skopeo.clone()));
    let ratio = a.as_secs_f64() / s.as_secs_f64();

    // Re-pull of a present model, through the counting relay.
    let (relay_addr, counts) = relay(registry.addr());
    let relayed = format!("{relay_addr}/{REPO_TAG}");
    let home = Home::new();
    home.ok(&["model", "pull", "--quiet", &relayed]);
    let first = counts.down.swap(0, Ordering::SeqCst);
    let first_gets = counts.blob_gets.swap(0, Ordering::SeqCst);
    home.ok(&["model", "pull", "--quiet", &relayed]);
    let again = counts.down.load(Ordering::SeqCst);
    let again_gets = counts.blob_gets.load(Ordering::SeqCst);

    println!(
        "pull of the {:.1} MB SmolLM2 GGUF from a loopback registry, {ROUNDS} rounds interleaved (load before: {load:.2})",
        size as f64 / 1e6
    );
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  aistack model pull median: {:8.1} ms   ({} ms)",
        ms(a),
        list(&aistack)
    );
    println!(
        "  skopeo copy median:        {:8.1} ms   ({} ms)",
        ms(s),
        list(&skopeo)
    );
    println!("  ratio aistack / skopeo:    {ratio:8.2}   (target <= 1.00)");
    println!(
        "  {}",
        if ratio <= 1.0 {
            "PASS: no slower than skopeo"
        } else {
            "MISS: slower than skopeo"
        }
    );
    println!(
        "re-pull of a present model through a counting relay: {again_gets} blob requests, {again} bytes in all (manifest and headers)"
    );
    println!("  (first pull: {first_gets} blob requests, {first} bytes)");
    println!(
        "  blob bytes transferred: {}   {}",
        if again_gets == 0 { "0" } else { "some" },
        if again_gets == 0 && again < 64 << 10 {
            "PASS"
        } else {
            "MISS"
        }
    );
}
