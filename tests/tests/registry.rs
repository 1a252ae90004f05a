//! Models from OCI registries, end to end: the `aistack` binary against Debian's CNCF
//! distribution registry on loopback, with `skopeo` as the third-party client that writes
//! and reads Docker Model Runner artifacts, a counting TCP relay to measure what crosses the
//! wire, and the real SmolLM2 GGUF.
//!
//! Every test has its own `AISTACK_HOME` and its own `DOCKER_CONFIG`, so nothing of the
//! machine's Docker login leaks in.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aistack_tests::registry::Registry;
use aistack_tests::{TestEnv, sha256_file, terminate, test_model, wait_for};
use rustix::process::Signal;
use sha2::Digest as _;

/// The digest of the SmolLM2 GGUF (`scripts/fetch-model` checks it).
const MODEL_DIGEST: &str =
    "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.ai.model.config.v0.1+json";
const GGUF_MEDIA_TYPE: &str = "application/vnd.docker.ai.gguf.v3";
const FILEPATH_ANNOTATION: &str = "org.cncf.model.filepath";

/// The repository and tag the tests push to, as in the issue.
const REPO_TAG: &str = "ai/smollm2:135M-Q4_1";

/// What crosses the relay when no blob does: the manifest (and the registry's headers).
const NO_BLOB_BYTES: u64 = 64 << 10;

// ---------------------------------------------------------------------------------------
// A home: `AISTACK_HOME` plus `DOCKER_CONFIG`.
// ---------------------------------------------------------------------------------------

/// A [`TestEnv`] with its own Docker config directory.
struct Home {
    env: TestEnv,
    /// Kept for its lifetime: `DOCKER_CONFIG` points into it.
    _docker: tempfile::TempDir,
}

impl std::ops::Deref for Home {
    type Target = TestEnv;

    fn deref(&self) -> &TestEnv {
        &self.env
    }
}

impl Home {
    /// No credentials: `config.json` with no `auths`.
    fn new() -> Home {
        Home::with_config(r#"{"auths":{}}"#)
    }

    /// `user:password` for `registry` in `config.json`, as `docker login` writes it.
    fn with_credentials(registry: &str, user: &str, password: &str) -> Home {
        let auth = base64(format!("{user}:{password}").as_bytes());
        Home::with_config(&format!(
            r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#
        ))
    }

    fn with_config(config: &str) -> Home {
        let docker = tempfile::tempdir().expect("docker config dir");
        fs::write(docker.path().join("config.json"), config).expect("write config.json");
        let mut env = TestEnv::new();
        env.set_var("DOCKER_CONFIG", docker.path());
        Home {
            env,
            _docker: docker,
        }
    }

    /// Runs `aistack ARGS`, asserts it failed as an error should (see [`assert_error`]),
    /// returns stdout and stderr together.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_error(args, &out);
        eprintln!(
            "`aistack {}`:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `model inspect REF --json`.
    fn inspect(&self, reference: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["model", "inspect", reference, "--json"]))
            .expect("model inspect --json is JSON")
    }

    /// `model ls --json`.
    fn models(&self) -> Vec<serde_json::Value> {
        let ls: serde_json::Value =
            serde_json::from_str(&self.ok(&["model", "ls", "--json"])).expect("ls --json is JSON");
        ls.as_array().expect("ls --json is a list").clone()
    }

    /// The blobs of the store by name (hex).
    fn blob_names(&self) -> Vec<String> {
        self.env.blobs().into_iter().map(|(name, _)| name).collect()
    }

    fn has_blob(&self, digest: &str) -> bool {
        self.home()
            .join("models/blobs/sha256")
            .join(hex_of(digest))
            .is_file()
    }

