//! `aistack sandbox run AGENT [PATH]` in a directory without `aistack.yaml`: the quick
//! start. The CLI writes the spec that does it (`aistack_planner::quickstart`), then runs it
//! as `up` runs a spec, then attaches the agent as `sandbox run NAME` does: one mechanism,
//! and the printed spec, committed, is the same project.
//!
//! The project is PATH's, named as `aistack up` in PATH would name it (the directory's
//! name, or `-p`), so `sandbox ls`, `network log`, `down` there address it, and a second
//! quick start in PATH reuses its sandbox. A project whose sandboxes serve another
//! directory is refused, never taken over; what the project holds beyond the quick start's
//! resources (another agent's sandbox) is left as it is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aistack_daemon::state::ProjectState;
use aistack_planner::quickstart::{DEFAULT_FROM, QuickStart, model_key};
use aistack_planner::{Action, Kind, SandboxSettings};
use aistack_spec::SourceFile;
use aistack_spec::values::{Agent, OciRef, is_path};
use clap::Args;

use super::apply::{UpOptions, converge_to, secrets};
use super::{home, observe_for, reconcile_for};
use crate::load::{Loaded, SpecArgs};
use crate::report::{Failure, Report};

/// `aistack sandbox run`'s arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The sandbox: its key under `sandboxes:`. In a directory without `aistack.yaml`, the
    /// agent of a quick start: `claude`, `codex`, `copilot`, `gemini`, `opencode`, `kiro`,
    /// `docker-agent` or `shell`.
    name: String,
    /// The quick start's workspace (default: this directory); the project is named after
    /// it.
    path: Option<PathBuf>,
    /// Run the agent on a local model instead of its vendor's API: a GGUF file or a
    /// registry reference (`ai/smollm2`), declared in the spec and listed in the sandbox's
    /// `models:`.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// The base of the quick start's templates instead of Debian's image: an image
    /// reference (a mirror of it) or a root filesystem directory.
    #[arg(long, value_name = "IMAGE|DIR")]
    from: Option<String>,
    /// Print the quick start's spec on stdout and run nothing (commit it as
    /// `aistack.yaml`).
    #[arg(long)]
    print_spec: bool,
}

/// `aistack sandbox run`: a sandbox of the spec, else a quick start for PATH.
pub async fn run(spec: &SpecArgs, args: RunArgs) -> Result<ExitCode, Failure> {
    let path = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    let with_spec = !spec.files.is_empty() || path.join("aistack.yaml").is_file();
    if with_spec && !args.print_spec {
        return run_of_spec(spec, args, &path).await;
    }
    let workspace = std::fs::canonicalize(&path)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| {
            Report::new(
                format!("Cannot open the workspace `{}`", path.display()),
                Some("Name an existing directory, or create it first".to_owned()),
            )
        })?;
    let agent = Agent::from_name(&args.name).ok_or_else(|| unknown_agent(&args.name, &path))?;
    let from = match &args.from {
        Some(from) => base(from, &workspace)?,
        None => DEFAULT_FROM.to_owned(),
    };
    let model = match &args.model {
        Some(model) => Some(model_source(model, &workspace)?),
        None => None,
    };
    let quick = QuickStart { agent, from, model };
    let text = quick.spec();
    if args.print_spec {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    for credential in quick.credentials() {
        if std::env::var(credential.from_env).is_ok_and(|v| !v.is_empty()) {
            continue;
        }
        return Err(Report::new(
            format!(
                "`{}` is not set: sandbox `{agent}` reaches `{}` with it",
                credential.from_env, credential.host
            ),
            Some(format!(
                "Export `{}` with {} (the proxy adds it to the sandbox's requests; the \
                 sandbox never holds it), or run the agent on a local model with `--model`",
                credential.from_env, credential.value
            )),
        )
        .into());
    }
    let project = spec.project_name(None, &workspace)?;
    let loaded = load(&text, agent, &workspace, project)?;
    let home = home()?;
    refuse_another_workspace(&home, &loaded.project, &workspace)?;
    // The quick start adds and changes; what else the project holds stays.
    let mut observed = observe_for(&home, &loaded, false).await?;
    let plan = reconcile_for(&loaded, &observed)?;
    let others: Vec<_> = (plan.graph.node_weights())
        .filter(|step| step.action == Action::Remove)
        .map(|step| step.id.clone())
        .collect();
    let plan = if others.is_empty() {
        plan
    } else {
        observed.resources.retain(|id, _| !others.contains(id));
        reconcile_for(&loaded, &observed)?
    };
    if !plan.is_empty() {
        eprintln!(
            "Sandbox `{agent}` for `{}` in project `{}`, as this `aistack.yaml` would make it \
             (`--print-spec` prints it alone):\n\n{text}",
            workspace.display(),
            loaded.project
        );
    }
    let secrets = secrets(&loaded)?;
    converge_to(&home, &loaded, plan, secrets, UpOptions::default()).await?;
    let name = quick.name();
    let state = ProjectState::load(&home, &loaded.project)?;
    let recorded = (state.resources.iter())
        .find(|r| r.id.kind == Kind::Sandbox && r.id.name == name)
        .ok_or_else(|| {
            Report::new(
                format!("Sandbox `{name}` was not made"),
                Some("`aistack logs` shows why".to_owned()),
            )
        })?;
    let settings = recorded.settings::<SandboxSettings>()?;
    super::sandbox::attach(&home, &loaded.project, name, settings).await
}

