//! The host's client of the guest agent: one unix connection per request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::protocol::{self, Exec, ExitStatus, Frame, Hello, Reply, Request, io_async};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("Cannot reach the guest agent at `{}`", socket.display())]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The guest agent refused: {0}")]
    Refused(String),
    #[error("The guest agent answered out of protocol: {0}")]
    Protocol(String),
    #[error("The connection to the guest agent broke")]
    Io(#[from] std::io::Error),
}

impl GuestError {
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

#[derive(Debug, Clone)]
pub struct GuestClient {
    socket: PathBuf,
}

/// The guest's answer to a health request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub version: String,
    pub uptime_ms: u64,
}

impl GuestClient {
    pub fn new(socket: &Path) -> Self {
        GuestClient {
            socket: socket.to_path_buf(),
        }
    }

    async fn request(&self, request: Request) -> Result<(UnixStream, Reply), GuestError> {
        let mut stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| GuestError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        stream
            .write_all(&protocol::json_line(&Hello::new(request)))
            .await?;
        let line = io_async::read_line(&mut stream).await?;
        let reply: Reply = serde_json::from_slice(&line)
            .map_err(|e| GuestError::Protocol(format!("unreadable reply: {e}")))?;
        match reply {
            Reply::Error { message } => Err(GuestError::Refused(message)),
            reply => Ok((stream, reply)),
        }
    }

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

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<ExitStatus>,
}

pub struct ExecSession {
    pub pid: u32,
    pub output: FrameReader,
    pub input: FrameWriter,
}

pub struct FrameReader {
    reader: OwnedReadHalf,
}

impl FrameReader {
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        io_async::read_frame(&mut self.reader).await
    }
}

pub struct FrameWriter {
    writer: OwnedWriteHalf,
}

impl FrameWriter {
    pub async fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.writer.write_all(&frame.encode()).await
    }
}
