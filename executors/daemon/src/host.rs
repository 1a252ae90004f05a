//! The machine behind the walker: carries out steps on this host.
//!
//! Models from local files are imported into the shared store. Kinds whose executors do not
//! exist yet are refused by [`Host::check`] before anything runs, so `up` never reports a
//! success it did not achieve.

use std::sync::Arc;

use aistack_apply::{Host, HostError, Outputs, Progress, Unsupported, chain};
use aistack_planner::{Applied, Desired, Kind, Payload, Step};
use aistack_spec::values::OciRef;
use aistack_store::registry::{self, PullOptions, PullProgress};
use aistack_store::{LocalFile, Store};

use crate::home::Home;
use crate::state::ProjectState;

/// Output key of a model resource: the manifest digest in the store.
pub const MANIFEST: &str = aistack_planner::MANIFEST_OUTPUT;
/// Output key of a model resource: the artifact's total layer size in bytes.
pub const SIZE: &str = "size";

/// Carries out plan steps on this machine.
pub struct MachineHost {
    home: Home,
    store: Arc<Store>,
    project: String,
    remove_models: bool,
}

impl MachineHost {
    /// A host applying `project` on `home`'s store; `remove_models` makes model removals delete the
    /// artifact from the shared store when no other project uses it (`down --models`).
    pub fn new(home: Home, store: Arc<Store>, project: &str, remove_models: bool) -> Self {
        MachineHost {
            home,
            store,
            project: project.to_owned(),
            remove_models,
        }
    }

    /// Whether a model resource other than `current` of this project records `manifest`.
    fn used_elsewhere(&self, current: &Applied, manifest: &str) -> bool {
        ProjectState::projects(&self.home).iter().any(|project| {
            ProjectState::load(&self.home, project).is_ok_and(|state| {
                state.resources.iter().any(|r| {
                    r.id.kind == Kind::Model
                        && r.outputs.get(MANIFEST).map(String::as_str) == Some(manifest)
                        && !(*project == self.project && r.id == current.id)
                })
            })
        })
    }
}

fn not_yet(step: &Step, what: &str, help: &str) -> Unsupported {
    Unsupported {
        id: step.id.clone(),
        message: format!("{what} are not supported yet"),
        help: Some(help.to_owned()),
    }
}

fn host_error(e: aistack_store::StoreError) -> HostError {
    HostError {
        help: e.help(),
        message: chain(&e),
    }
}

impl MachineHost {
    async fn import(
        &self,
        desired: &Desired,
        files: &[aistack_planner::FileFact],
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        let files: Vec<LocalFile> = files
            .iter()
            .map(|f| LocalFile {
                path: f.path.clone(),
                size: f.size,
                digest: f.digest.clone(),
            })
            .collect();
        let store = Arc::clone(&self.store);
        let progress = progress.clone();
        progress.message("importing");
        let imported = tokio::task::spawn_blocking(move || {
            store.import_local(&files, &mut |done, total| progress.bytes(done, total))
        })
        .await
        .map_err(|e| HostError {
            message: format!("The import of `{}` stopped: {e}", desired.id),
            help: None,
        })?
        .map_err(host_error)?;
        Ok(model_outputs(imported.manifest_digest, imported.size))
    }

    /// Pulls `reference`; when planning resolved it to `digest`, the pull must yield it, and
    /// an artifact already in the store is not fetched again.
    async fn pull(
        &self,
        reference: &str,
        digest: Option<&str>,
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        if let Some(digest) = digest
            && self.store.contains(digest)
        {
            let size = self
                .store
                .manifest(digest)
                .map(|m| m.layers.iter().map(|l| l.size).sum())
                .unwrap_or(0);
            return Ok(model_outputs(digest.to_owned(), size));
        }
        let oci = OciRef::parse_model(reference).map_err(|e| HostError {
            message: format!("Invalid reference `{reference}`: {}", e.reason),
            help: Some(e.help),
        })?;
        progress.message("pulling");
        let mut report = |p: PullProgress| progress.part_bytes(p.layer, p.done, p.total);
        let pulled = registry::pull(&self.store, &oci, &PullOptions::default(), &mut report)
            .await
            .map_err(|e| HostError {
                help: e.help(),
                message: chain(&e),
            })?;
        if let Some(digest) = digest
            && pulled.manifest_digest != digest
        {
            return Err(HostError {
                message: format!("`{reference}` moved to another artifact while it was pulled"),
                help: Some("Run `aistack up --pull` again".to_owned()),
            });
        }
        Ok(model_outputs(pulled.manifest_digest, pulled.size))
    }
}

fn model_outputs(manifest: String, size: u64) -> Outputs {
    Outputs::from([
        (MANIFEST.to_owned(), manifest),
        (SIZE.to_owned(), size.to_string()),
    ])
}

impl Host for MachineHost {
    fn check(&self, step: &Step) -> Result<(), Unsupported> {
        // A removal only undoes what an earlier apply did, so it is always possible.
        let Some(desired) = &step.desired else {
            return Ok(());
        };
        match &desired.payload {
            Payload::LocalModel { .. } | Payload::RegistryModel { .. } => Ok(()),
            Payload::Engine { .. } => Err(not_yet(
                step,
                "Engines",
                &format!(
                    "Remove `preload: true` from `models.{}`; models load on demand once engines land",
                    step.id.name
                ),
            )),
            Payload::Proxy { .. } => Err(not_yet(
                step,
                "Network policy proxies",
                "Remove the sandboxes and templates that use this policy for now",
            )),
            Payload::Template { .. } => Err(not_yet(
                step,
                "Sandbox templates",
                "Remove `templates:` and `sandboxes:` for now",
            )),
            Payload::Sandbox { .. } => {
                Err(not_yet(step, "Sandboxes", "Remove `sandboxes:` for now"))
            }
        }
    }

    async fn create(&self, desired: &Desired, progress: &Progress) -> Result<Outputs, HostError> {
        match &desired.payload {
            Payload::LocalModel { files } => self.import(desired, files, progress).await,
            Payload::RegistryModel {
                reference, digest, ..
            } => self.pull(reference, digest.as_deref(), progress).await,
            _ => Err(HostError {
                message: format!("Cannot create `{}`", desired.id),
                help: None,
            }),
        }
    }

    async fn change(
        &self,
        _current: &Applied,
        desired: &Desired,
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        // Serving settings change in place; the artifact is made sure of (idempotent import).
        self.create(desired, progress).await
    }

    async fn remove(&self, current: &Applied, progress: &Progress) -> Result<(), HostError> {
        if current.id.kind != Kind::Model || !self.remove_models {
            return Ok(());
        }
        let Some(manifest) = current.outputs.get(MANIFEST).cloned() else {
            return Ok(());
        };
        if self.used_elsewhere(current, &manifest) {
            progress.message("kept in the store: another project uses it");
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.remove(&manifest))
            .await
            .map_err(|e| HostError {
                message: format!("The removal of `{}` stopped: {e}", current.id),
                help: None,
            })?
            .map_err(host_error)
    }
}
