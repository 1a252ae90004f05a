//! Observing reality before planning: what was applied (by this project, and the gateways
//! of the others), and the local files the spec names.

use std::collections::BTreeSet;
use std::path::Path;

use aistack_daemon::Home;
use aistack_daemon::state::ProjectState;
use aistack_planner::{
    FileFact, GatewayPlan, Kind, LocalFile, MANIFEST_OUTPUT, Observed, RegistryFact,
};
use aistack_spec::Spec;
use aistack_spec::values::{Source, TemplateFrom};
use aistack_store::{DigestCache, Store, local_shards};

use crate::report::{Failure, chain};

/// The applied resources of `project`, the facts about every local model file of `spec`,
/// and what its registry references point at in the local store — or, with `pull`, in the
/// registry. Digests of local files come from a cache keyed by path, size, mtime and inode,
/// so an unchanged file costs one `stat`.
pub async fn observe(
    home: &Home,
    project: &str,
    spec: &Spec,
    base_dir: &Path,
    pull: bool,
) -> Result<Observed, Failure> {
    let mut observed = ProjectState::load(home, project)?.observed();
    forget_stopped_sandboxes(home, project, &mut observed, spec).await;
    // Projects sharing a listener must agree on its settings; an unreadable record of
    // another project is that project's problem, not this plan's.
    for (other, state) in other_projects(home, project) {
        let gateway = (state.resources.iter())
            .find(|r| r.id.kind == Kind::Gateway)
            .and_then(|r| r.settings::<GatewayPlan>().ok());
        if let Some(gateway) = gateway {
            observed.other_gateways.insert(other, gateway);
        }
    }
    let cache_file = home.cache().join("digests.json");
    let mut cache = DigestCache::load(&cache_file);
    for model in spec.models.values() {
        let Source::Local(written) = &model.source else {
            continue;
        };
        let path = aistack_planner::local_path(base_dir, written);
        if observed.local_files.contains_key(&path) {
            continue;
        }
        let fact = local_file(&mut cache, &path);
        observed.local_files.insert(path, fact);
    }
    // The cache only saves work; failing to write it must not fail the command.
    if std::fs::create_dir_all(home.cache()).is_ok() {
        let _ = cache.save(&cache_file);
    }
    let references: Vec<_> = spec
        .models
        .values()
        .filter_map(|m| match &m.source {
            Source::Oci(reference) => Some(reference.clone()),
            Source::Local(_) => None,
        })
        .collect();
    let images: Vec<String> = (spec.templates.values())
        .filter_map(|t| match &t.from {
            TemplateFrom::Image(reference) => Some(reference.to_string()),
            _ => None,
        })
        .collect();
    if references.is_empty() && images.is_empty() {
        return Ok(observed);
    }
    let store = if home.models().join("index.json").exists() {
        Some(Store::open(&home.models())?)
    } else {
        None
    };
    // A template image the store has is used as it is (Docker's default pull policy).
    for reference in images {
        let stored = (store.as_ref())
            .and_then(|store| Some(store).zip(store.resolve(&reference)))
            .filter(|(store, digest)| store.contains(digest) && store.manifest(digest).is_ok());
        if let Some((_, digest)) = stored {
            observed.images.insert(reference, digest);
        }
    }
    if pull {
        for reference in references {
            let digest = aistack_store::registry::resolve(&reference)
                .await
                .map_err(|e| Failure::from(crate::report::Report::new(chain(&e), e.help())))?;
            observed
                .registry
                .insert(reference.to_string(), RegistryFact { digest, size: None });
        }
    } else if let Some(store) = &store {
        for reference in references {
            let name = reference.to_string();
            if let Some(digest) = store.resolve(&name) {
                let size = store
                    .manifest(&digest)
                    .ok()
                    .map(|m| m.layers.iter().map(|l| l.size).sum());
                observed
                    .registry
                    .insert(name, RegistryFact { digest, size });
            }
        }
    }
    Ok(observed)
}

/// The records of every project of `home` but `project` (those that can be read).
fn other_projects(home: &Home, project: &str) -> Vec<(String, ProjectState)> {
    (ProjectState::projects(home).into_iter())
        .filter(|other| other != project)
        .filter_map(|other| Some((other.clone(), ProjectState::load(home, &other).ok()?)))
        .collect()
}

/// The manifest digests other projects' model records name: `down --models` keeps those
/// artifacts in the shared store (a record that cannot be read names none).
pub fn other_artifacts(home: &Home, project: &str) -> BTreeSet<String> {
    (other_projects(home, project).into_iter())
        .flat_map(|(_, state)| state.resources)
        .filter(|r| r.id.kind == Kind::Model)
        .filter_map(|r| r.outputs.get(MANIFEST_OUTPUT).cloned())
        .collect()
}

fn local_file(cache: &mut DigestCache, path: &Path) -> LocalFile {
    if let Err(e) = std::fs::metadata(path) {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        return LocalFile::Missing { reason };
    }
    let shards = match local_shards(path) {
        Ok(shards) => shards,
        Err(e) => return LocalFile::Missing { reason: chain(&e) },
    };
    let mut facts = Vec::with_capacity(shards.len());
    for shard in shards {
        match cache.fact(&shard) {
            Ok((size, digest)) => facts.push(FileFact {
                path: shard,
                size,
                digest,
            }),
            Err(e) => {
                return LocalFile::Missing {
                    reason: format!("`{}`: {e}", shard.display()),
                };
            }
        }
    }
    LocalFile::Present { shards: facts }
}

/// A recorded sandbox the spec still wants whose guest agent does not answer (killed,
/// or the machine restarted) is not there: the plan creates it again, on its kept layer.
/// One the spec no longer wants stays recorded, so that its removal cleans up.
async fn forget_stopped_sandboxes(
    home: &Home,
    project: &str,
    observed: &mut Observed,
    spec: &Spec,
) {
    let mut stopped = Vec::new();
    for id in observed.resources.keys() {
        if id.kind != Kind::Sandbox || !spec.sandboxes.contains_key(&id.name) {
            continue;
        }
        let socket = aistack_daemon::sandboxes::Sandboxes::socket(home, project, &id.name);
        let client = aistack_sandbox::client::GuestClient::new(&socket);
        if !client.is_up(aistack_sandbox::client::ANSWER_TIMEOUT).await {
            stopped.push(id.clone());
        }
    }
    for id in stopped {
        observed.resources.remove(&id);
    }
}
