//! The guest agent protocol, version 1 (ARCHITECTURE.md, "Guest agent protocol").
//!
//! One stream connection per operation, as Firecracker's vsock model has it. The host
//! writes one JSON line, a [`Hello`]; the guest answers with one JSON line, a [`Reply`].
//! After `Started` (exec) both sides exchange [`Frame`]s until the guest sends `Exit` and
//! closes; after `Connected` (a port tunnel) the connection carries raw bytes.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. A guest answers a request of another version
/// with an error naming both.
pub const PROTOCOL: u32 = 1;

/// The longest request or reply line accepted, in bytes, its newline left out.
pub const MAX_LINE: usize = 1 << 20;
/// The longest frame payload accepted, in bytes; a longer length is refused before the payload is
/// read.
pub const MAX_FRAME: usize = 1 << 20;

/// The first line of every connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    /// The version the host speaks: [`PROTOCOL`].
    pub protocol: u32,
    /// What is asked; its `op` tag and fields sit beside `protocol` in the same JSON object.
    #[serde(flatten)]
    pub request: Request,
}

impl Hello {
    /// The hello carrying `request` at this build's [`PROTOCOL`].
    pub fn new(request: Request) -> Self {
        Hello {
            protocol: PROTOCOL,
            request,
        }
    }
}

/// What the host asks, one request per connection; the JSON names it in `op`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the agent up; which version is it.
    Health,
    /// Run a command.
    Exec(Exec),
    /// Connect to `127.0.0.1:port` inside the sandbox and splice this connection to it.
    Connect {
        /// The TCP port on the sandbox's loopback.
        port: u16,
    },
    /// Stop every process (SIGTERM, then SIGKILL after `grace_ms`) and exit.
    Shutdown {
        /// Milliseconds between SIGTERM and SIGKILL.
        grace_ms: u64,
    },
}

/// A command to run in the sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Exec {
    /// The program and its arguments; the program is looked up in the command's `PATH`.
    pub argv: Vec<String>,
    /// The whole environment of the command (nothing is inherited from the agent).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the user's home when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// A user name from the sandbox's `/etc/passwd`, or `UID[:GID]`; `agent` when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Run on a pseudo-terminal of this size instead of pipes.
    #[serde(default)]
    pub tty: Option<WindowSize>,
    /// Start it with no standard streams and close the connection after `Started`.
    #[serde(default)]
    pub detach: bool,
}

/// A terminal's size, in character cells.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct WindowSize {
    /// Its height, in rows.
    pub rows: u16,
    /// Its width, in columns.
    pub cols: u16,
}

/// The guest's answer to a [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to `health`: the agent is up.
    Health {
        /// The agent's version (the `aistack-guest` package's).
        version: String,
        /// The protocol version it speaks.
        protocol: u32,
        /// Milliseconds since it started serving.
        uptime_ms: u64,
    },
    /// Answer to `exec`: the command runs, and frames follow (none when it was detached).
    Started {
        /// The command's pid, as the agent's PID namespace numbers it.
        pid: u32,
    },
    /// Answer to `connect`: from here on the connection carries the port's raw bytes.
    Connected,
    /// Answer to `shutdown`: the agent stops every process and exits.
    Stopping,
    /// The request was refused or failed; the connection closes.
    Error {
        /// Why, as a sentence for the user.
        message: String,
    },
}

/// How a command ended: its exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, when the command exited.
    pub code: Option<i32>,
    /// The number of the signal that killed it, when one did.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        }
    }
}

/// The frames of an exec connection. Wire form: one kind byte, a big-endian `u32`
/// length, the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host to guest: bytes for the command's standard input.
    Stdin(Vec<u8>),
    /// Host to guest: standard input is finished.
    StdinEof,
    /// Host to guest: deliver this signal to the command's process group.
    Signal(i32),
    /// Host to guest: the terminal's new size (TTY mode).
    Resize(WindowSize),
    /// Guest to host: standard output (in TTY mode, the terminal's output).
    Stdout(Vec<u8>),
    /// Guest to host: standard error.
    Stderr(Vec<u8>),
    /// Guest to host: the command ended; the last frame.
    Exit(ExitStatus),
}

const STDIN: u8 = 0;
const STDIN_EOF: u8 = 1;
const SIGNAL: u8 = 2;
const RESIZE: u8 = 3;
const STDOUT: u8 = 0x10;
const STDERR: u8 = 0x11;
const EXIT: u8 = 0x12;

