//! Sandbox test fixtures: the static guest agent and a busybox root filesystem.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::repo_root;

/// The static `aistack-guest` (`AISTACK_GUEST` overrides), built once per process by
/// `scripts/build-guest`, in the profile of the running test or bench.
pub fn guest_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("AISTACK_GUEST").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let mut build = Command::new(repo_root().join("scripts/build-guest"));
        if crate::is_release() {
            build.arg("--release");
        }
        let out = build.output().expect("scripts/build-guest runs");
        assert!(
            out.status.success(),
            "building the guest agent failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
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
