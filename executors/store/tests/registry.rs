//! Pull, push and package against a real registry (Debian's CNCF distribution, started by
//! `aistack_tests::registry::Registry` on a loopback port).

mod common;

use std::path::{Path, PathBuf};

use aistack_spec::values::OciRef;
use aistack_store::registry::{self, PullOptions, PullProgress, Pulled, RegistryError};
use aistack_store::{LocalFile, Store};
use aistack_tests::registry::Registry;
use common::{Gguf, digest, write_file};
use sha2::Digest as _;

fn oci(text: &str) -> OciRef {
    OciRef::parse_model(text).unwrap()
}

fn store(dir: &Path, name: &str) -> Store {
    Store::open(&dir.join(name)).unwrap()
}

/// The SmolLM2 GGUF as a planned local file.
fn real_model() -> LocalFile {
    let path = match std::env::var_os("AISTACK_TEST_MODEL") {
        Some(path) if Path::new(&path).is_file() => PathBuf::from(path),
        _ => panic!(
            "AISTACK_TEST_MODEL must name the SmolLM2 GGUF: run `export AISTACK_TEST_MODEL=$(scripts/fetch-model)` (scripts/test does this)"
        ),
    };
    let bytes = std::fs::read(&path).unwrap();
    LocalFile {
        size: bytes.len() as u64,
        digest: digest(&bytes),
        path,
    }
}

/// A small synthetic GGUF under `dir`.
fn small_model(dir: &Path, name: &str) -> LocalFile {
    Gguf::llama(name).write(&dir.join(format!("{name}.gguf")))
}

async fn pull(store: &Store, reference: &str) -> Result<Pulled, RegistryError> {
    registry::pull(store, &oci(reference), &PullOptions::default(), &mut |_| {}).await
}