    /// The store is consistent: every blob is named by the sha256 of its content, `ingest/`
    /// is empty, and only `partial/` (the resumable downloads) may hold anything else.
    fn assert_store_consistent(&self) {
        for (name, digest) in self.env.blobs() {
            assert_eq!(
                name, digest,
                "blob {name} does not match its content: a partial blob was left"
            );
        }
        let ingest: Vec<_> = fs::read_dir(self.home().join("models/ingest"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(ingest.is_empty(), "left in ingest/: {ingest:?}");
        if let Ok(index) = fs::read(self.home().join("models/index.json")) {
            let index: serde_json::Value =
                serde_json::from_slice(&index).expect("index.json is JSON");
            for entry in index["manifests"].as_array().expect("manifests") {
                let digest = entry["digest"].as_str().expect("digest");
                assert!(
                    self.has_blob(digest),
                    "index.json names {digest}, which is not in blobs/"
                );
            }
        }
    }

    /// The largest file under `models/partial/` or `models/ingest/`: a download under way.
    fn partial_bytes(&self) -> u64 {
        ["models/partial", "models/ingest"]
            .iter()
            .filter_map(|dir| fs::read_dir(self.home().join(dir)).ok())
            .flat_map(|d| d.filter_map(Result::ok))
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    }
}

/// A failed command failed as DESIGN §9 asks: exit 1, one error (one `×`), a `help:` line,
/// no panic.
fn assert_error(args: &[&str], out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "`aistack {}` exited {}\nstdout:\n{}\nstderr:\n{stderr}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{context}");
    assert!(!stderr.contains("panicked"), "{context}");
    assert_eq!(stderr.matches('×').count(), 1, "one error: {context}");
    assert!(
        stderr.lines().any(|l| l.trim_start().starts_with("help:")),
        "a help: line: {context}"
    );
    // The message itself is one line (miette may wrap it at 100 columns; its continuation
    // lines are indented under it), and the help follows it directly.
    let message: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.contains('×'))
        .take_while(|l| !l.trim_start().starts_with("help:"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        !message.is_empty() && message.len() <= 2,
        "a one-line message: {context}"
    );
}

/// Whether `text` mentions `needle`, ignoring whitespace and miette's `│` gutter: a long
/// message wraps at 100 columns, sometimes inside a name (after a `/`).
fn mentions(text: &str, needle: &str) -> bool {
    let squash = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != '│')
            .collect::<String>()
    };
    squash(text).contains(&squash(needle))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Standard base64 with padding (Docker's `auths.*.auth`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// A hand-built OCI layout and skopeo, the third-party client.
// ---------------------------------------------------------------------------------------

/// An OCI image layout holding one artifact, written by hand as any OCI tool would.
struct Layout {
    dir: tempfile::TempDir,
    manifest_digest: String,
    config: serde_json::Value,
}

impl Layout {
    /// The SmolLM2 GGUF as a Docker Model Runner artifact: DMR's config JSON and media
    /// types, the layer annotated with its file name.
    fn dmr(tag: &str) -> Layout {
        let config = serde_json::json!({
            "config": {
                "format": "gguf",
                "quantization": "Q4_1",
                "parameters": "134.52 M",
                "architecture": "llama",
                "size": "94.74 MiB",
                "gguf": {"general.name": "SmolLM2 135M Instruct"},
                "context_size": 8192
            },
            "descriptor": {"created": "2025-06-01T12:00:00Z"},
            "rootfs": {"type": "rootfs", "diff_ids": [MODEL_DIGEST]}
        });
        Layout::build(
            tag,
            CONFIG_MEDIA_TYPE,
            config,
            GGUF_MEDIA_TYPE,
            &test_model(),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        )
    }

    fn build(
        tag: &str,
        config_media_type: &str,
        config: serde_json::Value,
        layer_media_type: &str,
        layer: &Path,
        file_name: &str,
    ) -> Layout {
        let dir = tempfile::Builder::new()
            .prefix("aistack-oci-layout-")
            .tempdir()
            .expect("layout dir");
        let blobs = dir.path().join("blobs/sha256");
        fs::create_dir_all(&blobs).expect("blobs dir");
        let put = |bytes: &[u8]| {
            let digest = sha256(bytes);
            fs::write(blobs.join(hex_of(&digest)), bytes).expect("write blob");
            (digest, bytes.len())
        };

        let layer_digest = format!("sha256:{}", sha256_file(layer));
        let layer_size = fs::metadata(layer).expect("layer file").len();
        let layer_blob = blobs.join(hex_of(&layer_digest));
        if fs::hard_link(layer, &layer_blob).is_err() {
            fs::copy(layer, &layer_blob).expect("copy the layer into the layout");
        }
        let (config_digest, config_size) = put(&serde_json::to_vec(&config).expect("config JSON"));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": config_media_type, "digest": config_digest, "size": config_size},
            "layers": [{
                "mediaType": layer_media_type,
                "digest": layer_digest,
                "size": layer_size,
                "annotations": {FILEPATH_ANNOTATION: file_name}
            }]
        });
        let (manifest_digest, manifest_size) =
            put(&serde_json::to_vec(&manifest).expect("manifest JSON"));
        fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag}
            }]
        });
        fs::write(
            dir.path().join("index.json"),
            serde_json::to_vec(&index).expect("index JSON"),
        )
        .expect("index.json");
        Layout {
            dir,
            manifest_digest,
            config,
        }
    }

    /// `skopeo copy` of the layout's `tag` to `docker://DEST` (plain HTTP), digests kept.
    fn push_with_skopeo(&self, tag: &str, dest: &str, creds: Option<(&str, &str)>) {
        let mut args = vec![
            "copy".to_owned(),
            "--quiet".to_owned(),
            "--preserve-digests".to_owned(),
            "--dest-tls-verify=false".to_owned(),
        ];
        if let Some((user, password)) = creds {
            args.push(format!("--dest-creds={user}:{password}"));
        }
        args.push(format!("oci:{}:{tag}", self.dir.path().display()));
        args.push(format!("docker://{dest}"));
        skopeo(&args);
    }
}

