//! `up` and `down`: plan, then have the daemon carry the plan out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use aistack_daemon::Home;
use aistack_daemon::api::{ApplyLine, ApplyRequest, Secrets};
use aistack_daemon::client::Client;
use aistack_planner::{Action, Plan, ResourceId};
use aistack_spec::{Diagnostic, Location};

use super::daemon::ensure_daemon;
use super::{actions, home, plan_for};
use crate::load::{Loaded, SpecArgs};
use crate::progress::Progress;
use crate::report::{Failure, Report};
use aistack_daemon::status::short_digest;

/// How often `up --watch` looks at the spec files.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// How `up` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpOptions {
    /// Converge again whenever the spec changes.
    pub watch: bool,
    /// Re-resolve registry tags; a moved tag is a change.
    pub pull: bool,
    /// No progress bars or lines.
    pub quiet: bool,
}

/// `aistack up`.
pub async fn up(spec: &SpecArgs, options: UpOptions) -> Result<ExitCode, Failure> {
    let home = home()?;
    let first = converge(&home, spec, options).await;
    let watch = options.watch;
    if !watch {
        return first;
    }
    report_failure(first);
    let files = spec.watched_files();
    let mut seen = stamps(&files);
    println!("Watching {} for changes; Ctrl-C stops", describe(&files));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        let now = stamps(&files);
        if now != seen {
            seen = now;
            println!("\nThe spec changed; converging again");
            report_failure(converge(&home, spec, options).await);
        }
    }
}

/// `aistack down`.
pub async fn down(spec: &SpecArgs, models: bool) -> Result<ExitCode, Failure> {
    let home = home()?;
    let project = spec.project_without_spec()?;
    let mut observed = aistack_daemon::state::ProjectState::load(&home, &project)?.observed();
    if models {
        observed.other_artifacts = crate::observe::other_artifacts(&home, &project);
    }
    let plan = aistack_planner::reconcile_down(&project, &observed, models);
    print!("{}", plan.render_text());
    if plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    apply(&home, plan, false, Secrets::default()).await
}

/// Removes one applied resource of the project (`sandbox rm`), as `down` removes them all.
pub async fn remove(
    spec: &SpecArgs,
    id: &aistack_planner::ResourceId,
) -> Result<ExitCode, Failure> {
    let home = home()?;
    let project = spec.project_without_spec()?;
    remove_where(&home, &project, |recorded| recorded == id).await
}

/// Removes the applied resources of `project` that `which` picks (`sandbox rm`, `sandbox
/// reset`), as `down` removes them all.
pub async fn remove_where(
    home: &Home,
    project: &str,
    which: impl Fn(&ResourceId) -> bool,
) -> Result<ExitCode, Failure> {
    let mut observed = aistack_daemon::state::ProjectState::load(home, project)?.observed();
    observed.resources.retain(|recorded, _| which(recorded));
    let plan = aistack_planner::reconcile_down(project, &observed, false);
    print!("{}", plan.render_text());
    if plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    apply(home, plan, false, Secrets::default()).await
}

async fn converge(home: &Home, spec: &SpecArgs, options: UpOptions) -> Result<ExitCode, Failure> {
    let loaded = spec.load()?;
    let secrets = secrets(&loaded)?;
    let plan = plan_for(home, &loaded, options.pull).await?;
    converge_to(home, &loaded, plan, secrets, options).await
}

