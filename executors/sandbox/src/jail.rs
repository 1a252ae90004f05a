//! The VMM's jail, as Firecracker's jailer makes one. `aistack-guest jail VMM ARGS…` runs
//! on the host as root with a [`Jail`] on standard input: it joins the sandbox's cgroup,
//! makes mount, network, IPC and UTS namespaces of its own, builds a root of only what the
//! VMM needs (the host's `/usr` read-only for QEMU, its libraries and firmware; a `/dev` of
//! `null`, `zero`, `urandom` and, for KVM, `kvm`; the guest kernel read-only; the sandbox's
//! control directory), pivots into it, becomes the sandbox's root id (the range's base: no
//! host privilege, no capabilities), sets `no_new_privs` and executes the VMM. A VMM
//! broken into from the guest finds no network, no host files and no privilege.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::setup::context;
use crate::sys;

/// Where the guest kernel is inside the jail.
pub const KERNEL: &str = "/vmlinux";
/// Where the control directory is inside the jail.
pub const CONTROL: &str = "/run/vm";

/// What the jail holds and whom the VMM runs as.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Jail {
    /// `cgroup.procs` files to join first.
    pub cgroup_procs: Vec<PathBuf>,
    /// The VMM's uid and gid: the sandbox range's base.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// The guest kernel on the host.
    pub kernel: PathBuf,
    /// The control directory on the host.
    pub control: PathBuf,
    /// Whether the VMM uses `/dev/kvm` (it keeps the device's group).
    pub kvm: bool,
}

/// Where the jail's root is built, in this process's own mount namespace.
const STAGE: &str = "/tmp";

/// Builds the jail and enters it. Returns as the jail's user, inside, ready to execute
/// the VMM.
pub fn enter(jail: &Jail) -> io::Result<()> {
    for procs in &jail.cgroup_procs {
        fs::write(procs, sys::pid().to_string())
            .map_err(|e| context(e, &format!("joining the cgroup {}", procs.display())))?;
    }
    sys::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS)
        .map_err(|e| context(e, "creating the VMM's namespaces"))?;
    let private = libc::MS_REC | libc::MS_PRIVATE;
    sys::mount("none", Path::new("/"), None, private, None)?;
    let mut devices = vec!["null", "zero", "urandom"];
    if jail.kvm {
        devices.push("kvm");
    }
    // Everything is held before the stage covers `/tmp`, where it may lie.
    let hold = |path: &Path| {
        sys::detached_bind(path).map_err(|e| context(e, &format!("holding {}", path.display())))
    };
    let usr = hold(Path::new("/usr"))?;
    let kernel = hold(&jail.kernel)?;
    let control = hold(&jail.control)?;
    let mut nodes = Vec::new();
    for device in &devices {
        nodes.push((device, hold(&Path::new("/dev").join(device))?));
    }
    let kvm_gid = match jail.kvm {
        true => fs::metadata("/dev/kvm").ok().map(|m| m.gid()),
        false => None,
    };

    let root = Path::new(STAGE).join("root");
    let mount_tmpfs = |target: &Path| {
        sys::mount(
            "tmpfs",
            target,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=755,size=64k"),
        )
    };
    mount_tmpfs(Path::new(STAGE)).map_err(|e| context(e, "staging the jail"))?;
    fs::create_dir(&root)?;
    mount_tmpfs(&root).map_err(|e| context(e, "making the jail's root"))?;
    let inside = |path: &str| root.join(path.trim_start_matches('/'));

    fs::create_dir(inside("/usr"))?;
    sys::attach(&usr, &inside("/usr"))?;
    remount_read_only(&inside("/usr"))?;
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        symlink(target, inside(link))?;
    }
    fs::create_dir(inside("/dev"))?;
    for (device, node) in &nodes {
        let target = inside(&format!("/dev/{device}"));
        fs::write(&target, b"")?;
        sys::attach(node, &target)?;
    }
    fs::write(inside(KERNEL), b"")?;
    sys::attach(&kernel, &inside(KERNEL))?;
    remount_read_only(&inside(KERNEL))?;
    fs::create_dir_all(inside(CONTROL))?;
    sys::attach(&control, &inside(CONTROL))?;

    std::env::set_current_dir(&root)?;
    sys::pivot_to_cwd().map_err(|e| context(e, "pivoting into the jail"))?;
    std::env::set_current_dir("/")?;
    let groups: Vec<u32> = kvm_gid.into_iter().collect();
    sys::become_user(jail.uid, jail.gid, &groups)
        .map_err(|e| context(e, "becoming the sandbox's root id"))
}

/// Makes the bind mount at `path` read-only (and without set-uid or devices).
fn remount_read_only(path: &Path) -> io::Result<()> {
    let flags =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount("none", path, None, flags, None)
        .map_err(|e| context(e, &format!("making {} read-only", path.display())))
}
