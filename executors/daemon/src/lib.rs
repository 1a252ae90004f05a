//! The daemon: the runtime that keeps what `up` started.
//!
//! One per `AISTACK_HOME`, enforced by an exclusive lock on `run/daemon.lock`. It serves
//! the control API ([`api`]) on `run/aistack.sock`, carries out plans with the walker and
//! [`host::MachineHost`], which hands each step to the module of its kind ([`kinds`]),
//! and records what it applied ([`state`]). What it runs lives in one [`Runtime`]: the
//! model gateways ([`gateways`]), the network-policy proxies ([`proxies`]), templates
//! ([`templates`]), sandboxes ([`sandboxes`]) and their channels ([`channels`]). The CLI
//! talks to it with [`client::Client`].

#![warn(missing_docs)]

pub mod api;
pub mod channels;
pub mod client;
pub mod gateways;
pub mod home;
pub mod host;
pub mod kinds;
pub mod proxies;
pub mod runtime;
pub mod sandboxes;
pub mod server;
pub mod serving;
pub mod sockets;
pub mod state;
pub mod status;
pub mod templates;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use aistack_store::{Store, StoreError};
use tokio::net::UnixListener;

pub use home::Home;
pub use runtime::Runtime;

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
    /// `AISTACK_HOME` is not the daemon's alone: another user could change what the daemon,
    /// running as root, reads and runs.
    #[error("`{}` is {why}", path.display())]
    UnsafeHome {
        /// The home.
        path: PathBuf,
        /// What is wrong (`writable by its group`, `owned by uid 1000`).
        why: String,
        /// The daemon's uid.
        uid: u32,
    },
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
            DaemonError::UnsafeHome { path, uid, .. } => Some(format!(
                "Make it the daemon's alone: `chown {uid} {0} && chmod go-w {0}`, or set \
                 `AISTACK_HOME` to a directory only this user can write",
                path.display()
            )),
            DaemonError::Prepare { .. } | DaemonError::Serve(_) => {
                Some("Check the permissions and free space of `AISTACK_HOME`".to_owned())
            }
        }
    }
}

/// Refuses a home another user could write to or owns: what the daemon reads there (the
/// projects' records, the guest agent it may find, templates) decides what it runs as root.
fn check_home(root: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::getuid().as_raw();
    let meta = fs::metadata(root).map_err(|source| DaemonError::Prepare {
        path: root.to_owned(),
        source,
    })?;
    let why = if meta.uid() != uid {
        format!("owned by uid {}, not by the daemon's user", meta.uid())
    } else if meta.mode() & 0o002 != 0 {
        "writable by every user".to_owned()
    } else if meta.mode() & 0o020 != 0 {
        "writable by its group".to_owned()
    } else {
        return Ok(());
    };
    Err(DaemonError::UnsafeHome {
        path: root.to_owned(),
        why,
        uid,
    })
}

/// Runs the daemon for `home` until SIGINT or SIGTERM.
pub async fn run(home: Home) -> Result<(), DaemonError> {
    raise_descriptor_limit();
    let prepare = |path: PathBuf| move |source| DaemonError::Prepare { path, source };
    home.create().map_err(prepare(home.root().to_owned()))?;
    let run_dir = home.run();
    fs::create_dir_all(&run_dir).map_err(prepare(run_dir.clone()))?;
    fs::create_dir_all(home.logs()).map_err(prepare(home.logs()))?;
    check_home(home.root())?;

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
    let runtime = Arc::new(Runtime::new(home.clone(), store, program));
    runtime.readopt_all().await;

    let app = server::App::new(Arc::clone(&runtime));
    let served = axum::serve(listener, app.router())
        .with_graceful_shutdown(shutdown_signal())
        .await;
    runtime.shutdown().await;

    let _ = fs::remove_file(&socket);
    let _ = fs::remove_file(&pid_file);
    tracing::info!("daemon stopped");
    drop(lock);
    served.map_err(DaemonError::Serve)
}

/// Raises the soft limit on open descriptors to the hard one. Every proxy connection,
/// its upstream, a published port's tunnel and an engine's socket is a descriptor, and the
/// usual soft limit (1024) is a few busy sandboxes' worth; the hard limit is what the
/// administrator allows. Children inherit it (our own engines and guests poll with
/// epoll, not `select`).
fn raise_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = ?limit.current, to = hard, "raised the open-file limit")
            }
            Err(e) => tracing::warn!("Cannot raise the open-file limit to {hard}: {e}"),
        }
    }
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
