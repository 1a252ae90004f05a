//! The machine behind the walker: carries out steps on this host.
//!
//! The gateway resource attaches the project to its listener ([`Gateways`]); models are
//! imported or pulled into the shared store, then registered with that gateway; an engine
//! resource loads its model at `up`; a proxy resource runs its policy's listener
//! ([`Proxies`]), changed in place. Kinds whose executors do not exist yet (templates,
//! sandboxes) and engines other than llama.cpp are refused by [`Host::check`] before
//! anything runs, so `up` never reports a success it did not achieve.

use std::sync::Arc;

use aistack_apply::{Host, HostError, Outputs, Progress, Unsupported, chain};
use aistack_planner::{Applied, Desired, Kind, Payload, Step};
use aistack_sandbox::{backend, isolation};
use aistack_spec::values::OciRef;
use aistack_store::registry::{self, PullOptions, PullProgress};
use aistack_store::{LocalFile, Store};

use crate::gateways::{GatewaySpec, Gateways};
use crate::home::Home;
use crate::proxies::{Access, ModelAccess, Proxies};
use crate::sandboxes::{Base, ISOLATION, ISOLATION_REASON, ROOTFS, SOCKET, Sandboxes, strings};
use crate::serving::model_config;
use crate::state::ProjectState;

/// Output key of a model resource: the manifest digest in the store.
pub const MANIFEST: &str = aistack_planner::MANIFEST_OUTPUT;
/// Output key of a model resource: the artifact's total layer size in bytes.
pub const SIZE: &str = "size";
/// Output key of the gateway resource: the URL it serves on.
pub const URL: &str = "url";
/// Output key of a proxy resource: the address its listener serves on, as a URL for
/// `HTTP_PROXY`.
pub const ENDPOINT: &str = "endpoint";

/// Carries out plan steps on this machine.
pub struct MachineHost {
    home: Home,
    store: Arc<Store>,
    gateways: Arc<Gateways>,
    proxies: Arc<Proxies>,
    sandboxes: Arc<Sandboxes>,
    project: String,
    remove_models: bool,
}