/// Packages `file` into `store` as `reference` and pushes it; returns the manifest digest.
async fn package_and_push(store: &Store, file: &LocalFile, reference: &str) -> String {
    let name = oci(reference).to_string();
    let imported = store
        .package(std::slice::from_ref(file), &[], None, None, &name)
        .unwrap();
    let pushed = registry::push(store, &name, &oci(reference), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(pushed.manifest_digest, imported.manifest_digest);
    imported.manifest_digest
}

fn names(store: &Store) -> Vec<(String, String)> {
    let mut names: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .filter_map(|e| {
            e.annotations
                .get("org.opencontainers.image.ref.name")
                .map(|n| (n.clone(), e.manifest_digest))
        })
        .collect();
    names.sort();
    names
}

fn gguf_digest(store: &Store, manifest: &str) -> (String, u64) {
    let m = store.manifest(manifest).unwrap();
    (m.layers[0].digest.clone(), m.layers[0].size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_push_pull_round_trip_and_dedupe() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let model = real_model();
    let license = write_file(&dir.path().join("LICENSE"), b"Apache-2.0\n");
    let template = write_file(&dir.path().join("template.jinja"), b"{{ messages }}");
    let reference = format!("{}/ai/smollm2:135M-Q4_1", registry.addr());

    let packaged = a
        .package(
            std::slice::from_ref(&model),
            std::slice::from_ref(&license.path),
            Some(&template.path),
            Some(2048),
            &reference,
        )
        .unwrap();
    assert_eq!(packaged.config.context_size, Some(2048));
    let manifest = a.manifest(&packaged.manifest_digest).unwrap();
    let types: Vec<_> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.docker.ai.gguf.v3",
            "application/vnd.docker.ai.license",
            "application/vnd.docker.ai.chat.template.jinja"
        ]
    );
    let paths: Vec<_> = manifest
        .layers
        .iter()
        .map(|l| l.annotations["org.cncf.model.filepath"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "LICENSE",
            "template.jinja"
        ]
    );
    assert_eq!(
        a.resolve(&reference).as_deref(),
        Some(&*packaged.manifest_digest)
    );

    let mut events = Vec::new();
    let pushed = registry::push(&a, &reference, &oci(&reference), &mut |p| events.push(p))
        .await
        .unwrap();
    assert_eq!(pushed.manifest_digest, packaged.manifest_digest);
    assert!(pushed.transferred_bytes >= model.size);
    assert!(
        events
            .iter()
            .any(|p| p.layer == model.digest && p.done == model.size)
    );
    // A second push finds every blob there.
    let again = registry::push(&a, &reference, &oci(&reference), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again.transferred_bytes, 0);

    // A third-party client reads what we pushed.
    if let Ok(out) = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            raw["config"]["mediaType"],
            "application/vnd.docker.ai.model.config.v0.1+json"
        );
        assert_eq!(
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout))),
            packaged.manifest_digest
        );
    }

    let mut events: Vec<PullProgress> = Vec::new();
    let started = std::time::Instant::now();
    let pulled = registry::pull(&b, &oci(&reference), &PullOptions::default(), &mut |p| {
        events.push(p)
    })
    .await
    .unwrap();
    eprintln!(
        "pull of {} bytes: {} transferred in {:?}",
        pulled.size,
        pulled.transferred_bytes,
        started.elapsed()
    );
    assert_eq!(pulled.manifest_digest, packaged.manifest_digest);
    assert_eq!(pulled.size, packaged.size);
    assert_eq!(pulled.config, packaged.config);
    assert!(pulled.transferred_bytes >= model.size);
    assert!(
        events
            .iter()
            .any(|p| p.layer == model.digest && p.done == p.total)
    );
    assert!(b.contains(&pulled.manifest_digest));
    for layer in &manifest.layers {
        b.verify(&layer.digest).unwrap();
    }
    b.verify(&manifest.config.digest).unwrap();
    b.verify(&pulled.manifest_digest).unwrap();
    assert_eq!(
        names(&b),
        [(reference.clone(), pulled.manifest_digest.clone())]
    );

    // Re-pull: nothing moves.
    let again = pull(&b, &reference).await.unwrap();
    assert_eq!(again.transferred_bytes, 0);
    // A second tag of the same artifact: nothing moves, and it gets its own name.
    let other = format!("{}/ai/smollm2:other", registry.addr());
    registry::push(&a, &reference, &oci(&other), &mut |_| {})
        .await
        .unwrap();
    let second = pull(&b, &other).await.unwrap();
    assert_eq!(second.transferred_bytes, 0);
    assert_eq!(second.manifest_digest, pulled.manifest_digest);
    assert_eq!(
        names(&b),
        [
            (reference.clone(), pulled.manifest_digest.clone()),
            (other.clone(), pulled.manifest_digest.clone())
        ]
    );
    assert_eq!(
        registry::resolve(&oci(&other)).await.unwrap(),
        pulled.manifest_digest
    );

    // Removing one name keeps the blobs; removing the last deletes them.
    b.remove_reference(&other).unwrap();
    assert!(b.contains(&pulled.manifest_digest));
    b.remove_reference(&reference).unwrap();
    assert!(names(&b).is_empty());
    assert!(!b.blob_path(&model.digest).unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pull_resumes() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let model = real_model();
    let reference = format!("{}/ai/smollm2:resume", registry.addr());
    let manifest = package_and_push(&a, &model, &reference).await;
    let (layer, size) = gguf_digest(&a, &manifest);

    // What a pull killed at half way leaves: half the blob in the partial area.
    let half = size / 2;
    let bytes = std::fs::read(a.blob_path(&layer).unwrap()).unwrap();
    std::fs::write(b.partial_path(&layer).unwrap(), &bytes[..half as usize]).unwrap();
    // Reopening the store keeps it.
    let b = store(dir.path(), "b");
    assert!(b.partial_path(&layer).unwrap().exists());

    let pulled = pull(&b, &reference).await.unwrap();
    let ratio = pulled.transferred_bytes as f64 / size as f64;
    eprintln!(
        "resumed pull: {} of {size} bytes transferred ({:.1}%)",
        pulled.transferred_bytes,
        ratio * 100.0
    );
    assert!(ratio < 0.6, "transferred {ratio}");
    b.verify(&layer).unwrap();
    assert!(!b.partial_path(&layer).unwrap().exists());

    // A partial file whose prefix is wrong fails the digest and is dropped; the next pull
    // starts over and succeeds.
    let c = store(dir.path(), "c");
    std::fs::write(c.partial_path(&layer).unwrap(), vec![0u8; 1000]).unwrap();
    let e = pull(&c, &reference).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    assert!(!c.partial_path(&layer).unwrap().exists());
    pull(&c, &reference).await.unwrap();
    c.verify(&layer).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_corrupt_in_the_registry_is_refused() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let model = small_model(dir.path(), "corrupt");
    let reference = format!("{}/ai/corrupt:1", registry.addr());
    let manifest = package_and_push(&a, &model, &reference).await;
    let (layer, _) = gguf_digest(&a, &manifest);

    let path = registry.blob_path(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();

    let e = pull(&b, &reference).await.unwrap_err();
    let message = e.to_string();
    assert!(
        matches!(e, RegistryError::DigestMismatch { .. }),
        "{message}"
    );
    assert!(message.contains(&layer), "{message}");
    assert!(message.contains(&reference), "{message}");
    assert!(e.help().is_some());
    assert!(!b.blob_path(&layer).unwrap().exists());
    assert!(!b.partial_path(&layer).unwrap().exists());
    assert!(b.list().unwrap().is_empty());
    assert!(b.resolve(&reference).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_faults_are_clear_errors() {
    let mut registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let addr = registry.addr();
    let model = small_model(dir.path(), "faults");
    package_and_push(&a, &model, &format!("{addr}/ai/faults:1")).await;

    let e = pull(&b, &format!("{addr}/ai/faults:missing"))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::UnknownManifest { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!("The registry has no `{addr}/ai/faults:missing`")
    );
    assert_eq!(
        e.help().unwrap(),
        format!("List the tags with `skopeo list-tags docker://{addr}/ai/faults`")
    );

    let e = pull(&b, &format!("{addr}/ai/nothing-here:1"))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::UnknownRepository { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!("The registry `{addr}` has no repository `ai/nothing-here`")
    );

    let e = registry::push(
        &b,
        "ai/not-in-store",
        &oci(&format!("{addr}/x/y")),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RegistryError::NotInStore { .. }), "{e}");

    registry.stop();
    let e = pull(&b, &format!("{addr}/ai/faults:1")).await.unwrap_err();
    assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
    assert_eq!(e.to_string(), format!("Cannot reach the registry `{addr}`"));
    assert!(e.help().unwrap().contains(&addr));
    let e = registry::resolve(&oci(&format!("{addr}/ai/faults:1")))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
    assert!(b.list().unwrap().is_empty());
}

/// Pushes an ordinary container image by hand: not a model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_is_not_a_model_is_refused() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let b = store(dir.path(), "b");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{}/v2/library/busybox", registry.addr());
    let addr = registry.addr();
    let upload = |bytes: Vec<u8>| {
        let (http, base, addr) = (http.clone(), base.clone(), addr.clone());
        async move {
            let digest = digest(&bytes);
            let response = http
                .post(format!("{base}/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            let location = if location.starts_with("http") {
                location
            } else {
                format!("http://{addr}{location}")
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let response = http
                .put(format!("{location}{sep}digest={digest}"))
                .body(bytes.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            (digest, bytes.len())
        }
    };
    let (config, config_size) = upload(br#"{"architecture":"amd64","os":"linux"}"#.to_vec()).await;
    let (layer, layer_size) = upload(b"not really a tarball".to_vec()).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}],
    });
    let response = http
        .put(format!("{base}/manifests/latest"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let reference = format!("{}/library/busybox:latest", registry.addr());
    let e = pull(&b, &reference).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "`{reference}` is not a model artifact: its config is `application/vnd.oci.image.config.v1+json`"
        )
    );
    assert_eq!(
        e.help().unwrap(),
        "Pull a model artifact such as `ai/smollm2`"
    );
    assert!(b.list().unwrap().is_empty());
}

/// Credentials come from `$DOCKER_CONFIG/config.json`. The environment is the process's, so
/// each case runs this test binary again as a child with its own `DOCKER_CONFIG`.
#[test]
fn credentials_come_from_the_docker_config() {
    let registry = Registry::start_with_auth("alice", "correct-horse");
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path(), "auth");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-fake");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"alice\",\"Secret\":\"correct-horse\"}}'\n",
            registry.addr()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |case: &str, config_json: String, password: &str, expect: &str| {
        let config = dir.path().join(format!("docker-{case}"));
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("config.json"), config_json).unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "auth_child", "--ignored", "--nocapture"])
            .env("DOCKER_CONFIG", &config)
            .env("PATH", &path)
            .env(
                "AISTACK_AUTH_CHILD",
                format!("{}|{expect}|{password}", registry.addr()),
            )
            .env("AISTACK_AUTH_MODEL", &model.path)
            .env(
                "AISTACK_AUTH_STORE",
                dir.path().join(format!("store-{case}")),
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && text.contains("1 passed"),
            "{case}: {text}"
        );
    };
    let auths = |password: &str| {
        let auth = base64_encode(format!("alice:{password}").as_bytes());
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.addr()
        )
    };
    run("auths", auths("correct-horse"), "correct-horse", "ok");
    run(
        "wrong",
        auths("wrong-battery"),
        "wrong-battery",
        "unauthorized",
    );
    run(
        "helper",
        format!(r#"{{"credHelpers":{{"{}":"fake"}}}}"#, registry.addr()),
        "correct-horse",
        "ok",
    );
    // No credentials at all.
    run("none", "{}".to_owned(), "-", "anonymous");
}

