//! Entering a namespace sandbox: what the guest agent does, in `aistack-guest sandbox`
//! mode, before it serves as PID 1.
//!
//! The host spawns the agent with a [`Launch`] on standard input and answers one
//! handshake there. The agent joins the cgroup and, still root of the host's namespaces,
//! opens what the sandbox needs of the host (`Trees`: the overlay root and the idmapped
//! workspace as detached mounts, the control directory as a descriptor), so nothing later
//! needs a host path. Then it makes a user namespace and says `userns`; the host writes its
//! uid and gid maps and says `mapped`; the agent becomes root of the namespace, makes the
//! mount, PID, network, IPC, UTS and cgroup namespaces, and forks. The parent prints
//! `pid N` (the child's host pid), waits for it and exits with its status, so the host's
//! child process lives exactly as long as the sandbox. The child, PID 1 inside, attaches
//! the root filesystem, mounts the rest and pivots into it, then serves.

use std::fs;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::{self, Fork};

/// The agent's socket, in the host's control directory.
pub const GUEST_SOCKET: &str = "guest.sock";

/// The `PATH` of a sandbox's commands, unless a command sets its own.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The port inside on which the agent takes proxy connections to the host's policy proxy.
pub const PROXY_PORT: u16 = 3128;
/// The host's end of those connections, in the host's control directory.
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
    /// The sandbox's directory, holding its own writable layer (`upper/`, the overlayfs
    /// upper directory) and overlayfs's `work/`.
    pub dir: PathBuf,
    /// A host directory shared read-write at the same absolute path.
    pub workspace: Option<Workspace>,
    /// The host directory that holds the agent's socket and the proxy's; the agent keeps
    /// a descriptor of it, so nothing of the host is mounted for it.
    pub control: PathBuf,
    /// The sandbox's hostname, set in its UTS namespace.
    pub hostname: String,
    /// `cgroup.procs` files to join before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// The size of `/tmp` in bytes (a tmpfs; `/dev/shm` is [`SHM_BYTES`]).
    pub tmp_bytes: u64,
    /// No network at all (only `lo`) when absent.
    #[serde(default)]
    pub network: Option<Network>,
    /// What every command of the sandbox gets (the template's, the sandbox's, its models'
    /// and its agent's variables); a command's own and the network's come first.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// The workspace: a host directory at the same absolute path inside, seen through an
/// idmapped mount, so that what its owner owns is the agent's inside and what the agent
/// writes is its owner's on the host, while every sandbox process keeps a host id of the
/// sandbox's own range.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Workspace {
    /// The directory, absolute.
    pub path: PathBuf,
    /// Its owner's host uid and gid.
    pub owner: (u32, u32),
    /// The host id of the sandbox's `agent` user (its range's 1000), which the owner's
    /// files map to.
    pub agent: u32,
    /// Files inside it that commands may read but not change (the spec files).
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    /// Files inside it that commands see empty and cannot change (`.env`).
    #[serde(default)]
    pub hidden: Vec<PathBuf>,
}

/// The size of `/dev/shm`, as Docker's default.
pub const SHM_BYTES: u64 = 64 << 20;

/// Handshake line, agent to host: the user namespace exists; write its id maps.
pub const USERNS: &str = "userns";
/// Handshake line, host to agent: the uid and gid maps are written.
pub const MAPPED: &str = "mapped";
/// Handshake line, agent to host, after `pid N`: PID 1 serves on the socket.
pub const READY: &str = "ready";

/// Builds the sandbox. Returns in PID 1 of the new namespaces, inside the new root; the
/// process that called it never returns (it exits with PID 1's status).
pub fn enter(
    launch: &Launch,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> io::Result<Entered> {
    for procs in &launch.cgroup_procs {
        fs::write(procs, sys::pid().to_string())
            .map_err(|e| context(e, &format!("joining the cgroup {}", procs.display())))?;
    }
    // While this process is root of the host's namespaces, it opens what the sandbox
    // needs of the host: afterwards it could not traverse an `AISTACK_HOME` of mode 0700.
    let trees = Trees::open(launch)?;
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
            assemble_root(launch, &trees)?;
            sys::set_hostname(&launch.hostname).map_err(|e| context(e, "setting the hostname"))?;
            sys::loopback_up().map_err(|e| context(e, "bringing up `lo`"))?;
            Ok(Entered {
                control: trees.control,
            })
        }
    }
}

