//! Booting a microVM sandbox: what the guest agent does as the guest kernel's init.
//!
//! The host builds an initramfs that holds the agent as `/init` and a [`Boot`] as
//! [`BOOT_FILE`]. The agent mounts the root filesystem that virtiofsd serves under the tag
//! [`ROOT_TAG`] (the template's layers and the sandbox's own, with the workspace at its
//! path, assembled on the host by `share`), moves into it, mounts the kernel's
//! filesystems, and then serves the guest protocol on vsock port [`AGENT_PORT`]. Nothing
//! of the host is reachable inside but those files and the two vsock ports.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::setup::{Network, SHM_BYTES, context};
use crate::sys;

/// Where the initramfs holds the [`Boot`].
pub const BOOT_FILE: &str = "/boot.json";
/// The virtio-fs tag of the root filesystem.
pub const ROOT_TAG: &str = "root";
/// The vsock port on which the agent serves the guest protocol (host-initiated).
pub const AGENT_PORT: u32 = 1024;
/// The host's vsock port of the policy proxy (guest-initiated): the VMM's vsock daemon
/// takes it to `proxy.sock` in the control directory.
pub const PROXY_PORT: u32 = 3128;
/// The VMM's hybrid vsock socket in the control directory: host-initiated connections
/// name a guest port on it; guest-initiated ones to port P reach `vsock.sock_P`.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// What the agent writes on the console once it serves.
pub const READY_LINE: &str = "aistack-guest: ready";
/// The kernel command line's argument that tells the agent it is a microVM's init.
pub const INIT_ARG: &str = "vm";

/// What the agent needs to finish the guest; the files come over virtio-fs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Boot {
    /// The sandbox's hostname.
    pub hostname: String,
    /// The size of `/tmp` in bytes.
    pub tmp_bytes: u64,
    /// The workspace's path, when the sandbox has one (virtiofsd serves it there).
    pub workspace: Option<PathBuf>,
    /// The policy proxy's CA, when commands reach the network through it.
    pub network: Option<Network>,
    /// What every command of the sandbox gets.
    pub env: Vec<(String, String)>,
}

/// Mounts the root filesystem and moves into it, then mounts `/proc`, `/sys`, the cgroup
/// tree, `/dev`, `/tmp`, and names the host. Only for PID 1 of the guest.
pub fn enter(boot: &Boot) -> io::Result<()> {
    let staged = Path::new("/root");
    fs::create_dir_all(staged)?;
    mount(
        "none",
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(ROOT_TAG, staged, Some("virtiofs"), 0, None)?;
    std::env::set_current_dir(staged)?;
    sys::move_root_to_cwd().map_err(|e| context(e, "moving into the root filesystem"))?;

    // The workspace may lie under `/tmp`, which a tmpfs covers next: it is held detached
    // meanwhile and attached again on top.
    let workspace = match &boot.workspace {
        Some(path) => {
            Some(sys::detached_bind(path).map_err(|e| context(e, "holding the workspace"))?)
        }
        None => None,
    };
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let dir = |path: &str| -> io::Result<PathBuf> {
        fs::create_dir_all(path)?;
        Ok(PathBuf::from(path))
    };
    mount("proc", &dir("/proc")?, Some("proc"), hardened, None)?;
    mount("sysfs", &dir("/sys")?, Some("sysfs"), hardened, None)?;
    let cgroup = Path::new("/sys/fs/cgroup");
    mount("cgroup2", cgroup, Some("cgroup2"), hardened, None)?;
    mount(
        "devtmpfs",
        &dir("/dev")?,
        Some("devtmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=755"),
    )?;
    mount(
        "devpts",
        &dir("/dev/pts")?,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("ptmxmode=0666,mode=620"),
    )?;
    mount(
        "tmpfs",
        &dir("/dev/shm")?,
        Some("tmpfs"),
        hardened,
        Some(&format!("mode=1777,size={SHM_BYTES}")),
    )?;
    mount(
        "tmpfs",
        &dir("/tmp")?,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&format!("mode=1777,size={}", boot.tmp_bytes)),
    )?;
    // Runtime state, as distributions keep it: a tmpfs (virtio-fs cannot hold the unix
    // sockets a daemon inside binds there, Docker's among them).
    mount(
        "tmpfs",
        &dir("/run")?,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=755,size=64m"),
    )?;
    fs::create_dir_all("/run/lock")?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    if let (Some(path), Some(tree)) = (&boot.workspace, &workspace) {
        fs::create_dir_all(path)?;
        sys::attach(tree, path).map_err(|e| context(e, "attaching the workspace"))?;
    }
    sys::set_hostname(&boot.hostname).map_err(|e| context(e, "setting the hostname"))?;
    sys::loopback_up().map_err(|e| context(e, "bringing up `lo`"))?;
    Ok(())
}

fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    sys::mount(source, target, fstype, flags, data)
        .map_err(|e| context(e, &format!("mounting {}", target.display())))
}