/// Prints `plan` of the loaded spec and has the daemon carry it out (or, with nothing to
/// change, serve what was applied and take the secrets), then prints the endpoints.
pub async fn converge_to(
    home: &Home,
    loaded: &Loaded,
    plan: Plan,
    secrets: Secrets,
    options: UpOptions,
) -> Result<ExitCode, Failure> {
    print!("{}", plan.render_text());
    let serves = !loaded.document.spec.models.is_empty();
    let proxies = !loaded.document.spec.network_policies.is_empty();
    let sandboxes = !loaded.document.spec.sandboxes.is_empty();
    if !plan.is_empty() {
        apply(home, plan, options.quiet, secrets).await?;
    } else if serves || proxies || sandboxes {
        // Nothing to change, but the models must be served, the proxies listen and the
        // sandboxes' ports and proxy sockets be served: this starts the daemon if it is
        // not running (it re-serves what was applied) and hands over the keys and
        // credentials, which live only in the daemon's memory.
        hand_over(home, plan, secrets).await?;
    }
    if !(serves || proxies) {
        return Ok(ExitCode::SUCCESS);
    }
    let status = Client::new(&home.socket()).status(&loaded.project).await?;
    let stopped = |what: String| {
        Report::new(
            format!("{what} of project `{}` is not running", loaded.project),
            Some("`aistack logs` shows why; fix that and run `aistack up` again".to_owned()),
        )
    };
    if serves {
        let Some(url) = status.gateway else {
            return Err(stopped("The gateway".to_owned()).into());
        };
        println!("Gateway: {url}");
    }
    for proxy in (status.resources.iter()).filter(|r| r.kind == aistack_planner::Kind::Proxy) {
        let Some(endpoint) = &proxy.endpoint else {
            return Err(stopped(format!("The proxy of `network_policies.{}`", proxy.name)).into());
        };
        println!("Proxy `{}`: {endpoint}", proxy.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// The values of the environment variables the spec names as secrets: the gateway's
/// `api_key_env` when it serves models, and every credential's `from_env`. An unset
/// variable is an error, never an open gateway or a request sent without its credential.
pub fn secrets(loaded: &Loaded) -> Result<Secrets, Failure> {
    let spec = &loaded.document.spec;
    let mut wanted = Vec::new();
    if let Some(name) = spec.gateway.api_key_env.as_ref()
        && !spec.models.is_empty()
    {
        let help = format!(
            "Export `{name}` with the bearer token clients must send, or remove \
             `gateway.api_key_env` to serve loopback clients without one"
        );
        wanted.push((name, "gateway.api_key_env".to_owned(), help));
    }
    for (policy_name, policy) in &spec.network_policies {
        for (i, credential) in policy.credentials.iter().enumerate() {
            let path = format!("network_policies.{policy_name}.credentials.{i}.from_env");
            let help = format!(
                "Export `{}` with the value the proxy sends to `{}` as `{}`, or remove the \
                 credential",
                credential.from_env, credential.host, credential.header
            );
            wanted.push((&credential.from_env, path, help));
        }
    }
    let mut secrets = BTreeMap::new();
    for (name, path, help) in wanted {
        match std::env::var(name) {
            Ok(value) if !value.is_empty() => {
                secrets.insert(name.clone(), value);
            }
            _ => {
                let message = format!("`{name}`, named by `{path}`, is not set");
                let report = match loaded.document.location(&path) {
                    Some(location) => Report::from_diagnostic(
                        &Diagnostic {
                            code: "aistack::secret",
                            message,
                            location: Location::clone(location),
                            label: "names it".to_owned(),
                            help: Some(help),
                        },
                        &loaded.sources,
                    ),
                    None => Report::new(message, Some(help)),
                };
                return Err(report.into());
            }
        }
    }
    Ok(Secrets(secrets))
}

/// Gives the daemon the secrets with an empty plan, silently, starting it if needed.
async fn hand_over(home: &Home, plan: Plan, secrets: Secrets) -> Result<(), Failure> {
    let client = ensure_daemon(home).await?;
    let mut lines = client.apply(&ApplyRequest { plan, secrets }).await?;
    while let Some(line) = lines.recv().await {
        if let ApplyLine::Finished { .. } = line {
            break;
        }
    }
    Ok(())
}

fn report_failure(result: Result<ExitCode, Failure>) {
    if let Err(failure) = result {
        failure.eprint();
    }
}

/// Sends the plan to the daemon and prints its progress until it finishes. Ctrl-C asks the
/// daemon to start no new step; steps already running finish.
async fn apply(
    home: &Home,
    plan: Plan,
    quiet: bool,
    secrets: Secrets,
) -> Result<ExitCode, Failure> {
    let mut progress = Progress::new(quiet);
    let client = ensure_daemon(home).await?;
    let project = plan.project.clone();
    let actions = actions(&plan);
    let summary = plan.summary();
    println!();
    let mut lines = client.apply(&ApplyRequest { plan, secrets }).await?;
    let mut started: BTreeMap<ResourceId, Instant> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut cancelling = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let ok = loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = &mut ctrl_c, if !cancelling => {
                cancelling = true;
                println!("Cancelling: running steps finish, no new step starts");
                let _ = client.cancel(&project).await;
                continue;
            }
        };
        let Some(line) = line else {
            failures.push(Report::new(
                "The daemon stopped answering before the apply finished",
                Some(
                    "See `aistack logs`, then run `aistack up` again: it finishes what is left"
                        .to_owned(),
                ),
            ));
            break false;
        };
        let verb = |id: &ResourceId| actions.get(id).copied().unwrap_or(Action::Create);
        match line {
            ApplyLine::Started { id } => {
                started.insert(id.clone(), Instant::now());
                progress.println(&format!("{id}: {}...", progressive(verb(&id))));
            }
            ApplyLine::Progress {
                id,
                message: Some(message),
                ..
            } => progress.println(&format!("{id}: {message}")),
            ApplyLine::Progress {
                id,
                bytes: Some((done, total)),
                part,
                ..
            } => {
                let label = match part {
                    Some(part) => format!("{id} {}", short_digest(&part)),
                    None => id.to_string(),
                };
                progress.bytes(&label, done, total);
            }
            ApplyLine::Progress { .. } => {}
            ApplyLine::Done { id } => {
                let took = started
                    .get(&id)
                    .map(|t| t.elapsed().as_secs_f64())
                    .unwrap_or_default();
                progress.println(&format!("{id}: {} after {took:.1}s", past(verb(&id))));
            }
            ApplyLine::Failed { problem } => {
                println!("{}: Failed", problem.id);
                failures.push(Report::new(
                    format!("`{}`: {}", problem.id, problem.message),
                    problem.help,
                ));
            }
            ApplyLine::Skipped { id, because } => {
                println!("{id}: Skipped because `{because}` failed")
            }
            ApplyLine::Cancelled { id } => println!("{id}: Cancelled"),
            ApplyLine::Refused { refusals } => {
                for r in refusals {
                    failures.push(Report::new(
                        format!("Cannot apply `{}`: {}", r.id, r.message),
                        r.help,
                    ));
                }
                failures.push(Report::new(
                    "Nothing was applied",
                    Some(
                        "Change the spec as the messages above say, then run `aistack up` again"
                            .to_owned(),
                    ),
                ));
            }
            ApplyLine::Finished { ok } => break ok,
        }
    };
    if ok {
        println!(
            "\nApply complete: {} added, {} changed, {} removed.",
            summary.add, summary.change, summary.remove
        );
        return Ok(ExitCode::SUCCESS);
    }
    if failures.is_empty() {
        let message = if cancelling {
            "The apply was cancelled"
        } else {
            "The apply did not finish"
        };
        failures.push(Report::new(
            message,
            Some("Run `aistack up` again to finish it; what was applied is kept".to_owned()),
        ));
    }
    Err(Failure(failures))
}

fn progressive(action: Action) -> &'static str {
    match action {
        Action::Create => "Creating",
        Action::Change => "Changing",
        Action::Remove => "Removing",
        Action::Replace => "Replacing",
    }
}

fn past(action: Action) -> &'static str {
    match action {
        Action::Create => "Created",
        Action::Change => "Changed",
        Action::Remove => "Removed",
        Action::Replace => "Replaced",
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn describe(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| format!("`{}`", f.display()))
        .collect::<Vec<_>>()
        .join(", ")
}
