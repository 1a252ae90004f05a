//! What `aistack status` shows for a project.

use aistack_store::Store;

use crate::api::{EngineServing, ModelServing, ProjectStatus};
use crate::home::Home;
use crate::state::{ProjectState, StateError};

/// The applied resources of `project`, each checked against the machine. What the gateway
/// serves is added by the daemon ([`serving_status`]); without a daemon nothing is served.
pub fn project_status(
    home: &Home,
    store: &Store,
    project: &str,
) -> Result<ProjectStatus, StateError> {
    let state = ProjectState::load(home, project)?;
    let resources = (state.resources.iter())
        .map(|record| crate::kinds::recorded_status(record, store))
        .collect();
    Ok(ProjectStatus {
        project: project.to_owned(),
        resources,
        gateway: None,
        models: Vec::new(),
    })
}

/// The gateway's view of `project`'s models, for [`ProjectStatus::models`].
pub fn serving_status(models: Vec<aistack_gateway::ModelStatus>) -> Vec<ModelServing> {
    let mut out: Vec<ModelServing> = models
        .into_iter()
        .map(|m| ModelServing {
            name: m.name,
            mode: match m.mode {
                aistack_gateway::Mode::Chat => "chat",
                aistack_gateway::Mode::Embedding => "embedding",
            }
            .to_owned(),
            state: if m.loaded.is_some() { "loaded" } else { "idle" }.to_owned(),
            engine: m.loaded.map(|l| EngineServing {
                pid: l.pid,
                memory_bytes: l.memory_bytes,
                threads: l.threads,
                context_size: l.context_size,
                parallel: l.parallel,
                cpu_features: l.cpu_features,
                unused_cpu_features: l.unused_cpu_features,
                in_flight: l.in_flight as u64,
            }),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `sha256:0123456789ab`: enough of a digest to recognise it.
pub fn short_digest(digest: &str) -> &str {
    let end = digest.find(':').map_or(12, |colon| colon + 13);
    digest.get(..end).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aistack_spec::values::human_size;

    #[test]
    fn sizes_and_digests_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(98_362_432), "93.8 MiB");
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest("short"), "short");
    }
}
