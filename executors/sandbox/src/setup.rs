//! Entering a namespace sandbox: what the guest agent does, in `aistack-guest sandbox`
//! mode, before it serves as PID 1.
//!
//! The host spawns the agent with a [`Launch`] on standard input and answers one
//! handshake there: the agent joins the cgroup, makes a user namespace and says `userns`;
//! the host writes its uid and gid maps and says `mapped`; the agent becomes root of the
//! namespace, makes the mount, PID, network, IPC, UTS and cgroup namespaces, and forks.
//! The parent prints `pid N` (the child's host pid), waits for it and exits with its
//! status, so the host's child process lives exactly as long as the sandbox. The child,
//! PID 1 inside, mounts the root filesystem and pivots into it, then serves.

use std::fs;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::{self, Fork};

/// Where the host's control directory (the agent's socket) appears inside.
pub const CONTROL_DIR: &str = "/run/aistack";
/// The agent's socket, in the control directory.
pub const GUEST_SOCKET: &str = "guest.sock";

/// The `PATH` of a sandbox's commands, unless a command sets its own.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The port inside on which the agent takes proxy connections to the host's policy proxy.
pub const PROXY_PORT: u16 = 3128;
/// The host's end of those connections, in the control directory.
pub const PROXY_SOCKET: &str = "proxy.sock";
/// The project CA, alone, where `update-ca-certificates` finds it.
pub const CA_FILE: &str = "/usr/local/share/ca-certificates/aistack.crt";
/// The template's roots plus the project CA (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
/// `NODE_EXTRA_CA_CERTS`).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/aistack-bundle.pem";
/// Where Debian-like templates keep their roots; the project CA is appended there too.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The network of a sandbox: the policy proxy, and the CA it intercepts with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// The project CA, PEM.
    pub ca_pem: String,
}

impl Network {
    /// What every command of the sandbox gets: the proxy in both spellings (curl and
    /// busybox read the lower-case ones), and the CA for the clients that read a variable.
    pub fn env() -> Vec<(String, String)> {
        let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
        let mut env = Vec::new();
        for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.push((key.to_owned(), proxy.clone()));
        }
        for key in ["NO_PROXY", "no_proxy"] {
            env.push((key.to_owned(), "localhost,127.0.0.1,::1".to_owned()));
        }
        env.push(("SSL_CERT_FILE".to_owned(), CA_BUNDLE.to_owned()));
        env.push(("REQUESTS_CA_BUNDLE".to_owned(), CA_BUNDLE.to_owned()));
        // The whole bundle, not the project CA alone: Node's own roots lack the CAs a
        // template adds to its store (a company's, a mirror's).
        env.push(("NODE_EXTRA_CA_CERTS".to_owned(), CA_BUNDLE.to_owned()));
        env
    }
}

/// Everything the agent needs to build the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Launch {
    /// The template's root filesystem layers, top first (overlayfs lower directories).
    pub lower: Vec<PathBuf>,
    /// The sandbox's own writable layer (overlayfs upper directory).
    pub upper: PathBuf,
    /// The overlayfs work directory, on the same filesystem as `upper`.
    pub work: PathBuf,
    /// Where the root is assembled before the pivot (an empty directory).
    pub root: PathBuf,
    /// A host directory shared read-write at the same absolute path.
    pub workspace: Option<PathBuf>,
    /// The host directory that holds the agent's socket, mounted at [`CONTROL_DIR`].
    pub control: PathBuf,
    /// The sandbox's hostname, set in its UTS namespace.
    pub hostname: String,
    /// `cgroup.procs` files to join before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// No network at all (only `lo`) when absent.
    #[serde(default)]
    pub network: Option<Network>,
    /// What every command of the sandbox gets (the template's, the sandbox's, its models'
    /// and its agent's variables); a command's own and the network's come first.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// Handshake line, agent to host: the user namespace exists; write its id maps.
pub const USERNS: &str = "userns";
/// Handshake line, host to agent: the uid and gid maps are written.
pub const MAPPED: &str = "mapped";
/// Handshake line, agent to host, after `pid N`: PID 1 serves on the socket.
pub const READY: &str = "ready";

