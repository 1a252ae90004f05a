//! One proxy: the policy it enforces, the registry of open upstream connections (so that
//! a policy change closes exactly those it no longer allows), and its entrances — a
//! loopback TCP listener for host processes, and unix listeners handed to it (a sandbox's
//! `proxy.sock`).
//!
//! Who may come in: a TCP listener serves only processes of the user the proxy runs as
//! (the kernel says whose each connection is, [`crate::peer`]); any local user can connect
//! to loopback, and the listener adds credentials. A unix listener is guarded by its
//! file's owner and mode, and serves at most a fixed number of connections at once, so
//! one sandbox cannot take all of the daemon's descriptors.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accept::Backoff;
use crate::authority::Authority;
use crate::config::{Config, Limits};
use crate::destination::{Destination, canonical};
use crate::exchange::{self, Client};
use crate::netlog::{Entry, NetworkLog};
use crate::own::{Listening, OwnListeners};
use crate::peer::Peers;
use crate::policy::Decision;
use crate::resolve::Resolve;

/// Connections waiting to be accepted, at most (the kernel caps it at `somaxconn`).
const BACKLOG: u32 = 4096;

/// Reads a secret (a credential's `from_env`) at request time.
pub type Secrets = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What a listener runs with, fixed for its lifetime.
#[derive(Clone)]
pub struct Settings {
    /// Sizes and timeouts.
    pub limits: Limits,
    /// How names are resolved.
    pub resolver: Arc<dyn Resolve>,
    /// Where decisions go.
    pub log: NetworkLog,
    /// The project's CA, which signs the certificates of intercepted hosts.
    pub authority: Arc<Authority>,
    /// How upstreams of intercepted hosts are verified.
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// Credential values, by variable name.
    pub secrets: Secrets,
    /// Where aistack listens: never dialled, whatever the policy says. The proxy's own
    /// TCP listener joins it.
    pub own: OwnListeners,
}

/// A running proxy and its TCP listener, if it has one.
pub struct Proxy {
    shared: Arc<Shared>,
    tcp: Option<Tcp>,
}

/// A proxy's loopback listener.
struct Tcp {
    address: SocketAddr,
    task: JoinHandle<()>,
    _own: Listening,
}

/// A handle to a running proxy that serves connections from listeners it is handed, for
/// as long as the proxy runs.
#[derive(Clone)]
pub struct Entrance {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    config: RwLock<Arc<Config>>,
    pub(crate) settings: Settings,
    live: Mutex<HashMap<u64, Live>>,
    next: AtomicU64,
    stop: CancellationToken,
}

/// An open upstream connection, as the policy sees it.
struct Live {
    destination: Destination,
    port: u16,
    address: IpAddr,
    cancel: CancellationToken,
}

/// Removes a connection from the registry when it ends.
pub(crate) struct LiveGuard {
    shared: Arc<Shared>,
    id: u64,
    /// Fires when the policy no longer allows the connection, or the listener stops.
    pub(crate) cancel: CancellationToken,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        lock(&self.shared.live).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Who a client of a TCP listener is, when it is not the proxy's own user: its requests
/// are refused, and logged.
#[derive(Debug, Clone)]
pub(crate) enum Stranger {
    /// Another user's process.
    Uid(u32),
    /// The kernel could not say (the client went away, or no lookup works here).
    Unknown(String),
}

impl Proxy {
    /// A proxy enforcing `config` with no entrance yet: it serves the listeners handed to
    /// its [`Entrance`] until [`Proxy::shutdown`].
    #[must_use]
    pub fn new(config: Config, settings: Settings) -> Proxy {
        let shared = Arc::new(Shared {
            config: RwLock::new(Arc::new(config)),
            settings,
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            stop: CancellationToken::new(),
        });
        Proxy { shared, tcp: None }
    }

