//! `aistack-guest`, the guest agent: PID 1 of a sandbox. It reaps orphans, forwards
//! SIGTERM as a clean shutdown, and serves the guest protocol
//! (`aistack_sandbox::protocol`) on a unix socket.
//!
//! `aistack-guest sandbox` builds a namespace sandbox first (`aistack_sandbox::setup`,
//! the launch on standard input); `aistack-guest serve SOCKET` serves where it runs
//! (tests of the protocol; the microVM's init will be the same loop on vsock).
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

use aistack_sandbox::setup::{self, GUEST_SOCKET, Launch, Network, PROXY_SOCKET, READY};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["sandbox"] => sandbox(),
        ["serve", socket] => serve(Path::new(socket), server::Mode::Process, Vec::new()),
        ["check", dir] => check::run(Path::new(dir)),
        ["--version"] => {
            println!("aistack-guest {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => {
            eprintln!(
                "Usage: aistack-guest sandbox | aistack-guest serve SOCKET | aistack-guest check DIR"
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

/// Copies both ways between a host connection and a TCP connection inside until each
/// side has ended, passing each end of stream on (a port tunnel, a proxy connection).
pub fn splice(host: UnixStream, inside: TcpStream) -> io::Result<()> {
    let (mut from_host, mut to_inside) = (host.try_clone()?, inside.try_clone()?);
    let inbound = thread(move || {
        let _ = io::copy(&mut from_host, &mut to_inside);
        let _ = to_inside.shutdown(Shutdown::Write);
    });
    let (mut from_inside, mut to_host) = (inside, host);
    let _ = io::copy(&mut from_inside, &mut to_host);
    let _ = to_host.shutdown(Shutdown::Write);
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
            network::start(net, entered.control_path(PROXY_SOCKET))?;
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

fn serve(socket: &Path, mode: server::Mode, env: Vec<(String, String)>) -> io::Result<()> {
    let server = server::Server::bind(socket, mode, env)?;
    let mut stdout = io::stdout();
    writeln!(stdout, "{READY}")?;
    stdout.flush()?;
    server.run()
}
