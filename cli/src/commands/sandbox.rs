//! `aistack sandbox …`: the project's sandboxes, from its record and their agents.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use aistack_daemon::Home;
use aistack_daemon::sandboxes::{ACCELERATOR, ISOLATION, ISOLATION_REASON, KERNEL, Sandboxes};
use aistack_daemon::state::ProjectState;
use aistack_daemon::templates::Templates;
use aistack_planner::{Kind, SandboxSettings};
use aistack_sandbox::client::GuestClient;
use clap::Subcommand;

use super::home;
use crate::load::SpecArgs;
use crate::report::{Failure, Report};

/// The `sandbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// List the project's sandboxes and whether they run.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a sandbox's processes; its files stay, and `aistack up` starts it again.
    Stop {
        /// The sandbox: its key under `sandboxes:`.
        name: String,
    },
    /// Start a sandbox's agent on this terminal (its command and `args`, in the workspace).
    ///
    /// In a directory without `aistack.yaml`, a quick start: `sandbox run AGENT [PATH]`
    /// makes a sandbox for PATH from a built-in template first (`--print-spec` shows it).
    Run(super::quickstart::RunArgs),
    /// Remove every sandbox of every project of this `AISTACK_HOME`, with their own files.
    ///
    /// Workspaces, templates and the projects' other resources stay. It asks first, on a
    /// terminal; without one it refuses unless `--force`.
    Reset {
        /// Remove them without asking.
        #[arg(long)]
        force: bool,
    },
    /// Remove a sandbox and its own files (the workspace stays); `aistack up` makes it anew.
    Rm {
        /// The sandbox: its key under `sandboxes:`.
        name: String,
    },
    /// Save a sandbox's filesystem (its template's layers and its own) as an image in the
    /// store, for a template's `from: TAG`.
    Save {
        /// The sandbox: its key under `sandboxes:`.
        name: String,
        /// The image reference to name it by (`me/coder:1`).
        tag: String,
    },
    /// Print a sandbox's guest agent log.
    Logs {
        /// The sandbox: its key under `sandboxes:`.
        name: String,
    },
}

