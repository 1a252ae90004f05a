//! `aistack template …`: the project's built templates, from its record.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use aistack_daemon::kinds::template::ROOTFS;
use aistack_daemon::state::ProjectState;
use aistack_planner::{Applied, Base, Kind, SandboxSettings, TemplateSettings};
use clap::Subcommand;

use super::home;
use crate::load::SpecArgs;
use crate::report::{Failure, Report};

/// The `template` subcommands.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// List the project's built templates and their layers.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a built template and the layers its build made; `aistack up` builds it again.
    Rm {
        /// The template: its key under `templates:`.
        name: String,
    },
}

/// `aistack template …`.
pub async fn template(spec: &SpecArgs, command: TemplateCommand) -> Result<ExitCode, Failure> {
    let home = home()?;
    let project = spec.project_without_spec()?;
    let state = ProjectState::load(&home, &project)?;
    let templates: Vec<_> = (state.resources.iter())
        .filter(|r| r.id.kind == Kind::Template)
        .collect();
    let layers = |applied: &aistack_planner::Applied| -> Vec<String> {
        applied
            .outputs
            .get(ROOTFS)
            .map(|text| text.split(':').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    match command {
        TemplateCommand::Ls { json } => {
            let mut rows = Vec::new();
            for t in &templates {
                let settings = t.settings::<TemplateSettings>()?;
                rows.push(TemplateRow {
                    from: settings.from,
                    hash: t.hash.clone(),
                    layers: layers(t),
                    name: t.id.name.clone(),
                    steps: settings.run.len(),
                });
            }
            let mut out = std::io::stdout();
            if json {
                let text = serde_json::to_string(&rows).unwrap_or_default();
                let _ = writeln!(out, "{text}");
            } else if rows.is_empty() {
                eprintln!(
                    "No templates in project `{project}`; add one under `templates:` and run `aistack up`"
                );
            } else {
                for row in rows {
                    let (Base::Path(from) | Base::Image(from) | Base::Template(from)) = &row.from;
                    let _ = writeln!(
                        out,
                        "{:<16} {:<12} {} steps, {} layers, from {from}",
                        row.name,
                        &row.hash[..row.hash.len().min(12)],
                        row.steps,
                        row.layers.len(),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Rm { name } => {
            let Some(template) = templates.iter().find(|t| t.id.name == name) else {
                return Err(Report::new(
                    format!("No template `{name}` in project `{project}`"),
                    Some("`aistack template ls` lists them".to_owned()),
                )
                .into());
            };
            let mut users = Vec::new();
            for record in &state.resources {
                if uses_template(record, &name)? {
                    users.push(format!("`{}`", record.id));
                }
            }
            if !users.is_empty() {
                return Err(Report::new(
                    format!("Template `{name}` is used by {}", users.join(", ")),
                    Some(
                        "Remove those first (`aistack sandbox rm NAME`), or run `aistack down`"
                            .to_owned(),
                    ),
                )
                .into());
            }
            let dir = home.root().join("templates").join(&template.hash);
            let code = super::apply::remove(spec, &template.id).await?;
            // The tree is a cache keyed by its inputs: another project may link it too.
            let linked = linked_elsewhere(&home, &project, &dir);
            if linked.is_empty() {
                std::fs::remove_dir_all(&dir)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| {
                        Report::new(
                            format!(
                                "Cannot remove the layers of `{name}` at `{}`: {e}",
                                dir.display()
                            ),
                            Some("Check the permissions of `AISTACK_HOME/templates`".to_owned()),
                        )
                    })?;
            } else {
                eprintln!(
                    "The layers of `{name}` stay: project {} uses them",
                    linked.join(", ")
                );
            }
            Ok(code)
        }
    }
}

/// A line of `template ls`; fields in name order, as `--json` has always printed them.
#[derive(serde::Serialize)]
struct TemplateRow {
    from: Base,
    hash: String,
    layers: Vec<String>,
    name: String,
    steps: usize,
}

/// Whether `record` is built on template `name`: a sandbox of it, or a template `from` it.
fn uses_template(record: &Applied, name: &str) -> Result<bool, Failure> {
    Ok(match record.id.kind {
        Kind::Sandbox => record.settings::<SandboxSettings>()?.template == name,
        Kind::Template => {
            record.settings::<TemplateSettings>()?.from == Base::Template(name.to_owned())
        }
        _ => false,
    })
}

/// The other projects whose templates link layers under `dir`.
fn linked_elsewhere(
    home: &aistack_daemon::home::Home,
    project: &str,
    dir: &std::path::Path,
) -> Vec<String> {
    let projects = home.root().join("projects");
    let mut users = Vec::new();
    for entry in std::fs::read_dir(&projects)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let other = entry.file_name().to_string_lossy().into_owned();
        if other == project {
            continue;
        }
        let links = std::fs::read_dir(entry.path().join("templates"))
            .into_iter()
            .flatten();
        let uses = links.filter_map(Result::ok).any(|link| {
            std::fs::read_to_string(link.path())
                .is_ok_and(|text| text.lines().any(|l| PathBuf::from(l).starts_with(dir)))
        });
        if uses {
            users.push(format!("`{other}`"));
        }
    }
    users
}