impl MachineHost {
    /// A host applying `project` on `home`'s store and the daemon's `gateways` and
    /// `proxies`; `remove_models` makes model removals delete the artifact from the shared
    /// store when no other project uses it (`down --models`).
    pub fn new(
        home: Home,
        store: Arc<Store>,
        gateways: Arc<Gateways>,
        proxies: Arc<Proxies>,
        sandboxes: Arc<Sandboxes>,
        project: &str,
        remove_models: bool,
    ) -> Self {
        MachineHost {
            sandboxes,
            home,
            store,
            gateways,
            proxies,
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

/// The port a proxy record's endpoint names.
pub(crate) fn recorded_port(applied: &Applied) -> Option<u16> {
    let endpoint = applied.outputs.get(ENDPOINT)?;
    endpoint.rsplit_once(':')?.1.parse().ok()
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

impl MachineHost {
    /// A template's layers: the ones built from the same inputs before, else its base (a
    /// directory imported, an image pulled through the store, another template's layers)
    /// and its `run:` steps, in a build sandbox under the template's own policy.
    async fn build_template(
        &self,
        desired: &Desired,
        template: &serde_json::Value,
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        let (project, name) = (&self.project, &desired.id.name);
        let cached = (self.sandboxes).cached_template(project, name, &desired.hash)?;
        let layers = match cached {
            Some(layers) => layers,
            None => {
                let text = |pointer: &str| template.pointer(pointer).and_then(|v| v.as_str());
                let base = if let Some(path) = text("/from/path") {
                    Base::Dir(path.into())
                } else if let Some(parent) = text("/from/template") {
                    Base::Layers(self.sandboxes.template_layers(project, parent).ok_or_else(
                        || {
                            HostError::new(format!(
                                "Template `{parent}`, the base of `{name}`, is not built"
                            ))
                            .with_help("Run `aistack up` again")
                        },
                    )?)
                } else if let Some(image) = text("/from/image") {
                    Base::Image(self.pull_image(image, progress).await?)
                } else {
                    return Err(HostError::new(format!(
                        "The plan's template `{name}` has no `from`"
                    ))
                    .with_help("Plan again with this version of aistack: run `aistack up`"));
                };
                let steps = !strings(template, "run").is_empty();
                let key = format!("template:{name}");
                let build = match template.get("network_policy").and_then(|p| p.as_str()) {
                    Some(policy) if steps => {
                        let access = Access {
                            policy: Some(policy.to_owned()),
                            models: None,
                        };
                        Some(self.proxies.attach(project, &key, access).await?)
                    }
                    _ => None,
                };
                progress.message(if steps { "building" } else { "importing" });
                let built = (self.sandboxes)
                    .build_template(project, name, &desired.hash, base, template, build)
                    .await;
                if build.is_some() {
                    self.proxies.detach(project, &key).await;
                }
                built?
            }
        };
        let layers = (layers.iter().map(|l| l.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(":");
        Ok(Outputs::from([(ROOTFS.to_owned(), layers)]))
    }

    /// Pulls a template's image through the store; its layer blobs, bottom first.
    async fn pull_image(
        &self,
        image: &str,
        progress: &Progress,
    ) -> Result<Vec<(std::path::PathBuf, bool)>, HostError> {
        let oci = OciRef::parse_image(image).map_err(|e| HostError {
            message: format!("Invalid image reference `{image}`: {}", e.reason),
            help: Some(e.help),
        })?;
        // An image the store has (pulled before, or saved from a sandbox) is used as it
        // is, as Docker's default pull policy does.
        let local = (self.store.resolve(&oci.to_string()))
            .filter(|digest| self.store.contains(digest))
            .and_then(|digest| self.store.manifest(&digest).ok());
        let layers = match local {
            Some(manifest) => manifest.layers,
            None => {
                progress.message("pulling");
                let mut report = |p: PullProgress| progress.part_bytes(p.layer, p.done, p.total);
                let pulled =
                    registry::pull_image(&self.store, &oci, &PullOptions::default(), &mut report)
                        .await
                        .map_err(|e| HostError {
                            help: e.help(),
                            message: chain(&e),
                        })?;
                pulled.layers
            }
        };
        (layers.iter())
            .map(|layer| {
                let blob = self.store.blob_path(&layer.digest).map_err(host_error)?;
                Ok((
                    blob,
                    aistack_store::artifact::IMAGE_LAYER_GZIP.contains(&layer.media_type.as_str()),
                ))
            })
            .collect()
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
        let unsupported = |message: String, help: &str| Unsupported {
            id: step.id.clone(),
            message,
            help: Some(help.to_owned()),
        };
        let field = |name: &str| desired.fields.get(name).and_then(|v| v.as_str());
        match &desired.payload {
            Payload::Gateway { .. } => Ok(()),
            Payload::LocalModel { .. } | Payload::RegistryModel { .. } | Payload::Engine { .. } => {
                match (field("engine"), field("mode")) {
                    (Some(engine), _) if engine != "llama.cpp" => Err(unsupported(
                        format!("Engine `{engine}` is not supported yet"),
                        &format!(
                            "Serve `models.{}` with `engine: llama.cpp` (a GGUF source)",
                            step.id.name
                        ),
                    )),
                    (_, Some("image")) => Err(unsupported(
                        "Image models are not supported yet".to_owned(),
                        &format!("Remove `models.{}` for now", step.id.name),
                    )),
                    _ => Ok(()),
                }
            }
            Payload::Proxy { .. } => Ok(()),
            Payload::Template { .. } => Ok(()),
            Payload::Sandbox { sandbox } => check_sandbox(step, sandbox),
        }
    }

    async fn create(&self, desired: &Desired, progress: &Progress) -> Result<Outputs, HostError> {
        let outputs = match &desired.payload {
            Payload::Gateway { .. } => return self.attach(desired).await,
            Payload::LocalModel { files } => self.import(desired, files, progress).await?,
            Payload::RegistryModel {
                reference, digest, ..
            } => self.pull(reference, digest.as_deref(), progress).await?,
            Payload::Engine { model, .. } => {
                progress.message("loading");
                self.gateways.preload(&self.project, model).await?;
                return Ok(Outputs::new());
            }
            Payload::Proxy { policy } => return self.listen(desired, policy, None).await,
            Payload::Template { template } => {
                return self.build_template(desired, template, progress).await;
            }
            Payload::Sandbox { sandbox } => {
                return self.start_sandbox(desired, sandbox, progress).await;
            }
        };
        let config = model_config(
            &self.store,
            &self.project,
            &desired.id.name,
            &desired.fields,
            &outputs,
        )?;
        self.gateways.register(config).await?;
        Ok(outputs)
    }

    async fn change(
        &self,
        current: &Applied,
        desired: &Desired,
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        // A proxy swaps its policy in place, keeping its port and the connections the new
        // policy still allows.
        if let Payload::Proxy { policy } = &desired.payload {
            return self.listen(desired, policy, recorded_port(current)).await;
        }
        // Serving settings change in place: the gateway takes its new settings, a model is
        // made sure of (idempotent import) and registered anew.
        self.create(desired, progress).await
    }

    async fn remove(&self, current: &Applied, progress: &Progress) -> Result<(), HostError> {
        match current.id.kind {
            Kind::Gateway => {
                self.gateways.detach(&self.project).await;
                return Ok(());
            }
            Kind::Engine => {
                return self
                    .gateways
                    .stop_engine(&self.project, &current.id.name)
                    .await;
            }
            Kind::Model => {
                self.gateways
                    .unregister(&self.project, &current.id.name)
                    .await
            }
            Kind::Proxy => {
                self.proxies.stop(&self.project, &current.id.name).await;
                return Ok(());
            }
            // A template's tree stays: it is a cache keyed by content that other
            // projects may share.
            Kind::Template => return Ok(()),
            Kind::Sandbox => {
                progress.message("stopping");
                self.proxies.detach(&self.project, &current.id.name).await;
                return self.sandboxes.remove(&self.project, &current.id.name).await;
            }
        }
        if !self.remove_models {
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

fn check_sandbox(step: &Step, sandbox: &serde_json::Value) -> Result<(), Unsupported> {
    let text = |key: &str| {
        sandbox
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    let name = &step.id.name;
    if text("isolation") == "microvm" {
        return Err(not_yet(
            step,
            "MicroVM sandboxes",
            &format!("Set `sandboxes.{name}.isolation` to `namespace` or `auto`"),
        ));
    }
    Ok(())
}

/// How a sandbox goes out: its policy, and its models on the project's gateway; `None`
/// when it reaches nothing at all.
pub(crate) async fn access(
    gateways: &Gateways,
    project: &str,
    name: &str,
    sandbox: &serde_json::Value,
) -> Result<Option<Access>, HostError> {
    let policy = (sandbox.get("network_policy").and_then(|p| p.as_str())).map(str::to_owned);
    let models: Vec<String> = (strings(sandbox, "models").into_iter())
        .map(str::to_owned)
        .collect();
    let models = if models.is_empty() {
        None
    } else {
        let (gateway, key_env) = gateways.endpoint(project).await.ok_or_else(|| {
            HostError::new(format!(
                "The gateway of project `{project}` is not running, so sandbox `{name}` cannot reach its models"
            ))
            .with_help("Run `aistack up` again; see `aistack logs` if it fails")
        })?;
        Some(ModelAccess {
            gateway,
            key_env,
            models,
        })
    };
    Ok((policy.is_some() || models.is_some()).then_some(Access { policy, models }))
}

impl MachineHost {
    /// Starts a sandbox on its template's tree (recorded by the template's step, which
    /// this step depends on).
    async fn start_sandbox(
        &self,
        desired: &Desired,
        sandbox: &serde_json::Value,
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        let template = sandbox
            .get("template")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        let layers = self
            .sandboxes
            .template_layers(&self.project, template)
            .ok_or_else(|| HostError {
                message: format!("Template `{template}` of `{}` is not built", desired.id),
                help: Some("Run `aistack up` again".to_owned()),
            })?;
        let access = access(&self.gateways, &self.project, &desired.id.name, sandbox).await?;
        let proxy = match access {
            Some(access) => Some(
                self.proxies
                    .attach(&self.project, &desired.id.name, access)
                    .await?,
            ),
            None => None,
        };
        let requested = sandbox
            .get("isolation")
            .and_then(|i| i.as_str())
            .unwrap_or("auto");
        // The first call runs a guest for up to a tenth of a second: off the runtime.
        let host = tokio::task::spawn_blocking(isolation::Host::this_machine)
            .await
            .map_err(|e| HostError::new(format!("The host probe stopped: {e}")))?;
        let choice = isolation::choose(requested, host);
        let backend = backend::named(choice.backend).ok_or_else(|| {
            HostError::new(format!(
                "Sandbox `{}` needs the `{}` backend, which this build lacks",
                desired.id.name, choice.backend
            ))
            .with_help("Set `isolation: namespace`")
        })?;
        progress.message("starting");
        let socket = (self.sandboxes)
            .start(
                &self.project,
                &desired.id.name,
                sandbox,
                &layers,
                proxy,
                backend,
            )
            .await?;
        Ok(Outputs::from([
            (SOCKET.to_owned(), socket.to_string_lossy().into_owned()),
            (ISOLATION.to_owned(), choice.backend.to_owned()),
            (ISOLATION_REASON.to_owned(), choice.reason),
        ]))
    }

    /// Runs the proxy of a policy (on `port` when it keeps its recorded one) and records
    /// where it listens.
    async fn listen(
        &self,
        desired: &Desired,
        policy: &serde_json::Value,
        port: Option<u16>,
    ) -> Result<Outputs, HostError> {
        let address = (self.proxies)
            .apply(&self.project, &desired.id.name, policy, port)
            .await?;
        Ok(Outputs::from([(
            ENDPOINT.to_owned(),
            format!("http://{address}"),
        )]))
    }

    async fn attach(&self, desired: &Desired) -> Result<Outputs, HostError> {
        let spec = GatewaySpec::from_fields(&desired.fields).ok_or_else(|| {
            HostError::new(format!("The plan's `{}` has no valid `listen`", desired.id))
                .with_help("Plan again with this version of aistack: run `aistack up`")
        })?;
        let addr = self.gateways.attach(&self.project, spec).await?;
        Ok(Outputs::from([(URL.to_owned(), format!("http://{addr}"))]))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aistack_planner::{Action, Cause, ResourceId};
    use serde_json::json;

    use super::*;

    fn step(kind: Kind, engine: &str, mode: &str, payload: Payload) -> Step {
        let fields = BTreeMap::from([
            ("engine".to_owned(), json!(engine)),
            ("mode".to_owned(), json!(mode)),
        ]);
        let id = ResourceId::new(kind, "chat");
        Step {
            id: id.clone(),
            action: Action::Create,
            cause: Cause::Missing,
            desired: Some(Desired::new(id, fields, Vec::new(), Vec::new(), payload)),
            current: None,
        }
    }

    #[test]
    fn llama_cpp_models_and_engines_run_and_the_rest_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let store = Arc::new(Store::open(&home.models()).unwrap());
        let gateways = Arc::new(Gateways::new("aistack".into(), home.run(), home.logs()));
        let proxies = Arc::new(Proxies::new(home.clone()));
        let sandboxes = Arc::new(Sandboxes::new(home.clone()));
        let host = MachineHost::new(home, store, gateways, proxies, sandboxes, "demo", false);
        let model = || Payload::LocalModel { files: Vec::new() };
        let engine = || Payload::Engine {
            model: "chat".into(),
            engine: "llama.cpp".into(),
            context_size: None,
            parallel: Some(4),
            mode: "chat".into(),
            runtime_flags: Vec::new(),
            options: BTreeMap::new(),
        };
        let gateway = Payload::Gateway {
            listen: "127.0.0.1:12434".into(),
            cors_origins: Vec::new(),
            api_key_env: None,
            memory_budget: None,
        };
        assert!(host.check(&step(Kind::Gateway, "", "", gateway)).is_ok());
        assert!(
            host.check(&step(Kind::Model, "llama.cpp", "chat", model()))
                .is_ok()
        );
        assert!(
            host.check(&step(Kind::Model, "llama.cpp", "embedding", model()))
                .is_ok()
        );
        assert!(
            host.check(&step(Kind::Engine, "llama.cpp", "chat", engine()))
                .is_ok()
        );

        let vllm = host
            .check(&step(Kind::Model, "vllm", "chat", model()))
            .unwrap_err();
        assert_eq!(vllm.message, "Engine `vllm` is not supported yet");
        let image = host
            .check(&step(Kind::Model, "llama.cpp", "image", model()))
            .unwrap_err();
        assert_eq!(image.message, "Image models are not supported yet");
        let proxy = Payload::Proxy { policy: json!({}) };
        assert!(host.check(&step(Kind::Proxy, "", "", proxy)).is_ok());
        let agent = Payload::Sandbox {
            sandbox: json!({"agent": "claude"}),
        };
        assert!(host.check(&step(Kind::Sandbox, "", "", agent)).is_ok());
        let microvm = Payload::Sandbox {
            sandbox: json!({"isolation": "microvm"}),
        };
        assert!(host.check(&step(Kind::Sandbox, "", "", microvm)).is_err());
    }
}
