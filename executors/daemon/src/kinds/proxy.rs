//! The `proxy` kind: a loopback listener enforcing a network policy ([`Proxies`]). A
//! change swaps the policy in place, keeping the port and the connections the new policy
//! still allows.
//!
//! [`Proxies`]: crate::proxies::Proxies

use aistack_apply::{HostError, Outputs, Progress};
use aistack_planner::Applied;
use aistack_planner::payload::NetworkPolicy;

use super::{Cx, Executor};
use crate::api::ResourceStatus;

/// Output key of a proxy resource: the address its listener serves on, as a URL for
/// `HTTP_PROXY`.
pub const ENDPOINT: &str = "endpoint";

/// The port a proxy record's endpoint names.
fn recorded_port(record: &Applied) -> Option<u16> {
    let endpoint = record.outputs.get(ENDPOINT)?;
    endpoint.rsplit_once(':')?.1.parse().ok()
}

/// Runs the listener (on `port` when it keeps its recorded one) and records where it
/// listens.
async fn listen(
    policy: &NetworkPolicy,
    cx: &Cx<'_>,
    port: Option<u16>,
) -> Result<Outputs, HostError> {
    let proxies = &cx.runtime.proxies;
    let address = proxies.apply(cx.project, cx.name, policy, port).await?;
    Ok(Outputs::from([(
        ENDPOINT.to_owned(),
        format!("http://{address}"),
    )]))
}

impl Executor for NetworkPolicy {
    async fn create(&self, cx: &Cx<'_>, _progress: &Progress) -> Result<Outputs, HostError> {
        listen(self, cx, None).await
    }

    async fn change(
        &self,
        current: &Applied,
        cx: &Cx<'_>,
        _progress: &Progress,
    ) -> Result<Outputs, HostError> {
        listen(self, cx, recorded_port(current)).await
    }

    async fn remove(
        _current: &Applied,
        _delete_artifact: bool,
        cx: &Cx<'_>,
        _progress: &Progress,
    ) -> Result<(), HostError> {
        cx.runtime.proxies.stop(cx.project, cx.name).await;
        Ok(())
    }

    /// Starts the listener again on its recorded port; credential values come with the
    /// next `up`. A port now taken fails here and is tried again before the next apply.
    async fn readopt(
        record: &Applied,
        settings: NetworkPolicy,
        cx: &Cx<'_>,
    ) -> Result<(), HostError> {
        if cx.runtime.proxies.is_running(cx.project, cx.name).await {
            return Ok(());
        }
        listen(&settings, cx, recorded_port(record)).await.map(drop)
    }

    /// A proxy serves where its listener is now, which the record also names.
    async fn live(status: &mut ResourceStatus, cx: &Cx<'_>) {
        let endpoints = cx.runtime.proxies.endpoints(cx.project).await;
        super::listening(status, endpoints.get(cx.name), "not listening");
    }
}
