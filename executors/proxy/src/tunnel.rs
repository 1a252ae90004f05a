//! Bytes both ways between a client and an upstream: CONNECT tunnels and upgraded
//! (WebSocket) connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a tunnel ended, with the bytes it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pumped {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
    /// Why it ended early: idle, cut by a policy change, or an I/O error.
    pub error: Option<String>,
}

const BUFFER: usize = 64 * 1024;

/// Copies both ways until both sides have closed, no byte moved for `idle`, or `cancel`
/// fires. Each direction half-closes its writer at its reader's end of stream, so a client
/// that shuts down its sending side still gets the whole answer.
pub async fn pump<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    cancel: &CancellationToken,
) -> Pumped
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let both = async {
        tokio::try_join!(
            copy(client_read, upstream_write, &up, &last, start),
            copy(upstream_read, client_write, &down, &last, start),
        )
    };
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let error = tokio::select! {
        result = both => result.err().map(|e| describe(&e)),
        () = watchdog => Some(format!("idle for {}s", idle.as_secs())),
        () = cancel.cancelled() => Some("closed: the policy no longer allows it".to_owned()),
    };
    Pumped {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        error,
    }
}

async fn copy<R, W>(
    mut reader: R,
    mut writer: W,
    count: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0; BUFFER];
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            // The peer may already be gone; its end of stream is what mattered.
            let _ = writer.shutdown().await;
            return Ok(());
        }
        writer.write_all(&buffer[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(elapsed, Ordering::Relaxed);
    }
}

/// A short description of an I/O error for the network log.
pub fn describe(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionReset => "connection reset".to_owned(),
        ErrorKind::BrokenPipe => "connection closed by the peer".to_owned(),
        ErrorKind::UnexpectedEof => "unexpected end of stream".to_owned(),
        _ => error.to_string(),
    }
}
