//! The engine process (`aistack engine`): one model, served on a unix socket with the
//! protocol of `aistack_engine_api`. HTTP handlers render and tokenise on tokio's blocking
//! pool; one worker thread owns the llama.cpp context and runs the batcher (or the embedder),
//! so llama.cpp is only ever driven from that thread.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use aistack_engine_api::{
    EmbedRequest, EmbedResponse, EngineInfo, ErrorBody, ErrorKind, Event, FinishReason, Format,
    GenerateRequest, Input, Mode, Sampling, TokenizeRequest, TokenizeResponse, Usage, tools,
};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use crate::template::render_messages;
use crate::{
    Batcher, Embedder, EngineError, GenerateParams, Grammar, Job, LoadOptions, Model, Output,
    SpecialTokens, cpu_features, json_object_grammar, lazy_tool_call_grammar, schema_grammar,
    tool_call_grammar, unused_cpu_features,
};

/// What `aistack engine` was asked to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The GGUF file (the first shard of a split model), as reported on `/health`.
    pub model: PathBuf,
    /// Where llama.cpp opens the model when not at `model`: a confined engine's
    /// `/proc/self/fd/N` of the file it opened before it confined itself.
    pub model_file: Option<PathBuf>,
    /// Where it listens, as reported in the log.
    pub socket: PathBuf,
    /// The text of a Jinja chat template replacing the GGUF's (the artifact's
    /// `chat.template.jinja`).
    pub chat_template: Option<String>,
    /// Tokens of context per sequence.
    pub context_size: Option<u32>,
    /// Sequences decoded together.
    pub parallel: u32,
    /// CPU threads.
    pub threads: Option<u32>,
    /// Chat or embedding.
    pub mode: Mode,
    /// The model's `runtime_flags`.
    pub flags: aistack_spec::runtime_flags::LlamaFlags,
}

/// Starting the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model or its context could not be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The socket cannot be bound.
    #[error("Cannot listen on `{}`", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    /// What to do about it.
    #[must_use]
    pub fn help(&self) -> Option<String> {
        match self {
            ServeError::Engine(e) => e.help(),
            ServeError::Listen { .. } => {
                Some("Check that the run directory exists and is writable".to_owned())
            }
        }
    }
}

