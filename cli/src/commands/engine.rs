//! `aistack engine` (hidden): the engine process the daemon's gateway starts for a model.
//!
//! It opens what it needs by path (the model, its chat template, its socket) while it may
//! still reach them, confines itself (`aistack_engine::confine`: another user, Landlock,
//! seccomp) while it has one thread, and only then starts its runtime and reads the model.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::ExitCode;

use aistack_engine::confine::{User, confine};
use aistack_engine::serve::{ServeOptions, bind, serve};
use aistack_engine_api::Mode;
use clap::{Args, ValueEnum};

use crate::report::{Failure, Report, chain};

/// How the gateway describes the model to serve.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// The GGUF file (the first shard of a split model).
    #[arg(long)]
    model: PathBuf,
    /// The unix socket to serve on.
    #[arg(long)]
    socket: PathBuf,
    /// A Jinja chat template that replaces the GGUF's.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Tokens of context per sequence; default: the model's, at most 4096.
    #[arg(long)]
    context_size: Option<u32>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    parallel: u32,
    /// CPU threads; default: every core.
    #[arg(long)]
    threads: Option<u32>,
    /// What to serve.
    #[arg(long, value_enum, default_value_t = EngineMode::Chat)]
    mode: EngineMode,
    /// Run as this `UID:GID` once the files are open (needs root).
    #[arg(long)]
    user: Option<User>,
    /// The model's `runtime_flags`, after `--`.
    #[arg(last = true, allow_hyphen_values = true)]
    runtime_flags: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EngineMode {
    Chat,
    Embedding,
}

/// Serves until SIGTERM or SIGINT, or until the daemon that started it dies. Called before
/// any runtime exists: it confines the process while it has one thread.
pub fn engine(args: EngineArgs) -> Result<ExitCode, Failure> {
    let parent = rustix::process::getppid();
    // `up` validated them; a hand-written command line gets the same message.
    let flags = aistack_spec::runtime_flags::parse(&args.runtime_flags).map_err(|errors| {
        let e = &errors[0];
        Failure::from(Report::new(e.message.clone(), Some(e.help.clone())))
    })?;
    let unreadable = |path: &PathBuf, e: std::io::Error| {
        Failure::from(Report::new(
            format!("Cannot read `{}`: {}", path.display(), chain(&e)),
            Some("Check that the model's files exist and are readable".to_owned()),
        ))
    };
    let model = File::open(&args.model).map_err(|e| unreadable(&args.model, e))?;
    let chat_template = match &args.chat_template {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| unreadable(path, e))?),
        None => None,
    };
    let listener = bind(&args.socket)?;
    if flags.mlock && args.user.is_some() {
        // `--mlock` pins the model: root may pin any amount, another user only its
        // RLIMIT_MEMLOCK (8 MiB by default), which root may raise for it first.
        let unlimited = rustix::process::Rlimit {
            current: None,
            maximum: None,
        };
        let _ = rustix::process::setrlimit(rustix::process::Resource::Memlock, unlimited);
    }

    let confined = confine(args.user, &[model.as_fd()])?;
    // Set after the change of user, which clears it. An engine outliving its daemon would
    // hold memory and a socket nobody routes to; a daemon gone already is checked after.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    if rustix::process::getppid() != parent {
        eprintln!("The daemon that started this engine is gone");
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("Engine confined: {confined}");

    let options = ServeOptions {
        model: args.model,
        // The path the engine may still open: its own descriptor, whatever directories
        // above the model it cannot search.
        model_file: Some(PathBuf::from(format!(
            "/proc/self/fd/{}",
            model.as_raw_fd()
        ))),
        socket: args.socket,
        chat_template,
        context_size: args.context_size,
        parallel: args.parallel,
        threads: args.threads,
        mode: match args.mode {
            EngineMode::Chat => Mode::Chat,
            EngineMode::Embedding => Mode::Embedding,
        },
        flags,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::from(Report::new(
                format!("Cannot start the async runtime: {e}"),
                None,
            ))
        })?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        serve(options, listener, shutdown).await
    })?;
    drop(model);
    Ok(ExitCode::SUCCESS)
}
