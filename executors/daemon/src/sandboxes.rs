//! The sandboxes the daemon started, on the namespace backend, and their templates.
//!
//! A sandbox outlives a daemon restart (its host process is not tied to the daemon), so
//! the daemon holds nothing it cannot find again: whether a sandbox runs is whether its
//! guest agent answers on its socket.
//!
//! Paths (`AISTACK_HOME`): `templates/<hash>/rootfs` (a template's tree, owners moved
//! into the sandbox id range), `projects/<p>/sandboxes/<name>/` (the sandbox's own
//! layer, kept until it is removed), `run/sandbox-<p>-<name>/guest.sock`,
//! `logs/sandbox-<p>-<name>.log`.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aistack_apply::HostError;
use aistack_sandbox::cgroup::{DEFAULT_PIDS, Limits};
use aistack_sandbox::client::GuestClient;
use aistack_sandbox::idmap::{DEFAULT_BASE, IdRange};
use aistack_sandbox::namespace::{self, Layout, Spec};
use aistack_sandbox::rootfs;
use aistack_sandbox::setup::{Network, PROXY_SOCKET};
use aistack_spec::values::PortMapping;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::home::Home;
use crate::state::write_atomically;

/// Output key of a template: its root filesystem.
pub const ROOTFS: &str = "rootfs";
/// Output key of a sandbox: its guest agent's socket.
pub const SOCKET: &str = "socket";
/// Output keys of a sandbox: the backend it runs on, and why.
pub const ISOLATION: &str = "isolation";
pub const ISOLATION_REASON: &str = "isolation_reason";

/// How long a stopping sandbox's processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A task serving one of a sandbox's channels on the host.
type Channel = tokio::task::JoinHandle<()>;

pub struct Sandboxes {
    home: Home,
    range: IdRange,
    /// The host side of each sandbox's channels (its proxy socket, its published ports),
    /// by project and sandbox.
    tasks: Mutex<HashMap<(String, String), Vec<Channel>>>,
}

impl Sandboxes {
    pub fn new(home: Home) -> Self {
        Sandboxes {
            home,
            range: id_range(),
            tasks: Mutex::default(),
        }
    }

    /// Which tree a project's template uses: `projects/<p>/templates/<name>`, a file
    /// holding its path, written when the template is built (the project's state records
    /// the step only after it, and the sandbox steps that follow need it at once).
    fn template_link(&self, project: &str, name: &str) -> PathBuf {
        self.home.project(project).join("templates").join(name)
    }

    pub fn template_rootfs(&self, project: &str, name: &str) -> Option<PathBuf> {
        let path = fs::read_to_string(self.template_link(project, name)).ok()?;
        let rootfs = PathBuf::from(path.trim());
        rootfs.is_dir().then_some(rootfs)
    }

    /// A template's tree, imported once per hash of its inputs, and linked to the
    /// project's template name.
    pub async fn build_template(
        &self,
        project: &str,
        name: &str,
        hash: &str,
        template: &Value,
    ) -> Result<PathBuf, HostError> {
        let dest = self.home.root().join("templates").join(hash).join("rootfs");
        if !dest.is_dir() {
            self.import(&dest, template).await?;
        }
        let link = self.template_link(project, name);
        let written = fs::create_dir_all(link.parent().expect("a parent"))
            .and_then(|()| write_atomically(&link, dest.to_string_lossy().as_bytes()));
        written.map_err(|e| HostError::new(format!("Cannot record template `{name}`: {e}")))?;
        Ok(dest)
    }

