//! What every backend shares: the sandbox to start (`Spec`), its directories (`Layout`),
//! the started sandbox (`Running`), and the small trait the daemon starts sandboxes
//! through: `namespace` and `microvm`, behind the same guest agent and protocol.

use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tokio::process::Child;

use crate::cgroup::{Cgroup, Limits};
use crate::idmap::IdRange;
use crate::setup::GUEST_SOCKET;

/// What [`Backend::start`] returns.
pub type Start<'a> = Pin<Box<dyn Future<Output = Result<Running, StartError>> + Send + 'a>>;

/// A way to run sandboxes.
pub trait Backend: Send + Sync {
    /// Its name, as `isolation:` and `status` spell it.
    fn kind(&self) -> &'static str;
    /// Starts the sandbox and resolves once its guest agent serves on the layout's socket.
    fn start<'a>(&'a self, spec: &'a Spec) -> Start<'a>;
}

/// How long the agent may take from spawn to serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A sandbox's directories: `upper/` and `work/` (its own layer, kept until it is
/// removed) and `control/` (the agent's socket and the proxy's).
#[derive(Debug, Clone)]
pub struct Layout {
    /// The sandbox's directory, holding `upper/` and `work/`.
    pub dir: PathBuf,
    /// The control directory: the agent's socket, and the proxy's that the agent reaches
    /// through a descriptor it keeps (nothing of it is mounted inside).
    pub control: PathBuf,
}

impl Layout {
    /// The layout of the sandbox whose directory is `dir` and control directory `control`; creates
    /// nothing (that is [`Layout::prepare`]).
    pub fn new(dir: &Path, control: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
            control: control.to_path_buf(),
        }
    }

    /// The guest agent's socket as the host reaches it: [`GUEST_SOCKET`] in the control directory.
    pub fn socket(&self) -> PathBuf {
        self.control.join(GUEST_SOCKET)
    }

    /// Creates the directories, owned by sandbox root. The upper layer survives restarts.
    /// Idempotent.
    pub fn prepare(&self, range: IdRange) -> io::Result<()> {
        for (dir, mode) in [
            (self.dir.join("upper"), 0o755),
            (self.dir.join("work"), 0o700),
            (self.control.clone(), 0o700),
        ] {
            fs::create_dir_all(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
            chown(&dir, Some(range.base), Some(range.base))?;
        }
        Ok(())
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The guest agent binary (static).
    pub guest: PathBuf,
    /// Its directories.
    pub layout: Layout,
    /// Template layers, top first.
    pub lower: Vec<PathBuf>,
    /// The host directory shared read-write at the same absolute path inside, if any.
    pub workspace: Option<crate::setup::Workspace>,
    /// Its hostname, set in its UTS namespace.
    pub hostname: String,
    /// The host ids its user namespace maps sandbox ids onto.
    pub range: IdRange,
    /// Its memory, CPU and process limits.
    pub limits: Limits,
    /// The size of its `/tmp`, in bytes.
    pub tmp_bytes: u64,
    /// `/sys/fs/cgroup` (tests name another root only to read the files it writes).
    pub cgroup_root: PathBuf,
    /// The cgroup's name, unique on the host.
    pub cgroup_id: String,
    /// Where the agent's own messages go.
    pub log: PathBuf,
    /// The policy proxy's CA, when its commands reach the network through the proxy; with `None` it
    /// has only `lo`.
    pub network: Option<crate::setup::Network>,
    /// Variables every command gets.
    pub env: Vec<(String, String)>,
}

impl Spec {
    /// What the guest agent's host-side modes (`sandbox`, `share`) are given: the files,
    /// the identity and the cgroup's `cgroup.procs` files to join.
    pub fn launch(&self, cgroup: &Cgroup) -> crate::setup::Launch {
        crate::setup::Launch {
            lower: self.lower.clone(),
            dir: self.layout.dir.clone(),
            workspace: self.workspace.clone(),
            control: self.layout.control.clone(),
            hostname: self.hostname.clone(),
            cgroup_procs: cgroup.procs_files(),
            tmp_bytes: self.tmp_bytes,
            network: self.network.clone(),
            env: self.env.clone(),
        }
    }
}

/// A started sandbox: the host process that lives as long as it does, whatever the
/// backend (the agent's for `namespace`).
#[derive(Debug)]
pub struct Running {
    /// The host process that lives as long as the sandbox: for `namespace`, the agent's parent
    /// half, which exits with PID 1's status.
    pub child: Child,
    /// PID 1 of the sandbox, as the host numbers it.
    pub init_pid: u32,
    /// Its cgroup, to remove once the child has exited.
    pub cgroup: Cgroup,
}

/// Why a sandbox did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Something the sandbox needs on the host could not be made.
    #[error("Cannot prepare the sandbox's {what}")]
    Prepare {
        /// What: `directories`, `agent's files`, `cgroup` or `log`.
        what: &'static str,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The agent could not be run, or failed or stalled in the handshake; the text says which,
    /// with the last line the agent logged.
    #[error("The guest agent did not start the sandbox: {0}")]
    Agent(String),
}

impl StartError {
    /// The fix for this error, for a `help:` line, where it does not depend on which sandbox
    /// it is (the caller names the sandbox's log).
    pub fn help(&self) -> Option<String> {
        match self {
            StartError::Prepare { what: "cgroup", .. } => Some(
                "Run the daemon as root, or give its user a delegated cgroup subtree".to_owned(),
            ),
            StartError::Agent(_) | StartError::Prepare { .. } => None,
        }
    }
}

/// Gives the agent what the sandbox's own layer holds of ids outside its range, once
/// (`own-ids` marks it done). Until this version the agent mapped to the workspace's owner,
/// so the agent's files in an existing sandbox's layer belong to that host id; now the agent
/// is the range's own, and nothing else in the layer can have such an owner.
pub(crate) fn claim_own_layer(spec: &Spec) -> io::Result<()> {
    let marker = spec.layout.dir.join("own-ids");
    if marker.exists() {
        return Ok(());
    }
    crate::rootfs::claim(&spec.layout.dir.join("upper"), spec.range)?;
    fs::write(marker, "")
}

/// The last line the agent wrote to its log, where it says why it stopped.
pub(crate) fn last_line(log: &std::path::Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.trim().to_owned())
}
