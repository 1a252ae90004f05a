//! The namespace backend's host side: a sandbox's directories, its cgroup, and the
//! launch of the guest agent in `sandbox` mode with the user-namespace handshake
//! (`setup` has the agent's side).

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::cgroup::{Cgroup, Limits};
use crate::idmap::{IdMap, IdRange};
use crate::protocol;
use crate::setup::{GUEST_SOCKET, Launch, MAPPED, READY, USERNS};

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

/// A started sandbox: the host process that lives as long as it does.
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

/// Starts the sandbox and waits until its agent serves.
pub async fn start(spec: &Spec) -> Result<Running, StartError> {
    let prepare = |what| move |source| StartError::Prepare { what, source };
    spec.layout
        .prepare(spec.range)
        .map_err(prepare("directories"))?;
    let uid_map = IdMap::for_owner(spec.range, spec.owner.0)?;
    let gid_map = IdMap::for_owner(spec.range, spec.owner.1)?;
    let cgroup = Cgroup::create(&spec.cgroup_root, &spec.cgroup_id, spec.limits)
        .map_err(prepare("cgroup"))?;
    let launch = Launch {
        lower: spec.lower.clone(),
        upper: spec.layout.dir.join("upper"),
        work: spec.layout.dir.join("work"),
        root: spec.layout.dir.join("root"),
        workspace: spec.workspace.clone(),
        control: spec.layout.control.clone(),
        hostname: spec.hostname.clone(),
        cgroup_procs: cgroup.procs_files(),
        network: spec.network.clone(),
        env: spec.env.clone(),
    };
    let _ = fs::remove_file(spec.layout.socket());
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(prepare("log"))?;
    let mut child = Command::new(&spec.guest)
        .arg("sandbox")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: a Ctrl-C in the daemon's terminal is not the sandbox's.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| StartError::Agent(format!("cannot run `{}`: {e}", spec.guest.display())))?;
    let handshake = handshake(&mut child, &launch, &uid_map, &gid_map);
    match tokio::time::timeout(START_TIMEOUT, handshake).await {
        Ok(Ok(init_pid)) => {
            // The agent must outlive whatever exhausts the sandbox's memory; its commands
            // set their own score back to 0 (`sys::spawn_confined`).
            let _ = fs::write(format!("/proc/{init_pid}/oom_score_adj"), "-1000");
            Ok(Running {
                child,
                init_pid,
                cgroup,
            })
        }
        outcome => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = cgroup.remove();
            Err(StartError::Agent(match outcome {
                Ok(Err(e)) => e,
                _ => format!("it was not serving after {START_TIMEOUT:?}"),
            }))
        }
    }
}

async fn handshake(
    child: &mut Child,
    launch: &Launch,
    uid_map: &IdMap,
    gid_map: &IdMap,
) -> Result<u32, String> {
    let pid = child.id().ok_or("it exited at once")?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    let mut expect = async |what: &str| -> Result<String, String> {
        line.clear();
        match stdout.read_line(&mut line).await {
            Ok(0) | Err(_) => Err(format!("it exited before it said `{what}`")),
            Ok(_) => Ok(line.trim().to_owned()),
        }
    };
    stdin
        .write_all(&protocol::json_line(launch))
        .await
        .map_err(|e| e.to_string())?;
    if expect(USERNS).await? != USERNS {
        return Err("it did not make a user namespace".to_owned());
    }
    for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        fs::write(format!("/proc/{pid}/{file}"), map.proc_text())
            .map_err(|e| format!("writing its {file}: {e}"))?;
    }
    stdin
        .write_all(format!("{MAPPED}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let init = expect("pid").await?;
    let init_pid = init
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("it said `{init}` instead of its pid"))?;
    if expect(READY).await? != READY {
        return Err("it did not say it was ready".to_owned());
    }
    Ok(init_pid)
}
