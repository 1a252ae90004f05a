//! The model gateway (DESIGN §6): one HTTP listener per `gateway.listen` address, serving the
//! models registered by the projects that name it in the OpenAI, Docker Model Runner, Ollama,
//! Anthropic and Gemini dialects, in front of engine processes (`aistack engine`) it starts on
//! demand. Dialects translate to the engine protocol of `aistack_engine_api`; the engines do
//! templates, tools and grammars.
//!
//! Generation takes one path whatever the dialect. Each dialect module (`openai`,
//! `responses`, `ollama`, `anthropic`, `gemini`) is only a decoder, from its request to the engine's neutral request,
//! and an encoder (`driver::Encoder`), from how the generation went to its whole body or its
//! stream events. The `driver` owns all between: the lease on the model's engine and its queue,
//! tool-call splitting, errors before and during a stream, metrics, and streaming itself;
//! `framing` writes the events as SSE or NDJSON, `error` shapes failures for each dialect, and
//! `request` reads what every model route is asked (the body, the model, the metrics label).
//! So a new dialect is one file. Embeddings (`embed`), listings and Ollama's model routes are
//! not generation and answer directly.

#![warn(missing_docs)]

mod admission;
mod anthropic;
mod config;
mod driver;
mod embed;
mod error;
mod framing;
mod gemini;
mod host;
mod http;
mod launch;
mod metrics;
mod models;
mod ollama;
mod openai;
mod request;
mod responses;
mod scope;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use aistack_engine_api::Mode;
use axum::serve::ListenerExt;
pub use config::{Auth, EngineUser, GatewayError, KeepAlive, Launcher, ModelConfig, Settings};
pub use host::MODELS_HOST;
pub use launch::engine_environment;
pub use models::{LoadedStatus, ModelStatus};
pub use scope::HEADER as SCOPE_HEADER;
use tokio_util::sync::CancellationToken;

use crate::models::Models;
use crate::state::{Shared, State};

/// The default request body limit.
pub const DEFAULT_BODY_LIMIT: usize = 16 << 20;

/// A running listener and its models. Cloning gives another handle to the same gateway.
#[derive(Clone)]
pub struct Gateway {
    addr: SocketAddr,
    shared: Shared,
    stop: CancellationToken,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Binds `settings.listen` and starts serving (no models yet).
    ///
    /// # Errors
    ///
    /// [`GatewayError::Bind`] when the address is taken or not this machine's.
    pub async fn start(
        mut settings: Settings,
        launcher: Launcher,
    ) -> Result<Gateway, GatewayError> {
        let listen = settings.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().unwrap_or(listen);
        // The bound port, where `listen` asked for any.
        settings.listen = addr;
        // Streams are many small writes; Nagle's algorithm would hold a token back until the
        // previous write is acknowledged.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let budget = settings.memory_budget;
        let shared: Shared = Arc::new(State::new(settings, Models::new(launcher, budget)));
        let stop = CancellationToken::new();
        let app = http::router(shared.clone());
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let serve = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(%addr, "Gateway stopped serving: {e}");
            }
        });
        let reaper = shared.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    _ = tick.tick() => reaper.models.reap().await,
                }
            }
        });
        tracing::info!(%addr, "Gateway listening");
        Ok(Gateway { addr, shared, stop })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// New CORS origins, key, budget and body limit, for requests from now on. The listen
    /// address stays.
    pub fn set_settings(&self, settings: Settings) {
        self.shared.set_settings(settings);
    }

    /// Serves `model`, replacing an earlier registration of the same project and name (its
    /// engine stops when anything changed; the next request loads the new one).
    ///
    /// # Errors
    ///
    /// [`GatewayError::Conflict`] when another project serves that name here.
    pub async fn register(&self, model: ModelConfig) -> Result<(), GatewayError> {
        self.shared.models.register(model).await
    }

    /// Stops serving a model, stopping its engine.
    pub async fn unregister(&self, project: &str, name: &str) {
        self.shared.models.unregister(project, name).await;
    }

    /// Loads a model now instead of at its first request.
    ///
    /// # Errors
    ///
    /// [`GatewayError::UnknownModel`], and whatever loading fails with.
    pub async fn preload(&self, project: &str, name: &str) -> Result<(), GatewayError> {
        let entry = self
            .shared
            .models
            .find(name)
            .ok()
            .filter(|e| e.config.project == project)
            .ok_or_else(|| GatewayError::UnknownModel {
                project: project.to_owned(),
                name: name.to_owned(),
            })?;
        self.shared.models.ensure_loaded(&entry).await.map(drop)
    }

    /// Every registered model and its engine.
    pub fn models(&self) -> Vec<ModelStatus> {
        self.shared.models.status()
    }

    /// Stops the listener and every engine.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.shared.models.stop_all().await;
    }
}
