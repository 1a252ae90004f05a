//! The daemon: the runtime that keeps what `up` started.
//!
//! One per `AISTACK_HOME`, enforced by an exclusive lock on `run/daemon.lock`. It serves
//! the control API ([`api`]) on `run/aistack.sock`, carries out plans with the walker and
//! [`host::MachineHost`], records what it applied ([`state`]), runs the model gateways
//! ([`gateways`]) and the network-policy proxies ([`proxies`]). The CLI talks to it with [`client::Client`].

pub mod api;
pub mod client;
pub mod gateways;
pub mod home;
pub mod host;
pub mod proxies;
pub mod sandboxes;
pub mod server;
pub mod serving;
pub mod state;
pub mod status;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use aistack_planner::Kind;
use aistack_store::{Store, StoreError};
use tokio::net::UnixListener;

use crate::gateways::{Gateways, applied_gateway};
use crate::proxies::Proxies;
use crate::sandboxes::Sandboxes;
use crate::state::ProjectState;

pub use home::Home;

/// The daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon holds the lock.
    #[error("Another aistack daemon is already running for `{}`", home.display())]
    AlreadyRunning {
        /// The home it serves.
        home: PathBuf,
    },
    /// A directory or file under the home could not be made.
    #[error("Cannot prepare `{}`", path.display())]
    Prepare {
        /// What.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The model store could not be opened.
    #[error("Cannot open the model store")]
    Store(#[source] StoreError),
    /// Serving stopped.
    #[error("The control API stopped")]
    Serve(#[source] io::Error),
}

impl DaemonError {
    /// What to do about it.
    pub fn help(&self) -> Option<String> {
        match self {
            DaemonError::AlreadyRunning { .. } => Some(
                "Use the running daemon, or stop it first (`kill` the pid in `run/aistack.pid`)"
                    .to_owned(),
            ),
            DaemonError::Store(e) => e.help(),
            DaemonError::Prepare { .. } | DaemonError::Serve(_) => {
                Some("Check the permissions and free space of `AISTACK_HOME`".to_owned())
            }
        }
    }
}

/// Runs the daemon for `home` until SIGINT or SIGTERM.
pub async fn run(home: Home) -> Result<(), DaemonError> {
    let prepare = |path: PathBuf| move |source| DaemonError::Prepare { path, source };
    let run_dir = home.run();
    fs::create_dir_all(&run_dir).map_err(prepare(run_dir.clone()))?;
    fs::create_dir_all(home.logs()).map_err(prepare(home.logs()))?;

    let lock_path = run_dir.join("daemon.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(prepare(lock_path.clone()))?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(DaemonError::AlreadyRunning {
            home: home.root().to_owned(),
        });
    }

    // Opening the store also clears what a killed import left in its ingest directory.
    let store = Arc::new(Store::open(&home.models()).map_err(DaemonError::Store)?);

    let socket = home.socket();
    match fs::remove_file(&socket) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(prepare(socket.clone())(e)),
        _ => {}
    }
    let listener = UnixListener::bind(&socket).map_err(prepare(socket.clone()))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
        .map_err(prepare(socket.clone()))?;
    let pid_file = run_dir.join("aistack.pid");
    state::write_atomically(&pid_file, format!("{}\n", std::process::id()).as_bytes())
        .map_err(prepare(pid_file.clone()))?;
    tracing::info!(home = %home.root().display(), pid = std::process::id(), "daemon listening");

    // Engines run as `aistack engine`: this very binary.
    let program = std::env::current_exe().map_err(prepare(PathBuf::from("/proc/self/exe")))?;
    let gateways = Arc::new(Gateways::new(program, run_dir.clone(), home.logs()));
    let proxies = Arc::new(Proxies::new(home.clone()));
    let sandboxes = Arc::new(Sandboxes::new(home.clone()));
    readopt(&home, &store, &gateways, &proxies, &sandboxes).await;

    let app = server::App::new(
        home.clone(),
        store,
        Arc::clone(&gateways),
        Arc::clone(&proxies),
        sandboxes,
    );
    let served = axum::serve(listener, app.router())
        .with_graceful_shutdown(shutdown_signal())
        .await;
    proxies.shutdown().await;
    gateways.shutdown().await;

    let _ = fs::remove_file(&socket);
    let _ = fs::remove_file(&pid_file);
    tracing::info!("daemon stopped");
    drop(lock);
    served.map_err(DaemonError::Serve)
}