/// `sandbox run NAME` of a spec: its sandbox, made by `up`.
async fn run_of_spec(spec: &SpecArgs, args: RunArgs, path: &Path) -> Result<ExitCode, Failure> {
    let quick_only = [
        (args.model.is_some(), "--model"),
        (args.from.is_some(), "--from"),
    ];
    if let Some((_, flag)) = quick_only.iter().find(|(given, _)| *given) {
        return Err(Report::new(
            format!("`{flag}` is for a quick start, in a directory without `aistack.yaml`"),
            Some(
                "Declare it in the spec instead (a model under `models:` and the sandbox's \
                 `models:`, a template's `from:`), and run `aistack up`"
                    .to_owned(),
            ),
        )
        .into());
    }
    let spec = match &args.path {
        Some(_) if !spec.files.is_empty() => {
            return Err(Report::new(
                "`PATH` is for a quick start; with `-f` the spec names the workspace",
                Some("Leave out `PATH`, or `-f`".to_owned()),
            )
            .into());
        }
        Some(_) => SpecArgs {
            files: vec![path.join("aistack.yaml")],
            project: spec.project.clone(),
        },
        None => spec.clone(),
    };
    let home = home()?;
    let project = spec.project_without_spec()?;
    let state = ProjectState::load(&home, &project)?;
    let recorded = (state.resources.iter())
        .find(|r| r.id.kind == Kind::Sandbox && r.id.name == args.name)
        .ok_or_else(|| {
            Report::new(
                format!("No sandbox `{}` in project `{project}`", args.name),
                Some(
                    "`aistack sandbox ls` lists them and `aistack up` creates those of the \
                     spec; an agent's quick start runs in a directory without `aistack.yaml`"
                        .to_owned(),
                ),
            )
        })?;
    let settings = recorded.settings::<SandboxSettings>()?;
    super::sandbox::attach(&home, &project, &args.name, settings).await
}

/// The generated spec, loaded as `up` loads a file: relative paths start at the workspace,
/// and its `.env` is hidden inside as a spec's is.
fn load(text: &str, agent: Agent, workspace: &Path, project: String) -> Result<Loaded, Failure> {
    let sources = vec![SourceFile {
        name: format!("quick start of `{agent}`"),
        text: text.to_owned(),
    }];
    let env = std::env::vars().collect();
    let document = aistack_spec::parse(&sources, &env).map_err(|diagnostics| {
        Failure(
            (diagnostics.iter())
                .map(|d| Report::from_diagnostic(d, &sources))
                .collect(),
        )
    })?;
    Ok(Loaded {
        document,
        sources,
        base_dir: workspace.to_owned(),
        project,
        spec_files: Vec::new(),
        dotenv: Some(workspace.join(".env")).filter(|p| p.is_file()),
    })
}

