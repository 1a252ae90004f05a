//! `aistack exec NAME -- CMD...`: a command in a running sandbox, straight to its guest
//! agent's socket (the daemon is not on the path, so a round trip is one connection).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use aistack_daemon::sandboxes::Sandboxes;
use aistack_sandbox::client::GuestClient;
use aistack_sandbox::protocol::{Exec, Frame, WindowSize};
use clap::Args;
use tokio::io::AsyncReadExt;

use super::home;
use crate::load::SpecArgs;
use crate::report::{Failure, Report};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Pass standard input to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Run the command on a terminal (with `-i`, an interactive program's).
    #[arg(short, long)]
    tty: bool,
    /// Start the command in the background and return at once.
    #[arg(short, long)]
    detach: bool,
    /// Set an environment variable (`-e KEY=VALUE`; repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside (default: the workspace).
    #[arg(short, long)]
    workdir: Option<String>,
    /// User to run as: a name of the sandbox or `UID[:GID]` (default: `agent`).
    #[arg(short, long)]
    user: Option<String>,
    /// The sandbox: its key under `sandboxes:`.
    name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `aistack exec`: exits with the command's code (128 + the signal that ended it).
pub async fn exec(spec: &SpecArgs, args: ExecArgs) -> Result<ExitCode, Failure> {
    let loaded = spec.load()?;
    let spec_doc = &loaded.document.spec;
    let Some(sandbox) = spec_doc.sandboxes.get(&args.name) else {
        let names: Vec<_> = spec_doc
            .sandboxes
            .keys()
            .map(|k| format!("`{k}`"))
            .collect();
        return Err(Report::new(
            format!("No sandbox `{}` in the spec", args.name),
            Some(if names.is_empty() {
                "Add one under `sandboxes:` and run `aistack up`".to_owned()
            } else {
                format!("The spec's sandboxes: {}", names.join(", "))
            }),
        )
        .into());
    };
    let workspace = aistack_planner::local_path(&loaded.base_dir, &sandbox.workspace);
    // The sandbox's own variables (`env:`, its models', its agent's) are its guest's.
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Report::new(
                format!("`-e {pair}` has no `=`"),
                Some("Write it as `-e KEY=VALUE`".to_owned()),
            )
            .into());
        };
        env.insert(key.to_owned(), value.to_owned());
    }
    let request = Exec {
        argv: args.command,
        env,
        cwd: Some(
            args.workdir
                .unwrap_or_else(|| workspace.display().to_string()),
        ),
        user: args.user,
        tty: args.tty.then(window_size),
        detach: args.detach,
    };
    let socket = Sandboxes::socket(&home()?, &loaded.project, &args.name);
    session(&socket, &args.name, request, args.interactive).await
}

/// Runs `request` in sandbox `name` through its agent's `socket`, passing standard input
/// when `interactive`, and on a terminal of this one, put in raw mode, when the request
/// asks for one. Exits with the command's code (128 + the signal that ended it).
pub async fn session(
    socket: &std::path::Path,
    name: &str,
    request: Exec,
    interactive: bool,
) -> Result<ExitCode, Failure> {
    let client = GuestClient::new(socket);
    let guest_failure = |e: aistack_sandbox::client::GuestError| {
        let help = e.help();
        let message = match &e {
            aistack_sandbox::client::GuestError::Unreachable { .. } => {
                format!("Sandbox `{name}` is not running")
            }
            other => other.to_string(),
        };
        Failure::from(Report::new(message, help))
    };
    let detach = request.detach;
    let tty = request.tty.is_some();
    let session = client.exec(request).await.map_err(guest_failure)?;
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let _raw = (tty && interactive).then(RawMode::enter).flatten();
    let (mut output, mut input) = (session.output, session.input);
    let (frames, mut to_send) = tokio::sync::mpsc::channel::<Frame>(16);
    let stdin_frames = frames.clone();
    tokio::spawn(async move {
        if interactive {
            let mut stdin = tokio::io::stdin();
            let mut buffer = vec![0u8; 32 * 1024];
            while let Ok(n) = stdin.read(&mut buffer).await {
                if n == 0
                    || stdin_frames
                        .send(Frame::Stdin(buffer[..n].to_vec()))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        }
        let _ = stdin_frames.send(Frame::StdinEof).await;
    });
    if tty {
        let resizes = frames.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut changes) = signal(SignalKind::window_change()) else {
                return;
            };
            while changes.recv().await.is_some() {
                if resizes.send(Frame::Resize(window_size())).await.is_err() {
                    break;
                }
            }
        });
    }
    tokio::spawn(async move {
        // Ctrl-C goes to the command, as `docker exec` passes it on (on a raw terminal it
        // arrives as a byte instead).
        while tokio::signal::ctrl_c().await.is_ok() {
            if frames.send(Frame::Signal(SIGINT)).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(frame) = to_send.recv().await {
            if input.send(&frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        match output.next().await {
            Ok(Some(Frame::Stdout(data))) => write_all(&mut std::io::stdout(), &data),
            Ok(Some(Frame::Stderr(data))) => write_all(&mut std::io::stderr(), &data),
            Ok(Some(Frame::Exit(status))) => {
                return Ok(ExitCode::from(status.shell_code().clamp(0, 255) as u8));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return Err(Report::new(
                    format!("Lost the connection to sandbox `{name}` before the command ended"),
                    Some(format!(
                        "`aistack status` shows whether `{name}` still runs"
                    )),
                )
                .into());
            }
        }
    }
}

/// The size of this terminal (80×24 when standard output is not one).
pub fn window_size() -> WindowSize {
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(size) if size.ws_row > 0 && size.ws_col > 0 => WindowSize {
            rows: size.ws_row,
            cols: size.ws_col,
        },
        _ => WindowSize { rows: 24, cols: 80 },
    }
}

/// This terminal in raw mode until dropped: keys go to the sandbox's terminal as typed.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

fn write_all(out: &mut impl Write, data: &[u8]) {
    let _ = out.write_all(data);
    let _ = out.flush();
}

const SIGINT: i32 = 2;