    /// A proxy listening on `address` (port 0 picks one) for processes of this user, until
    /// [`Proxy::shutdown`]. The address joins the settings' [`OwnListeners`].
    ///
    /// # Errors
    ///
    /// The address cannot be bound.
    pub async fn bind(
        address: SocketAddr,
        config: Config,
        settings: Settings,
    ) -> io::Result<Proxy> {
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        // Agents open connections in bursts; a short queue turns a burst into retries.
        let listener = socket.listen(BACKLOG)?;
        let address = listener.local_addr()?;
        let mut proxy = Proxy::new(config, settings);
        let own = proxy.shared.settings.own.add(address);
        let task = tokio::spawn(accept_tcp(listener, Arc::clone(&proxy.shared)));
        proxy.tcp = Some(Tcp {
            address,
            task,
            _own: own,
        });
        Ok(proxy)
    }

    /// Where host processes connect, for a proxy with a TCP listener.
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().map(|tcp| tcp.address)
    }

    /// A handle that serves more listeners with this proxy.
    #[must_use]
    pub fn entrance(&self) -> Entrance {
        Entrance {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Enforces `config` from the next request on. Open connections the new policy still
    /// allows (to the address they were dialled to) go on; the others are closed. Returns
    /// how many were closed.
    pub fn update(&self, config: Config) -> usize {
        let config = Arc::new(config);
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::clone(&config);
        let own = &self.shared.settings.own;
        let live = lock(&self.shared.live);
        let mut closed = 0;
        for connection in live.values() {
            let verdict =
                (config.policy).check(&connection.destination, connection.port, own, |_| {
                    vec![connection.address]
                });
            if verdict.decision == Decision::Deny {
                connection.cancel.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// The number of open upstream connections.
    #[must_use]
    pub fn connections(&self) -> usize {
        lock(&self.shared.live).len()
    }

    /// Stops accepting, on every entrance, and closes every connection.
    pub async fn shutdown(self) {
        self.shared.stop.cancel();
        if let Some(tcp) = self.tcp {
            let _ = tcp.task.await;
        }
    }
}

impl Entrance {
    /// Serves the clients of `listener` with this proxy, at most `limit` at once: the next
    /// waits in the listener's queue until one closes. The task ends when the proxy stops
    /// (or is aborted, which closes the listener).
    #[must_use]
    pub fn serve(&self, listener: UnixListener, limit: usize) -> JoinHandle<()> {
        tokio::spawn(accept_unix(listener, Arc::clone(&self.shared), limit))
    }
}

async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let me = rustix::process::geteuid().as_raw();
    let peers = Arc::new(Peers::new());
    let mut backoff = Backoff::new(format!("The proxy `{}`", shared.config().source));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.accepted();
                let (shared, peers) = (Arc::clone(&shared), Arc::clone(&peers));
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let stranger = match stream.local_addr() {
                        Ok(local) => match peers.uid(local, peer) {
                            Ok(uid) if uid == me => None,
                            Ok(uid) => Some(Stranger::Uid(uid)),
                            Err(error) => Some(Stranger::Unknown(error.to_string())),
                        },
                        Err(error) => Some(Stranger::Unknown(error.to_string())),
                    };
                    serve(shared, stream, stranger).await;
                });
            }
            Err(error) => {
                tokio::select! {
                    go_on = backoff.failed(&error) => if !go_on { return },
                    () = shared.stop.cancelled() => return,
                }
            }
        }
    }
}

async fn accept_unix(listener: UnixListener, shared: Arc<Shared>, limit: usize) {
    let source = shared.config().source.clone();
    let mut backoff = Backoff::new(format!("The proxy socket of `{source}`"));
    let open = Arc::new(Semaphore::new(limit));
    let mut full = false;
    loop {
        let permit = match Arc::clone(&open).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !full {
                    full = true;
                    tracing::warn!(
                        "`{source}` has {limit} connections open to its proxy; more wait until one closes"
                    );
                }
                tokio::select! {
                    permit = Arc::clone(&open).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    () = shared.stop.cancelled() => return,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff.accepted();
                if open.available_permits() > limit / 2 {
                    full = false;
                }
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    serve(shared, stream, None).await;
                    drop(permit);
                });
            }
            Err(error) => {
                drop(permit);
                tokio::select! {
                    go_on = backoff.failed(&error) => if !go_on { return },
                    () = shared.stop.cancelled() => return,
                }
            }
        }
    }
}

