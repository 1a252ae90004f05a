//! `aistack status`.

use std::process::ExitCode;

use aistack_daemon::api::{ProjectStatus, ResourceStatus};
use aistack_daemon::client::{Client, ClientError};
use aistack_planner::Action;
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
                kind: step.id.kind.as_str().to_owned(),
                name: step.id.name.clone(),
                state: "pending".to_owned(),
                endpoint: None,
                detail: Some("not applied; run `aistack up`".to_owned()),
            });
        }
        status
            .resources
            .sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
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
    if status.resources.is_empty() {
        println!("No resources.");
        return;
    }
    let rows: Vec<[&str; 4]> = status
        .resources
        .iter()
        .map(|r| {
            let detail = r.endpoint.as_deref().or(r.detail.as_deref()).unwrap_or("");
            [r.kind.as_str(), r.name.as_str(), r.state.as_str(), detail]
        })
        .collect();
    let header = ["KIND", "NAME", "STATE", "DETAIL"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    for row in std::iter::once(header).chain(rows) {
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
}