    async fn import(&self, dest: &Path, template: &Value) -> Result<(), HostError> {
        let source = template
            .pointer("/from/path")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                HostError::new("Only templates from a local directory can be built yet")
            })?;
        let source = PathBuf::from(source);
        if !source.join("bin").is_dir() && !source.join("usr/bin").is_dir() {
            return Err(HostError {
                message: format!(
                    "`{}` is not a root filesystem (it has no `bin/`)",
                    source.display()
                ),
                help: Some(
                    "Point `from:` at a directory holding a whole root filesystem".to_owned(),
                ),
            });
        }
        let range = self.range;
        let target = dest.to_path_buf();
        tokio::task::spawn_blocking(move || rootfs::import(&source, &target, range))
            .await
            .map_err(|e| HostError::new(format!("The template import stopped: {e}")))?
            .map_err(|e| HostError::new(format!("Cannot import the template: {e}")))
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
    /// its way out: `proxy.sock` in its control directory, forwarded to `proxy`, its own
    /// listener of the policy's proxy.
    pub async fn start(
        &self,
        project: &str,
        name: &str,
        sandbox: &Value,
        rootfs: &Path,
        proxy: Option<SocketAddr>,
    ) -> Result<PathBuf, HostError> {
        let layout = self.layout(project, name);
        let socket = layout.socket();
        let up = GuestClient::new(&socket)
            .is_up(Duration::from_millis(500))
            .await;
        if up && self.has_channels(project, name) {
            return Ok(socket);
        }
        self.close_channels(project, name);
        if let Some(proxy) = proxy {
            self.forward(project, name, &layout, proxy)?;
        }
        self.publish(project, name, sandbox, &socket).await?;
        if up {
            return Ok(socket);
        }
        let network = match proxy {
            Some(_) => {
                let ca = self.home.project(project).join("ca.pem");
                let ca_pem = fs::read_to_string(&ca).map_err(|e| {
                    HostError::new(format!(
                        "Cannot read the project CA `{}`: {e}",
                        ca.display()
                    ))
                })?;
                Some(Network { ca_pem })
            }
            None => None,
        };
        let workspace = sandbox
            .get("workspace")
            .and_then(Value::as_str)
            .map(PathBuf::from);
        let owner = match &workspace {
            Some(dir) => {
                let meta = fs::metadata(dir).map_err(|e| HostError {
                    message: format!("Cannot use the workspace `{}`: {e}", dir.display()),
                    help: Some("Create the directory, or point `workspace:` at one".to_owned()),
                })?;
                (meta.uid(), meta.gid())
            }
            None => (0, 0),
        };
        let spec = Spec {
            guest: guest_binary()?,
            layout,
            lower: vec![rootfs.to_path_buf()],
            workspace,
            hostname: name.to_owned(),
            range: self.range,
            owner,
            limits: Limits {
                memory: sandbox.get("memory").and_then(Value::as_u64),
                cpus: sandbox.get("cpus").and_then(Value::as_f64),
                pids: DEFAULT_PIDS,
            },
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_id: self.cgroup_id(project, name),
            log: self.log(project, name),
            network,
        };
        let _ = fs::create_dir_all(self.home.logs());
        let mut running = namespace::start(&spec).await.map_err(|e| HostError {
            help: e.help(),
            message: aistack_apply::chain(&e),
        })?;
        let log = self.log(project, name);
        let cgroup = running.cgroup.clone();
        tokio::spawn(async move {
            let status = running.child.wait().await;
            let _ = cgroup.remove();
            tracing::info!(log = %log.display(), ?status, "sandbox ended");
        });
        Ok(socket)
    }

    /// Serves `proxy.sock` of a sandbox: each connection is spliced to `proxy`. Replaces
    /// a forwarder of an earlier start.
    pub fn forward(
        &self,
        project: &str,
        name: &str,
        layout: &Layout,
        proxy: SocketAddr,
    ) -> Result<(), HostError> {
        let cannot = |e: std::io::Error| {
            HostError::new(format!(
                "Cannot serve the proxy socket of sandbox `{name}`: {e}"
            ))
        };
        layout.prepare(self.range).map_err(cannot)?;
        let path = layout.control.join(PROXY_SOCKET);
        let _ = fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).map_err(cannot)?;
        // Only sandbox root (the agent) may use it.
        chown(&path, Some(self.range.base), Some(self.range.base)).map_err(cannot)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(cannot)?;
        let task = tokio::spawn(async move {
            while let Ok((mut inside, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(proxy).await {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut upstream).await;
                    }
                });
            }
        });
        self.keep(project, name, task);
        Ok(())
    }

    /// Publishes the sandbox's `ports`: a host listener per mapping whose every
    /// connection is tunnelled to the sandbox port through the agent (`connect`).
    pub async fn publish(
        &self,
        project: &str,
        name: &str,
        sandbox: &Value,
        socket: &Path,
    ) -> Result<(), HostError> {
        let mappings = (sandbox
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten())
        .filter_map(Value::as_str)
        .filter_map(|text| text.parse::<PortMapping>().ok());
        for mapping in mappings {
            let address = SocketAddr::new(mapping.host_ip, mapping.host_port);
            let listener = bind_retrying(address).await.map_err(|e| HostError {
                message: format!("Cannot publish `{mapping}` of sandbox `{name}`: {e}"),
                help: Some(format!(
                    "Stop what listens on `{address}`, or publish another host port in `sandboxes.{name}.ports`"
                )),
            })?;
            let client = GuestClient::new(socket);
            let port = mapping.sandbox_port;
            let task = tokio::spawn(async move {
                while let Ok((mut outside, _)) = listener.accept().await {
                    let client = client.clone();
                    tokio::spawn(async move {
                        if let Ok(mut inside) = client.connect(port).await {
                            let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                        }
                    });
                }
            });
            self.keep(project, name, task);
        }
        Ok(())
    }

    fn keep(&self, project: &str, name: &str, task: Channel) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (project.to_owned(), name.to_owned());
        tasks.entry(key).or_default().push(task);
    }

    fn has_channels(&self, project: &str, name: &str) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.contains_key(&(project.to_owned(), name.to_owned()))
    }

    fn close_channels(&self, project: &str, name: &str) {
        let key = (project.to_owned(), name.to_owned());
        let tasks = (self.tasks.lock().unwrap_or_else(PoisonError::into_inner)).remove(&key);
        for task in tasks.into_iter().flatten() {
            task.abort();
        }
    }

    /// Stops the sandbox and deletes its layer, socket directory and log. Idempotent.
    pub async fn remove(&self, project: &str, name: &str) -> Result<(), HostError> {
        self.close_channels(project, name);
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

    fn log(&self, project: &str, name: &str) -> PathBuf {
        Sandboxes::log_path(&self.home, project, name)
    }

    /// The guest agent's log of a sandbox.
    pub fn log_path(home: &Home, project: &str, name: &str) -> PathBuf {
        home.logs().join(format!("sandbox-{project}-{name}.log"))
    }

    /// Unique on the host: several homes (tests, users) may have the same project names.
    fn cgroup_id(&self, project: &str, name: &str) -> String {
        let home = Sha256::digest(self.home.root().as_os_str().as_encoded_bytes());
        format!("{project}-{name}-{}", &hex::encode(home)[..12])
    }
}

/// Binds `address`, retrying for a second: a listener of the sandbox's previous start may
/// still be closing.
async fn bind_retrying(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// The sandbox id range: the daemon user's `/etc/subuid` range, else the default.
fn id_range() -> IdRange {
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
fn guest_binary() -> Result<PathBuf, HostError> {
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