/// Binds the engine's socket (replacing a stale one a killed engine left), readable and
/// writable by its owner only: the daemon that connects.
///
/// # Errors
///
/// [`ServeError::Listen`] when it cannot be bound.
pub fn bind(socket: &Path) -> Result<std::os::unix::net::UnixListener, ServeError> {
    let failed = |source| ServeError::Listen {
        path: socket.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(failed)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    Ok(listener)
}

/// Vectors and the tokens they took.
type Embeddings = Result<(Vec<Vec<f32>>, usize), EngineError>;

enum Work {
    Generate(Job<'static>),
    Embed {
        texts: Vec<String>,
        reply: oneshot::Sender<Embeddings>,
    },
}

struct Engine {
    model: &'static Model,
    template: Option<String>,
    tokens: SpecialTokens,
    info: EngineInfo,
    work: Mutex<mpsc::Sender<Work>>,
}

/// Loads the model, starts the worker and serves on `listener` (from [`bind`]) until
/// `shutdown` completes. The socket stays: a confined engine may not remove it, so whoever
/// started the engine does.
///
/// # Errors
///
/// [`ServeError`] when anything fails before serving starts.
pub async fn serve(
    options: ServeOptions,
    listener: std::os::unix::net::UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let load = LoadOptions {
        context_size: options.context_size,
        threads: options.threads,
        flags: options.flags.clone(),
    };
    let path = (options.model_file.clone()).unwrap_or_else(|| options.model.clone());
    let model: &'static Model = tokio::task::spawn_blocking(move || Model::load(&path, &load))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map(|model| &*Box::leak(Box::new(model)))?;
    let template = options.chat_template.or_else(|| model.chat_template());
    let parallel = options.parallel.max(1);
    let work = start_worker(model, options.mode, parallel).await?;
    let kv_tokens = u64::from(model.context_size())
        * match options.mode {
            Mode::Chat => u64::from(parallel),
            Mode::Embedding => 1,
        };
    let info = EngineInfo {
        pid: std::process::id(),
        model_path: options.model.display().to_string(),
        mode: options.mode,
        context_size: model.context_size(),
        parallel,
        threads: model.threads(),
        cpu_features: cpu_features(),
        unused_cpu_features: unused_cpu_features()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        memory_bytes: model.weights_bytes() + model.kv_cache_bytes(kv_tokens),
        embedding_size: model.embedding_size(),
        trained_context: model.trained_context(),
        template_supports_tools: template
            .as_deref()
            .is_some_and(crate::template::supports_tools),
    };
    let engine = Arc::new(Engine {
        model,
        tokens: model.special_tokens(),
        template,
        info,
        work: Mutex::new(work),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/generate", post(generate))
        .route("/embed", post(embed))
        .route("/tokenize", post(tokenize))
        .with_state(engine.clone());

    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(|source| ServeError::Listen {
            path: options.socket.clone(),
            source,
        })?;
    eprintln!(
        "Engine ready: `{}` on `{}`, {} threads, {} sequences of {} tokens; {}",
        options.model.display(),
        options.socket.display(),
        engine.info.threads,
        parallel,
        engine.info.context_size,
        engine.info.cpu_features
    );
    tokio::select! {
        result = axum::serve(listener, app) => {
            if let Err(e) = result {
                eprintln!("Engine stopped serving: {e}");
            }
        }
        () = shutdown => {}
    }
    Ok(())
}

/// Starts the thread that owns the llama.cpp context; returns once the context exists.
async fn start_worker(
    model: &'static Model,
    mode: Mode,
    parallel: u32,
) -> Result<mpsc::Sender<Work>, EngineError> {
    let (tx, rx) = mpsc::channel::<Work>();
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("llama".to_owned())
        .spawn(move || match mode {
            Mode::Chat => match Batcher::new(model, parallel) {
                Ok(batcher) => {
                    let _ = ready_tx.send(Ok(()));
                    run_batcher(batcher, &rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            },
            Mode::Embedding => match Embedder::new(model) {
                Ok(embedder) => {
                    let _ = ready_tx.send(Ok(()));
                    run_embedder(embedder, &rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            },
        })
        .map_err(|e| EngineError::Decode(format!("cannot start the worker thread: {e}")))?;
    ready_rx
        .await
        .unwrap_or_else(|_| Err(EngineError::Decode("the worker thread died".to_owned())))?;
    Ok(tx)
}

/// Admits waiting jobs into free sequences before every step, so a new request joins the
/// running batch at the next token.
fn run_batcher(mut batcher: Batcher<'static, 'static>, rx: &mpsc::Receiver<Work>) {
    let mut waiting: VecDeque<Job<'static>> = VecDeque::new();
    loop {
        if batcher.is_idle() && waiting.is_empty() {
            match rx.recv() {
                Ok(work) => queue(work, &mut waiting),
                Err(_) => return,
            }
        }
        while let Ok(work) = rx.try_recv() {
            queue(work, &mut waiting);
        }
        while let Some(job) = waiting.pop_front() {
            if let Err(job) = batcher.admit(job) {
                waiting.push_front(*job);
                break;
            }
        }
        batcher.step();
    }
}

fn queue(work: Work, waiting: &mut VecDeque<Job<'static>>) {
    match work {
        Work::Generate(job) => waiting.push_back(job),
        Work::Embed { reply, .. } => {
            let _ = reply.send(Err(EngineError::WrongMode { mode: "chat" }));
        }
    }
}

fn run_embedder(mut embedder: Embedder<'static>, rx: &mpsc::Receiver<Work>) {
    while let Ok(work) = rx.recv() {
        match work {
            Work::Embed { texts, reply } => {
                let _ = reply.send(embedder.embed(&texts));
            }
            Work::Generate(mut job) => {
                (job.sink)(Output::Failed(EngineError::WrongMode { mode: "embedding" }));
            }
        }
    }
}

async fn health(State(engine): State<Arc<Engine>>) -> Response {
    axum::Json(engine.info.clone()).into_response()
}

fn refuse(error: &EngineError) -> Response {
    let body = error_body(error);
    let status = StatusCode::from_u16(body.kind.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

fn error_body(error: &EngineError) -> ErrorBody {
    let kind = match error {
        EngineError::PromptTooLong { .. } => ErrorKind::PromptTooLong,
        EngineError::EmptyPrompt | EngineError::Grammar(_) | EngineError::Template(_) => {
            ErrorKind::InvalidRequest
        }
        EngineError::WrongMode { .. } => ErrorKind::Unsupported,
        _ => ErrorKind::Internal,
    };
    let mut message = error.to_string();
    if let EngineError::Template(source) = error {
        message = format!("{message}: {source}");
    }
    let body = ErrorBody::new(kind, message);
    match error.help() {
        Some(help) => body.with_help(help),
        None => body,
    }
}

fn bad_json(error: &serde_json::Error) -> Response {
    let body = ErrorBody::new(
        ErrorKind::InvalidRequest,
        format!("The request is not valid engine protocol: {error}"),
    );
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// Renders and tokenises an input as generation would.
fn prompt_tokens(engine: &Engine, input: &Input) -> Result<Vec<LlamaToken>, EngineError> {
    let text = match input {
        Input::Text { prompt } => prompt.clone(),
        Input::Chat { messages, tools } => {
            render_messages(engine.template.as_deref(), messages, tools, &engine.tokens)?
        }
    };
    let tokens = engine.model.tokenize(&text);
    engine.model.check_prompt(&tokens)?;
    Ok(tokens)
}

/// What holds the output to the request's format; with tools and no format, a grammar that
/// holds a call the model starts to its tool's schema.
fn grammar(input: &Input, format: Option<&Format>) -> Result<Option<Grammar>, EngineError> {
    Ok(match format {
        None => match input {
            Input::Chat { tools, .. } => lazy_tool_call_grammar(tools),
            Input::Text { .. } => None,
        },
        Some(Format::JsonObject) => Some(Grammar::strict(json_object_grammar()?)),
        Some(Format::JsonSchema { schema }) => Some(Grammar::strict(schema_grammar(schema)?)),
        Some(Format::ToolCall { names }) => {
            let offered = match input {
                Input::Chat { tools, .. } => tools.as_slice(),
                Input::Text { .. } => &[],
            };
            if let Some(missing) = names
                .iter()
                .find(|n| !offered.iter().any(|t| &t.name == *n))
            {
                return Err(EngineError::Grammar(format!(
                    "the tool `{missing}` is required but not offered"
                )));
            }
            Some(Grammar::strict(tool_call_grammar(&tools::call_schema(
                offered, names,
            ))?))
        }
    })
}

/// The request's sampling over the model's defaults.
fn params(model: &Model, request: &GenerateRequest) -> GenerateParams {
    let defaults = GenerateParams::with_defaults(&model.flags().sampling);
    let Sampling {
        temperature,
        top_p,
        top_k,
        min_p,
        seed,
        repeat_penalty,
        frequency_penalty,
        presence_penalty,
    } = request.sampling.clone();
    GenerateParams {
        // `--n-predict` is a cap, as llama-server's is: agents ask for 8k-token replies,
        // which a small model sampled greedily can fill with repetition.
        max_tokens: match (request.max_tokens, defaults.max_tokens) {
            (Some(asked), Some(cap)) => Some(asked.min(cap)),
            (asked, cap) => asked.or(cap),
        },
        temperature: temperature.unwrap_or(defaults.temperature),
        top_p: top_p.unwrap_or(defaults.top_p),
        top_k: top_k.unwrap_or(defaults.top_k),
        min_p: min_p.unwrap_or(defaults.min_p),
        seed: seed.or(defaults.seed),
        stop: request.stop.clone(),
        repeat_penalty: repeat_penalty.unwrap_or(defaults.repeat_penalty),
        repeat_last_n: defaults.repeat_last_n,
        frequency_penalty: frequency_penalty.unwrap_or(defaults.frequency_penalty),
        presence_penalty: presence_penalty.unwrap_or(defaults.presence_penalty),
    }
}

async fn generate(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    let received = Instant::now();
    let request: GenerateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(&e),
    };
    if engine.info.mode != Mode::Chat {
        return refuse(&EngineError::WrongMode { mode: "embedding" });
    }
    let prepared = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || {
            let tokens = prompt_tokens(&engine, &request.input)?;
            let grammar = grammar(&request.input, request.format.as_ref())?;
            let params = params(engine.model, &request);
            if let Some(g) = &grammar {
                // Built here once so a bad grammar is a 400, not a failure mid-stream.
                engine.model.sampler(&params, Some(g))?;
            }
            Ok::<_, EngineError>((tokens, params, grammar))
        })
        .await
    };
    let (tokens, params, grammar) = match prepared {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(e)) => return refuse(&e),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let sink = Box::new(move |output: Output<'_>| match output {
        Output::Text(text) => tx
            .send(Event::Text {
                text: text.to_owned(),
            })
            .is_ok(),
        Output::Done(generation) => {
            let finish_reason = match generation.finish_reason {
                crate::FinishReason::Stop => FinishReason::Stop,
                crate::FinishReason::Length => FinishReason::Length,
            };
            let usage = Usage {
                prompt_tokens: u32::try_from(generation.prompt_tokens).unwrap_or(u32::MAX),
                cached_tokens: u32::try_from(generation.cached_tokens).unwrap_or(u32::MAX),
                completion_tokens: u32::try_from(generation.completion_tokens).unwrap_or(u32::MAX),
                time_to_first_token_ms: generation.timings.time_to_first_token_ms,
                prompt_ms: generation.timings.prompt_ms,
                decode_ms: generation.timings.decode_ms,
            };
            let _ = tx.send(Event::Done {
                finish_reason,
                usage,
            });
            true
        }
        Output::Failed(error) => {
            let _ = tx.send(Event::Error {
                error: error_body(&error),
            });
            true
        }
        Output::Listening => !tx.is_closed(),
    });
    let job = Job {
        tokens,
        params,
        grammar,
        sink,
        received,
    };
    let sent = engine
        .work
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Work::Generate(job));
    if sent.is_err() {
        return refuse(&EngineError::Decode("the worker thread stopped".to_owned()));
    }
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn embed(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    let request: EmbedRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(&e),
    };
    if engine.info.mode != Mode::Embedding {
        return refuse(&EngineError::WrongMode { mode: "chat" });
    }
    let (reply, answer) = oneshot::channel();
    let sent = engine
        .work
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Work::Embed {
            texts: request.input,
            reply,
        });
    if sent.is_err() {
        return refuse(&EngineError::Decode("the worker thread stopped".to_owned()));
    }
    match answer.await {
        Ok(Ok((embeddings, tokens))) => axum::Json(EmbedResponse {
            embeddings,
            prompt_tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
        })
        .into_response(),
        Ok(Err(e)) => refuse(&e),
        Err(_) => refuse(&EngineError::Decode("the worker thread stopped".to_owned())),
    }
}

async fn tokenize(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    let request: TokenizeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(&e),
    };
    let counted = tokio::task::spawn_blocking(move || {
        let text = match &request.input {
            Input::Text { prompt } => prompt.clone(),
            Input::Chat { messages, tools } => {
                render_messages(engine.template.as_deref(), messages, tools, &engine.tokens)?
            }
        };
        Ok::<_, EngineError>(engine.model.tokenize(&text).len())
    })
    .await;
    match counted {
        Ok(Ok(tokens)) => axum::Json(TokenizeResponse {
            tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
        })
        .into_response(),
        Ok(Err(e)) => refuse(&e),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
