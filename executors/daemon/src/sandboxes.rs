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

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aistack_apply::HostError;
use aistack_sandbox::agents;
use aistack_sandbox::backend::{Backend, Layout, Spec};
use aistack_sandbox::cgroup::{DEFAULT_PIDS, Limits};
use aistack_sandbox::client::GuestClient;
use aistack_sandbox::idmap::{DEFAULT_BASE, IdRange};
use aistack_sandbox::namespace::Namespace;
use aistack_sandbox::protocol::Exec;
use aistack_sandbox::rootfs;
use aistack_sandbox::setup::{CA_BUNDLE, CA_FILE, Network, PROXY_SOCKET, SYSTEM_BUNDLE};
use aistack_spec::values::PortMapping;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::home::Home;
use crate::proxies::MODELS_HOST;
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
    /// The task that waits for each sandbox this daemon started to end and removes its
    /// cgroup: a new start of the same sandbox waits for it, or the old end would remove
    /// the cgroup the new one joins.
    lives: Mutex<HashMap<(String, String), Channel>>,
}

impl Sandboxes {
    pub fn new(home: Home) -> Self {
        Sandboxes {
            home,
            range: id_range(),
            tasks: Mutex::default(),
            lives: Mutex::default(),
        }
    }

    /// The host ids that stand for the sandboxes' own.
    pub fn id_range(&self) -> IdRange {
        self.range
    }

    /// Which layers a project's template uses: `projects/<p>/templates/<name>`, a file
    /// holding their paths, top first, one per line, written when the template is built
    /// (the project's state records the step only after it, and the sandbox steps that
    /// follow need it at once).
    fn template_link(&self, project: &str, name: &str) -> PathBuf {
        self.home.project(project).join("templates").join(name)
    }

    /// A template's layers, top first, if it is built and they are all there.
    pub fn template_layers(&self, project: &str, name: &str) -> Option<Vec<PathBuf>> {
        read_layers(&self.template_link(project, name))
    }

    /// The layers of the template built from inputs hashing to `hash`, if it is built;
    /// they are linked to the project's template `name` too.
    pub fn cached_template(
        &self,
        project: &str,
        name: &str,
        hash: &str,
    ) -> Result<Option<Vec<PathBuf>>, HostError> {
        let Some(layers) = read_layers(&self.template_dir(hash).join("layers")) else {
            return Ok(None);
        };
        self.link_template(project, name, &layers)?;
        Ok(Some(layers))
    }

    fn template_dir(&self, hash: &str) -> PathBuf {
        self.home.root().join("templates").join(hash)
    }

    fn link_template(
        &self,
        project: &str,
        name: &str,
        layers: &[PathBuf],
    ) -> Result<(), HostError> {
        write_layers(&self.template_link(project, name), layers)
            .map_err(|e| HostError::new(format!("Cannot record template `{name}`: {e}")))
    }

    /// Builds a template whose inputs hash to `hash`: its base tree, then its `run:` steps
    /// in a build sandbox (their changes become a layer of its own). `build` is the
    /// sandbox's way out (the template's policy), if it has one. The layers are recorded
    /// only once all of them are there, so a killed build is done again, whole.
    pub async fn build_template(
        &self,
        project: &str,
        name: &str,
        hash: &str,
        base: Base,
        template: &Value,
        build: Option<SocketAddr>,
    ) -> Result<Vec<PathBuf>, HostError> {
        let dir = self.template_dir(hash);
        let mut layers = match base {
            Base::Dir(source) => {
                let rootfs = dir.join("rootfs");
                if !rootfs.is_dir() {
                    self.import(&rootfs, source).await?;
                }
                vec![rootfs]
            }
            Base::Image(blobs) => {
                let rootfs = dir.join("rootfs");
                if !rootfs.is_dir() {
                    self.unpack(&rootfs, blobs).await?;
                }
                vec![rootfs]
            }
            Base::Layers(layers) => layers,
        };
        if !strings(template, "run").is_empty() {
            let layer = (self.run_steps(project, name, &dir, &layers, template, build)).await?;
            layers.insert(0, layer);
        }
        write_layers(&dir.join("layers"), &layers)
            .map_err(|e| HostError::new(format!("Cannot record template `{name}`: {e}")))?;
        self.link_template(project, name, &layers)?;
        Ok(layers)
    }