/// Builds the sandbox. Returns in PID 1 of the new namespaces, inside the new root; the
/// process that called it never returns (it exits with PID 1's status).
pub fn enter(launch: &Launch, input: &mut impl BufRead, output: &mut impl Write) -> io::Result<()> {
    for procs in &launch.cgroup_procs {
        fs::write(procs, sys::pid().to_string())
            .map_err(|e| context(e, &format!("joining the cgroup {}", procs.display())))?;
    }
    sys::unshare(libc::CLONE_NEWUSER).map_err(|e| context(e, "creating the user namespace"))?;
    writeln!(output, "{USERNS}")?;
    output.flush()?;
    let mut line = String::new();
    input.read_line(&mut line)?;
    if line.trim() != MAPPED {
        return Err(io::Error::other("the host did not map the user namespace"));
    }
    sys::become_root().map_err(|e| context(e, "becoming root of the user namespace"))?;
    sys::unshare(
        libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP,
    )
    .map_err(|e| context(e, "creating the namespaces"))?;
    match sys::fork()? {
        Fork::Parent(child) => {
            writeln!(output, "pid {child}")?;
            output.flush()?;
            let status = sys::wait_pid(child)?;
            std::process::exit(status.shell_code());
        }
        Fork::Child => {
            sys::die_with_parent()?;
            assemble_root(launch)?;
            sys::set_hostname(&launch.hostname).map_err(|e| context(e, "setting the hostname"))?;
            sys::loopback_up().map_err(|e| context(e, "bringing up `lo`"))?;
            Ok(())
        }
    }
}

fn context(error: io::Error, doing: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{doing}: {error}"))
}

/// Mounts the overlay root with `/proc`, a minimal `/dev`, `/tmp`, the workspace and the
/// control directory, and pivots into it. Nothing else of the host stays reachable.
fn assemble_root(launch: &Launch) -> io::Result<()> {
    let root = &launch.root;
    let mount = |source: &str, target: &Path, fstype: Option<&str>, flags, data: Option<&str>| {
        sys::mount(source, target, fstype, flags, data)
            .map_err(|e| context(e, &format!("mounting {}", target.display())))
    };
    mount(
        "none",
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let lower = launch
        .lower
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={},userxattr",
        launch.upper.display(),
        launch.work.display()
    );
    mount("overlay", root, Some("overlay"), 0, Some(&options))?;

    let inside = |path: &str| root.join(path.trim_start_matches('/'));
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    fs::create_dir_all(inside("/proc"))?;
    mount("proc", &inside("/proc"), Some("proc"), hardened, None)?;

    let dev = inside("/dev");
    fs::create_dir_all(&dev)?;
    mount(
        "tmpfs",
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        fs::write(&target, b"")?;
        mount(&format!("/dev/{node}"), &target, None, libc::MS_BIND, None)?;
    }
    fs::create_dir_all(dev.join("pts"))?;
    mount(
        "devpts",
        &dev.join("pts"),
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    )?;
    symlink("pts/ptmx", dev.join("ptmx"))?;
    fs::create_dir_all(dev.join("shm"))?;
    mount(
        "tmpfs",
        &dev.join("shm"),
        Some("tmpfs"),
        hardened,
        Some("mode=1777"),
    )?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link))?;
    }

    fs::create_dir_all(inside("/tmp"))?;
    mount(
        "tmpfs",
        &inside("/tmp"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )?;

    if let Some(workspace) = &launch.workspace {
        let target = inside(&workspace.display().to_string());
        fs::create_dir_all(&target)?;
        let source = workspace.display().to_string();
        mount(&source, &target, None, libc::MS_BIND | libc::MS_REC, None)?;
    }
    let control = inside(CONTROL_DIR);
    fs::create_dir_all(&control)?;
    mount(
        &launch.control.display().to_string(),
        &control,
        None,
        libc::MS_BIND,
        None,
    )?;

    std::env::set_current_dir(root)?;
    sys::pivot_to_cwd().map_err(|e| context(e, "pivoting into the root filesystem"))?;
    std::env::set_current_dir("/")?;
    Ok(())
}
