//! The sandboxes the daemon started, on whichever backend `isolation` chose.
//!
//! A sandbox outlives a daemon restart (its host process is not tied to the daemon), so
//! the daemon holds nothing it cannot find again: whether a sandbox runs is whether its
//! guest agent answers on its socket.
//!
//! Paths (`AISTACK_HOME`): `projects/<p>/sandboxes/<name>/` (the sandbox's own layer,
//! kept until it is removed), `run/sandbox-<p>-<name>/guest.sock`,
//! `logs/sandbox-<p>-<name>.log`.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aistack_apply::HostError;
use aistack_planner::SandboxPlan;
use aistack_planner::agents::AgentFile;
use aistack_proxy::Entrance;
use aistack_sandbox::backend::{Backend, Layout, Spec};
use aistack_sandbox::cgroup::{Cgroup, Limits};
use aistack_sandbox::client::GuestClient;
use aistack_sandbox::idmap::{DEFAULT_BASE, IdRange};
use aistack_sandbox::protocol::Exec;
use aistack_sandbox::rootfs;
use aistack_sandbox::setup::Workspace;
use sha2::{Digest, Sha256};

use crate::channels::{self, Channels};
use crate::home::Home;

/// Output key of a sandbox: its guest agent's socket.
pub const SOCKET: &str = "socket";
/// Output key of a sandbox: the backend it runs on.
pub const ISOLATION: &str = "isolation";
/// Output key of a sandbox: why `isolation` chose that backend.
pub const ISOLATION_REASON: &str = "isolation_reason";

/// Output key of a microVM sandbox: how its VMM runs the guest, `kvm` or `tcg`.
pub const ACCELERATOR: &str = "accelerator";
/// Output key of a microVM sandbox: its guest kernel, how it was built, where it is, and
/// its sha256.
pub const KERNEL: &str = "kernel";

/// Where the host's cgroup hierarchy is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long a stopping sandbox's processes get between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The task that waits for one sandbox's host process to end.
type Life = tokio::task::JoinHandle<()>;

/// The sandboxes of this home.
pub struct Sandboxes {
    home: Home,
    range: IdRange,
    channels: Arc<Channels>,
    /// The task that waits for each sandbox this daemon started to end and removes its
    /// cgroup: a new start of the same sandbox waits for it, or the old end would remove
    /// the cgroup the new one joins.
    lives: Mutex<HashMap<(String, String), Life>>,
}

impl Sandboxes {
    /// The sandboxes of `home`, their ids in `range`, their channels in `channels`.
    pub fn new(home: Home, range: IdRange, channels: Arc<Channels>) -> Self {
        Sandboxes {
            home,
            range,
            channels,
            lives: Mutex::default(),
        }
    }

    fn layout(&self, project: &str, name: &str) -> Layout {
        Sandboxes::layout_in(&self.home, project, name)
    }

    /// A sandbox's directories under `home`.
    pub fn layout_in(home: &Home, project: &str, name: &str) -> Layout {
        Layout::new(
            &home.project(project).join("sandboxes").join(name),
            &home.run().join(format!("sandbox-{project}-{name}")),
        )
    }

    /// The guest agent's socket of a sandbox.
    pub fn socket(home: &Home, project: &str, name: &str) -> PathBuf {
        Sandboxes::layout_in(home, project, name).socket()
    }

