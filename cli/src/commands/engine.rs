//! `aistack engine` (hidden): the engine process the daemon's gateway starts for a model.

use std::path::PathBuf;
use std::process::ExitCode;

use aistack_engine::serve::{ServeOptions, serve};
use aistack_engine_api::Mode;
use clap::{Args, ValueEnum};

use crate::report::{Failure, Report};

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
    /// The model's `runtime_flags`, after `--`.
    #[arg(last = true, allow_hyphen_values = true)]
    runtime_flags: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EngineMode {
    Chat,
    Embedding,
}

/// Serves until SIGTERM or SIGINT, or until the daemon that started it dies.
pub async fn engine(args: EngineArgs) -> Result<ExitCode, Failure> {
    // An engine outliving its daemon would hold memory and a socket nobody routes to.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    // `up` validated them; a hand-written command line gets the same message.
    let flags = aistack_spec::runtime_flags::parse(&args.runtime_flags).map_err(|errors| {
        let e = &errors[0];
        Failure::from(Report::new(e.message.clone(), Some(e.help.clone())))
    })?;
    let options = ServeOptions {
        model: args.model,
        socket: args.socket,
        chat_template: args.chat_template,
        context_size: args.context_size,
        parallel: args.parallel,
        threads: args.threads,
        mode: match args.mode {
            EngineMode::Chat => Mode::Chat,
            EngineMode::Embedding => Mode::Embedding,
        },
        flags,
    };
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
    serve(options, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