async fn serve<S>(shared: Arc<Shared>, stream: S, stranger: Option<Stranger>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = shared.stop.clone();
    let client = Arc::new(Client::default());
    let limits = shared.settings.limits;
    let service = {
        let shared = Arc::clone(&shared);
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            let client = Arc::clone(&client);
            let stranger = stranger.clone();
            async move {
                let response = match &stranger {
                    None => exchange::handle(&shared, &client, request).await,
                    Some(stranger) => exchange::stranger(&shared, &request, stranger),
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let connection = http1_builder(&limits)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = connection => {}
        () = stop.cancelled() => {}
    }
}

/// The HTTP/1 server settings for clients, also used inside intercepted tunnels.
pub(crate) fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.head_bytes())
        .preserve_header_case(true)
        // A client that shuts its side after the request (busybox `nc`, scripts) still
        // gets the answer.
        .half_close(true);
    builder
}

/// The outcome of deciding one request.
pub(crate) enum Decided {
    /// Allowed: the rule, and the checked addresses to dial, in order.
    Allowed {
        rule: String,
        addresses: Vec<IpAddr>,
    },
    /// Denied by the rule.
    Denied { rule: String },
    /// The name has no address.
    Unresolved { error: String },
}

impl Shared {
    /// The policy in force now.
    pub(crate) fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Decides under `config`: a name a deny rule names is not looked up; any other name
    /// is resolved once, and every address of that one answer is checked.
    pub(crate) async fn decide(
        &self,
        config: &Config,
        destination: &Destination,
        port: u16,
    ) -> Decided {
        let addresses = match destination {
            Destination::Ip(ip) => vec![canonical(*ip)],
            Destination::Name(name) => {
                if let Some(verdict) = config.policy.deny_by_name(name, port) {
                    return Decided::Denied {
                        rule: verdict.reason.to_string(),
                    };
                }
                match self.settings.resolver.resolve(name).await {
                    Ok(found) if !found.is_empty() => found.into_iter().map(canonical).collect(),
                    Ok(_) => {
                        return Decided::Unresolved {
                            error: "no address".to_owned(),
                        };
                    }
                    Err(error) => {
                        return Decided::Unresolved {
                            error: error.to_string(),
                        };
                    }
                }
            }
        };
        let verdict =
            (config.policy).check(destination, port, &self.settings.own, |_| addresses.clone());
        match verdict.decision {
            Decision::Allow => Decided::Allowed {
                rule: verdict.reason.to_string(),
                addresses,
            },
            Decision::Deny => Decided::Denied {
                rule: verdict.reason.to_string(),
            },
        }
    }

    /// Connects to the first of `addresses` that answers: only addresses the policy
    /// checked, and no name resolved again.
    pub(crate) async fn dial(
        &self,
        addresses: &[IpAddr],
        port: u16,
    ) -> io::Result<(TcpStream, IpAddr)> {
        let timeout = self.settings.limits.connect_timeout;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for &address in addresses {
            match tokio::time::timeout(timeout, TcpStream::connect((address, port))).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, address));
                }
                Ok(Err(error)) => last = error,
                Err(_) => {
                    last = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {}s", timeout.as_secs()),
                    );
                }
            }
        }
        Err(last)
    }

    /// Registers an open upstream connection, so a policy change can close it.
    pub(crate) fn register(
        self: &Arc<Self>,
        destination: &Destination,
        port: u16,
        address: IpAddr,
    ) -> LiveGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = self.stop.child_token();
        lock(&self.live).insert(
            id,
            Live {
                destination: destination.clone(),
                port,
                address,
                cancel: cancel.clone(),
            },
        );
        LiveGuard {
            shared: Arc::clone(self),
            id,
            cancel,
        }
    }

    /// A log entry for a request that arrived now.
    pub(crate) fn entry(
        &self,
        config: &Config,
        method: &str,
        destination: &Destination,
        port: u16,
    ) -> Entry {
        Entry {
            time: Entry::now_time(),
            source: config.source.clone(),
            method: method.to_owned(),
            host: destination.to_string(),
            port,
            address: None,
            rule: String::new(),
            decision: crate::netlog::DENY.to_owned(),
            status: 0,
            bytes_up: 0,
            bytes_down: 0,
            intercepted: false,
            error: None,
        }
    }

    /// The network log.
    pub(crate) fn log(&self) -> &NetworkLog {
        &self.settings.log
    }
}