impl Frame {
    /// The frame in its wire form: the kind byte, the payload's length as a big-endian `u32`, the
    /// payload.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Frame::Stdin(data) => (STDIN, data.clone()),
            Frame::StdinEof => (STDIN_EOF, Vec::new()),
            Frame::Signal(signal) => (SIGNAL, signal.to_be_bytes().to_vec()),
            Frame::Resize(size) => {
                let mut bytes = size.rows.to_be_bytes().to_vec();
                bytes.extend(size.cols.to_be_bytes());
                (RESIZE, bytes)
            }
            Frame::Stdout(data) => (STDOUT, data.clone()),
            Frame::Stderr(data) => (STDERR, data.clone()),
            Frame::Exit(status) => (EXIT, serde_json::to_vec(status).expect("plain struct")),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend((payload.len() as u32).to_be_bytes());
        out.extend(payload);
        out
    }

    /// Decodes one frame from its kind byte and payload.
    pub fn decode(kind: u8, payload: Vec<u8>) -> io::Result<Frame> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        Ok(match kind {
            STDIN => Frame::Stdin(payload),
            STDIN_EOF => Frame::StdinEof,
            SIGNAL => {
                let bytes: [u8; 4] = payload.try_into().map_err(|_| bad("signal frame"))?;
                Frame::Signal(i32::from_be_bytes(bytes))
            }
            RESIZE => {
                let bytes: [u8; 4] = payload.try_into().map_err(|_| bad("resize frame"))?;
                Frame::Resize(WindowSize {
                    rows: u16::from_be_bytes([bytes[0], bytes[1]]),
                    cols: u16::from_be_bytes([bytes[2], bytes[3]]),
                })
            }
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            EXIT => Frame::Exit(serde_json::from_slice(&payload).map_err(|_| bad("exit frame"))?),
            other => return Err(bad(&format!("unknown frame kind {other}"))),
        })
    }

    /// Reads one frame; `None` at a clean end of stream.
    pub fn read_from(reader: &mut impl Read) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 5];
        match reader.read_exact(&mut head[..1]) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other?,
        }
        reader.read_exact(&mut head[1..])?;
        let payload = read_payload(reader, &head)?;
        Frame::decode(head[0], payload).map(Some)
    }

    /// Writes the frame in its wire form.
    pub fn write_to(&self, writer: &mut impl Write) -> io::Result<()> {
        writer.write_all(&self.encode())
    }
}

fn payload_len(head: &[u8; 5]) -> io::Result<usize> {
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    Ok(len)
}

fn read_payload(reader: &mut impl Read, head: &[u8; 5]) -> io::Result<Vec<u8>> {
    let mut payload = vec![0u8; payload_len(head)?];
    reader.read_exact(&mut payload)?;
    Ok(payload)
}

/// Reads one JSON line (the hello or the reply) byte by byte, so that nothing after the
/// newline is consumed: the frames or tunnelled bytes that follow stay in the stream.
pub fn read_line(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if reader.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before a whole line",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(line);
        }
        if line.len() == MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a line over {MAX_LINE} bytes"),
            ));
        }
        line.push(byte[0]);
    }
}

/// One JSON value and its newline.
pub fn json_line(value: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("protocol types serialise");
    line.push(b'\n');
    line
}

#[cfg(feature = "host")]
pub mod io_async {
    //! The same framing over tokio streams, for the host.
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt};

    /// Reads one frame; `None` at a clean end of stream (before a frame's first byte).
    pub async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 5];
        match reader.read_exact(&mut head[..1]).await {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other?,
        };
        reader.read_exact(&mut head[1..]).await?;
        let mut payload = vec![0u8; payload_len(&head)?];
        reader.read_exact(&mut payload).await?;
        Frame::decode(head[0], payload).map(Some)
    }

    /// Reads one JSON line (the reply) byte by byte, so that what follows the newline stays in the
    /// stream.
    pub async fn read_line(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            let byte = match reader.read_u8().await {
                Ok(byte) => byte,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the guest agent closed the connection before answering",
                    ));
                }
                Err(e) => return Err(e),
            };
            if byte == b'\n' {
                return Ok(line);
            }
            if line.len() == MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
            }
            line.push(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Stdin(b"hello".to_vec()),
            Frame::StdinEof,
            Frame::Signal(15),
            Frame::Resize(WindowSize {
                rows: 40,
                cols: 120,
            }),
            Frame::Stdout(vec![0, 1, 2]),
            Frame::Stderr(Vec::new()),
            Frame::Exit(ExitStatus {
                code: None,
                signal: Some(9),
            }),
        ];
        let mut wire = Vec::new();
        for frame in &frames {
            frame.write_to(&mut wire).unwrap();
        }
        let mut reader = &wire[..];
        for frame in &frames {
            assert_eq!(Frame::read_from(&mut reader).unwrap().as_ref(), Some(frame));
        }
        assert_eq!(Frame::read_from(&mut reader).unwrap(), None);
    }

    #[test]
    fn oversized_and_unknown_frames_are_errors() {
        let mut huge = vec![STDOUT];
        huge.extend(((MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(Frame::read_from(&mut &huge[..]).is_err());
        assert!(Frame::decode(0x7f, Vec::new()).is_err());
        assert!(Frame::decode(SIGNAL, vec![1]).is_err());
    }

    #[test]
    fn hello_is_one_flat_json_object() {
        let hello = Hello::new(Request::Connect { port: 3128 });
        let line = json_line(&hello);
        assert_eq!(line, b"{\"protocol\":1,\"op\":\"connect\",\"port\":3128}\n");
        let mut reader = &line[..];
        let back: Hello = serde_json::from_slice(&read_line(&mut reader).unwrap()).unwrap();
        assert_eq!(back, hello);
    }

    #[test]
    fn a_killed_command_reports_128_plus_the_signal() {
        let killed = ExitStatus {
            code: None,
            signal: Some(9),
        };
        assert_eq!(killed.shell_code(), 137);
    }
}
