//! The machine behind the walker: each step goes to the module of its kind
//! ([`crate::kinds`]), which carries it out on this host with the daemon's runtime.
//! Nothing is decided here: the plan's typed payloads say what to do.

use std::sync::Arc;

use aistack_apply::{Host, HostError, Outputs, Progress, Unsupported};
use aistack_planner::{Applied, Desired, Step, with_kind, with_plan};

use crate::kinds::{Cx, Executor};
use crate::runtime::Runtime;

/// Carries out the plan steps of one project on this machine.
pub struct MachineHost {
    runtime: Arc<Runtime>,
    project: String,
}

impl MachineHost {
    /// A host applying `project` with `runtime`.
    pub fn new(runtime: Arc<Runtime>, project: &str) -> Self {
        MachineHost {
            runtime,
            project: project.to_owned(),
        }
    }

    fn cx<'a>(&'a self, name: &'a str, hash: &'a str) -> Cx<'a> {
        Cx {
            runtime: &self.runtime,
            project: &self.project,
            name,
            hash,
        }
    }
}

impl Host for MachineHost {
    fn check(&self, step: &Step) -> Result<(), Unsupported> {
        // A removal only undoes what an earlier apply did, so it is always possible.
        let Some(desired) = &step.desired else {
            return Ok(());
        };
        let cx = self.cx(&desired.id.name, &desired.hash);
        with_plan!(&desired.payload, plan => plan.check(&cx)).map_err(|e| Unsupported {
            id: step.id.clone(),
            message: e.message,
            help: e.help,
        })
    }

    async fn create(&self, desired: &Desired, progress: &Progress) -> Result<Outputs, HostError> {
        let cx = self.cx(&desired.id.name, &desired.hash);
        with_plan!(&desired.payload, plan => plan.create(&cx, progress).await)
    }

    async fn change(
        &self,
        current: &Applied,
        desired: &Desired,
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        let cx = self.cx(&desired.id.name, &desired.hash);
        with_plan!(&desired.payload, plan => plan.change(current, &cx, progress).await)
    }

    async fn remove(
        &self,
        current: &Applied,
        delete_artifact: bool,
        progress: &Progress,
    ) -> Result<(), HostError> {
        let cx = self.cx(&current.id.name, &current.hash);
        with_kind!(current.id.kind, P => P::remove(current, delete_artifact, &cx, progress).await)
    }
}
