//! One function per subcommand; each returns its exit code or the reports to print.

use std::collections::BTreeMap;
use std::process::ExitCode;

use aistack_daemon::Home;
use aistack_planner::Plan;
use aistack_spec::{Diagnostic, Location};

use crate::load::{Loaded, SpecArgs};
use crate::observe::observe;
use crate::report::{Failure, Report};

mod apply;
mod daemon;
mod engine;
mod exec;
mod model;
mod network;
mod quickstart;
mod run;
mod sandbox;
mod status;
mod template;

pub use apply::{UpOptions, down, up};
pub use daemon::{daemon, logs};
pub use engine::{EngineArgs, engine};
pub use exec::{ExecArgs, exec};
pub use model::{ModelCommand, model};
pub use network::{NetworkCommand, network};
pub use run::run;
pub use sandbox::{SandboxCommand, sandbox};
pub use status::status;
pub use template::{TemplateCommand, template};

/// `aistack validate`.
pub fn validate(spec: &SpecArgs) -> Result<ExitCode, Failure> {
    let loaded = spec.load()?;
    let s = &loaded.document.spec;
    let files: Vec<_> = loaded
        .sources
        .iter()
        .map(|f| format!("`{}`", f.name))
        .collect();
    println!(
        "{} valid: {} models, {} templates, {} network policies, {} sandboxes",
        files.join(", "),
        s.models.len(),
        s.templates.len(),
        s.network_policies.len(),
        s.sandboxes.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `aistack plan`.
pub async fn plan(
    spec: &SpecArgs,
    json: bool,
    detailed_exitcode: bool,
    pull: bool,
) -> Result<ExitCode, Failure> {
    let home = home()?;
    let loaded = spec.load()?;
    let plan = plan_for(&home, &loaded, pull).await?;
    if json {
        println!("{}", plan.render_json());
    } else {
        print!("{}", plan.render_text());
    }
    Ok(if detailed_exitcode && !plan.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `aistack schema`.
pub fn schema() -> Result<ExitCode, Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(&aistack_spec::schema()).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// The home this invocation works in.
pub fn home() -> Result<Home, Failure> {
    let home = Home::resolve(|name| std::env::var(name).ok()).ok_or_else(|| {
        Failure::from(Report::new(
            "Cannot find where to keep aistack's data: neither `AISTACK_HOME` nor `HOME` is set",
            Some("Set `AISTACK_HOME` to a directory aistack may use".to_owned()),
        ))
    })?;
    home.create().map_err(|e| {
        Report::new(
            format!("Cannot create `{}`: {e}", home.root().display()),
            Some("Set `AISTACK_HOME` to a directory aistack may use".to_owned()),
        )
    })?;
    Ok(home)
}

/// Observes and plans the loaded spec (`pull`: re-resolving registry tags); planner errors
/// point at their spans.
pub async fn plan_for(home: &Home, loaded: &Loaded, pull: bool) -> Result<Plan, Failure> {
    let observed = observe_for(home, loaded, pull).await?;
    reconcile_for(loaded, &observed)
}

/// What the planner needs to know of the machine for the loaded spec.
pub async fn observe_for(
    home: &Home,
    loaded: &Loaded,
    pull: bool,
) -> Result<aistack_planner::Observed, Failure> {
    let mut observed = observe(
        home,
        &loaded.project,
        &loaded.document.spec,
        &loaded.base_dir,
        pull,
    )
    .await?;
    observed.spec_files = loaded.spec_files.clone();
    observed.dotenv = loaded.dotenv.clone();
    Ok(observed)
}

/// Plans the loaded spec against `observed`; planner errors point at their spans.
pub fn reconcile_for(
    loaded: &Loaded,
    observed: &aistack_planner::Observed,
) -> Result<Plan, Failure> {
    aistack_planner::reconcile(
        &loaded.project,
        &loaded.document.spec,
        &loaded.base_dir,
        observed,
    )
    .map_err(|errors| {
        Failure(
            errors
                .into_iter()
                .map(|e| match loaded.document.location(&e.path) {
                    Some(location) => Report::from_diagnostic(
                        &Diagnostic {
                            code: "aistack::plan",
                            message: e.message,
                            location: Location::clone(location),
                            label: "here".to_owned(),
                            help: e.help,
                        },
                        &loaded.sources,
                    ),
                    None => Report::new(e.message, e.help),
                })
                .collect(),
        )
    })
}

/// The plan's steps by resource, for labelling progress.
fn actions(plan: &Plan) -> BTreeMap<aistack_planner::ResourceId, aistack_planner::Action> {
    plan.graph
        .node_weights()
        .map(|step| (step.id.clone(), step.action))
        .collect()
}
