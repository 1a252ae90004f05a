//! The control API's client: HTTP/1.1 over the daemon's unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::api::{ApiError, ApplyLine, ApplyRequest, Health, ProjectStatus};

/// Talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("Cannot reach the aistack daemon at `{}`", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("The connection to the aistack daemon broke")]
    Http(#[source] hyper::Error),
    /// The daemon answered with an error.
    #[error("The aistack daemon refused the request: {message}")]
    Status {
        /// What it said.
        message: String,
        /// Its fix, if it gave one.
        help: Option<String>,
    },
    /// The daemon's answer was not what this version expects.
    #[error("The aistack daemon sent an answer this version cannot read")]
    Decode(#[source] serde_json::Error),
}

impl ClientError {
    /// What to do about it.
    pub fn help(&self) -> Option<String> {
        match self {
            ClientError::Connect { .. } => {
                Some("Run `aistack up`, which starts it, or `aistack daemon` in another terminal".to_owned())
            }
            ClientError::Decode(_) => {
                Some("Stop the running daemon (`kill` the pid in `run/aistack.pid`) so `aistack up` starts this version".to_owned())
            }
            ClientError::Status { help: Some(help), .. } => Some(help.clone()),
            ClientError::Http(_) | ClientError::Status { .. } => Some("See `aistack logs` for the daemon's side".to_owned()),
        }
    }
}

/// A client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_owned(),
        }
    }

    /// Whether the daemon answers, and who it is.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(Method::GET, "/v1/health", None::<&()>).await
    }

    /// The status of `project`.
    pub async fn status(&self, project: &str) -> Result<ProjectStatus, ClientError> {
        self.json(Method::GET, &format!("/v1/projects/{project}"), None::<&()>)
            .await
    }

    /// Asks the running apply of `project` to stop starting steps.
    pub async fn cancel(&self, project: &str) -> Result<(), ClientError> {
        self.send(
            Method::POST,
            &format!("/v1/projects/{project}/cancel"),
            None::<&()>,
        )
        .await
        .map(drop)
    }

    /// Starts applying a plan; progress arrives on the returned channel, ending with
    /// [`ApplyLine::Finished`] (or closing early if the connection breaks).
    pub async fn apply(
        &self,
        request: &ApplyRequest,
    ) -> Result<mpsc::UnboundedReceiver<ApplyLine>, ClientError> {
        let path = format!("/v1/projects/{}/apply", request.plan.project);
        let mut body = self.send(Method::POST, &path, Some(request)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut pending: Vec<u8> = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                pending.extend_from_slice(&data);
                while let Some(newline) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=newline).collect();
                    match serde_json::from_slice::<ApplyLine>(&line) {
                        Ok(line) => {
                            if tx.send(line).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = self.send(method, path, body).await?;
        let bytes = body.collect().await.map_err(ClientError::Http)?.to_bytes();
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<hyper::body::Incoming, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        tokio::spawn(connection);
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(ClientError::Decode)?,
            None => Vec::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "aistack")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .expect("request parts are valid");
        let response = sender
            .send_request(request)
            .await
            .map_err(ClientError::Http)?;
        let status = response.status();
        let body = response.into_body();
        if status.is_success() {
            return Ok(body);
        }
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(match serde_json::from_slice::<ApiError>(&text) {
            Ok(answer) => ClientError::Status {
                message: answer.error,
                help: answer.help,
            },
            Err(_) => ClientError::Status {
                message: format!("HTTP {}", status.as_u16()),
                help: None,
            },
        })
    }
}
