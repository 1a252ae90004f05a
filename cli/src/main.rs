//! `aistack`: plan, up and down a local AI stack described by one `aistack.yaml`.

mod commands;
mod load;
mod observe;
mod progress;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::load::SpecArgs;

/// Rust ignores SIGPIPE, so `println!` to a closed pipe (`aistack status | head`) panics. A
/// reader that stopped reading is not an error: end the process as a shell pipeline expects.
fn exit_quietly_on_a_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Local AI models, engines and agent sandboxes from one committed file.
#[derive(Debug, Parser)]
#[command(name = "aistack", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// The spec file; repeat to merge several, later files winning.
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Project name. Default: `name:` in the spec, else the spec's directory name.
    #[arg(short = 'p', long = "project-name", global = true, value_name = "NAME")]
    project: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the spec file and print every problem at once.
    Validate,
    /// Show what `up` would change.
    Plan {
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Exit 0 when there are no changes, 2 when there are.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Ask the registries where model tags point now; a moved tag is a change.
        #[arg(long)]
        pull: bool,
    },
    /// Converge the machine to the spec.
    Up {
        /// Converge again whenever the spec or its `.env` changes.
        #[arg(long)]
        watch: bool,
        /// Ask the registries where model tags point now and pull those that moved.
        #[arg(long)]
        pull: bool,
        /// Show no progress.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove the project's resources.
    Down {
        /// Also delete its models from the shared store, unless another project uses them.
        #[arg(long)]
        models: bool,
    },
    /// Show the project's resources and their state.
    #[command(alias = "ps")]
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show logs.
    Logs {
        /// Whose logs: `daemon` (the default), or a model of the project (its engine).
        name: Option<String>,
        /// Keep printing new lines. (No `-f`: that is the global `--file`.)
        #[arg(long)]
        follow: bool,
    },
    /// Chat with one of the project's models: one reply to PROMPT, else interactively.
    Run {
        /// The model: its key under `models:`.
        model: String,
        /// What to ask; `-` reads it from stdin. Without it, an interactive chat when stdin
        /// is a terminal (`/bye` ends), else stdin is the prompt.
        prompt: Option<String>,
    },
    /// Print the JSON Schema of the spec file.
    Schema,
    /// Manage models in the shared store (Docker Model Runner compatible).
    #[command(subcommand)]
    Model(commands::ModelCommand),
    /// What the network policies' proxies let through and refused.
    #[command(subcommand)]
    Network(commands::NetworkCommand),
    /// The project's sandboxes.
    #[command(subcommand)]
    Sandbox(commands::SandboxCommand),
    /// The project's sandbox templates.
    #[command(subcommand)]
    Template(commands::TemplateCommand),
    /// Run a command in a running sandbox; exits with the command's code.
    Exec(commands::ExecArgs),
    /// Run the runtime in the foreground.
    Daemon,
    /// Serve one model on a unix socket (started by the daemon's gateway).
    #[command(hide = true)]
    Engine(commands::EngineArgs),
}

fn main() -> ExitCode {
    exit_quietly_on_a_closed_stdout();
    let cli = Cli::parse();
    let spec = SpecArgs {
        files: cli.global.files,
        project: cli.global.project,
    };
    // The engine confines itself while it has one thread, so it starts its own runtime after.
    let command = match cli.command {
        Command::Engine(args) => {
            return commands::engine(args).unwrap_or_else(|failure| {
                failure.eprint();
                ExitCode::FAILURE
            });
        }
        command => command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: Cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Validate => commands::validate(&spec),
            Command::Plan {
                json,
                detailed_exitcode,
                pull,
            } => commands::plan(&spec, json, detailed_exitcode, pull).await,
            Command::Up { watch, pull, quiet } => {
                commands::up(&spec, commands::UpOptions { watch, pull, quiet }).await
            }
            Command::Model(command) => commands::model(command).await,
            Command::Network(command) => commands::network(&spec, command).await,
            Command::Down { models } => commands::down(&spec, models).await,
            Command::Status { json } => commands::status(&spec, json).await,
            Command::Logs { name, follow } => commands::logs(&spec, name.as_deref(), follow).await,
            Command::Run { model, prompt } => commands::run(&spec, &model, prompt).await,
            Command::Schema => commands::schema(),
            Command::Sandbox(command) => commands::sandbox(&spec, command).await,
            Command::Template(command) => commands::template(&spec, command).await,
            Command::Exec(args) => commands::exec(&spec, args).await,
            Command::Daemon => commands::daemon().await,
            // Started before the runtime above; here it would refuse to confine itself.
            Command::Engine(args) => commands::engine(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(failure) => {
            failure.eprint();
            ExitCode::FAILURE
        }
    }
}
