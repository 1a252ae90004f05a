//! Bodies that count their bytes for the network log, and the response bodies the proxy
//! writes itself.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};

use crate::netlog::{Entry, NetworkLog};

/// What the proxy sends and receives.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A complete body of `text`.
pub fn text(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// No body.
pub fn empty() -> Body {
    text(Bytes::new())
}

/// The bytes one exchange moved each way.
#[derive(Debug, Default)]
pub struct Counts {
    /// Client to upstream.
    pub up: AtomicU64,
    /// Upstream to client.
    pub down: AtomicU64,
}

enum Direction {
    Up,
    Down,
}

/// An incoming body passed on, counted; the response side records the exchange's log
/// entry when it is dropped, finished or not, so a client that hangs up mid-body is logged
/// with what it got.
pub struct Counted {
    inner: Incoming,
    counts: Arc<Counts>,
    direction: Direction,
    on_drop: Option<(NetworkLog, Entry)>,
}

impl Counted {
    /// A request body on its way up.
    pub fn up(inner: Incoming, counts: Arc<Counts>) -> Body {
        Counted {
            inner,
            counts,
            direction: Direction::Up,
            on_drop: None,
        }
        .boxed()
    }

    /// A response body on its way down; `entry` is logged with the counts when it ends.
    pub fn down(inner: Incoming, counts: Arc<Counts>, log: NetworkLog, entry: Entry) -> Body {
        Counted {
            inner,
            counts,
            direction: Direction::Down,
            on_drop: Some((log, entry)),
        }
        .boxed()
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let counter = match self.direction {
                Direction::Up => &self.counts.up,
                Direction::Down => &self.counts.down,
            };
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if let Poll::Ready(Some(Err(error))) = &polled
            && let Some((_, entry)) = &mut self.on_drop
        {
            entry.error = Some(describe(error));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some((log, mut entry)) = self.on_drop.take() {
            entry.bytes_up = self.counts.up.load(Ordering::Relaxed);
            entry.bytes_down = self.counts.down.load(Ordering::Relaxed);
            log.record(entry);
        }
    }
}

/// A short description of a hyper error for the network log and error bodies.
pub fn describe(error: &hyper::Error) -> String {
    use std::error::Error as _;
    if let Some(io) = error
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
    {
        return crate::tunnel::describe(io);
    }
    if error.is_incomplete_message() {
        return "the upstream closed the connection mid-message".to_owned();
    }
    error.to_string()
}