/// The child side of [`credentials_come_from_the_docker_config`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by credentials_come_from_the_docker_config"]
async fn auth_child() {
    let spec = std::env::var("AISTACK_AUTH_CHILD").expect("run by the parent test");
    let mut parts = spec.split('|');
    let (addr, expect, password) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let dir = PathBuf::from(std::env::var_os("AISTACK_AUTH_STORE").unwrap());
    let model_path = PathBuf::from(std::env::var_os("AISTACK_AUTH_MODEL").unwrap());
    let bytes = std::fs::read(&model_path).unwrap();
    let model = LocalFile {
        size: bytes.len() as u64,
        digest: digest(&bytes),
        path: model_path,
    };
    let a = Store::open(&dir.join("a")).unwrap();
    let b = Store::open(&dir.join("b")).unwrap();
    let reference = format!("{addr}/private/model:1");
    a.package(std::slice::from_ref(&model), &[], None, None, &reference)
        .unwrap();
    let pushed = registry::push(&a, &reference, &oci(&reference), &mut |_| {}).await;
    match expect {
        "ok" => {
            let pushed = pushed.unwrap();
            let pulled = pull(&b, &reference).await.unwrap();
            assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
            assert_eq!(
                registry::resolve(&oci(&reference)).await.unwrap(),
                pushed.manifest_digest
            );
        }
        "anonymous" => {
            let e = pushed.unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("The registry `{addr}` requires credentials for `private/model`")
            );
        }
        _ => {
            let e = pushed.unwrap_err();
            assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
            let e = pull(&b, &reference).await.unwrap_err();
            let text = format!("{e} {:?} {}", e, e.help().unwrap());
            assert!(matches!(e, RegistryError::Unauthorized { .. }), "{text}");
            assert_eq!(
                e.to_string(),
                format!("The registry `{addr}` refused the credentials for `private/model`")
            );
            assert!(
                e.help().unwrap().contains(&format!("docker login {addr}")),
                "{text}"
            );
            assert!(!text.contains(password), "{text}");
            assert!(!text.contains(&base64_encode(format!("alice:{password}").as_bytes())));
        }
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A registry that asks for bearer tokens, as Docker Hub does: `/token` hands out `good`
/// (anonymously, for the scope asked), manifests need it. Answers `accept` tokens only.
async fn bearer_registry(
    accept: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (log, realm) = (seen.clone(), format!("http://{addr}/token"));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (head, target) = read_head(&mut socket).await;
            let authorised = head
                .lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {accept}")));
            log.lock().unwrap().push(target.clone());
            let digest = format!("sha256:{}", "a".repeat(64));
            let response = if target.starts_with("/token?") {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\nconnection: close\r\n\r\n{\"token\":\"good\"}".to_owned()
            } else if authorised {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ndocker-content-digest: {digest}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
            } else {
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:ai/fake:pull\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
            };
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_come_from_the_realm() {
    let (addr, seen) = bearer_registry("good").await;
    let digest = registry::resolve(&oci(&format!("{addr}/ai/fake:1")))
        .await
        .unwrap();
    assert_eq!(digest, format!("sha256:{}", "a".repeat(64)));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], "/v2/ai/fake/manifests/1");
    assert_eq!(
        seen[1],
        "/token?service=fake&scope=repository%3Aai%2Ffake%3Apull"
    );
    assert_eq!(seen[2], "/v2/ai/fake/manifests/1");

    // A token the registry keeps refusing: an error saying credentials are needed.
    let (addr, _) = bearer_registry("never").await;
    let e = registry::resolve(&oci(&format!("{addr}/ai/fake:1")))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("The registry `{addr}` requires credentials for `ai/fake`")
    );
}