/// Serves again what the projects' records say was applied, after a daemon restart.
async fn readopt(
    home: &Home,
    store: &Arc<Store>,
    gateways: &Arc<Gateways>,
    proxies: &Proxies,
    sandboxes: &Sandboxes,
) {
    for project in ProjectState::projects(home) {
        readopt_proxies(home, proxies, &project).await;
        readopt_project(home, store, gateways, &project).await;
        readopt_sandboxes(home, gateways, proxies, sandboxes, &project).await;
    }
}

/// Gives the running sandboxes of `project` their channels again: their published ports,
/// their own proxy listener and the forwarder of their `proxy.sock` live in the daemon,
/// while the sandboxes outlive it. A sandbox that no longer runs is left to the next `up`.
async fn readopt_sandboxes(
    home: &Home,
    gateways: &Gateways,
    proxies: &Proxies,
    sandboxes: &Sandboxes,
    project: &str,
) {
    let Ok(state) = ProjectState::load(home, project) else {
        return;
    };
    for sandbox in state
        .resources
        .iter()
        .filter(|r| r.id.kind == Kind::Sandbox)
    {
        let name = &sandbox.id.name;
        let layout = Sandboxes::layout_in(home, project, name);
        let client = aistack_sandbox::client::GuestClient::new(&layout.socket());
        if !client.is_up(std::time::Duration::from_millis(500)).await {
            continue;
        }
        let fields = recorded_payload(sandbox);
        let mut restored = sandboxes
            .publish(project, name, &fields, &layout.socket())
            .await;
        let attached = match host::access(gateways, project, name, &fields).await {
            Ok(Some(access)) => Some(proxies.attach(project, name, access).await),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
        if let Some(attached) = attached {
            restored = match (restored, attached) {
                (Ok(()), Ok(address)) => sandboxes.forward(project, name, &layout, address),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        }
        if let Err(e) = restored {
            tracing::warn!(
                project,
                "{}: channels not restored: {}",
                sandbox.id,
                e.message
            );
        }
    }
}

/// A record's fields as the JSON object its plan payload was (proxy and sandbox payloads
/// are their fields).
fn recorded_payload(applied: &aistack_planner::Applied) -> serde_json::Value {
    let fields = applied.fields.iter().map(|(k, v)| (k.clone(), v.clone()));
    serde_json::Value::Object(fields.collect())
}

/// Starts again, each on its recorded port, the proxies `project`'s record says were
/// applied and that do not run. Credential values come with the next `up`. A port now
/// taken is logged and tried again by the next apply.
pub(crate) async fn readopt_proxies(home: &Home, proxies: &Proxies, project: &str) {
    let Ok(state) = ProjectState::load(home, project) else {
        return;
    };
    for proxy in state.resources.iter().filter(|r| r.id.kind == Kind::Proxy) {
        if proxies.is_running(project, &proxy.id.name).await {
            continue;
        }
        let policy = recorded_payload(proxy);
        let port = host::recorded_port(proxy);
        if let Err(e) = proxies.apply(project, &proxy.id.name, &policy, port).await {
            tracing::warn!(project, "{}: not restarted: {}", proxy.id, e.message);
        }
    }
}

/// Serves again what `project`'s record says was applied: its gateway, its models, and its
/// preloaded engines (loaded in the background). Keys are not recorded, so a gateway that
/// needs one refuses every request until the next `up` brings it. A failure is logged and
/// leaves the rest to be served.
pub(crate) async fn readopt_project(
    home: &Home,
    store: &Arc<Store>,
    gateways: &Arc<Gateways>,
    project: &str,
) {
    let state = match ProjectState::load(home, project) {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!(project, "not re-adopted: {}", aistack_apply::chain(&e));
            return;
        }
    };
    let Some(spec) = applied_gateway(&state.resources) else {
        return;
    };
    if let Err(e) = gateways.attach(project, spec).await {
        tracing::warn!(project, "gateway not restarted: {}", e.message);
        return;
    }
    for model in state.resources.iter().filter(|r| r.id.kind == Kind::Model) {
        let registered = serving::model_config(
            store,
            project,
            &model.id.name,
            &model.fields,
            &model.outputs,
        );
        let registered = match registered {
            Ok(config) => gateways.register(config).await,
            Err(e) => Err(e),
        };
        if let Err(e) = registered {
            tracing::warn!(project, "{}: not served: {}", model.id, e.message);
        }
    }
    for engine in state.resources.iter().filter(|r| r.id.kind == Kind::Engine) {
        let (gateways, project, name) = (
            Arc::clone(gateways),
            project.to_owned(),
            engine.id.name.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = gateways.preload(&project, &name).await {
                tracing::warn!(project, "engine {name}: not loaded: {}", e.message);
            }
        });
    }
    tracing::info!(project, "re-adopted");
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