    /// Starts the sandbox unless its agent already answers. A sandbox with a policy gets
    /// its way out: `proxy.sock` in its control directory, served by `proxy`, its own
    /// entrance to the policy's proxy. `backend` is the one `isolation` chose.
    pub async fn start(
        &self,
        project: &str,
        name: &str,
        plan: &SandboxPlan,
        layers: &[PathBuf],
        proxy: Option<Entrance>,
        backend: &dyn Backend,
    ) -> Result<PathBuf, HostError> {
        let sandbox = &plan.settings;
        let channels = &self.channels;
        let layout = self.layout(project, name);
        let socket = layout.socket();
        let up = GuestClient::new(&socket)
            .is_up(aistack_sandbox::client::ANSWER_TIMEOUT)
            .await;
        if up && channels.are_open(project, name) {
            return Ok(socket);
        }
        channels.close(project, name);
        if let Some(proxy) = &proxy {
            channels.forward(project, name, &layout, proxy.clone())?;
        }
        channels
            .publish(project, name, &sandbox.ports, &socket)
            .await?;
        if up {
            return Ok(socket);
        }
        let network = match proxy {
            Some(_) => Some(channels::network(&self.home, project)?),
            None => None,
        };
        if !layers
            .iter()
            .any(|layer| rootfs::has_program(layer, &plan.program))
        {
            let (agent, template) = (sandbox.agent, &sandbox.template);
            return Err(HostError::new(format!(
                "Agent `{agent}` of sandbox `{name}` is not installed in template `{template}`: it has no `{}` on its PATH",
                plan.program
            ))
            .with_help(format!(
                "Add the step that installs it to `templates.{template}.run`: `{}`",
                plan.install
            )));
        }
        if backend.kind() == "namespace"
            && layers
                .iter()
                .any(|layer| rootfs::has_program(layer, "dockerd"))
        {
            let template = &sandbox.template;
            return Err(HostError::new(format!(
                "Sandbox `{name}` runs on the namespace backend, which cannot host Docker: template `{template}` has `dockerd`, and a sandbox that shares the host's kernel may not mount or make namespaces"
            ))
            .with_help(format!(
                "Set `sandboxes.{name}.isolation: microvm`: a microVM has its own kernel, and `dockerd` inside is the sandbox's private daemon"
            )));
        }
        let workspace = PathBuf::from(&sandbox.workspace);
        let meta = fs::metadata(&workspace).map_err(|e| HostError {
            message: format!("Cannot use the workspace `{}`: {e}", workspace.display()),
            help: Some("Create the directory, or point `workspace:` at one".to_owned()),
        })?;
        let paths = |paths: &[String]| paths.iter().map(PathBuf::from).collect();
        let workspace = Workspace {
            path: workspace,
            owner: (meta.uid(), meta.gid()),
            agent: self.range.agent(),
            read_only: paths(&plan.read_only),
            hidden: paths(&plan.hidden),
        };
        let spec = Spec {
            guest: guest_binary()?,
            layout,
            lower: layers.to_vec(),
            workspace: Some(workspace),
            hostname: name.to_owned(),
            range: self.range,
            limits: limits(&plan.limits),
            tmp_bytes: plan.limits.tmp,
            cgroup_root: PathBuf::from(CGROUP_ROOT),
            cgroup_id: self.cgroup_id(project, name),
            log: self.log(project, name),
            network,
            env: plan.environment.clone().into_iter().collect(),
        };
        self.ended(project, name).await;
        let _ = fs::create_dir_all(self.home.logs());
        let mut running = backend.start(&spec).await.map_err(|e| {
            let help = e.help().unwrap_or_else(|| {
                format!("`aistack sandbox logs {name}` shows what the sandbox's agent said")
            });
            HostError::from_error(&e, Some(help))
        })?;
        let log = self.log(project, name);
        tracing::info!(
            project,
            sandbox = name,
            backend = backend.kind(),
            "sandbox started"
        );
        let cgroup = running.cgroup.clone();
        let life = tokio::spawn(async move {
            let status = running.child.wait().await;
            // What outlives the host process (a microVM's vsock daemon) goes with it.
            let _ = tokio::task::spawn_blocking(move || {
                let _ = cgroup.kill();
                cgroup.remove()
            })
            .await;
            tracing::info!(log = %log.display(), ?status, "sandbox ended");
        });
        let key = (project.to_owned(), name.to_owned());
        (self.lives.lock().unwrap_or_else(PoisonError::into_inner)).insert(key, life);
        Ok(socket)
    }

