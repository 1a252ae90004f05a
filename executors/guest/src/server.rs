//! The accept loop: one thread per connection, one request per connection.

use std::fs;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use aistack_sandbox::protocol::{self, Hello, PROTOCOL, Reply, Request};
use aistack_sandbox::seccomp::{self, Kernel, SetId};
use aistack_sandbox::sys;

use crate::children::Children;
use crate::exec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a sandbox: commands run as `agent` unless told otherwise, and shutdown
    /// signals the whole PID namespace. With a `workspace`, commands may not set set-uid
    /// or set-gid bits (the workspace's files are its owner's on the host).
    Init {
        /// Whether the sandbox has a workspace.
        workspace: bool,
    },
    /// An ordinary process: commands run as the agent's own user.
    Process,
}

/// Where connections come from: a unix socket on the host side of a namespace sandbox,
/// vsock in a microVM.
enum Listener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

impl Listener {
    fn accept(&self) -> io::Result<UnixStream> {
        match self {
            Listener::Unix(listener) => listener.accept().map(|(stream, _)| stream),
            Listener::Vsock(listener) => sys::vsock_accept(listener),
        }
    }
}

pub struct Server {
    listener: Listener,
    shared: Shared,
}

/// What every connection's thread needs.
#[derive(Clone)]
pub struct Shared {
    pub mode: Mode,
    pub children: Children,
    pub seccomp: Vec<seccompiler::BpfProgram>,
    /// Variables every command gets unless its request sets them (the proxy's).
    pub env: Vec<(String, String)>,
    started: Instant,
    /// PID 1 of a microVM: shutting down powers the machine off.
    machine: bool,
}

impl Server {
    pub fn bind(socket: &Path, mode: Mode, env: Vec<(String, String)>) -> io::Result<Server> {
        let _ = fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", socket.display())))?;
        // Only root of the sandbox (and the host) may connect: a command running as
        // `agent` must not reach the agent and ask for root.
        fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
        Ok(Server::new(Listener::Unix(listener), mode, env, false))
    }

    /// The server of a microVM's init, on vsock `port`. Commands cannot open vsock
    /// sockets (the seccomp filter), so only the host reaches it.
    pub fn vsock(port: u32, mode: Mode, env: Vec<(String, String)>) -> io::Result<Server> {
        let listener = sys::vsock_listen(port).map_err(|e| {
            io::Error::new(e.kind(), format!("listening on vsock port {port}: {e}"))
        })?;
        Ok(Server::new(Listener::Vsock(listener), mode, env, true))
    }

    fn new(listener: Listener, mode: Mode, env: Vec<(String, String)>, machine: bool) -> Server {
        Server {
            listener,
            shared: Shared {
                mode,
                children: Children::default(),
                seccomp: seccomp::programs(
                    match mode {
                        Mode::Init { workspace: true } => SetId::Refused,
                        _ => SetId::Allowed,
                    },
                    if machine { Kernel::Guest } else { Kernel::Host },
                ),
                env,
                started: Instant::now(),
                machine,
            },
        }
    }

    pub fn run(self) -> io::Result<()> {
        let signals = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
        sys::block_signals(&signals)?;
        let reaper = self.shared.children.clone();
        std::thread::spawn(move || reaper.reap());
        let on_signal = self.shared.clone();
        std::thread::spawn(move || {
            if let Ok(signal) = sys::wait_signal(&signals) {
                eprintln!("aistack-guest: signal {signal}");
                on_signal.shutdown(Duration::from_secs(5));
            }
        });
        let incoming = std::iter::repeat_with(|| self.listener.accept());
        crate::accept_each(incoming, |stream| {
            let shared = self.shared.clone();
            let spawned = crate::thread(move || {
                if let Err(e) = shared.handle(stream) {
                    eprintln!("aistack-guest: {e}");
                }
            });
            if let Err(e) = spawned {
                eprintln!("aistack-guest: dropping a connection: {e}");
            }
        });
        Ok(())
    }
}

impl Shared {
    fn handle(&self, mut stream: UnixStream) -> io::Result<()> {
        let line = protocol::read_line(&mut stream)?;
        let hello: Hello = match serde_json::from_slice(&line) {
            Ok(hello) => hello,
            Err(e) => return reply(&mut stream, &error(format!("Unreadable request: {e}"))),
        };
        if hello.protocol != PROTOCOL {
            let message = format!(
                "The host speaks guest protocol {} and this agent speaks {PROTOCOL}; rebuild the sandbox with the host's `aistack-guest`",
                hello.protocol
            );
            return reply(&mut stream, &error(message));
        }
        match hello.request {
            Request::Health => reply(
                &mut stream,
                &Reply::Health {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    protocol: PROTOCOL,
                    uptime_ms: self.started.elapsed().as_millis() as u64,
                },
            ),
            Request::Exec(request) => exec::run(self, stream, request),
            Request::Connect { port } => connect(stream, port, self.machine),
            Request::Shutdown { grace_ms } => {
                reply(&mut stream, &Reply::Stopping)?;
                drop(stream);
                self.shutdown(Duration::from_millis(grace_ms))
            }
        }
    }

    fn shutdown(&self, grace: Duration) -> ! {
        eprintln!("aistack-guest: shutting down");
        self.children
            .terminate(matches!(self.mode, Mode::Init { .. }), grace);
        if self.machine {
            let e = sys::power_off();
            eprintln!("aistack-guest: cannot power off: {e}");
        }
        std::process::exit(0);
    }
}

pub fn reply(stream: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    stream.write_all(&protocol::json_line(reply))
}

pub fn error(message: String) -> Reply {
    Reply::Error { message }
}

/// A port tunnel: this connection spliced to `127.0.0.1:port` inside.
fn connect(mut stream: UnixStream, port: u16, machine: bool) -> io::Result<()> {
    let upstream = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(upstream) => upstream,
        Err(e) => {
            let message = format!("Nothing accepts connections on port {port} in the sandbox: {e}");
            return reply(&mut stream, &error(message));
        }
    };
    reply(&mut stream, &Reply::Connected)?;
    let end = if machine {
        crate::HostEnd::Full
    } else {
        crate::HostEnd::Half
    };
    crate::splice(stream, upstream, end)
}
