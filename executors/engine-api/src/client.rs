//! The gateway's side of the engine socket: one HTTP/1.1 connection per request (a unix
//! socket connects in microseconds, and a dead engine shows up as a connect error rather than
//! a stale pooled connection).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::protocol::{
    EmbedRequest, EmbedResponse, EngineInfo, ErrorBody, Event, GenerateRequest, TokenizeRequest,
    TokenizeResponse,
};

/// Talking to an engine failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (the engine is not running, or died).
    #[error("Cannot reach the engine at `{}`", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke, e.g. the engine died mid-stream.
    #[error("The engine closed the connection")]
    Disconnected(#[source] Option<hyper::Error>),
    /// The engine refused the request.
    #[error("{}", .0.message)]
    Refused(ErrorBody),
    /// The engine's answer was not valid protocol.
    #[error("The engine sent an answer this version cannot read")]
    Decode(#[source] serde_json::Error),
}

/// A client of one engine process.
#[derive(Debug, Clone)]
pub struct EngineClient {
    socket: PathBuf,
}

impl EngineClient {
    /// A client for the engine listening on `socket`.
    pub fn new(socket: &Path) -> Self {
        EngineClient {
            socket: socket.to_owned(),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the engine serves; also the readiness probe.
    pub async fn info(&self) -> Result<EngineInfo, ClientError> {
        self.json(Method::GET, "/health", None::<&()>).await
    }

    /// Starts a generation. Returns once the engine accepted the request (template rendered,
    /// prompt tokenised and within the context); the events follow on the stream.
    pub async fn generate(&self, request: &GenerateRequest) -> Result<EventStream, ClientError> {
        let body = self.send(Method::POST, "/generate", Some(request)).await?;
        Ok(EventStream {
            body,
            pending: Vec::new(),
            finished: false,
        })
    }

    /// Embeds texts.
    pub async fn embed(&self, request: &EmbedRequest) -> Result<EmbedResponse, ClientError> {
        self.json(Method::POST, "/embed", Some(request)).await
    }

    /// Counts the tokens of an input.
    pub async fn tokenize(
        &self,
        request: &TokenizeRequest,
    ) -> Result<TokenizeResponse, ClientError> {
        self.json(Method::POST, "/tokenize", Some(request)).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = self.send(method, path, body).await?;
        let bytes = body
            .collect()
            .await
            .map_err(|e| ClientError::Disconnected(Some(e)))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Incoming, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Disconnected(Some(e)))?;
        tokio::spawn(connection);
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(ClientError::Decode)?,
            None => Vec::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "engine")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .expect("request parts are valid");
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Disconnected(Some(e)))?;
        let status = response.status();
        let body = response.into_body();
        if status.is_success() {
            return Ok(body);
        }
        let bytes = body
            .collect()
            .await
            .map_err(|e| ClientError::Disconnected(Some(e)))?
            .to_bytes();
        let error: ErrorBody = serde_json::from_slice(&bytes).map_err(ClientError::Decode)?;
        Err(ClientError::Refused(error))
    }
}

/// The events of one generation, ending with [`Event::Done`] or [`Event::Error`]. A stream
/// that breaks before either yields [`ClientError::Disconnected`].
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    pending: Vec<u8>,
    finished: bool,
}

impl EventStream {
    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        if self.finished {
            return None;
        }
        loop {
            if let Some(newline) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=newline).collect();
                let event = serde_json::from_slice::<Event>(&line).map_err(ClientError::Decode);
                if matches!(event, Ok(Event::Done { .. } | Event::Error { .. }) | Err(_)) {
                    self.finished = true;
                }
                return Some(event);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(ClientError::Disconnected(Some(e))));
                }
                None => {
                    self.finished = true;
                    return Some(Err(ClientError::Disconnected(None)));
                }
            }
        }
    }
}