/// Assembles, in a mount namespace of this process's own, the tree a microVM's virtiofsd
/// serves: the overlay root with the workspace idmapped at its path, the spec files
/// read-only and `.env` hidden, as [`enter`] assembles a namespace sandbox's root. Joins
/// the launch's cgroup first, and leaves this process (and what it executes) under a
/// filter that refuses set-uid and set-gid bits. Returns the tree's path, which only this process (and what it
/// executes) sees; the mounts end with it.
pub fn share(launch: &Launch) -> io::Result<PathBuf> {
    for procs in &launch.cgroup_procs {
        fs::write(procs, sys::pid().to_string())
            .map_err(|e| context(e, &format!("joining the cgroup {}", procs.display())))?;
    }
    let trees = Trees::open(launch)?;
    let root = Path::new(STAGE).join(ROOT);
    sys::attach(&trees.root, &root).map_err(|e| context(e, "attaching the root filesystem"))?;
    if let (Some(workspace), Some(tree)) = (&launch.workspace, &trees.workspace) {
        let target = root.join(workspace.path.strip_prefix("/").unwrap_or(&workspace.path));
        fs::create_dir_all(&target)?;
        sys::attach(tree, &target).map_err(|e| context(e, "attaching the workspace"))?;
        protect_files(&root, workspace, &Path::new(STAGE).join(EMPTY))?;
    }
    // virtiofsd applies the guest's modes as host root, and guest root can undo any rule
    // inside: set-id bits are refused here, on the host, for the root and the workspace.
    seccompiler::apply_filter(&crate::seccomp::set_id_filter())
        .map_err(|e| io::Error::other(format!("refusing set-id bits: {e}")))?;
    Ok(root)
}

/// What PID 1 keeps of the host once inside: the control directory.
#[derive(Debug)]
pub struct Entered {
    /// The host's control directory (`O_PATH`, close-on-exec): the agent's socket is bound
    /// and the proxy's reached through `/proc/self/fd/N/`.
    pub control: OwnedFd,
}

impl Entered {
    /// The path of `name` in the control directory, as this process reaches it.
    pub fn control_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.control.as_raw_fd())).join(name)
    }
}

/// Where the setup process stages what it opens of the host: a tmpfs over `/tmp` in its
/// own mount namespace, which the host never sees. The overlay's options name layers by
/// these paths, so `mountinfo` inside shows them and not the host's.
const STAGE: &str = "/tmp";

/// The detached mounts and the directory the sandbox is built from, opened as root of the
/// host's namespaces.
struct Trees {
    /// The root filesystem: the overlay of the template's layers and the sandbox's own.
    root: OwnedFd,
    /// The workspace, idmapped.
    workspace: Option<OwnedFd>,
    /// The control directory.
    control: OwnedFd,
}

impl Trees {
    fn open(launch: &Launch) -> io::Result<Trees> {
        sys::unshare(libc::CLONE_NEWNS).map_err(|e| context(e, "creating the setup's mounts"))?;
        let private = libc::MS_REC | libc::MS_PRIVATE;
        sys::mount("none", Path::new("/"), None, private, None)?;
        // Everything is opened before the stage covers `/tmp`, where it may lie.
        let mut lower = Vec::with_capacity(launch.lower.len());
        for layer in &launch.lower {
            lower.push(open_dir(layer)?);
        }
        let own = open_dir(&launch.dir)?;
        let control = open_dir(&launch.control)?;
        let workspace = match &launch.workspace {
            Some(workspace) => Some(idmapped(workspace, &open_dir(&workspace.path)?)?),
            None => None,
        };
        let stage = Path::new(STAGE);
        sys::mount(
            "tmpfs",
            stage,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("mode=755,size=64k"),
        )
        .map_err(|e| context(e, "staging the layers"))?;
        let bind = |dir: &OwnedFd, name: &str| -> io::Result<PathBuf> {
            let target = stage.join(name);
            fs::create_dir(&target)?;
            let source = format!("/proc/self/fd/{}", dir.as_raw_fd());
            sys::mount(&source, &target, None, libc::MS_BIND, None)?;
            Ok(target)
        };
        let mut staged = Vec::with_capacity(lower.len());
        for (i, (dir, layer)) in lower.iter().zip(&launch.lower).enumerate() {
            let path = bind(dir, &format!("l{i}"))
                .map_err(|e| context(e, &format!("opening {}", layer.display())))?;
            staged.push(path);
        }
        let own = bind(&own, "s").map_err(|e| context(e, "opening the sandbox's own layer"))?;
        fs::create_dir(stage.join(ROOT))?;
        // What hidden files and masked kernel files show: nothing, read-only. A regular
        // file, not `/dev/null`: a device opens on no mount made `nodev`.
        let empty = stage.join(EMPTY);
        fs::write(&empty, b"")?;
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o444))?;
        let staged: Vec<&Path> = staged.iter().map(PathBuf::as_path).collect();
        let root = sys::overlay(&staged, &own.join("upper"), &own.join("work"))
            .map_err(|e| context(e, "mounting the root filesystem"))?;
        Ok(Trees {
            root,
            workspace,
            control,
        })
    }
}

/// `path`, a directory, opened for use as a path only (close-on-exec).
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| context(e, &format!("opening {}", path.display())))
}

/// The attach point of the root filesystem, in [`STAGE`].
const ROOT: &str = "root";
/// An empty file, in [`STAGE`], that [`mask`] puts over files.
const EMPTY: &str = "empty";

