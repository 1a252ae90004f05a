//! `aistack-guest`, the guest agent: PID 1 of a sandbox. It reaps orphans, forwards
//! SIGTERM as a clean shutdown, and serves the guest protocol
//! (`aistack_sandbox::protocol`) on a unix socket.
//!
//! `aistack-guest sandbox` builds a namespace sandbox first (`aistack_sandbox::setup`,
//! the launch on standard input); `aistack-guest serve SOCKET` serves where it runs
//! (tests of the protocol).
//! `aistack-guest vm` is a microVM's init (`aistack_sandbox::boot`), serving on vsock;
//! `aistack-guest share SOCKET VIRTIOFSD ARGS…` runs on the host and serves a microVM's files;
//! `aistack-guest jail VMM ARGS…` runs the VMM in its jail (`aistack_sandbox::jail`).
//! `aistack-guest check DIR`, run as a command inside a sandbox, tries the system calls
//! the sandbox must refuse and reports each (DIR: a writable directory, the workspace).

mod check;
mod children;
mod exec;
mod network;
mod server;
mod users;

/// Starts a thread, or says why not: in a sandbox at its process limit, thread creation
/// fails, and the agent must answer that rather than panic.
pub fn thread(body: impl FnOnce() + Send + 'static) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().spawn(body)
}

use std::io::{self, BufRead, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use aistack_sandbox::boot::{self, AGENT_PORT, BOOT_FILE, Boot, INIT_ARG};
use aistack_sandbox::jail::Jail;
use aistack_sandbox::setup::{self, GUEST_SOCKET, Launch, Network, PROXY_SOCKET, READY};
use aistack_sandbox::sys;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["sandbox"] => sandbox(),
        [INIT_ARG] => machine(),
        ["jail", ref program @ ..] if !program.is_empty() => jail(program),
        ["share", socket, ref program @ ..] if !program.is_empty() => {
            share(Path::new(socket), program)
        }
        ["serve", socket] => serve(Path::new(socket), server::Mode::Process, Vec::new()),
        ["check", dir] => check::run(Path::new(dir)),
        ["--version"] => {
            println!("aistack-guest {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => {
            eprintln!(
                "Usage: aistack-guest sandbox | vm | share SOCKET PROGRAM ARGS… | jail PROGRAM ARGS… | serve SOCKET | check DIR"
            );
            eprintln!("help: the daemon starts this program; it is not run by hand");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aistack-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Calls `serve` with each accepted connection until the listener closes. A failed accept
/// (descriptors or memory exhausted) waits a little, longer while it lasts (at most a
/// second), and is reported once per run of failures, so the listener outlives the
/// shortage instead of spinning or ending.
pub fn accept_each<S>(incoming: impl Iterator<Item = io::Result<S>>, mut serve: impl FnMut(S)) {
    let mut pause = std::time::Duration::ZERO;
    for connection in incoming {
        match connection {
            Ok(connection) => {
                pause = std::time::Duration::ZERO;
                serve(connection);
            }
            Err(e) => {
                if pause.is_zero() {
                    eprintln!("aistack-guest: accepting a connection: {e}");
                }
                pause = (pause * 2).clamp(
                    std::time::Duration::from_millis(10),
                    std::time::Duration::from_secs(1),
                );
                std::thread::sleep(pause);
            }
        }
    }
}

/// How a host connection passes on the end of what the inside sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEnd {
    /// A unix socket: half-closed, so the host may still send (namespace).
    Half,
    /// Vsock through `vhost-device-vsock`, which passes on only a full shutdown and drops a
    /// half one. A server inside that ended (a port tunnel): closed both ways, or the host
    /// would wait for an end that never comes.
    Full,
    /// The same transport, for a client inside (the proxy channel): left open, since a
    /// client that ended its request still waits for the answer; the host's end of the
    /// answer ends the connection.
    Open,
}

/// Copies both ways between a host connection and a TCP connection inside until each
/// side has ended, passing each end of stream on (a port tunnel, a proxy connection).
pub fn splice(host: UnixStream, inside: TcpStream, end: HostEnd) -> io::Result<()> {
    let (mut from_host, mut to_inside) = (host.try_clone()?, inside.try_clone()?);
    let inbound = thread(move || {
        let _ = io::copy(&mut from_host, &mut to_inside);
        let _ = to_inside.shutdown(Shutdown::Write);
    });
    let (mut from_inside, mut to_host) = (inside, host);
    let _ = io::copy(&mut from_inside, &mut to_host);
    match end {
        HostEnd::Half => drop(to_host.shutdown(Shutdown::Write)),
        HostEnd::Full => drop(to_host.shutdown(Shutdown::Both)),
        HostEnd::Open => {}
    }
    if let Ok(inbound) = inbound {
        let _ = inbound.join();
    }
    Ok(())
}

fn sandbox() -> io::Result<()> {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut line = String::new();
    input.read_line(&mut line)?;
    let launch: Launch = serde_json::from_str(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("the launch: {e}")))?;
    let entered = setup::enter(&launch, &mut input, &mut io::stdout())?;
    users::ensure_agent()?;
    let mut env = match &launch.network {
        Some(net) => {
            let proxy = network::HostProxy::Socket(entered.control_path(PROXY_SOCKET));
            network::start(net, proxy)?;
            Network::env()
        }
        None => Vec::new(),
    };
    env.extend(launch.env.iter().cloned());
    let mode = server::Mode::Init {
        workspace: launch.workspace.is_some(),
    };
    serve(&entered.control_path(GUEST_SOCKET), mode, env)
}

/// PID 1 of a microVM sandbox: boots the guest, then serves on vsock. It powers the
/// machine off when it cannot, so the host sees the VMM end with the reason in the log.
fn machine() -> io::Result<()> {
    let e = boot_and_serve()
        .err()
        .unwrap_or_else(|| io::Error::other("the server ended"));
    eprintln!("aistack-guest: {e}");
    Err(sys::power_off())
}

fn boot_and_serve() -> io::Result<()> {
    let text = std::fs::read(BOOT_FILE)?;
    let launch: Boot = serde_json::from_slice(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("the boot file: {e}")))?;
    boot::enter(&launch)?;
    users::ensure_agent()?;
    let mut env = match &launch.network {
        Some(net) => {
            network::start(net, network::HostProxy::Vsock(boot::PROXY_PORT))?;
            Network::env()
        }
        None => Vec::new(),
    };
    env.extend(launch.env.iter().cloned());
    let mode = server::Mode::Init {
        workspace: launch.workspace.is_some(),
    };
    let server = server::Server::vsock(AGENT_PORT, mode, env)?;
    eprintln!("{}", boot::READY_LINE);
    server.run()
}