/// Refuses a project with a sandbox of another workspace: a directory of the same name
/// elsewhere (the project is named after the directory).
fn refuse_another_workspace(
    home: &aistack_daemon::Home,
    project: &str,
    workspace: &Path,
) -> Result<(), Failure> {
    let state = ProjectState::load(home, project)?;
    for recorded in (state.resources.iter()).filter(|r| r.id.kind == Kind::Sandbox) {
        let settings = recorded.settings::<SandboxSettings>()?;
        if Path::new(&settings.workspace) != workspace {
            return Err(Report::new(
                format!(
                    "Project `{project}` has sandbox `{}` for `{}`, not `{}`",
                    recorded.id.name,
                    settings.workspace,
                    workspace.display()
                ),
                Some(
                    "Name a project of this directory's own with `-p NAME` (every command \
                     about it then needs the same `-p`)"
                        .to_owned(),
                ),
            )
            .into());
        }
    }
    Ok(())
}

fn unknown_agent(name: &str, path: &Path) -> Failure {
    let names: Vec<String> = Agent::NAMES.iter().map(|n| format!("`{n}`")).collect();
    let help = match aistack_spec::did_you_mean(name, Agent::NAMES.iter().copied()) {
        Some(close) => format!("Did you mean `{close}`? The agents: {}", names.join(", ")),
        None => format!(
            "Name an agent ({}); a sandbox of a spec needs its `aistack.yaml` in `{}`",
            names.join(", "),
            path.display()
        ),
    };
    Report::new(format!("Unknown agent `{name}`"), Some(help)).into()
}

/// `--from`: a directory (written relative to the workspace when inside it) or an image.
fn base(from: &str, workspace: &Path) -> Result<String, Failure> {
    if is_path(from) || Path::new(from).is_dir() {
        let dir = absolute(Path::new(from))
            .filter(|p| p.is_dir())
            .ok_or_else(|| {
                Report::new(
                    format!("Cannot open the root filesystem directory `{from}`"),
                    Some("Name a directory holding a root filesystem, or an image".to_owned()),
                )
            })?;
        return Ok(as_written(&dir, workspace));
    }
    OciRef::parse_image(from).map_err(|e| {
        Report::new(
            format!("Invalid image reference `{from}`: {}", e.reason),
            Some(e.help),
        )
    })?;
    Ok(from.to_owned())
}

/// `--model`: a GGUF file (written relative to the workspace when inside it) or a
/// registry reference; with the key it is declared under.
fn model_source(model: &str, workspace: &Path) -> Result<(String, String), Failure> {
    let file = Path::new(model);
    if is_path(model) || model.ends_with(".gguf") || file.is_file() {
        let path = absolute(file).filter(|p| p.is_file()).ok_or_else(|| {
            Report::new(
                format!("Cannot find the model file `{model}`"),
                Some("Name a GGUF file, or a registry reference such as `ai/smollm2`".to_owned()),
            )
        })?;
        let source = as_written(&path, workspace);
        return Ok((model_key(&source, true), source));
    }
    OciRef::parse_model(model).map_err(|e| {
        Report::new(
            format!("Invalid model reference `{model}`: {}", e.reason),
            Some(e.help),
        )
    })?;
    Ok((model_key(model, false), model.to_owned()))
}

/// `path` as the spec in `workspace` writes it: `./…` inside, absolute elsewhere.
fn as_written(path: &Path, workspace: &Path) -> String {
    match path.strip_prefix(workspace) {
        Ok(inside) if !inside.as_os_str().is_empty() => format!("./{}", inside.display()),
        _ => path.display().to_string(),
    }
}

/// `path` absolute, its directory resolved but not a link it is itself: a model linked
/// into the workspace is written as the link, as a spec there would name it.
fn absolute(path: &Path) -> Option<PathBuf> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Some(std::fs::canonicalize(parent).ok()?.join(name))
        }
        _ => std::fs::canonicalize(path).ok(),
    }
}
