//! The `gateway` kind: the project joins the listener on its address ([`Gateways`]),
//! which starts when the first project names it and stops with the last.
//!
//! [`Gateways`]: crate::gateways::Gateways

use aistack_apply::{HostError, Outputs, Progress};
use aistack_planner::{Applied, GatewayPlan};
use aistack_store::Store;

use super::{Cx, Executor};
use crate::api::ResourceStatus;

/// Output key of the gateway resource: the URL it serves on.
pub const URL: &str = "url";

impl Executor for GatewayPlan {
    async fn create(&self, cx: &Cx<'_>, _progress: &Progress) -> Result<Outputs, HostError> {
        let gateways = &cx.runtime.gateways;
        let address = gateways.attach(cx.project, self.clone()).await?;
        Ok(Outputs::from([(
            URL.to_owned(),
            format!("http://{address}"),
        )]))
    }

    async fn remove(
        _current: &Applied,
        _delete_artifact: bool,
        cx: &Cx<'_>,
        _progress: &Progress,
    ) -> Result<(), HostError> {
        cx.runtime.gateways.detach(cx.project).await;
        Ok(())
    }

    /// Keys are not recorded, so a gateway that needs one refuses every request until the
    /// next `up` brings it.
    async fn readopt(
        _record: &Applied,
        settings: GatewayPlan,
        cx: &Cx<'_>,
    ) -> Result<(), HostError> {
        let gateways = &cx.runtime.gateways;
        if !gateways.is_attached(cx.project).await {
            gateways.attach(cx.project, settings).await?;
        }
        Ok(())
    }

    fn recorded(record: &Applied, _store: &Store) -> (String, Option<String>) {
        let listen = record.settings::<GatewayPlan>().ok().map(|g| g.listen);
        ("applied".to_owned(), listen.map(|l| format!("http://{l}")))
    }

    /// The record says a gateway was applied; the daemon knows whether it serves.
    async fn live(status: &mut ResourceStatus, cx: &Cx<'_>) {
        let address = cx.runtime.gateways.status(cx.project).await.map(|s| s.0);
        super::listening(status, address, "not serving");
    }
}
