//! The `template` kind: its layers, built once per hash of its settings ([`Templates`])
//! and shared by projects, so a removal leaves them (`template rm` deletes them).
//!
//! [`Templates`]: crate::templates::Templates

use std::path::PathBuf;

use aistack_apply::{HostError, Outputs, Progress, chain};
use aistack_planner::{Applied, Base, TemplatePlan};
use aistack_spec::values::OciRef;
use aistack_store::registry::{self, PullOptions, PullProgress};

use super::{Cx, Executor};
use crate::proxies::Access;
use crate::serving::store_error;
use crate::templates::Tree;

/// Output key of a template: its layers, top first, `:`-separated.
pub const ROOTFS: &str = "rootfs";

impl Executor for TemplatePlan {
    /// The layers built from the same settings before, else its base (a directory
    /// imported, an image from the store or pulled, another template's layers) and its
    /// `run:` steps, in a build sandbox under the template's own policy.
    async fn create(&self, cx: &Cx<'_>, progress: &Progress) -> Result<Outputs, HostError> {
        let (runtime, project, name) = (cx.runtime, cx.project, cx.name);
        let settings = &self.settings;
        let layers = match runtime.templates.cached(project, name, cx.hash)? {
            Some(layers) => layers,
            None => {
                let base = match &settings.from {
                    Base::Path(path) => Tree::Dir(path.into()),
                    Base::Template(parent) => {
                        let layers =
                            runtime.templates.layers(project, parent).ok_or_else(|| {
                                HostError::new(format!(
                                    "Template `{parent}`, the base of `{name}`, is not built"
                                ))
                                .with_help("Run `aistack up` again")
                            })?;
                        Tree::Layers(layers)
                    }
                    Base::Image(reference) => {
                        Tree::Image(image(self, cx, reference, progress).await?)
                    }
                };
                let steps = !settings.run.is_empty();
                let key = format!("template:{name}");
                let build = match &settings.network_policy {
                    Some(policy) if steps => {
                        let access = Access {
                            policy: Some(policy.clone()),
                            models: None,
                        };
                        Some(runtime.proxies.attach(project, &key, access).await?)
                    }
                    _ => None,
                };
                progress.message(if steps { "building" } else { "importing" });
                let built = (runtime.templates)
                    .build(project, name, cx.hash, base, self, build.clone())
                    .await;
                if build.is_some() {
                    runtime.proxies.detach(project, &key).await;
                }
                built?
            }
        };
        let layers = (layers.iter().map(|l| l.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(":");
        Ok(Outputs::from([(ROOTFS.to_owned(), layers)]))
    }

    /// A template's tree stays: it is a cache keyed by content that other projects may
    /// share.
    async fn remove(
        _current: &Applied,
        _delete_artifact: bool,
        _cx: &Cx<'_>,
        _progress: &Progress,
    ) -> Result<(), HostError> {
        Ok(())
    }
}

/// The layer blobs of the `from:` image, bottom first, each with whether it is
/// gzip-compressed: the store's copy when the plan found one, else pulled.
async fn image(
    plan: &TemplatePlan,
    cx: &Cx<'_>,
    reference: &str,
    progress: &Progress,
) -> Result<Vec<(PathBuf, bool)>, HostError> {
    let store = &cx.runtime.store;
    let layers = match &plan.image_in_store {
        Some(digest) => {
            store
                .manifest(digest)
                .map_err(|e| {
                    HostError::new(format!(
                        "The image `{reference}` left the store after it was planned: {}",
                        chain(&e)
                    ))
                    .with_help("Run `aistack up` again: it pulls the image")
                })?
                .layers
        }
        None => {
            let oci = OciRef::parse_image(reference).map_err(|e| {
                HostError::new(format!(
                    "Invalid image reference `{reference}`: {}",
                    e.reason
                ))
                .with_help(e.help)
            })?;
            progress.message("pulling");
            let mut report = |p: PullProgress| progress.part_bytes(p.layer, p.done, p.total);
            let pulled = registry::pull_image(store, &oci, &PullOptions::default(), &mut report)
                .await
                .map_err(|e| HostError::from_error(&e, e.help()))?;
            pulled.layers
        }
    };
    (layers.iter())
        .map(|layer| {
            let blob = store.blob_path(&layer.digest).map_err(store_error)?;
            let gzip =
                aistack_store::artifact::IMAGE_LAYER_GZIP.contains(&layer.media_type.as_str());
            Ok((blob, gzip))
        })
        .collect()
}
