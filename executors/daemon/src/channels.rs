//! The host side of sandboxes' channels: a sandbox's `proxy.sock`, which its own proxy
//! serves, and its published ports. Each is a task of this daemon, kept by sandbox (or
//! build, `template:NAME`) until it is closed; the sandbox outlives them, so a restarted
//! daemon opens them again.
//!
//! A sandbox is hostile: `proxy.sock` is placed race-free in the control directory it can
//! write ([`crate::sockets`]), and serves at most [`PROXY_CONNECTIONS`] of its connections
//! at once, so that it cannot take all of the daemon's descriptors. A published port is
//! one of aistack's own listeners, which no proxy dials.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aistack_apply::HostError;
use aistack_proxy::accept::Backoff;
use aistack_proxy::{Entrance, OwnListeners};
use aistack_sandbox::backend::Layout;
use aistack_sandbox::client::GuestClient;
use aistack_sandbox::idmap::IdRange;
use aistack_sandbox::setup::{Network, PROXY_SOCKET};
use aistack_spec::values::PortMapping;

use crate::home::Home;

/// The connections one sandbox (or build) may have open to its proxy at once; the next
/// waits in the socket's queue until one closes. Each costs the daemon a descriptor, and
/// one more for its upstream; agents rarely hold more than a few dozen.
pub const PROXY_CONNECTIONS: usize = 256;

/// A task serving one channel.
type Task = tokio::task::JoinHandle<()>;

/// The open channels, by project and sandbox.
pub struct Channels {
    range: IdRange,
    own: OwnListeners,
    tasks: Mutex<HashMap<(String, String), Vec<Task>>>,
}

impl Channels {
    /// No channels yet; sockets made for sandboxes belong to `range`'s root, and published
    /// ports join `own`.
    pub fn new(range: IdRange, own: OwnListeners) -> Channels {
        Channels {
            range,
            own,
            tasks: Mutex::default(),
        }
    }

    /// Serves `proxy.sock` of the sandbox at `layout` with `proxy`, the sandbox's own.
    /// Replaces the socket of an earlier start.
    pub fn forward(
        &self,
        project: &str,
        name: &str,
        layout: &Layout,
        proxy: Entrance,
    ) -> Result<(), HostError> {
        let cannot = |e: std::io::Error| {
            HostError::new(format!(
                "Cannot serve the proxy socket of sandbox `{name}`: {e}"
            ))
        };
        layout.prepare(self.range).map_err(cannot)?;
        // Only sandbox root (the agent) may use it.
        let root = self.range.base;
        let path = layout.control.join(PROXY_SOCKET);
        let listener = crate::sockets::bind_owned(&path, root, root, 0o600).map_err(cannot)?;
        self.keep(project, name, proxy.serve(listener, PROXY_CONNECTIONS));
        Ok(())
    }

    /// Publishes the sandbox's `ports`: a host listener per mapping whose every
    /// connection is tunnelled to the sandbox port through the agent at `socket`
    /// (`connect`).
    pub async fn publish(
        &self,
        project: &str,
        name: &str,
        ports: &[PortMapping],
        socket: &Path,
    ) -> Result<(), HostError> {
        for mapping in ports {
            let address = SocketAddr::new(mapping.host_ip, mapping.host_port);
            let listener = bind_retrying(address).await.map_err(|e| HostError {
                message: format!("Cannot publish `{mapping}` of sandbox `{name}`: {e}"),
                help: Some(format!(
                    "Stop what listens on `{address}`, or publish another host port in `sandboxes.{name}.ports`"
                )),
            })?;
            let client = GuestClient::new(socket);
            let port = mapping.sandbox_port;
            let own = self.own.add(listener.local_addr().unwrap_or(address));
            let mut backoff = Backoff::new(format!("Port `{mapping}` of sandbox `{name}`"));
            let task = tokio::spawn(async move {
                // No proxy dials it while it listens: dropped with the task.
                let _own = own;
                loop {
                    match listener.accept().await {
                        Ok((mut outside, _)) => {
                            backoff.accepted();
                            let client = client.clone();
                            tokio::spawn(async move {
                                if let Ok(mut inside) = client.connect(port).await {
                                    let _ =
                                        tokio::io::copy_bidirectional(&mut outside, &mut inside)
                                            .await;
                                }
                            });
                        }
                        Err(error) => {
                            if !backoff.failed(&error).await {
                                return;
                            }
                        }
                    }
                }
            });
            self.keep(project, name, task);
        }
        Ok(())
    }

    fn keep(&self, project: &str, name: &str, task: Task) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (project.to_owned(), name.to_owned());
        tasks.entry(key).or_default().push(task);
    }

    /// Whether `name` of `project` has open channels.
    pub fn are_open(&self, project: &str, name: &str) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.contains_key(&(project.to_owned(), name.to_owned()))
    }

    /// Closes the channels of `name` of `project`. Idempotent.
    pub fn close(&self, project: &str, name: &str) {
        let key = (project.to_owned(), name.to_owned());
        let tasks = (self.tasks.lock().unwrap_or_else(PoisonError::into_inner)).remove(&key);
        for task in tasks.into_iter().flatten() {
            task.abort();
        }
    }
}

/// The network of a sandbox with a proxy: the project CA it trusts.
pub fn network(home: &Home, project: &str) -> Result<Network, HostError> {
    let ca = home.project(project).join("ca.pem");
    let ca_pem = fs::read_to_string(&ca).map_err(|e| {
        HostError::new(format!(
            "Cannot read the project CA `{}`: {e}",
            ca.display()
        ))
    })?;
    Ok(Network { ca_pem })
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
