//! Sandbox test fixtures: the static guest agent and a busybox root filesystem.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::Digest as _;

use crate::TestEnv;

/// The static `aistack-guest` (`AISTACK_GUEST` overrides), built once per process by
/// `scripts/build-guest`, in the profile of the running test or bench.
pub fn guest_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("AISTACK_GUEST").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let profile: &[&str] = if crate::is_release() {
            &["--release"]
        } else {
            &[]
        };
        crate::script_path("build-guest", profile)
    })
}

/// Debian's static busybox (package `busybox-static`, which scripts/test installs).
pub const BUSYBOX: &str = "/bin/busybox";

/// A minimal root filesystem at `dir`: busybox with a link per applet, `/etc/passwd` and
/// `/etc/group` with root only (the agent adds its own user), `/root`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(BUSYBOX, bin.join("busybox")).expect("busybox-static is installed");
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    symlink("bin", dir.join("sbin")).unwrap();
    fs::create_dir_all(dir.join("usr")).unwrap();
    symlink("../bin", dir.join("usr/bin")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
    fs::create_dir_all(dir.join("root")).unwrap();
    dir.to_path_buf()
}

/// Pushes a container image to `dest` (`HOST:PORT/REPO:TAG`, plain HTTP) with `skopeo`:
/// one gzip layer per directory of `layers`, bottom first, each made by GNU tar as image
/// builders make them (numeric owners; whiteouts are files named `.wh.NAME`).
pub fn push_image(layers: &[&Path], dest: &str) {
    let layout = tempfile::tempdir().unwrap();
    let blobs = layout.path().join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for dir in layers {
        let tar = crate::succeed(
            Command::new("tar")
                .args(["--numeric-owner", "-C"])
                .arg(dir)
                .args(["-cf", "-", "."]),
            "tar",
        );
        diff_ids.push(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(&tar.stdout))
        ));
        let mut gzip = Command::new("gzip")
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip runs");
        let mut stdin = gzip.stdin.take().unwrap();
        let input = tar.stdout.clone();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
        let compressed = gzip.wait_with_output().unwrap().stdout;
        writer.join().unwrap().unwrap();
        let (digest, size) = put(&compressed);
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": size
        }));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size
        },
        "layers": descriptors
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    fs::write(
        layout.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "image"}
        }]
    });
    fs::write(
        layout.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let auth = tempfile::NamedTempFile::new().unwrap();
    fs::write(auth.path(), r#"{"auths":{}}"#).unwrap();
    crate::succeed(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:image", layout.path().display()))
            .arg(format!("docker://{dest}"))
            .env("REGISTRY_AUTH_FILE", auth.path()),
        "skopeo (scripts/test installs it)",
    );
}

/// The Debian bookworm minbase tree that `scripts/fetch-debian` makes once with
/// debootstrap (kept in `AISTACK_CACHE`).
pub fn debian_rootfs() -> PathBuf {
    crate::script_path("fetch-debian", &[])
}

/// A script for inside a sandbox that prints every process's environment and command
/// line, then `FOUND` when a file under `dirs` holds `key`. Its own command line holds
/// neither the key nor the marker whole: the shell joins both from pieces.
pub fn key_search(key: &str, dirs: &str) -> String {
    let (first, second) = key.split_at(key.len() / 2);
    format!(
        "env; cat /proc/*/environ /proc/*/cmdline; k={first}; k=${{k}}{second}; \
         grep -rlsF \"$k\" {dirs} && echo FOU''ND; true"
    )
}

/// Asserts that what [`key_search`] printed, run as `who`, shows no trace of `key`.
pub fn assert_no_key(seen: &str, key: &str, who: &str) {
    assert!(
        !seen.contains(key) && !seen.contains("FOUND"),
        "the key is visible to {who} inside: {seen}"
    );
}

/// Takes a test's sandboxes down even when an assertion fails: a sandbox outlives the
/// daemon and the test.
pub struct Down<'a>(pub &'a TestEnv);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["down"]);
    }
}

/// Gives `env` what the microVM backend needs: the guest kernel installed in its home by
/// `scripts/build-guest-kernel` (built once, then copied from `AISTACK_CACHE`), and the
/// vhost-user daemons `scripts/build-vhost-user` installs.
pub fn microvm_files(env: &mut TestEnv) {
    let kernel = crate::succeed(
        Command::new(crate::repo_root().join("scripts/build-guest-kernel"))
            .env("AISTACK_HOME", env.home()),
        "scripts/build-guest-kernel",
    );
    assert!(
        String::from_utf8_lossy(&kernel.stdout)
            .trim()
            .ends_with("kernel")
    );
    let bin = crate::script_path("build-vhost-user", &[]);
    env.set_var("AISTACK_VIRTIOFSD", bin.join("virtiofsd"));
    env.set_var("AISTACK_VHOST_VSOCK", bin.join("vhost-device-vsock"));
}

/// The guest kernel's release, as `scripts/build-guest-kernel` recorded it in `home`.
pub fn guest_kernel_release(home: &Path) -> String {
    let info = fs::read_to_string(home.join("kernel/build-info")).unwrap();
    let line = info.lines().find(|l| l.starts_with("release ")).unwrap();
    line["release ".len()..].to_owned()
}

/// Which backend a test of the sandbox contract runs its sandbox on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// Linux namespaces.
    Namespace,
    /// A QEMU microVM with the project's kernel (under TCG where KVM cannot run it).
    Microvm,
}

impl On {
    /// `spec` with its sandboxes on this backend: an `isolation: microvm` line after each
    /// `agent:` line for [`On::Microvm`].
    pub fn spec(self, spec: &str) -> String {
        match self {
            On::Namespace => spec.to_owned(),
            On::Microvm => {
                let mut out = String::new();
                for line in spec.split_inclusive('\n') {
                    out.push_str(line);
                    if line.trim_start().starts_with("agent: ") {
                        let indent = &line[..line.len() - line.trim_start().len()];
                        out.push_str(&format!("{indent}isolation: microvm\n"));
                    }
                }
                out
            }
        }
    }

    /// Gives `env` what this backend needs beyond the guest agent.
    pub fn prepare(self, env: &mut TestEnv) {
        if self == On::Microvm {
            microvm_files(env);
        }
    }
}

/// Runs each named `fn NAME(on: On)` of the calling file as two tests, `NAME::namespace`
/// and `NAME::microvm`: the sandbox contract holds on both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn namespace() {
                super::$name($crate::sandbox::On::Namespace)
            }
            #[test]
            fn microvm() {
                super::$name($crate::sandbox::On::Microvm)
            }
        }
    )*};
}

/// The processes in a cgroup of `env`'s sandboxes (the agent, or the VMM and its daemons):
/// each pid with its `comm` and command line.
pub fn sandbox_processes(env: &TestEnv) -> Vec<(i32, String, String)> {
    let home = sha2::Sha256::digest(env.home().as_os_str().as_encoded_bytes());
    let cgroup = format!("-{}", &hex::encode(home)[..12]);
    let mut processes = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cgroups = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cgroups.lines().any(|l| l.ends_with(&cgroup)) {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
            processes.push((pid, comm.trim().to_owned(), cmdline));
        }
    }
    processes
}