/// The daemon runs pulls on its runtime's worker threads.
#[allow(dead_code)]
fn pulls_and_pushes_are_send(store: &Store, reference: &OciRef) {
    fn send<T: Send>(_: T) {}
    send(registry::pull(
        store,
        reference,
        &PullOptions::default(),
        &mut |_| {},
    ));
    send(registry::push(store, "x", reference, &mut |_| {}));
    send(registry::resolve(reference));
}

/// Reads a request's head byte by byte (the stand-in servers answer one request per
/// connection) and returns it with the request target.
async fn read_head(socket: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split(' ').nth(1).unwrap_or("").to_owned();
    (head, target)
}

/// A registry without Range support serving the model `manifest` of `store` as `ai/m:1`.
async fn rangeless_registry(store: Store, manifest: String) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (_, target) = read_head(&mut socket).await;
            let (content_type, digest) = if target == "/v2/ai/m/manifests/1" {
                (
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest.clone(),
                )
            } else if let Some(digest) = target.strip_prefix("/v2/ai/m/blobs/") {
                ("application/octet-stream", digest.to_owned())
            } else {
                ("", String::new())
            };
            let response = match store
                .blob_path(&digest)
                .ok()
                .and_then(|p| std::fs::read(p).ok())
            {
                Some(body) => {
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    response.extend(body);
                    response
                }
                None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = socket.write_all(&response).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_without_range_support_gets_a_fresh_download() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let model = small_model(dir.path(), "rangeless");
    let imported = a
        .package(std::slice::from_ref(&model), &[], None, None, "local/m:1")
        .unwrap();
    let addr = rangeless_registry(a.clone(), imported.manifest_digest.clone()).await;
    let bytes = std::fs::read(&model.path).unwrap();
    std::fs::write(
        b.partial_path(&model.digest).unwrap(),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let pulled = pull(&b, &format!("{addr}/ai/m:1")).await.unwrap();
    assert_eq!(pulled.manifest_digest, imported.manifest_digest);
    assert!(pulled.transferred_bytes >= model.size);
    b.verify(&model.digest).unwrap();
}
