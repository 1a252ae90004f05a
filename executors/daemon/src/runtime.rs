//! The daemon's runtime: one value holding the home, the model store and the services
//! that keep what was applied running, shared by the control API, every apply and
//! readoption.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use aistack_planner::{Applied, KindPlan, ResourceId};
use aistack_proxy::OwnListeners;
use aistack_sandbox::idmap::IdRange;
use aistack_store::Store;

use crate::channels::Channels;
use crate::gateways::Gateways;
use crate::home::Home;
use crate::kinds::{Cx, Executor};
use crate::proxies::Proxies;
use crate::sandboxes::{self, Sandboxes};
use crate::state::ProjectState;
use crate::templates::Templates;

/// What the daemon runs.
pub struct Runtime {
    /// `AISTACK_HOME`.
    pub home: Home,
    /// The shared model store (also the image store of templates).
    pub store: Arc<Store>,
    /// The gateway listeners and the models registered on them.
    pub gateways: Gateways,
    /// The network-policy proxy listeners.
    pub proxies: Proxies,
    /// The host side of sandboxes' channels.
    pub channels: Arc<Channels>,
    /// Built templates.
    pub templates: Templates,
    /// Started sandboxes.
    pub sandboxes: Sandboxes,
    /// Every address this daemon listens on (gateways, proxies, published ports), which no
    /// proxy dials.
    pub own: OwnListeners,
}

impl Runtime {
    /// The runtime of `home`, with engines started as `program engine …`.
    pub fn new(home: Home, store: Arc<Store>, program: PathBuf) -> Runtime {
        let range: IdRange = sandboxes::id_range();
        let own = OwnListeners::new();
        let channels = Arc::new(Channels::new(range, own.clone()));
        Runtime {
            gateways: Gateways::new(program, home.run(), home.logs(), own.clone()),
            proxies: Proxies::new(home.clone(), own.clone()),
            own,
            templates: Templates::new(home.clone(), range, Arc::clone(&channels)),
            sandboxes: Sandboxes::new(home.clone(), range, Arc::clone(&channels)),
            channels,
            store,
            home,
        }
    }

    /// Serves what every project's record says was applied (after a daemon restart).
    pub async fn readopt_all(self: &Arc<Self>) {
        for project in ProjectState::projects(&self.home) {
            self.readopt(&project, &BTreeSet::new()).await;
        }
    }

    /// Serves what `project`'s record says was applied and the daemon does not serve, in
    /// the order of kinds (a gateway before its models, proxies before sandboxes), but for
    /// the resources in `leaving` (a plan about to remove or replace them). Each failure is
    /// logged and leaves the rest to be served; the next apply tries again.
    pub async fn readopt(self: &Arc<Self>, project: &str, leaving: &BTreeSet<ResourceId>) {
        let state = match ProjectState::load(&self.home, project) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(project, "not re-adopted: {}", aistack_apply::chain(&e));
                return;
            }
        };
        for record in state.resources.iter().filter(|r| !leaving.contains(&r.id)) {
            let cx = Cx {
                runtime: self,
                project,
                name: &record.id.name,
                hash: &record.hash,
            };
            let readopted =
                aistack_planner::with_kind!(record.id.kind, P => readopt::<P>(record, &cx).await);
            if let Err(e) = readopted {
                tracing::warn!(project, "{}: not served again: {}", record.id, e.message);
            }
        }
    }

    /// Stops the listeners and engines this daemon runs (it is stopping); sandboxes go on.
    pub async fn shutdown(&self) {
        self.proxies.shutdown().await;
        self.gateways.shutdown().await;
    }
}

async fn readopt<P: Executor>(
    record: &Applied,
    cx: &Cx<'_>,
) -> Result<(), aistack_apply::HostError> {
    let settings = record
        .settings::<<P as KindPlan>::Settings>()
        .map_err(|e| aistack_apply::HostError {
            message: e.to_string(),
            help: e.help(),
        })?;
    P::readopt(record, settings, cx).await
}
