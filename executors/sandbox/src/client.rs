//! The host's client of the guest agent: one unix connection per request (through the
//! VMM's vsock socket for a microVM).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::boot::{AGENT_PORT, VSOCK_SOCKET};
use crate::protocol::{self, Exec, ExitStatus, Frame, Hello, Reply, Request, io_async};

/// A failed request to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The agent's socket accepts no connection, or the agent went away before it answered
    /// (a connection accepted while it was being killed): the sandbox is not running.
    #[error("Cannot reach the guest agent at `{}`", socket.display())]
    Unreachable {
        /// The agent's socket on the host.
        socket: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The agent answered `error`, with this message.
    #[error("The guest agent refused: {0}")]
    Refused(String),
    /// The agent answered something the request does not allow, or closed the connection too early.
    #[error("The guest agent answered out of protocol: {0}")]
    Protocol(String),
    /// Reading or writing the connection failed.
    #[error("The connection to the guest agent broke")]
    Io(#[from] std::io::Error),
}

impl GuestError {
    /// The fix for this error, for a `help:` line; only an unreachable agent has one.
    pub fn help(&self) -> Option<String> {
        match self {
            GuestError::Unreachable { .. } => Some(
                "The sandbox is not running; `aistack up` starts it again (its files are kept)"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// The host's client of one sandbox's guest agent: it holds the socket's path, and each request
/// opens its own connection.
#[derive(Debug, Clone)]
pub struct GuestClient {
    socket: PathBuf,
}

/// A connection to the agent: its socket itself (namespace), or, where the control
/// directory holds the VMM's hybrid vsock socket instead, that socket after Firecracker's
/// handshake: `CONNECT <port>` answered `OK <host port>` (microvm).
async fn dial(socket: &Path) -> std::io::Result<UnixStream> {
    use std::io::{Error, ErrorKind};
    use tokio::io::AsyncReadExt;
    let error = match UnixStream::connect(socket).await {
        Err(e) if e.kind() == ErrorKind::NotFound => e,
        connected => return connected,
    };
    let vsock = socket.with_file_name(VSOCK_SOCKET);
    if !vsock.exists() {
        return Err(error);
    }
    let mut stream = UnixStream::connect(&vsock).await?;
    // A stalled vsock daemon accepts and never answers: bounded like a health request.
    let handshake = async {
        stream
            .write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
            .await?;
        // Byte by byte: what follows the line is the agent's.
        let mut line = Vec::new();
        while line.len() < 32 {
            match stream.read_u8().await? {
                b'\n' => break,
                byte => line.push(byte),
            }
        }
        Ok::<_, Error>(line)
    };
    let line = tokio::time::timeout(ANSWER_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::TimedOut,
                format!("the VMM's vsock did not answer in {ANSWER_TIMEOUT:?}"),
            )
        })??;
    if !line.starts_with(b"OK ") {
        let said = String::from_utf8_lossy(&line).into_owned();
        return Err(Error::new(
            ErrorKind::ConnectionRefused,
            format!("the VMM's vsock answered `{said}`"),
        ));
    }
    Ok(stream)
}

/// How long an agent may take to answer a health request before its sandbox counts as
/// not running. A dead sandbox's socket refuses at once; a live microVM under TCG on a
/// loaded machine may take hundreds of milliseconds, and counting it as dead would restart
/// it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// The guest's answer to a health request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The agent's version (the `aistack-guest` package's).
    pub version: String,
    /// Milliseconds since the agent started serving.
    pub uptime_ms: u64,
}

impl GuestClient {
    /// A client of the agent whose socket is `socket`; it connects only when asked.
    pub fn new(socket: &Path) -> Self {
        GuestClient {
            socket: socket.to_path_buf(),
        }
    }

    async fn request(&self, request: Request) -> Result<(UnixStream, Reply), GuestError> {
        let mut stream = dial(&self.socket)
            .await
            .map_err(|source| GuestError::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        let gone = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => GuestError::Unreachable {
                socket: self.socket.clone(),
                source,
            },
            _ => GuestError::Io(source),
        };
        stream
            .write_all(&protocol::json_line(&Hello::new(request)))
            .await
            .map_err(gone)?;
        let line = io_async::read_line(&mut stream).await.map_err(gone)?;
        let reply: Reply = serde_json::from_slice(&line)
            .map_err(|e| GuestError::Protocol(format!("unreadable reply: {e}")))?;
        match reply {
            Reply::Error { message } => Err(GuestError::Refused(message)),
            reply => Ok((stream, reply)),
        }
    }

    /// Asks the agent whether it is up, and which version it is.
    pub async fn health(&self) -> Result<Health, GuestError> {
        match self.request(Request::Health).await? {
            (
                _,
                Reply::Health {
                    version, uptime_ms, ..
                },
            ) => Ok(Health { version, uptime_ms }),
            (_, other) => Err(GuestError::Protocol(format!("{other:?} to health"))),
        }
    }

    /// Whether the agent answers within `timeout`.
    pub async fn is_up(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.health()).await,
            Ok(Ok(_))
        )
    }

    /// Starts a command; its frames follow on the returned session.
    pub async fn exec(&self, exec: Exec) -> Result<ExecSession, GuestError> {
        match self.request(Request::Exec(exec)).await? {
            (stream, Reply::Started { pid }) => {
                let (reader, writer) = stream.into_split();
                Ok(ExecSession {
                    pid,
                    output: FrameReader { reader },
                    input: FrameWriter { writer },
                })
            }
            (_, other) => Err(GuestError::Protocol(format!("{other:?} to exec"))),
        }
    }

    /// Runs a command to its end with no input; its output and status.
    pub async fn output(&self, exec: Exec) -> Result<Output, GuestError> {
        let mut session = self.exec(exec).await?;
        // A command that ends at once may have its connection closed by the agent before
        // this arrives; its output and exit status are still there to read.
        let _ = session.input.send(&Frame::StdinEof).await;
        let mut output = Output::default();
        loop {
            match session.output.next().await? {
                Some(Frame::Stdout(data)) => output.stdout.extend(data),
                Some(Frame::Stderr(data)) => output.stderr.extend(data),
                Some(Frame::Exit(status)) => {
                    output.status = Some(status);
                    return Ok(output);
                }
                Some(_) => {}
                None => {
                    return Err(GuestError::Protocol(
                        "the connection closed before the exit status".to_owned(),
                    ));
                }
            }
        }
    }

    /// A connection spliced to `127.0.0.1:port` inside the sandbox.
    pub async fn connect(&self, port: u16) -> Result<UnixStream, GuestError> {
        match self.request(Request::Connect { port }).await? {
            (stream, Reply::Connected) => Ok(stream),
            (_, other) => Err(GuestError::Protocol(format!("{other:?} to connect"))),
        }
    }

    /// Asks the agent to stop every process and exit.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), GuestError> {
        let grace_ms = grace.as_millis() as u64;
        self.request(Request::Shutdown { grace_ms }).await.map(drop)
    }
}

