//! The control API: axum on the daemon's unix socket.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use aistack_apply::{Event, WalkOptions};
use aistack_planner::{Action, Plan};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, ApplyLine, ApplyRequest, Health, Problem};
use crate::host::MachineHost;
use crate::runtime::Runtime;
use crate::state::ProjectState;
use crate::status::{project_status, serving_status};

/// Steps run at once within one apply.
const MAX_PARALLEL: usize = 4;

/// What the handlers share.
#[derive(Clone)]
pub struct App {
    runtime: Arc<Runtime>,
    projects: Arc<Mutex<HashMap<String, Arc<ProjectSlot>>>>,
}

/// Serialises applies of one project and lets a client cancel the running one.
#[derive(Default)]
struct ProjectSlot {
    applying: tokio::sync::Mutex<()>,
    cancel: Mutex<Option<CancellationToken>>,
}

impl App {
    /// The API over the daemon's runtime.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        App {
            runtime,
            projects: Arc::default(),
        }
    }

    fn slot(&self, project: &str) -> Arc<ProjectSlot> {
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(projects.entry(project.to_owned()).or_default())
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/health", get(health))
            .route("/v1/projects/{name}", get(status))
            .route("/v1/projects/{name}/apply", post(apply))
            .route("/v1/projects/{name}/cancel", post(cancel))
            .with_state(self)
    }
}

fn error(status: StatusCode, error: String, help: Option<String>) -> Response {
    (status, Json(ApiError { error, help })).into_response()
}

async fn health() -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
    })
}

async fn status(State(app): State<App>, Path(name): Path<String>) -> Response {
    let runtime = &app.runtime;
    match project_status(&runtime.home, &runtime.store, &name) {
        Ok(mut status) => {
            if let Some((addr, models)) = runtime.gateways.status(&name).await {
                status.gateway = Some(format!("http://{addr}"));
                status.models = serving_status(models);
            }
            for resource in &mut status.resources {
                crate::kinds::live_status(resource, runtime, &name).await;
            }
            Json(status).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), e.help()),
    }
}

async fn cancel(State(app): State<App>, Path(name): Path<String>) -> StatusCode {
    let slot = app.slot(&name);
    if let Some(token) = slot
        .cancel
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        token.cancel();
    }
    StatusCode::NO_CONTENT
}

async fn apply(State(app): State<App>, Path(name): Path<String>, body: Bytes) -> Response {
    // The one place a plan is read: one the daemon cannot read (made by another version
    // of aistack) is refused whole, before anything runs.
    let request: ApplyRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("The plan is not one this daemon reads: {e}"),
                Some(
                    "The daemon runs another version of aistack: stop it (`kill` the pid in \
                     `run/aistack.pid`) so that `aistack up` starts this one"
                        .to_owned(),
                ),
            );
        }
    };
    if request.plan.project != name {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "The plan is for project `{}`, not `{name}`",
                request.plan.project
            ),
            None,
        );
    }
    // A record that cannot be read must stop the apply before it starts, with its fix. The
    // apply reads it again once it holds the project's lock: another apply may run first.
    if let Err(e) = ProjectState::load(&app.runtime.home, &name) {
        return error(StatusCode::CONFLICT, aistack_apply::chain(&e), e.help());
    }
    let (tx, rx) = mpsc::unbounded_channel::<ApplyLine>();
    // The apply runs to its end even if the client goes away: a half-applied project is
    // repaired by the next `up`, but there is no reason to leave it half-applied.
    tokio::spawn(run_apply(app, request, tx));
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))
}

async fn run_apply(app: App, request: ApplyRequest, out: mpsc::UnboundedSender<ApplyLine>) {
    let plan = request.plan;
    let runtime = &app.runtime;
    let slot = app.slot(&plan.project);
    let _applying = slot.applying.lock().await;
    // Before any step: a gateway created or changed by this plan needs its key, and one
    // that has no step takes a new key at once. `down` sends none and changes no key.
    if !request.secrets.0.is_empty() {
        (runtime.proxies)
            .set_secrets(&plan.project, &request.secrets.0)
            .await;
        (runtime.gateways)
            .set_secrets(&plan.project, request.secrets.0)
            .await;
    }
    // What the daemon should serve and does not (a gateway or proxy whose port was taken
    // at its start) is tried again by every apply, even one with nothing to change; what
    // the plan removes or replaces is left to it.
    let leaving: BTreeSet<_> = (plan.graph.node_weights())
        .filter(|s| matches!(s.action, Action::Remove | Action::Replace))
        .map(|s| s.id.clone())
        .collect();
    runtime.readopt(&plan.project, &leaving).await;
    let token = CancellationToken::new();
    *slot.cancel.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());

    let ok = apply_plan(&app, &plan, token, &out).await;
    let _ = out.send(ApplyLine::Finished { ok });
    *slot.cancel.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

