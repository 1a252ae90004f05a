//! `aistack status`.

use std::process::ExitCode;

use aistack_daemon::api::{ProjectStatus, ResourceStatus};
use aistack_daemon::client::{Client, ClientError};
use aistack_planner::Action;
use aistack_spec::values::human_size;
use aistack_store::Store;

use super::{home, plan_for};
use crate::load::SpecArgs;
use crate::report::Failure;

/// `aistack status [--json]`: what the daemon reports (or the records on disk when no
/// daemon runs), plus what the spec wants that is not applied yet.
pub async fn status(spec: &SpecArgs, json: bool) -> Result<ExitCode, Failure> {
    let home = home()?;
    // With `-p`, status works without a readable spec (it then shows no pending resources).
    let loaded = match (spec.load(), &spec.project) {
        (Ok(loaded), _) => Some(loaded),
        (Err(_), Some(_)) => None,
        (Err(failure), None) => return Err(failure),
    };
    let project = match &loaded {
        Some(loaded) => loaded.project.clone(),
        None => spec.project.clone().unwrap_or_default(),
    };
    let client = Client::new(&home.socket());
    let (mut status, daemon) = match client.status(&project).await {
        Ok(status) => (status, true),
        Err(ClientError::Connect { .. }) => {
            let store = Store::open(&home.models())?;
            (
                aistack_daemon::status::project_status(&home, &store, &project)?,
                false,
            )
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(loaded) = &loaded {
        let plan = plan_for(&home, loaded, false).await?;
        for step in plan
            .graph
            .node_weights()
            .filter(|s| s.action == Action::Create)
        {
            status.resources.push(ResourceStatus {
                kind: step.id.kind,
                name: step.id.name.clone(),
                state: "pending".to_owned(),
                endpoint: None,
                detail: Some("not applied; run `aistack up`".to_owned()),
            });
        }
        status
            .resources
            .sort_by(|a, b| (a.kind.as_str(), &a.name).cmp(&(b.kind.as_str(), &b.name)));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print_table(&status, daemon);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(status: &ProjectStatus, daemon: bool) {
    println!(
        "Project `{}` (daemon {})",
        status.project,
        if daemon { "running" } else { "not running" }
    );
    if let Some(url) = &status.gateway {
        println!("Gateway: {url}");
    }
    if status.resources.is_empty() {
        println!("No resources.");
        return;
    }
    let rows: Vec<Vec<String>> = status
        .resources
        .iter()
        .map(|r| {
            let detail = r.endpoint.as_deref().or(r.detail.as_deref()).unwrap_or("");
            vec![
                r.kind.as_str().to_owned(),
                r.name.clone(),
                r.state.clone(),
                detail.to_owned(),
            ]
        })
        .collect();
    print_columns(&["KIND", "NAME", "STATE", "DETAIL"], rows);
    if status.models.is_empty() {
        return;
    }
    println!();
    let dash = || "-".to_owned();
    let rows = (status.models.iter())
        .map(|m| {
            let e = m.engine.as_ref();
            vec![
                m.name.clone(),
                m.mode.clone(),
                m.state.clone(),
                e.map_or_else(dash, |e| e.pid.to_string()),
                e.map_or_else(dash, |e| human_size(e.memory_bytes)),
                e.map_or_else(dash, |e| e.threads.to_string()),
                e.map_or_else(dash, |e| e.context_size.to_string()),
                e.map_or_else(dash, |e| e.parallel.to_string()),
            ]
        })
        .collect();
    print_columns(
        &[
            "MODEL", "MODE", "STATE", "PID", "MEMORY", "THREADS", "CONTEXT", "PARALLEL",
        ],
        rows,
    );
    // Every engine is the same binary, so one loaded engine speaks for all.
    if let Some(engine) = status.models.iter().find_map(|m| m.engine.as_ref()) {
        println!("\nggml CPU features: {}", engine.cpu_features);
        if !engine.unused_cpu_features.is_empty() {
            println!(
                "hint: this CPU also has {}, which this build does not use; \
                 `RUSTFLAGS=\"-C target-cpu=native\" cargo install --path cli` builds an \
                 engine that does",
                engine.unused_cpu_features.join(" ")
            );
        }
    }
}

/// Prints `rows` under `header`, columns aligned, the last one unpadded.
fn print_columns(header: &[&str], rows: Vec<Vec<String>>) {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            (rows.iter())
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&format!("{cell:w$}", w = widths[i]));
        }
        println!("{}", line.trim_end());
    }
}
