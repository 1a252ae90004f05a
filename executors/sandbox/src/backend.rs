//! What every backend shares: the sandbox to start (`Spec`), its directories (`Layout`),
//! the started sandbox (`Running`), and the small trait the daemon starts sandboxes
//! through. The namespace backend is the one built (`namespace`); the microVM backend
//! will be another implementation of [`Backend`] behind the same guest agent and protocol.

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

/// The backend of that name, if this build has it.
pub fn named(kind: &str) -> Option<&'static dyn Backend> {
    match kind {
        "namespace" => Some(&crate::namespace::Namespace),
        _ => None,
    }
}

/// How long the agent may take from spawn to serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A sandbox's directories: `upper/` and `work/` (its own layer, kept until it is
/// removed), `root/` (the mount point) and `control/` (the agent's socket).
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub control: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path, control: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
            control: control.to_path_buf(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.control.join(GUEST_SOCKET)
    }

    /// Creates the directories, owned by sandbox root. The upper layer survives restarts.
    /// Idempotent.
    pub fn prepare(&self, range: IdRange) -> io::Result<()> {
        for (dir, mode) in [
            (self.dir.join("upper"), 0o755),
            (self.dir.join("work"), 0o700),
            (self.dir.join("root"), 0o755),
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
    pub layout: Layout,
    /// Template layers, top first.
    pub lower: Vec<PathBuf>,
    pub workspace: Option<PathBuf>,
    pub hostname: String,
    pub range: IdRange,
    /// The host uid and gid the `agent` user maps to (the workspace's owner).
    pub owner: (u32, u32),
    pub limits: Limits,
    /// `/sys/fs/cgroup` (tests name another root only to read the files it writes).
    pub cgroup_root: PathBuf,
    /// The cgroup's name, unique on the host.
    pub cgroup_id: String,
    /// Where the agent's own messages go.
    pub log: PathBuf,
    pub network: Option<crate::setup::Network>,
    /// Variables every command gets.
    pub env: Vec<(String, String)>,
}

/// A started sandbox: the host process that lives as long as it does, whatever the
/// backend (the agent's for `namespace`).
#[derive(Debug)]
pub struct Running {
    pub child: Child,
    /// PID 1 of the sandbox, as the host numbers it.
    pub init_pid: u32,
    pub cgroup: Cgroup,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("Cannot prepare the sandbox's {what}")]
    Prepare {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Owner(#[from] crate::idmap::OwnerInRange),
    #[error("The guest agent did not start the sandbox: {0}")]
    Agent(String),
}

impl StartError {
    pub fn help(&self) -> Option<String> {
        match self {
            StartError::Prepare { what: "cgroup", .. } => Some(
                "Run the daemon as root, or give its user a delegated cgroup subtree".to_owned(),
            ),
            StartError::Owner(_) => Some(
                "Give the daemon's user another range in /etc/subuid and /etc/subgid".to_owned(),
            ),
            StartError::Agent(_) => {
                Some("The sandbox's log (`aistack logs NAME`) has the agent's messages".to_owned())
            }
            StartError::Prepare { .. } => None,
        }
    }
}