/// `aistack sandbox …`.
pub async fn sandbox(spec: &SpecArgs, command: SandboxCommand) -> Result<ExitCode, Failure> {
    let command = match command {
        SandboxCommand::Run(args) => return super::quickstart::run(spec, args).await,
        SandboxCommand::Reset { force } => return reset(force).await,
        command => command,
    };
    let home = home()?;
    let project = spec.project_without_spec()?;
    let state = ProjectState::load(&home, &project)?;
    let recorded: Vec<_> = (state.resources.iter())
        .filter(|r| r.id.kind == Kind::Sandbox)
        .collect();
    match command {
        SandboxCommand::Ls { json } => {
            let mut rows = Vec::new();
            for sandbox in recorded {
                let socket = Sandboxes::socket(&home, &project, &sandbox.id.name);
                let up = GuestClient::new(&socket)
                    .is_up(aistack_sandbox::client::ANSWER_TIMEOUT)
                    .await;
                let settings = sandbox.settings::<SandboxSettings>()?;
                let output = |key: &str| sandbox.outputs.get(key).cloned().unwrap_or_default();
                rows.push(SandboxRow {
                    accelerator: sandbox.outputs.get(ACCELERATOR).cloned(),
                    agent: settings.agent,
                    isolation: output(ISOLATION),
                    isolation_reason: output(ISOLATION_REASON),
                    kernel: sandbox.outputs.get(KERNEL).cloned(),
                    name: sandbox.id.name.clone(),
                    network_policy: settings.network_policy,
                    state: if up { "running" } else { "stopped" },
                    template: settings.template,
                    workspace: settings.workspace,
                });
            }
            let mut out = std::io::stdout();
            if json {
                let text = serde_json::to_string(&rows).unwrap_or_default();
                let _ = writeln!(out, "{text}");
            } else if rows.is_empty() {
                eprintln!(
                    "No sandboxes in project `{project}`; add one under `sandboxes:` and run `aistack up`"
                );
            } else {
                for row in rows {
                    let isolation = match &row.accelerator {
                        Some(accel) => format!("{}/{accel}", row.isolation),
                        None => row.isolation.clone(),
                    };
                    let _ = writeln!(
                        out,
                        "{:<16} {:<8} {:<11} {:<8} {}",
                        row.name,
                        row.state,
                        isolation,
                        row.agent.as_str(),
                        row.workspace
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SandboxCommand::Stop { name } => {
            find(&recorded, &name, &project)?;
            let layout = Sandboxes::layout_in(&home, &project, &name);
            let cgroup = Sandboxes::cgroup(&home, &project, &name);
            let running = !cgroup.is_empty();
            let client = GuestClient::new(&layout.socket());
            // The agent ends the sandbox; a microVM whose agent does not answer is ended by
            // its VMM, over QMP.
            if client.shutdown(Duration::from_secs(3)).await.is_err() {
                let _ = aistack_sandbox::microvm::quit(&layout.control).await;
            }
            // What still runs after the grace (a guest whose VMM hangs on a stalled daemon)
            // is killed.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !cgroup.is_empty() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !cgroup.is_empty() {
                let _ = tokio::task::spawn_blocking(move || cgroup.kill()).await;
            }
            if !running {
                eprintln!("Sandbox `{name}` is not running");
            }
            Ok(ExitCode::SUCCESS)
        }
        SandboxCommand::Run(_) | SandboxCommand::Reset { .. } => unreachable!("handled above"),
        SandboxCommand::Rm { name } => {
            let recorded = find(&recorded, &name, &project)?;
            super::apply::remove(spec, &recorded.id).await
        }
        SandboxCommand::Save { name, tag } => {
            let recorded = find(&recorded, &name, &project)?;
            save(&home, &project, recorded, &tag).await
        }
        SandboxCommand::Logs { name } => {
            find(&recorded, &name, &project)?;
            let path = Sandboxes::log_path(&home, &project, &name);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Starts sandbox `name`'s agent (its command and `args`, in its workspace) on this
/// terminal, standard input passed; exits with the agent's code.
pub async fn attach(
    home: &Home,
    project: &str,
    name: &str,
    settings: SandboxSettings,
) -> Result<ExitCode, Failure> {
    let terminal = rustix::termios::isatty(std::io::stdin());
    let request = aistack_sandbox::protocol::Exec {
        argv: settings.command(),
        env: Default::default(),
        cwd: Some(settings.workspace),
        user: None,
        tty: terminal.then(super::exec::window_size),
        detach: false,
    };
    let socket = Sandboxes::socket(home, project, name);
    super::exec::session(&socket, name, request, true).await
}

/// `sandbox reset`: every project's sandboxes removed, after a confirmation on a terminal
/// unless `force`.
async fn reset(force: bool) -> Result<ExitCode, Failure> {
    let home = home()?;
    let mut found = Vec::new();
    for project in ProjectState::projects(&home) {
        let state = ProjectState::load(&home, &project)?;
        let names: Vec<String> = (state.resources.iter())
            .filter(|r| r.id.kind == Kind::Sandbox)
            .map(|r| r.id.name.clone())
            .collect();
        if !names.is_empty() {
            found.push((project, names));
        }
    }
    if found.is_empty() {
        eprintln!("No sandboxes to remove");
        return Ok(ExitCode::SUCCESS);
    }
    let listed: Vec<String> = (found.iter())
        .flat_map(|(project, names)| names.iter().map(move |n| format!("{project}/{n}")))
        .collect();
    if !force {
        if !rustix::termios::isatty(std::io::stdin()) {
            return Err(Report::new(
                format!(
                    "`sandbox reset` cannot ask to confirm removing {}: standard input is \
                     not a terminal",
                    counted(listed.len())
                ),
                Some("Run it again with `--force` to remove without asking".to_owned()),
            )
            .into());
        }
        eprint!(
            "Remove {} ({}) with their own files? Workspaces stay. [y/N] ",
            counted(listed.len()),
            listed.join(", ")
        );
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
            eprintln!("Nothing was removed");
            return Ok(ExitCode::FAILURE);
        }
    }
    for (project, _) in &found {
        let code =
            super::apply::remove_where(&home, project, |id| id.kind == Kind::Sandbox).await?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    println!("Removed {}", counted(listed.len()));
    Ok(ExitCode::SUCCESS)
}

fn counted(n: usize) -> String {
    if n == 1 {
        "1 sandbox".to_owned()
    } else {
        format!("{n} sandboxes")
    }
}

/// A line of `sandbox ls`; fields in name order, as `--json` has always printed them.
#[derive(serde::Serialize)]
struct SandboxRow {
    /// A microVM's: `kvm`, or `tcg` (QEMU's software emulation).
    #[serde(skip_serializing_if = "Option::is_none")]
    accelerator: Option<String>,
    agent: aistack_spec::values::Agent,
    isolation: String,
    isolation_reason: String,
    /// A microVM's guest kernel: how it was built, where it is, its sha256.
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<String>,
    name: String,
    network_policy: Option<String>,
    state: &'static str,
    template: String,
    workspace: String,
}

/// `sandbox save`: each layer, bottom first, packed into the store's staging directory,
/// then the image stored under `tag`.
async fn save(
    home: &aistack_daemon::home::Home,
    project: &str,
    recorded: &aistack_planner::Applied,
    tag: &str,
) -> Result<ExitCode, Failure> {
    use std::os::unix::fs::MetadataExt;
    let name = &recorded.id.name;
    let reference = aistack_spec::values::OciRef::parse_image(tag)
        .map_err(|e| {
            Report::new(
                format!("Invalid image reference `{tag}`: {}", e.reason),
                Some(e.help),
            )
        })?
        .to_string();
    let settings = recorded.settings::<SandboxSettings>()?;
    let template = &settings.template;
    let mut layers = Templates::layers_in(home, project, template).ok_or_else(|| {
        Report::new(
            format!("Template `{template}` of sandbox `{name}` is not built"),
            Some("Run `aistack up`".to_owned()),
        )
    })?;
    layers.insert(
        0,
        Sandboxes::layout_in(home, project, name).dir.join("upper"),
    );
    let range = aistack_daemon::sandboxes::id_range();
    let owner = std::fs::metadata(&settings.workspace)
        .map_or((range.agent(), range.agent()), |m| (m.uid(), m.gid()));
    let store = aistack_store::Store::open(&home.models())?;
    let packed = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let staging = store.staging_dir()?;
        let mut files = Vec::new();
        for layer in layers.iter().rev() {
            let file = tempfile::Builder::new()
                .prefix("save-")
                .tempfile_in(&staging)?;
            let diff_id = aistack_sandbox::layers::pack(
                layer,
                range,
                owner,
                std::io::BufWriter::new(file.as_file()),
            )?;
            let (_, path) = file.keep().map_err(|e| e.error)?;
            files.push((path, diff_id));
        }
        Ok((store, files))
    });
    let (store, files) = packed
        .await
        .map_err(|e| Report::new(format!("Saving `{name}` stopped: {e}"), None))?
        .map_err(|e| {
            Report::new(
                format!("Cannot pack the filesystem of sandbox `{name}`: {e}"),
                Some("Check the free space of `AISTACK_HOME`".to_owned()),
            )
        })?;
    let digest = store.put_image(&files, &reference)?;
    println!(
        "Saved sandbox `{name}` as `{reference}` ({})",
        aistack_daemon::status::short_digest(&digest)
    );
    Ok(ExitCode::SUCCESS)
}

fn find<'a>(
    recorded: &[&'a aistack_planner::Applied],
    name: &str,
    project: &str,
) -> Result<&'a aistack_planner::Applied, Failure> {
    recorded
        .iter()
        .copied()
        .find(|r| r.id.name == name)
        .ok_or_else(|| {
            Failure::from(Report::new(
                format!("No sandbox `{name}` in project `{project}`"),
                Some(
                    "`aistack sandbox ls` lists them; `aistack up` creates those of the spec"
                        .to_owned(),
                ),
            ))
        })
}