/// On the host, for a microVM: enters the VMM's jail (the [`Jail`] on standard input),
/// then becomes `program`, the VMM.
fn jail(program: &[&str]) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let jail: Jail = serde_json::from_str(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("the jail: {e}")))?;
    aistack_sandbox::jail::enter(&jail)?;
    let error = std::process::Command::new(program[0])
        .args(&program[1..])
        .env_clear()
        .exec();
    Err(io::Error::new(
        error.kind(),
        format!("running `{}`: {error}", program[0]),
    ))
}

/// On the host, for a microVM: listens on `socket`, assembles the tree virtiofsd serves in
/// a mount namespace of its own (the launch on standard input), then becomes `program`
/// (virtiofsd), which serves that tree on the listener it inherits. The listener is made
/// first: the assembly covers `/tmp`, where the socket's directory may be.
fn share(socket: &Path, program: &[&str]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let launch: Launch = serde_json::from_str(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("the launch: {e}")))?;
    // A socket left by an earlier life goes; anything else at that path stays.
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(socket)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", socket.display())))?;
    let root = setup::share(&launch)?;
    sys::keep_on_exec(&listener)?;
    let error = std::process::Command::new(program[0])
        .args(&program[1..])
        .arg(format!("--fd={}", listener.as_raw_fd()))
        .arg("--shared-dir")
        .arg(&root)
        .exec();
    Err(io::Error::new(
        error.kind(),
        format!("running `{}`: {error}", program[0]),
    ))
}

fn serve(socket: &Path, mode: server::Mode, env: Vec<(String, String)>) -> io::Result<()> {
    let server = server::Server::bind(socket, mode, env)?;
    let mut stdout = io::stdout();
    writeln!(stdout, "{READY}")?;
    stdout.flush()?;
    server.run()
}