/// Runs `skopeo ARGS` (with its own empty auth file) and returns stdout.
fn skopeo(args: &[String]) -> String {
    let auth = tempfile::NamedTempFile::new().expect("auth file");
    fs::write(auth.path(), r#"{"auths":{}}"#).expect("write auth file");
    let out = Command::new("skopeo")
        .args(args)
        .env("REGISTRY_AUTH_FILE", auth.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `skopeo` ({e}): install it: apt-get install skopeo (scripts/test does)"
            )
        });
    assert!(
        out.status.success(),
        "skopeo {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registry with the SmolLM2 artifact pushed to [`REPO_TAG`] by skopeo; returns the
/// layout (for its manifest digest and config).
fn registry_with_model() -> (Registry, Layout) {
    let registry = Registry::start();
    let layout = Layout::dmr("v1");
    layout.push_with_skopeo("v1", &format!("{}/{REPO_TAG}", registry.addr()), None);
    (registry, layout)
}

// ---------------------------------------------------------------------------------------
// A counting TCP relay.
// ---------------------------------------------------------------------------------------

/// A TCP relay on a loopback port to an upstream address, counting the bytes that flow
/// from upstream to the client (what a pull downloads) and the `GET …/blobs/…` requests
/// and `Range:` headers that flow the other way, optionally throttled.
struct Relay {
    port: u16,
    down: Arc<AtomicU64>,
    blob_gets: Arc<AtomicU64>,
    ranges: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: &str) -> Relay {
        Relay::throttled(upstream, None)
    }

    /// At most `bytes_per_second` downstream per connection.
    fn throttled(upstream: &str, bytes_per_second: Option<u64>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("relay addr").port();
        let down = Arc::new(AtomicU64::new(0));
        let blob_gets = Arc::new(AtomicU64::new(0));
        let ranges = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let (counter, gets, ranged, stopped) = (
            down.clone(),
            blob_gets.clone(),
            ranges.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (gets, ranged) = (gets.clone(), ranged.clone());
                std::thread::spawn(move || pipe(c2, s2, Count::Requests(&gets, &ranged), None));
                let counter = counter.clone();
                std::thread::spawn(move || {
                    pipe(server, client, Count::Bytes(&counter), bytes_per_second)
                });
            }
        });
        Relay {
            port,
            down,
            blob_gets,
            ranges,
            stop,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes sent from upstream to clients since the start or the last reset.
    fn bytes(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    /// `GET` requests for blobs since the start or the last reset.
    fn blob_gets(&self) -> u64 {
        self.blob_gets.load(Ordering::SeqCst)
    }

    /// Requests with a `Range:` header since the start or the last reset.
    fn ranges(&self) -> u64 {
        self.ranges.load(Ordering::SeqCst)
    }

    fn reset(&self) {
        self.down.store(0, Ordering::SeqCst);
        self.blob_gets.store(0, Ordering::SeqCst);
        self.ranges.store(0, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// What a direction of the relay counts.
enum Count<'a> {
    /// Every byte (upstream to client).
    Bytes(&'a AtomicU64),
    /// HTTP request lines `GET /v2/…/blobs/…`, and `Range:` headers (client to upstream).
    Requests(&'a AtomicU64, &'a AtomicU64),
}

/// Copies `from` into `to` until either side closes, counting.
fn pipe(mut from: TcpStream, mut to: TcpStream, count: Count, bytes_per_second: Option<u64>) {
    let start = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let mut line = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        match count {
            Count::Bytes(counter) => {
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
            Count::Requests(gets, ranges) => {
                for &byte in &buf[..n] {
                    if byte == b'\n' {
                        let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
                        if text.starts_with("get /v2/") && text.contains("/blobs/") {
                            gets.fetch_add(1, Ordering::SeqCst);
                        }
                        if text.starts_with("range: bytes=") {
                            ranges.fetch_add(1, Ordering::SeqCst);
                        }
                        line.clear();
                    } else if line.len() < 4096 {
                        line.push(byte);
                    }
                }
            }
        }
        if let Some(rate) = bytes_per_second {
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

// ---------------------------------------------------------------------------------------
// A small tmpfs for the disk-full test.
// ---------------------------------------------------------------------------------------

/// A tmpfs mounted at a directory; lazily unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).expect("mount point");
        aistack_tests::succeed(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(path),
            &format!(
                "mounting a tmpfs at {} (the disk-full test needs root)",
                path.display()
            ),
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Tmpfs {
    /// Grows (or shrinks) the filesystem in place.
    fn resize(&self, size: &str) {
        aistack_tests::succeed(
            Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(&self.path),
            "resizing the tmpfs",
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

#[test]
fn package_push_pull_round_trip_then_up_pulls_a_spec_naming_the_reference() {
    let registry = Registry::start();
    let reference = format!("{}/{REPO_TAG}", registry.addr());
    let model = test_model();

    let publisher = Home::new();
    let packaged = publisher.ok(&[
        "model",
        "package",
        "--gguf",
        model.to_str().unwrap(),
        "--context-size",
        "4096",
        "--push",
        &reference,
    ]);
    let published = publisher.inspect(&reference);
    let id = published["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("sha256:"), "{published}");
    assert!(
        packaged.contains(&id),
        "package prints the digest: {packaged}"
    );
    assert_eq!(published["config"]["config"]["context_size"], 4096);
    assert_eq!(published["config"]["config"]["format"], "gguf");
    assert_eq!(published["config"]["config"]["architecture"], "llama");
    assert_eq!(published["config"]["config"]["quantization"], "Q4_1");
    assert_eq!(published["manifest"]["layers"][0]["digest"], MODEL_DIGEST);

    let consumer = Home::new();
    let pulled = consumer.ok(&["model", "pull", &reference]);
    assert!(pulled.contains(&id), "pull prints the digest: {pulled}");
    let inspected = consumer.inspect(&reference);
    assert_eq!(inspected["id"], published["id"]);
    assert_eq!(inspected["manifest"], published["manifest"]);
    assert_eq!(inspected["config"], published["config"]);
    assert_eq!(inspected["size"], published["size"]);
    assert!(
        inspected["references"]
            .as_array()
            .expect("references")
            .iter()
            .any(|r| r == reference.as_str()),
        "{inspected}"
    );
    assert!(consumer.has_blob(MODEL_DIGEST));
    assert_eq!(consumer.blob_names(), publisher.blob_names());
    consumer.assert_store_consistent();

    // A spec naming the reference: `up` pulls it into a fresh home.
    let project = Home::new();
    project.env.write(
        "aistack.yaml",
        &project.env.spec(&format!(
            "version: 1\nname: demo\nmodels:\n  chat:\n    source: {reference}\n"
        )),
    );
    let plan = project.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        plan.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("+ model chat"), "{text}");
    assert!(
        text.contains(&reference),
        "the step shows the reference: {text}"
    );
    let up = project.ok(&["up"]);
    assert!(
        up.contains("Apply complete: 2 added, 0 changed, 0 removed."),
        "{up}"
    );
    assert!(project.has_blob(MODEL_DIGEST), "up pulled the model");
    assert_eq!(project.inspect(&reference)["id"], id.as_str());
    project.assert_store_consistent();
    let again = project.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn up_pull_re_resolves_a_moved_tag_and_plain_up_stays_offline() {
    let registry = Registry::start();
    let reference = format!("{}/{REPO_TAG}", registry.addr());
    let model = test_model();
    let model = model.to_str().unwrap();
    let publisher = Home::new();
    publisher.ok(&[
        "model",
        "package",
        "--gguf",
        model,
        "--context-size",
        "4096",
        "--push",
        &reference,
    ]);

    let project = Home::new();
    project.env.write(
        "aistack.yaml",
        &project.env.spec(&format!(
            "version: 1\nname: demo\nmodels:\n  chat:\n    source: {reference}\n"
        )),
    );
    project.ok(&["up"]);
    let first = project.inspect(&reference)["id"].clone();

    // The tag moves: the same weights with another context size are another manifest.
    publisher.ok(&[
        "model",
        "package",
        "--gguf",
        model,
        "--context-size",
        "2048",
        "--push",
        &reference,
    ]);
    let moved = publisher.inspect(&reference)["id"].clone();
    assert_ne!(first, moved);

    // By default a model in the store is not re-resolved: the moved tag is no change.
    let plan = project.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );

    // Asked to, plan and up re-resolve the tag and pull what it points to now.
    let plan = project.ok(&["plan", "--pull"]);
    assert!(
        plan.contains("~ model chat"),
        "a moved tag is a change: {plan}"
    );
    let up = project.ok(&["up", "--pull"]);
    assert!(up.contains("~ model chat"), "{up}");
    assert_eq!(project.inspect(&reference)["id"], moved);
    assert_eq!(
        project.run(&["plan", "--detailed-exitcode"]).status.code(),
        Some(0)
    );
    project.assert_store_consistent();

    // Offline, a plain `up` works from the store.
    let mut registry = registry;
    registry.stop();
    let offline = project.ok(&["up"]);
    assert!(offline.starts_with("No changes.\n"), "{offline}");
}

#[test]
fn an_artifact_skopeo_pushed_with_dmr_media_types_pulls() {
    let (registry, layout) = registry_with_model();
    let reference = format!("{}/{REPO_TAG}", registry.addr());
    let home = Home::new();
    let out = home.ok(&["model", "pull", "--quiet", &reference]);
    assert!(out.contains(&layout.manifest_digest), "{out}");

    let inspected = home.inspect(&reference);
    assert_eq!(inspected["id"], layout.manifest_digest.as_str());
    assert_eq!(inspected["config"], layout.config);
    assert_eq!(
        inspected["manifest"]["config"]["mediaType"],
        CONFIG_MEDIA_TYPE
    );
    assert_eq!(inspected["manifest"]["layers"][0]["digest"], MODEL_DIGEST);

    // The store holds exactly the layout's blobs, byte for byte.
    let mut expected: Vec<String> = fs::read_dir(layout.dir.path().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    expected.sort();
    assert_eq!(home.blob_names(), expected);
    home.assert_store_consistent();

    let models = home.models();
    assert_eq!(models.len(), 1, "{models:?}");
    let m = &models[0];
    assert_eq!(m["id"], layout.manifest_digest.as_str());
    assert_eq!(m["references"], serde_json::json!([reference]));
    assert_eq!(m["format"], "gguf");
    assert_eq!(m["architecture"], "llama");
    assert_eq!(m["quantization"], "Q4_1");
    assert_eq!(m["parameters"], "134.52 M");
    assert_eq!(
        m["size"].as_u64(),
        Some(fs::metadata(test_model()).unwrap().len()),
        "{m}"
    );
}

#[test]
fn an_artifact_aistack_pushes_reads_back_with_skopeo() {
    let registry = Registry::start();
    let reference = format!("{}/{REPO_TAG}", registry.addr());
    let home = Home::new();
    home.ok(&[
        "model",
        "package",
        "--gguf",
        test_model().to_str().unwrap(),
        "--push",
        &reference,
    ]);
    let id = home.inspect(&reference)["id"].as_str().unwrap().to_owned();

    let raw = skopeo(&[
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        format!("docker://{reference}"),
    ]);
    assert_eq!(
        sha256(raw.as_bytes()),
        id,
        "the registry serves our manifest"
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).expect("manifest JSON");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
    let layers = manifest["layers"].as_array().expect("layers");
    let gguf: Vec<_> = layers
        .iter()
        .filter(|l| l["mediaType"] == GGUF_MEDIA_TYPE)
        .collect();
    assert_eq!(gguf.len(), 1, "{raw}");
    assert_eq!(gguf[0]["digest"], MODEL_DIGEST);
    assert_eq!(
        gguf[0]["annotations"][FILEPATH_ANNOTATION],
        test_model().file_name().unwrap().to_str().unwrap(),
        "{raw}"
    );

    // skopeo copies it out whole: the blobs are what the manifest says.
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("copy");
    skopeo(&[
        "copy".into(),
        "--quiet".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{reference}"),
        format!("dir:{}", dir.display()),
    ]);
    assert_eq!(
        format!("sha256:{}", sha256_file(&dir.join(hex_of(MODEL_DIGEST)))),
        MODEL_DIGEST
    );
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join(hex_of(config_digest))).unwrap()).unwrap();
    assert_eq!(config["config"]["format"], "gguf");
    assert_eq!(config["rootfs"]["diff_ids"][0], MODEL_DIGEST);
}

#[test]
fn an_artifact_that_is_not_a_model_is_refused_naming_its_media_type() {
    let registry = Registry::start();
    let layer = tempfile::NamedTempFile::new().unwrap();
    fs::write(layer.path(), b"not a model, a tarball pretending").unwrap();
    let image_config = "application/vnd.oci.image.config.v1+json";
    let layout = Layout::build(
        "v1",
        image_config,
        serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}),
        "application/vnd.oci.image.layer.v1.tar",
        layer.path(),
        "layer.tar",
    );
    let reference = format!("{}/library/app:v1", registry.addr());
    layout.push_with_skopeo("v1", &reference, None);
    let home = Home::new();
    let err = home.fails(&["model", "pull", &reference]);
    assert!(mentions(&err, image_config), "{err}");
    assert!(home.blob_names().is_empty(), "{:?}", home.blob_names());
    home.assert_store_consistent();
}

#[test]
fn a_blob_corrupted_in_the_registry_fails_the_pull_naming_the_digest() {
    let (registry, _layout) = registry_with_model();
    let blob = registry.blob_path(MODEL_DIGEST);
    let mut bytes = fs::read(&blob).expect("the registry holds the layer");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&blob, &bytes).expect("corrupt the layer");

    let reference = format!("{}/{REPO_TAG}", registry.addr());
    let home = Home::new();
    let err = home.fails(&["model", "pull", &reference]);
    assert!(mentions(&err, MODEL_DIGEST), "names the digest: {err}");
    assert!(!home.has_blob(MODEL_DIGEST));
    assert!(
        !home
            .home()
            .join("models/partial")
            .join(hex_of(MODEL_DIGEST))
            .exists(),
        "nothing of the bad blob is kept to resume from"
    );
    assert!(home.models().is_empty());
    home.assert_store_consistent();
}

#[test]
fn registry_down_unknown_repository_and_unknown_tag_are_clear_errors() {
    let (mut registry, _layout) = registry_with_model();
    let addr = registry.addr();
    let home = Home::new();

    let err = home.fails(&["model", "pull", &format!("{addr}/ai/nothing-here:v1")]);
    assert!(mentions(&err, "ai/nothing-here"), "{err}");

    let err = home.fails(&["model", "pull", &format!("{addr}/ai/smollm2:no-such-tag")]);
    assert!(mentions(&err, "no-such-tag"), "{err}");

    registry.stop();
    let err = home.fails(&["model", "pull", &format!("{addr}/{REPO_TAG}")]);
    assert!(mentions(&err, &addr), "names the registry: {err}");

    assert!(home.blob_names().is_empty(), "{:?}", home.blob_names());
    assert!(home.models().is_empty());
    home.assert_store_consistent();
}

#[test]
fn credentials_come_from_docker_config_and_are_never_shown() {
    const USER: &str = "alice";
    const PASSWORD: &str = "correct-horse-battery";
    const WRONG: &str = "Wr0ng-pa55word-4711";
    let registry = Registry::start_with_auth(USER, PASSWORD);
    let addr = registry.addr();
    let reference = format!("{addr}/{REPO_TAG}");
    let layout = Layout::dmr("v1");
    layout.push_with_skopeo("v1", &reference, Some((USER, PASSWORD)));

    // No credentials: the registry asks for them, and the help says how to log in.
    let anonymous = Home::new();
    let err = anonymous.fails(&["model", "pull", &reference]);
    assert!(mentions(&err, &addr), "names the registry: {err}");
    assert!(mentions(&err, "login"), "says how to log in: {err}");

    // Wrong credentials: refused, and neither the password nor its encoding shows.
    let wrong = Home::with_credentials(&addr, USER, WRONG);
    let err = wrong.fails(&["model", "pull", &reference]);
    assert!(mentions(&err, &addr), "{err}");
    let encoded = base64(format!("{USER}:{WRONG}").as_bytes());
    assert!(!mentions(&err, WRONG), "the password leaked: {err}");
    assert!(!mentions(&err, &encoded), "the credentials leaked: {err}");
    assert!(wrong.blob_names().is_empty());
    wrong.assert_store_consistent();

    // Right credentials: the pull works, and nothing under the home holds the password.
    let right = Home::with_credentials(&addr, USER, PASSWORD);
    let out = right.ok(&["model", "pull", &reference]);
    assert!(out.contains(&layout.manifest_digest), "{out}");
    assert!(!out.contains(PASSWORD));
    right.assert_store_consistent();
    let encoded = base64(format!("{USER}:{PASSWORD}").as_bytes());
    for path in files_under(&right.home()) {
        if fs::metadata(&path).is_ok_and(|m| m.len() > 1 << 20) {
            continue;
        }
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap_or_default()).into_owned();
        assert!(
            !text.contains(PASSWORD) && !text.contains(&encoded),
            "{} holds the credentials",
            path.display()
        );
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files
}

#[test]
fn disk_full_fails_with_a_disk_space_message_and_leaves_the_store_consistent() {
    let (registry, layout) = registry_with_model();
    let reference = format!("{}/{REPO_TAG}", registry.addr());
    let home = Home::new();
    // Declared after `home`, so it is unmounted before the home's directory is removed.
    let tmpfs = Tmpfs::mount(&home.home(), "40m");

    let err = home.fails(&["model", "pull", &reference]);
    assert!(
        mentions(&err.to_lowercase(), "space"),
        "says the disk is full: {err}"
    );
    assert!(!home.has_blob(MODEL_DIGEST));
    home.assert_store_consistent();
    assert!(home.models().is_empty());

    // Cleanup: removing the (absent) model is a clear error, and the store still works.
    let out = home.run(&["model", "rm", &reference]);
    if !out.status.success() {
        assert_error(&["model", "rm", &reference], &out);
    }
    home.assert_store_consistent();
    assert!(home.models().is_empty());

    // With space freed, as the help says, the pull completes.
    tmpfs.resize("200m");
    let out = home.ok(&["model", "pull", "--quiet", &reference]);
    assert!(out.contains(&layout.manifest_digest), "{out}");
    assert!(home.has_blob(MODEL_DIGEST));
    home.assert_store_consistent();
}

#[test]
fn a_pull_killed_half_way_resumes_and_transfers_less_than_60_percent() {
    let (registry, layout) = registry_with_model();
    let blob_size = fs::metadata(test_model()).unwrap().len();
    // 40 MB/s: the 98 MB layer takes about 2.5 s, time enough to stop it half way.
    let relay = Relay::throttled(&registry.addr(), Some(40_000_000));
    let reference = format!("{}/{REPO_TAG}", relay.addr());
    let home = Home::new();

    let mut pull = home
        .cmd(&["model", "pull", "--quiet", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the pull");
    let halfway = wait_for(Duration::from_secs(60), || {
        home.partial_bytes() >= blob_size / 2
    });
    let finished = pull.try_wait().expect("poll the pull");
    terminate(pull.id() as i32, Signal::KILL);
    let _ = pull.wait();
    assert!(
        halfway,
        "the download never reached half way (partial: {} of {blob_size} bytes)",
        home.partial_bytes()
    );
    assert!(finished.is_none(), "the pull ended before it was killed");
    assert!(!home.has_blob(MODEL_DIGEST), "the layer was not committed");
    let kept = home.partial_bytes();
    assert!(
        kept > 0 && kept < blob_size,
        "the partial download stays: {kept}"
    );
    home.assert_store_consistent();

    relay.reset();
    let out = home.ok(&["model", "pull", "--quiet", &reference]);
    assert!(out.contains(&layout.manifest_digest), "{out}");
    let transferred = relay.bytes();
    // The layer resumes with a Range request; the config (stored with the manifest once
    // the layers are in) may be fetched again, nothing else is.
    assert_eq!(relay.ranges(), 1, "the layer resumes with a Range request");
    assert!(
        relay.blob_gets() <= 2,
        "{} blob requests",
        relay.blob_gets()
    );
    eprintln!(
        "resume: killed at {kept} of {blob_size} bytes; the second pull transferred {transferred}"
    );
    assert!(
        (transferred as f64) < 0.6 * blob_size as f64,
        "the second pull transferred {transferred} bytes of a {blob_size}-byte layer"
    );
    assert!(home.has_blob(MODEL_DIGEST));
    assert_eq!(
        home.partial_bytes(),
        0,
        "the partial file went into the store"
    );
    home.assert_store_consistent();
}

#[test]
fn a_second_reference_and_a_re_pull_transfer_no_blob_bytes() {
    let (registry, layout) = registry_with_model();
    let direct = format!("{}/{REPO_TAG}", registry.addr());
    let relay = Relay::start(&registry.addr());
    let relayed = format!("{}/{REPO_TAG}", relay.addr());
    let home = Home::new();

    home.ok(&["model", "pull", "--quiet", &direct]);
    let blobs = home.blob_names();
    assert!(home.has_blob(MODEL_DIGEST));

    // The same artifact under another reference: only the manifest crosses the wire.
    let out = home.ok(&["model", "pull", "--quiet", &relayed]);
    assert!(out.contains(&layout.manifest_digest), "{out}");
    assert_eq!(relay.blob_gets(), 0, "a second reference fetched a blob");
    assert!(
        relay.bytes() < NO_BLOB_BYTES,
        "a second reference transferred {} bytes",
        relay.bytes()
    );
    assert_eq!(home.blob_names(), blobs, "nothing was stored twice");

    // A re-pull of a present model transfers no blob either.
    relay.reset();
    home.ok(&["model", "pull", "--quiet", &relayed]);
    assert_eq!(relay.blob_gets(), 0, "a re-pull fetched a blob");
    assert!(
        relay.bytes() < NO_BLOB_BYTES,
        "a re-pull transferred {} bytes",
        relay.bytes()
    );

    // `model tag` adds a reference to the same model, without copying anything.
    let alias = "registry.example/team/chat:v1";
    home.ok(&["model", "tag", &direct, alias]);
    let models = home.models();
    assert_eq!(models.len(), 1, "{models:?}");
    let references: Vec<&str> = models[0]["references"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for r in [direct.as_str(), relayed.as_str(), alias] {
        assert!(references.contains(&r), "{r} missing from {references:?}");
    }
    assert_eq!(home.inspect(alias)["id"], layout.manifest_digest.as_str());
    assert_eq!(home.blob_names(), blobs);

    // The model goes with its last reference.
    home.ok(&["model", "rm", &direct]);
    home.ok(&["model", "rm", &relayed]);
    assert_eq!(home.blob_names(), blobs, "a reference is left");
    home.ok(&["model", "rm", alias]);
    assert!(home.models().is_empty());
    assert!(home.blob_names().is_empty(), "{:?}", home.blob_names());
    home.assert_store_consistent();
}

/// The harness pieces that need no aistack: skopeo pushes the hand-built layout, the
/// registry serves it through the relay, and the relay counts what it carried.
#[test]
fn skopeo_pushes_the_hand_built_layout_and_the_relay_counts_its_bytes() {
    let (registry, layout) = registry_with_model();
    let relay = Relay::start(&registry.addr());
    let raw = skopeo(&[
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        format!("docker://{}/{REPO_TAG}", relay.addr()),
    ]);
    assert_eq!(sha256(raw.as_bytes()), layout.manifest_digest);
    assert!(relay.bytes() > raw.len() as u64 && relay.bytes() < NO_BLOB_BYTES);
    assert_eq!(relay.blob_gets(), 0);
    assert_eq!(
        format!("sha256:{}", sha256_file(&registry.blob_path(MODEL_DIGEST))),
        MODEL_DIGEST
    );
    assert_eq!(base64(b"alice:s3cret"), "YWxpY2U6czNjcmV0");
    assert_eq!(base64(b"ab"), "YWI=");
}