async fn apply_plan(
    app: &App,
    plan: &Plan,
    cancel: CancellationToken,
    out: &mpsc::UnboundedSender<ApplyLine>,
) -> bool {
    let mut state = match ProjectState::load(&app.runtime.home, &plan.project) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(project = %plan.project, "{e}");
            return false;
        }
    };
    let host = MachineHost::new(Arc::clone(&app.runtime), &plan.project);
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let record = async {
        let mut ok = true;
        while let Some(event) = events.recv().await {
            let id = |i: aistack_planner::StepIndex| plan.graph[i].id.clone();
            let line = match event {
                Event::Started(i) => ApplyLine::Started { id: id(i) },
                Event::Progress(i, progress) => ApplyLine::Progress {
                    id: id(i),
                    message: progress.message,
                    bytes: progress.bytes,
                    part: progress.part,
                },
                Event::Applied(i, applied) => {
                    state.record(applied);
                    ok &= persist(app, &state, out, &id(i));
                    ApplyLine::Done { id: id(i) }
                }
                Event::Removed(i, removed) => {
                    state.forget(&removed);
                    ok &= persist(app, &state, out, &id(i));
                    if plan.graph[i].action == Action::Replace {
                        continue;
                    }
                    ApplyLine::Done { id: id(i) }
                }
                Event::Failed(i, e) => {
                    ok = false;
                    ApplyLine::Failed {
                        problem: Problem {
                            id: id(i),
                            message: e.message,
                            help: e.help,
                        },
                    }
                }
                Event::Skipped(i, because) => {
                    ok = false;
                    ApplyLine::Skipped { id: id(i), because }
                }
                Event::Cancelled(i) => {
                    ok = false;
                    ApplyLine::Cancelled { id: id(i) }
                }
            };
            log_line(&plan.project, &line);
            let _ = out.send(line);
        }
        ok
    };
    let (walked, recorded) = tokio::join!(
        async move {
            let options = WalkOptions {
                max_parallel: MAX_PARALLEL,
            };
            // The events channel closes when this sender goes, ending the recording loop.
            aistack_apply::walk(plan, &host, options, &events_tx, cancel).await
        },
        record
    );
    match walked {
        Ok(_report) => recorded,
        Err(refused) => {
            let refusals = refused
                .0
                .into_iter()
                .map(|u| Problem {
                    id: u.id,
                    message: u.message,
                    help: u.help,
                })
                .collect();
            let _ = out.send(ApplyLine::Refused { refusals });
            false
        }
    }
}

fn persist(
    app: &App,
    state: &ProjectState,
    out: &mpsc::UnboundedSender<ApplyLine>,
    id: &aistack_planner::ResourceId,
) -> bool {
    match state.save(&app.runtime.home) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(project = %state.project, "{e}");
            let _ = out.send(ApplyLine::Failed {
                problem: Problem {
                    id: id.clone(),
                    message: e.to_string(),
                    help: e.help(),
                },
            });
            false
        }
    }
}

/// The daemon's log keeps what each apply did, also when no client is listening any more.
fn log_line(project: &str, line: &ApplyLine) {
    match line {
        ApplyLine::Started { id } => tracing::info!(project, "{id}: started"),
        ApplyLine::Done { id } => tracing::info!(project, "{id}: done"),
        ApplyLine::Failed { problem } => {
            tracing::warn!(project, "{}: failed: {}", problem.id, problem.message)
        }
        ApplyLine::Skipped { id, because } => {
            tracing::warn!(project, "{id}: skipped because {because} failed")
        }
        ApplyLine::Cancelled { id } => tracing::warn!(project, "{id}: cancelled"),
        ApplyLine::Progress { .. } | ApplyLine::Refused { .. } | ApplyLine::Finished { .. } => {}
    }
}
