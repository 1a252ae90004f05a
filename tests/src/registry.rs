//! A real OCI registry for tests: Debian's CNCF distribution (`docker-registry serve`) on a
//! free loopback port, with a temporary storage root and its own config, killed on drop.
//!
//! Debian's default `/etc/docker/registry/config.yml` listens on a fixed port and stores under
//! `/var/lib`, so each [`Registry`] writes its own config next to its storage.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry binary Debian's `docker-registry` package installs.
const BINARY: &str = "docker-registry";

/// How long a registry may take to answer `GET /v2/` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running CNCF distribution registry on `127.0.0.1`; stopped on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    storage: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Registry {
    /// A registry that needs no credentials.
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// A registry that requires `user` and `password` (HTTP basic auth from an htpasswd file).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user, password)))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's storage root (distribution's `rootdirectory`).
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// Where distribution keeps the content of blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log (stderr), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stops the registry (for "registry down" tests); the storage stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn launch(auth: Option<(&str, &str)>) -> Registry {
        let mut dir = tempfile::Builder::new()
            .prefix("aistack-registry-")
            .tempdir()
            .expect("temp dir for the registry");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("registry storage dir");
        let auth_section = match auth {
            None => String::new(),
            Some((user, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                let output = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot run `htpasswd` ({e}): install it: apt-get install apache2-utils (scripts/test does)"
                        )
                    });
                assert!(output.status.success(), "htpasswd failed: {output:?}");
                fs::write(&htpasswd, &output.stdout).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: aistack-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };

        // Another process may take the port between our probe and the registry's bind; try
        // a few ports.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                     maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: 127.0.0.1:{port}\n\
                     {auth_section}",
                    storage.display()
                ),
            )
            .expect("write the registry config");
            let log = fs::File::create(dir.path().join("registry.log")).expect("registry log");
            let child = Command::new(BINARY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn();
            let child = match child {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    panic!(
                        "`{BINARY}` is not installed: install it: apt-get install docker-registry (scripts/test does)"
                    )
                }
                Err(e) => panic!("cannot start `{BINARY}`: {e}"),
            };
            let mut registry = Registry {
                dir,
                storage: storage.clone(),
                port,
                child: Some(child),
            };
            if registry.wait_ready() {
                return registry;
            }
            last_log = registry.log();
            registry.stop();
            dir = registry.into_dir();
        }
        panic!("the registry did not start; its log:\n{last_log}");
    }

    fn into_dir(mut self) -> tempfile::TempDir {
        self.stop();
        let dir = tempfile::Builder::new()
            .prefix("aistack-registry-")
            .tempdir()
            .expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Waits until `GET /v2/` answers with any HTTP status, or the process exits.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && !matches!(child.try_wait(), Ok(None))
            {
                return false;
            }
            if answers(addr) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

/// Whether an HTTP server answers `GET /v2/` at `addr`.
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(addr: &str) -> Option<String> {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream
            .write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.lines().next().map(str::to_owned)
    }

    #[test]
    fn starts_answers_and_stops() {
        let mut registry = Registry::start();
        assert_eq!(
            status(&registry.addr()).as_deref(),
            Some("HTTP/1.0 200 OK"),
            "{}",
            registry.log()
        );
        registry.stop();
        assert_eq!(status(&registry.addr()), None);
    }

    #[test]
    fn auth_variant_asks_for_credentials() {
        let registry = Registry::start_with_auth("alice", "s3cret");
        let line = status(&registry.addr()).expect("the registry answers");
        assert!(line.contains("401"), "{line}");
        assert!(
            registry
                .blob_path("sha256:abcd")
                .ends_with("docker/registry/v2/blobs/sha256/ab/abcd/data")
        );
    }
}
