//! The `engine` kind (`preload: true`): the model's engine is loaded at `up` rather than at
//! its first request.

use std::sync::Arc;

use aistack_apply::{HostError, Outputs, Progress};
use aistack_planner::{Applied, Serving};

use super::{Cx, Executor};
use crate::api::ResourceStatus;

impl Executor for Serving {
    fn check(&self, cx: &Cx<'_>) -> Result<(), HostError> {
        super::model::check_serving(self, cx)
    }

    async fn create(&self, cx: &Cx<'_>, progress: &Progress) -> Result<Outputs, HostError> {
        progress.message("loading");
        cx.runtime.gateways.preload(cx.project, cx.name).await?;
        Ok(Outputs::new())
    }

    /// The gateway has no unload: the engine stops, and its model loads again on demand.
    async fn remove(
        _current: &Applied,
        _delete_artifact: bool,
        cx: &Cx<'_>,
        _progress: &Progress,
    ) -> Result<(), HostError> {
        cx.runtime.gateways.stop_engine(cx.project, cx.name).await
    }

    /// Loads the model in the background when it is served but not loaded: after a
    /// restart, and at each `up` (a preloaded model is loaded after `up`, also when
    /// `keep_alive` unloaded it since).
    async fn readopt(_record: &Applied, _settings: Serving, cx: &Cx<'_>) -> Result<(), HostError> {
        let gateways = &cx.runtime.gateways;
        if !gateways.is_registered(cx.project, cx.name).await
            || gateways.is_loaded(cx.project, cx.name).await
        {
            return Ok(());
        }
        let (runtime, project, name) = (
            Arc::clone(cx.runtime),
            cx.project.to_owned(),
            cx.name.to_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = runtime.gateways.preload(&project, &name).await {
                tracing::warn!(project, "engine {name}: not loaded: {}", e.message);
            }
        });
        Ok(())
    }

    /// An engine resource is whether its model is loaded now.
    async fn live(status: &mut ResourceStatus, cx: &Cx<'_>) {
        let Some((_, models)) = cx.runtime.gateways.status(cx.project).await else {
            return;
        };
        if let Some(model) = models.iter().find(|m| m.name == cx.name) {
            status.state = if model.loaded.is_some() {
                "loaded"
            } else {
                "idle"
            }
            .to_owned();
            status.detail = model.loaded.as_ref().map(|l| format!("pid {}", l.pid));
        }
    }
}
