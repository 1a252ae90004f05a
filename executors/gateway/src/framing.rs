//! How a streamed answer is framed on the wire. Four conventions cover the dialects, so an
//! encoder names one instead of writing bytes.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::mpsc::Receiver;

/// A stream's framing: its content type, how one event is written, and what ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Server-sent `data:` events, closed by `data: [DONE]` (OpenAI's completions).
    Sse,
    /// Server-sent events each named by its payload's `type`, as Anthropic's are.
    NamedSse,
    /// Server-sent `data:` events and nothing after the last (Gemini's `alt=sse`): its clients
    /// read every frame as JSON, so OpenAI's `[DONE]` would be an error there.
    PlainSse,
    /// One JSON object a line (Ollama).
    Ndjson,
}

impl Framing {
    fn content_type(self) -> &'static str {
        match self {
            Framing::Sse | Framing::NamedSse | Framing::PlainSse => "text/event-stream",
            Framing::Ndjson => "application/x-ndjson",
        }
    }

    /// One event, framed.
    pub(crate) fn frame(self, event: &Value) -> Bytes {
        Bytes::from(match self {
            Framing::Sse | Framing::PlainSse => format!("data: {event}\n\n"),
            Framing::NamedSse => {
                // An event without a `type` takes SSE's default name.
                let name = event.get("type").and_then(Value::as_str);
                format!("event: {}\ndata: {event}\n\n", name.unwrap_or("message"))
            }
            Framing::Ndjson => format!("{event}\n"),
        })
    }

    /// What follows the last event of a stream that finished; a failed one ends at its error.
    pub(crate) fn trailer(self) -> Option<Bytes> {
        match self {
            Framing::Sse => Some(Bytes::from_static(b"data: [DONE]\n\n")),
            Framing::NamedSse | Framing::PlainSse | Framing::Ndjson => None,
        }
    }

    /// What keeps a quiet stream alive: an SSE comment line, which clients skip. One JSON
    /// object a line has no such thing, and neither has [`Framing::PlainSse`], whose clients
    /// read a comment as a frame too: its encoder sends a frame of its own.
    pub(crate) fn keep_alive(self) -> Option<Bytes> {
        match self {
            Framing::Sse | Framing::NamedSse => Some(Bytes::from_static(b": keep-alive\n\n")),
            Framing::PlainSse | Framing::Ndjson => None,
        }
    }

    /// A streaming response whose frames arrive on `frames` as they are made, marked
    /// `no-cache` as a live stream must be for proxies and clients.
    pub(crate) fn response(self, frames: Receiver<Bytes>) -> Response {
        let stream = futures_util::stream::unfold(frames, |mut frames| async move {
            let frame = frames.recv().await?;
            Some((Ok::<_, Infallible>(frame), frames))
        });
        let mut response = Response::new(Body::from_stream(stream));
        let headers = response.headers_mut();
        let content_type = HeaderValue::from_static(self.content_type());
        headers.insert(header::CONTENT_TYPE, content_type);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}
