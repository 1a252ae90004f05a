//! The `model` kind: the artifact is imported or pulled into the shared store, then
//! registered with the project's gateway, which loads it on demand.

use std::sync::Arc;

use aistack_apply::{HostError, Outputs, Progress};
use aistack_planner::{Applied, Artifact, FileFact, MANIFEST_OUTPUT, ModelPlan, ModelSettings};
use aistack_spec::values::{EngineKind, ModelMode, OciRef};
use aistack_store::registry::{self, PullOptions, PullProgress};
use aistack_store::{LocalFile, Store};

use super::{Cx, Executor};
use crate::serving::{model_config, store_error};
use crate::status::short_digest;

/// Output key of a model resource: the manifest digest in the store.
pub const MANIFEST: &str = MANIFEST_OUTPUT;
/// Output key of a model resource: the artifact's total layer size in bytes.
pub const SIZE: &str = "size";

/// Refuses what only a later version serves: engines but llama.cpp, image models.
pub(super) fn check_serving(
    serving: &aistack_planner::Serving,
    cx: &Cx<'_>,
) -> Result<(), HostError> {
    if serving.engine != EngineKind::LlamaCpp {
        return Err(
            HostError::new(format!("Engine `{}` is not supported yet", serving.engine)).with_help(
                format!(
                    "Serve `models.{}` with `engine: llama.cpp` (a GGUF source)",
                    cx.name
                ),
            ),
        );
    }
    if serving.mode == ModelMode::Image {
        return Err(HostError::new("Image models are not supported yet")
            .with_help(format!("Remove `models.{}` for now", cx.name)));
    }
    Ok(())
}

impl Executor for ModelPlan {
    fn check(&self, cx: &Cx<'_>) -> Result<(), HostError> {
        check_serving(&self.settings.serving, cx)
    }

    async fn create(&self, cx: &Cx<'_>, progress: &Progress) -> Result<Outputs, HostError> {
        let outputs = match &self.artifact {
            Artifact::Import { files } => import(cx, files, progress).await?,
            Artifact::Pull {
                reference, digest, ..
            } => pull(cx, reference, digest.as_deref(), progress).await?,
        };
        register(cx, &self.settings, &outputs).await?;
        Ok(outputs)
    }

    async fn remove(
        current: &Applied,
        delete_artifact: bool,
        cx: &Cx<'_>,
        progress: &Progress,
    ) -> Result<(), HostError> {
        cx.runtime.gateways.unregister(cx.project, cx.name).await;
        let Some(manifest) = current.outputs.get(MANIFEST).cloned() else {
            return Ok(());
        };
        if !delete_artifact {
            return Ok(());
        }
        progress.message("deleting the artifact");
        let store = Arc::clone(&cx.runtime.store);
        tokio::task::spawn_blocking(move || store.remove(&manifest))
            .await
            .map_err(|e| HostError::new(format!("The removal of `{}` stopped: {e}", current.id)))?
            .map_err(store_error)
    }

    /// Registers the model again once its gateway runs; a model the gateway serves stays
    /// as it is.
    async fn readopt(
        record: &Applied,
        settings: ModelSettings,
        cx: &Cx<'_>,
    ) -> Result<(), HostError> {
        let gateways = &cx.runtime.gateways;
        if !gateways.is_attached(cx.project).await
            || gateways.is_registered(cx.project, cx.name).await
        {
            return Ok(());
        }
        register(cx, &settings, &record.outputs).await
    }

    fn recorded(record: &Applied, store: &Store) -> (String, Option<String>) {
        match record.outputs.get(MANIFEST) {
            Some(manifest) if store.contains(manifest) => {
                let size = (record.outputs.get(SIZE))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let detail = format!(
                    "{} ({})",
                    short_digest(manifest),
                    aistack_spec::values::human_size(size)
                );
                ("ready".to_owned(), Some(detail))
            }
            _ => (
                "missing".to_owned(),
                Some("not in the model store; run `aistack up`".to_owned()),
            ),
        }
    }
}

async fn register(
    cx: &Cx<'_>,
    settings: &ModelSettings,
    outputs: &Outputs,
) -> Result<(), HostError> {
    let config = model_config(&cx.runtime.store, cx.project, cx.name, settings, outputs)?;
    cx.runtime.gateways.register(config).await
}

fn outputs(manifest: String, size: u64) -> Outputs {
    Outputs::from([
        (MANIFEST.to_owned(), manifest),
        (SIZE.to_owned(), size.to_string()),
    ])
}

/// Imports local GGUF files (one per shard, in order) into the store.
async fn import(
    cx: &Cx<'_>,
    files: &[FileFact],
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
    let store = Arc::clone(&cx.runtime.store);
    let progress = progress.clone();
    progress.message("importing");
    let imported = tokio::task::spawn_blocking(move || {
        store.import_local(&files, &mut |done, total| progress.bytes(done, total))
    })
    .await
    .map_err(|e| HostError::new(format!("The import of `model {}` stopped: {e}", cx.name)))?
    .map_err(store_error)?;
    Ok(outputs(imported.manifest_digest, imported.size))
}

/// Pulls `reference`; when planning resolved it to `digest`, the pull must yield it, and
/// an artifact already in the store is not fetched again.
async fn pull(
    cx: &Cx<'_>,
    reference: &str,
    digest: Option<&str>,
    progress: &Progress,
) -> Result<Outputs, HostError> {
    let store = &cx.runtime.store;
    if let Some(digest) = digest
        && store.contains(digest)
    {
        let size = store
            .manifest(digest)
            .map(|m| m.layers.iter().map(|l| l.size).sum())
            .unwrap_or(0);
        return Ok(outputs(digest.to_owned(), size));
    }
    let oci = OciRef::parse_model(reference).map_err(|e| {
        HostError::new(format!("Invalid reference `{reference}`: {}", e.reason)).with_help(e.help)
    })?;
    progress.message("pulling");
    let mut report = |p: PullProgress| progress.part_bytes(p.layer, p.done, p.total);
    let pulled = registry::pull(store, &oci, &PullOptions::default(), &mut report)
        .await
        .map_err(|e| HostError::from_error(&e, e.help()))?;
    if let Some(digest) = digest
        && pulled.manifest_digest != digest
    {
        return Err(HostError::new(format!(
            "`{reference}` moved to another artifact while it was pulled"
        ))
        .with_help("Run `aistack up --pull` again"));
    }
    Ok(outputs(pulled.manifest_digest, pulled.size))
}