/// The workspace (`dir`) as the sandbox mounts it: its owner's ids seen as the agent's.
fn idmapped(workspace: &Workspace, dir: &OwnedFd) -> io::Result<OwnedFd> {
    let (uid, gid) = workspace.owner;
    let agent = workspace.agent;
    let userns = sys::user_namespace(&format!("{uid} {agent} 1\n"), &format!("{gid} {agent} 1\n"))
        .map_err(|e| context(e, "making the workspace's id mapping"))?;
    sys::idmapped_bind(dir, &userns).map_err(|e| {
        let message = format!(
            "The workspace `{}` cannot be mounted idmapped ({e}); help: put the workspace on a \
             local filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs)",
            workspace.path.display()
        );
        io::Error::new(e.kind(), message)
    })
}

/// `error`, saying what was being done.
pub(crate) fn context(error: io::Error, doing: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{doing}: {error}"))
}

/// Kernel interfaces under `/proc` that commands may read but not write, as runc's
/// defaults.
const READ_ONLY_PROC: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];

/// Kernel interfaces under `/proc` hidden from commands (an empty file or directory in
/// their place), as runc's defaults.
const MASKED_PROC: &[&str] = &[
    "acpi",
    "asound",
    "kcore",
    "keys",
    "latency_stats",
    "sched_debug",
    "scsi",
    "timer_list",
    "timer_stats",
];

/// Attaches the root filesystem with `/proc`, a minimal `/dev`, `/tmp`, `/dev/shm` and the
/// workspace, and pivots into it. Nothing else of the host stays reachable, and
/// `mountinfo` names no host path but the workspace's.
fn assemble_root(launch: &Launch, trees: &Trees) -> io::Result<()> {
    let root = Path::new(STAGE).join(ROOT);
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
    sys::attach(&trees.root, &root).map_err(|e| context(e, "attaching the root filesystem"))?;

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
        Some(&format!("mode=1777,size={SHM_BYTES}")),
    )?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link))?;
    }
    let empty = Path::new(STAGE).join(EMPTY);
    protect_proc(&inside("/proc"), &empty)?;

    fs::create_dir_all(inside("/tmp"))?;
    mount(
        "tmpfs",
        &inside("/tmp"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&format!("mode=1777,size={}", launch.tmp_bytes)),
    )?;

    if let (Some(workspace), Some(tree)) = (&launch.workspace, &trees.workspace) {
        let target = inside(&workspace.path.display().to_string());
        fs::create_dir_all(&target)?;
        sys::attach(tree, &target).map_err(|e| context(e, "attaching the workspace"))?;
        protect_files(&root, workspace, &empty)?;
    }

    std::env::set_current_dir(&root)?;
    sys::pivot_to_cwd().map_err(|e| context(e, "pivoting into the root filesystem"))?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// Binds `path` onto itself read-only (and without set-uid, devices or execution).
fn read_only(path: &Path) -> io::Result<()> {
    sys::mount(&path.display().to_string(), path, None, libc::MS_BIND, None)?;
    remount_read_only(path)
}

/// Makes the bind mount at `path` read-only (and without set-uid, devices or execution).
fn remount_read_only(path: &Path) -> io::Result<()> {
    let flags = libc::MS_BIND
        | libc::MS_REMOUNT
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    sys::mount("none", path, None, flags, None)
}

/// Puts an empty, read-only file or directory over `path`: `empty` for a file, an empty
/// tmpfs for a directory.
fn mask(path: &Path, empty: &Path) -> io::Result<()> {
    if path.is_dir() {
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        sys::mount("tmpfs", path, Some("tmpfs"), flags, None)
    } else {
        sys::mount(
            &empty.display().to_string(),
            path,
            None,
            libc::MS_BIND,
            None,
        )?;
        remount_read_only(path)
    }
}

fn protect_proc(proc: &Path, empty: &Path) -> io::Result<()> {
    for name in READ_ONLY_PROC {
        let path = proc.join(name);
        if path.exists() {
            read_only(&path).map_err(|e| context(e, &format!("protecting /proc/{name}")))?;
        }
    }
    for name in MASKED_PROC {
        let path = proc.join(name);
        if path.exists() {
            mask(&path, empty).map_err(|e| context(e, &format!("masking /proc/{name}")))?;
        }
    }
    Ok(())
}

/// The spec files read-only and `.env` hidden, where the workspace has them.
fn protect_files(root: &Path, workspace: &Workspace, empty: &Path) -> io::Result<()> {
    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    for file in &workspace.read_only {
        let path = inside(file);
        if path.is_file() {
            read_only(&path).map_err(|e| context(e, &format!("protecting {}", file.display())))?;
        }
    }
    for file in &workspace.hidden {
        let path = inside(file);
        if path.is_file() {
            mask(&path, empty).map_err(|e| context(e, &format!("hiding {}", file.display())))?;
        }
    }
    Ok(())
}