    async fn import(&self, dest: &Path, source: PathBuf) -> Result<(), HostError> {
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

    /// Applies an image's layers (blob files, gzip or not), bottom first, into `dest`,
    /// made beside it and renamed into place.
    async fn unpack(&self, dest: &Path, blobs: Vec<(PathBuf, bool)>) -> Result<(), HostError> {
        let range = self.range;
        let target = dest.to_path_buf();
        let unpacked = tokio::task::spawn_blocking(move || {
            let staging = target.with_extension("unpacking");
            if staging.exists() {
                fs::remove_dir_all(&staging)?;
            }
            fs::create_dir_all(&staging)?;
            for (blob, gzip) in &blobs {
                let file = fs::File::open(blob)?;
                aistack_sandbox::layers::apply(
                    std::io::BufReader::new(file),
                    *gzip,
                    &staging,
                    range,
                )?;
            }
            fs::rename(&staging, &target)
        });
        unpacked
            .await
            .map_err(|e| HostError::new(format!("The image unpacking stopped: {e}")))?
            .map_err(|e| {
                HostError::new(format!("Cannot unpack the template's image: {e}"))
                    .with_help("Check that `from:` names a Linux container image")
            })
    }

    /// Runs a template's steps, as root, in a sandbox of its layers, and returns the
    /// layer they wrote. A failed step fails the build with its output's last lines.
    async fn run_steps(
        &self,
        project: &str,
        name: &str,
        dir: &Path,
        lower: &[PathBuf],
        template: &Value,
        build: Option<SocketAddr>,
    ) -> Result<PathBuf, HostError> {
        let steps = strings(template, "run");
        let staging = dir.join("build");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| {
                HostError::new(format!("Cannot clear an earlier build of `{name}`: {e}"))
            })?;
        }
        let hash = dir
            .file_name()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let short = &hash[..hash.len().min(12)];
        let layout = Layout::new(&staging, &self.home.run().join(format!("build-{short}")));
        let key = format!("template:{name}");
        self.close_channels(project, &key);
        let network = match build {
            Some(proxy) => {
                self.forward(project, &key, &layout, proxy)?;
                Some(self.network(project)?)
            }
            None => None,
        };
        let env = string_pairs(template, "env");
        let log = self
            .home
            .logs()
            .join(format!("template-{project}-{name}.log"));
        let spec = Spec {
            guest: guest_binary()?,
            layout: layout.clone(),
            lower: lower.to_vec(),
            workspace: None,
            hostname: format!("build-{name}"),
            range: self.range,
            owner: (self.range.agent(), self.range.agent()),
            limits: Limits::default(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_id: format!("aistack-build-{short}"),
            log: log.clone(),
            network,
            env,
        };
        let _ = fs::create_dir_all(self.home.logs());
        // A build runs on the namespace backend whatever its sandboxes use: its result is
        // a directory, the layer every backend starts from.
        let mut running = Namespace.start(&spec).await.map_err(|e| HostError {
            help: e.help(),
            message: aistack_apply::chain(&e),
        })?;
        let client = GuestClient::new(&layout.socket());
        let mut failure = None;
        for (number, step) in steps.iter().enumerate() {
            let exec = Exec {
                argv: vec!["sh".to_owned(), "-c".to_owned(), (*step).to_owned()],
                env: BTreeMap::new(),
                cwd: Some("/".to_owned()),
                user: Some("root".to_owned()),
                tty: None,
                detach: false,
            };
            let output = client.output(exec).await;
            let mut record = format!("$ {step}\n");
            let ok = match &output {
                Ok(out) => {
                    record.push_str(&String::from_utf8_lossy(&out.stdout));
                    record.push_str(&String::from_utf8_lossy(&out.stderr));
                    out.status.is_some_and(|s| s.shell_code() == 0)
                }
                Err(e) => {
                    record.push_str(&format!("{e}\n"));
                    false
                }
            };
            append(&log, &record);
            if !ok {
                let code = (output.as_ref().ok().and_then(|o| o.status))
                    .map_or("no exit status".to_owned(), |s| {
                        format!("exit {}", s.shell_code())
                    });
                let tail = last_lines(&record, 5);
                failure = Some(
                    HostError::new(format!(
                        "Step {} of template `{name}` failed ({code}): `{step}`: {tail}",
                        number + 1
                    ))
                    .with_help(format!(
                        "Fix the step in `templates.{name}.run`; its whole output is in `{}`",
                        log.display()
                    )),
                );
                break;
            }
        }
        let _ = client.shutdown(STOP_GRACE).await;
        let _ = running.child.wait().await;
        let _ = running.cgroup.remove();
        self.close_channels(project, &key);
        if let Some(failure) = failure {
            return Err(failure);
        }
        let layer = dir.join("layer");
        let ca = spec.network.as_ref().map(|n| n.ca_pem.clone());
        let finished = (|| {
            if layer.exists() {
                fs::remove_dir_all(&layer)?;
            }
            let upper = staging.join("upper");
            if let Some(pem) = &ca {
                scrub_ca(&upper, pem)?;
            }
            // The agent's home the build's guest made (empty): each sandbox makes its own,
            // owned by its agent, which a template's copy could not be.
            let _ = fs::remove_dir(upper.join("home/agent"));
            fs::rename(upper, &layer)?;
            fs::remove_dir_all(&staging)
        })();
        finished.map_err(|e| HostError::new(format!("Cannot keep the layer of `{name}`: {e}")))?;
        Ok(layer)
    }

