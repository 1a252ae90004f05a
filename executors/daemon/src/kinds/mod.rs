//! One module per kind of resource: how the daemon carries out its steps, serves again
//! what its records say after a restart, and describes it for `status`.
//!
//! Each kind implements [`Executor`] on its plan type (the type inside its
//! [`Payload`](aistack_planner::Payload) variant). The walker's host ([`crate::host`]) and
//! the runtime reach them through the planner's `with_plan!` and `with_kind!`, so a new
//! kind is one new module here, and a kind this daemon does not carry out is a compile
//! error.
//!
//! Every method is idempotent, as the walker requires: creating what exists succeeds,
//! removing what is gone succeeds, readopting what is served does nothing.

pub mod engine;
pub mod gateway;
pub mod model;
pub mod proxy;
pub mod sandbox;
pub mod template;

use std::sync::Arc;

use aistack_apply::{HostError, Outputs, Progress};
use aistack_planner::{Applied, KindPlan};
use aistack_store::Store;

use crate::api::ResourceStatus;
use crate::runtime::Runtime;

/// What a kind's methods work in: the runtime, and the resource's project, name and the
/// hash of its settings (the desired ones for a create or change, the recorded ones
/// otherwise).
pub(crate) struct Cx<'a> {
    /// The daemon's runtime.
    pub runtime: &'a Arc<Runtime>,
    /// The project.
    pub project: &'a str,
    /// The resource's name in the spec.
    pub name: &'a str,
    /// The hash of its settings.
    pub hash: &'a str,
}

/// How the daemon carries out one kind of resource.
pub(crate) trait Executor: KindPlan + Sized {
    /// Refuses, before any step of the plan runs, what this daemon cannot carry out: the
    /// message and its fix.
    fn check(&self, _cx: &Cx<'_>) -> Result<(), HostError> {
        Ok(())
    }

    /// Makes the resource exist as planned.
    async fn create(&self, cx: &Cx<'_>, progress: &Progress) -> Result<Outputs, HostError>;

    /// Brings the resource recorded as `current` to the plan in place; by default, as
    /// [`Executor::create`] does.
    async fn change(
        &self,
        _current: &Applied,
        cx: &Cx<'_>,
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        self.create(cx, progress).await
    }

    /// Removes the resource recorded as `current`, and with `delete_artifact` what it
    /// keeps in the shared store.
    async fn remove(
        current: &Applied,
        delete_artifact: bool,
        cx: &Cx<'_>,
        progress: &Progress,
    ) -> Result<(), HostError>;

    /// Serves what `record` says was applied, if the daemon does not serve it (after a
    /// restart, or an earlier failure): called at start and before each apply.
    async fn readopt(
        _record: &Applied,
        _settings: Self::Settings,
        _cx: &Cx<'_>,
    ) -> Result<(), HostError> {
        Ok(())
    }

    /// The state and detail `status` shows for `record` from the record and the store
    /// alone, also with no daemon running.
    fn recorded(_record: &Applied, _store: &Store) -> (String, Option<String>) {
        ("applied".to_owned(), None)
    }

    /// Corrects `status` with what the running daemon serves.
    async fn live(_status: &mut ResourceStatus, _cx: &Cx<'_>) {}
}

/// The status line of `record`, from the record and the store alone.
pub(crate) fn recorded_status(record: &Applied, store: &Store) -> ResourceStatus {
    let (state, detail) =
        aistack_planner::with_kind!(record.id.kind, P => P::recorded(record, store));
    ResourceStatus {
        kind: record.id.kind,
        name: record.id.name.clone(),
        state,
        endpoint: None,
        detail,
    }
}

/// Corrects `status` with what the running daemon serves for that resource of `project`.
pub(crate) async fn live_status(
    status: &mut ResourceStatus,
    runtime: &Arc<Runtime>,
    project: &str,
) {
    let kind = status.kind;
    let name = status.name.clone();
    let cx = Cx {
        runtime,
        project,
        name: &name,
        hash: "",
    };
    aistack_planner::with_kind!(kind, P => P::live(status, &cx).await);
}

/// `status` of a resource the daemon serves on a listener: running at `address`, or
/// stopped, saying so (`not serving`) with where to look and how to retry.
fn listening(status: &mut ResourceStatus, address: Option<impl std::fmt::Display>, stopped: &str) {
    match address {
        Some(address) => {
            status.state = "running".to_owned();
            status.endpoint = Some(format!("http://{address}"));
            status.detail = None;
        }
        None => {
            status.state = "stopped".to_owned();
            status.endpoint = None;
            status.detail = Some(format!(
                "{stopped}; `aistack logs` says why, `aistack up` retries"
            ));
        }
    }
}