/// What [`GuestClient::output`] collected: everything the command wrote, and how it ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Everything it wrote to standard output (in TTY mode, the terminal's output).
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: Vec<u8>,
    /// How it ended; always set in what [`GuestClient::output`] returns.
    pub status: Option<ExitStatus>,
}

/// A command started by [`GuestClient::exec`], and the two halves of its connection.
pub struct ExecSession {
    /// The command's pid, as the agent's PID namespace numbers it.
    pub pid: u32,
    /// Frames from the guest: the command's output, then [`Frame::Exit`].
    pub output: FrameReader,
    /// Frames to the guest: standard input, signals and window sizes.
    pub input: FrameWriter,
}

/// The guest-to-host half of an exec connection.
pub struct FrameReader {
    reader: OwnedReadHalf,
}

impl FrameReader {
    /// The next frame; `None` once the guest has closed the connection.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        io_async::read_frame(&mut self.reader).await
    }
}

/// The host-to-guest half of an exec connection.
pub struct FrameWriter {
    writer: OwnedWriteHalf,
}

impl FrameWriter {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.writer.write_all(&frame.encode()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent being killed can still accept a connection and then drop it; that is a
    /// sandbox that is not running, with the `aistack up` help, not a broken protocol.
    #[tokio::test]
    async fn an_agent_that_drops_the_connection_before_answering_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let dying = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        });
        let error = GuestClient::new(&socket).health().await.unwrap_err();
        dying.await.unwrap();
        assert!(matches!(error, GuestError::Unreachable { .. }), "{error:?}");
        assert!(error.help().unwrap().contains("`aistack up`"));
    }
}