    /// The network of a sandbox with a proxy: the project CA it trusts.
    fn network(&self, project: &str) -> Result<Network, HostError> {
        let ca = self.home.project(project).join("ca.pem");
        let ca_pem = fs::read_to_string(&ca).map_err(|e| {
            HostError::new(format!(
                "Cannot read the project CA `{}`: {e}",
                ca.display()
            ))
        })?;
        Ok(Network { ca_pem })
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
    /// listener of the policy's proxy. `backend` is the one `isolation` chose.
    pub async fn start(
        &self,
        project: &str,
        name: &str,
        sandbox: &Value,
        layers: &[PathBuf],
        proxy: Option<SocketAddr>,
        backend: &dyn Backend,
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
            Some(_) => Some(self.network(project)?),
            None => None,
        };
        let agent = sandbox
            .get("agent")
            .and_then(Value::as_str)
            .unwrap_or("shell");
        let profile = agents::profile(agent).ok_or_else(|| {
            HostError::new(format!("Sandbox `{name}` names an unknown agent `{agent}`"))
                .with_help("Plan again with this version of aistack: run `aistack up`")
        })?;
        if !layers.iter().any(|layer| profile.is_installed(layer)) {
            let template = sandbox
                .get("template")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(HostError::new(format!(
                "Agent `{agent}` of sandbox `{name}` is not installed in template `{template}`: it has no `{}` on its PATH",
                profile.command
            ))
            .with_help(format!(
                "Add the step that installs it to `templates.{template}.run`: `{}`",
                profile.install
            )));
        }
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
            None => (self.range.agent(), self.range.agent()),
        };
        let spec = Spec {
            guest: guest_binary()?,
            layout,
            lower: layers.to_vec(),
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
            env: environment(&profile, sandbox),
        };
        self.ended(project, name).await;
        let _ = fs::create_dir_all(self.home.logs());
        let mut running = backend.start(&spec).await.map_err(|e| HostError {
            help: e.help(),
            message: aistack_apply::chain(&e),
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
            let _ = cgroup.remove();
            tracing::info!(log = %log.display(), ?status, "sandbox ended");
        });
        let key = (project.to_owned(), name.to_owned());
        (self.lives.lock().unwrap_or_else(PoisonError::into_inner)).insert(key, life);
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
        let mappings = (strings(sandbox, "ports").into_iter())
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
        self.ended(project, name).await;
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
/// What every command of a sandbox gets: its agent's variables, its models' (`CHAT_URL`
/// and `CHAT_MODEL` for model `chat`, as Compose sets them), then its own `env:` (the
/// template's under the sandbox's), which wins.
fn environment(agent: &agents::Profile, sandbox: &Value) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = agent.environment().into_iter().collect();
    for model in strings(sandbox, "models") {
        let key: String = (model.chars())
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.insert(
            format!("{key}_URL"),
            format!("http://{MODELS_HOST}/engines/v1/"),
        );
        env.insert(format!("{key}_MODEL"), model.to_owned());
    }
    env.extend(string_pairs(sandbox, "env"));
    env.into_iter().collect()
}

/// The strings of the list `key` of a plan payload (none when it has no such list).
pub(crate) fn strings<'a>(payload: &'a Value, key: &str) -> Vec<&'a str> {
    (payload
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten())
    .filter_map(Value::as_str)
    .collect()
}

/// The string entries of the map `key` of a plan payload (`env:`).
fn string_pairs(payload: &Value, key: &str) -> Vec<(String, String)> {
    (payload
        .get(key)
        .and_then(Value::as_object)
        .into_iter()
        .flatten())
    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
    .collect()
}

/// Where a template's tree starts.
pub enum Base {
    /// A directory holding a root filesystem, imported.
    Dir(PathBuf),
    /// An image's layer blobs, bottom first, and whether each is gzip-compressed.
    Image(Vec<(PathBuf, bool)>),
    /// Another template's layers, top first.
    Layers(Vec<PathBuf>),
}

/// Writes a list of layers, one path a line, top first, as [`read_layers`] reads it.
fn write_layers(path: &Path, layers: &[PathBuf]) -> std::io::Result<()> {
    let text: String = layers
        .iter()
        .map(|l| format!("{}\n", l.display()))
        .collect();
    fs::create_dir_all(path.parent().expect("a parent"))?;
    write_atomically(path, text.as_bytes())
}

fn read_layers(path: &Path) -> Option<Vec<PathBuf>> {
    let text = fs::read_to_string(path).ok()?;
    let layers: Vec<PathBuf> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect();
    (!layers.is_empty() && layers.iter().all(|l| l.is_dir())).then_some(layers)
}

/// Takes the build project's CA out of a template layer: the template may serve other
/// projects, which must not trust it. Each sandbox adds its own project's CA at start.
fn scrub_ca(layer: &Path, pem: &str) -> std::io::Result<()> {
    let inside = |path: &str| layer.join(path.trim_start_matches('/'));
    for path in [CA_FILE, CA_BUNDLE] {
        match fs::remove_file(inside(path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let system = inside(SYSTEM_BUNDLE);
    if let Ok(bundle) = fs::read_to_string(&system)
        && bundle.contains(pem.trim())
    {
        fs::write(
            &system,
            bundle.replace(pem.trim(), "").replace("\n\n\n", "\n"),
        )?;
    }
    Ok(())
}

fn append(log: &Path, text: &str) {
    use std::io::Write as _;
    if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// The last `n` non-empty lines of `text`, joined by ` | ` for a one-line message.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

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