    /// Stops the sandbox and deletes its layer, socket directory and log. Idempotent.
    pub async fn remove(&self, project: &str, name: &str) -> Result<(), HostError> {
        self.channels.close(project, name);
        let layout = self.layout(project, name);
        let client = GuestClient::new(&layout.socket());
        if client.shutdown(STOP_GRACE).await.is_ok() {
            // The agent exits after its processes; its socket then refuses.
            let deadline = tokio::time::Instant::now() + STOP_GRACE * 3;
            while client.is_up(Duration::from_millis(200)).await
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // A microVM whose agent did not end it: its VMM quits (the cgroup's kill below
        // ends whatever still runs).
        let _ = aistack_sandbox::microvm::quit(&layout.control).await;
        self.ended(project, name).await;
        // What no life of this daemon watched (a sandbox it readopted): a microVM's vsock
        // daemon outlives the VMM, and the cgroup stays until it is gone.
        let cgroup = Sandboxes::cgroup(&self.home, project, name);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = cgroup.kill();
            cgroup.remove()
        })
        .await;
        for dir in [&layout.dir, &layout.control] {
            match fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(HostError::new(format!(
                        "Cannot remove `{}`: {e}",
                        dir.display()
                    )));
                }
                _ => {}
            }
        }
        let _ = fs::remove_file(self.log(project, name));
        Ok(())
    }

    /// Waits (a bounded while) for the end of the sandbox's previous life, if this daemon
    /// started it and it is ending.
    async fn ended(&self, project: &str, name: &str) {
        let key = (project.to_owned(), name.to_owned());
        let life = (self.lives.lock().unwrap_or_else(PoisonError::into_inner)).remove(&key);
        if let Some(mut life) = life
            && !life.is_finished()
            && tokio::time::timeout(STOP_GRACE * 3, &mut life)
                .await
                .is_err()
        {
            // Still running (a `start` of a sandbox that runs): keep watching it.
            (self.lives.lock().unwrap_or_else(PoisonError::into_inner)).insert(key, life);
        }
    }

    fn log(&self, project: &str, name: &str) -> PathBuf {
        Sandboxes::log_path(&self.home, project, name)
    }

    /// The guest agent's log of a sandbox.
    pub fn log_path(home: &Home, project: &str, name: &str) -> PathBuf {
        home.logs().join(format!("sandbox-{project}-{name}.log"))
    }

    /// Unique on the host: several homes (tests, users) may have the same project names.
    fn cgroup_id(&self, project: &str, name: &str) -> String {
        Sandboxes::cgroup_id_in(&self.home, project, name)
    }

    fn cgroup_id_in(home: &Home, project: &str, name: &str) -> String {
        let home = Sha256::digest(home.root().as_os_str().as_encoded_bytes());
        format!("{project}-{name}-{}", &hex::encode(home)[..12])
    }

    /// A sandbox's cgroup under `home`, whether or not it exists.
    pub fn cgroup(home: &Home, project: &str, name: &str) -> Cgroup {
        let id = Sandboxes::cgroup_id_in(home, project, name);
        Cgroup::existing(Path::new(CGROUP_ROOT), &id)
    }
}

/// The cgroup limits of a plan's limits.
/// Writes an agent's configuration files into its home, as the agent (so they are its own),
/// leaving any it already has: agents keep their state in some of them.
pub(crate) async fn write_agent_files(
    socket: &Path,
    name: &str,
    files: &[AgentFile],
) -> Result<(), HostError> {
    // The contents travel in a variable: no quoting to get wrong, nothing on a command line.
    const WRITE: &str = r#"f="$HOME/$1"; [ -e "$f" ] && exit 0; mkdir -p "$(dirname "$f")" && printf '%s' "$AISTACK_FILE" > "$f""#;
    let client = GuestClient::new(socket);
    for file in files {
        let exec = Exec {
            argv: ["sh", "-c", WRITE, "sh", &file.path]
                .map(str::to_owned)
                .to_vec(),
            env: BTreeMap::from([("AISTACK_FILE".to_owned(), file.contents.clone())]),
            cwd: None,
            user: None,
            tty: None,
            detach: false,
        };
        let output = client.output(exec).await;
        let failed = match &output {
            Ok(out) if out.status.is_some_and(|s| s.shell_code() == 0) => continue,
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        return Err(HostError::new(format!(
            "Cannot write `~/{}` for the agent of sandbox `{name}`: {failed}",
            file.path
        ))
        .with_help(
            "The template needs `sh`, `mkdir` and `dirname`; a Debian or Alpine base has them",
        ));
    }
    Ok(())
}

pub(crate) fn limits(limits: &aistack_planner::Limits) -> Limits {
    Limits {
        memory: Some(limits.memory),
        cpus: Some(limits.cpus),
        pids: limits.pids,
    }
}

/// The sandbox id range: the daemon user's `/etc/subuid` range, else the default.
pub fn id_range() -> IdRange {
    let uid = rustix::process::getuid().as_raw();
    let user = std::env::var("USER").unwrap_or_else(|_| {
        if uid == 0 {
            "root".into()
        } else {
            String::new()
        }
    });
    fs::read_to_string("/etc/subuid")
        .ok()
        .and_then(|text| IdRange::from_subid(&text, &user, uid))
        .unwrap_or(IdRange { base: DEFAULT_BASE })
}

/// The static guest agent: `AISTACK_GUEST`, else `aistack-guest` beside this binary.
pub(crate) fn guest_binary() -> Result<PathBuf, HostError> {
    let path = match std::env::var_os("AISTACK_GUEST").filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("aistack-guest")))
            .unwrap_or_else(|| PathBuf::from("aistack-guest")),
    };
    let help = "Build it with `scripts/build-guest` and set `AISTACK_GUEST` to the path it prints";
    match aistack_sandbox::guest::is_static(&path) {
        Ok(true) => Ok(path),
        Ok(false) => Err(HostError {
            message: format!(
                "The guest agent `{}` is not a static binary",
                path.display()
            ),
            help: Some(help.to_owned()),
        }),
        Err(e) => Err(HostError {
            message: format!("Cannot read the guest agent `{}`: {e}", path.display()),
            help: Some(help.to_owned()),
        }),
    }
}
