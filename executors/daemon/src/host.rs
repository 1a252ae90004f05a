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
use aistack_spec::values::OciRef;
use aistack_store::registry::{self, PullOptions, PullProgress};
use aistack_store::{LocalFile, Store};

use crate::gateways::{GatewaySpec, Gateways};
use crate::home::Home;
use crate::proxies::Proxies;
use crate::sandboxes::{ISOLATION, ISOLATION_REASON, ROOTFS, SOCKET, Sandboxes};
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
            Payload::Template { template } => check_template(step, template),
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
                progress.message("importing");
                let rootfs = (self.sandboxes)
                    .build_template(&self.project, &desired.id.name, &desired.hash, template)
                    .await?;
                let rootfs = rootfs.to_string_lossy().into_owned();
                return Ok(Outputs::from([(ROOTFS.to_owned(), rootfs)]));
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

/// What the namespace backend cannot do yet is refused before anything runs.
fn check_template(step: &Step, template: &serde_json::Value) -> Result<(), Unsupported> {
    if template.pointer("/from/image").is_some() {
        return Err(not_yet(
            step,
            "Templates from OCI images",
            "Use `from: ./DIR`, a directory holding a root filesystem",
        ));
    }
    if non_empty_list(template, "run") {
        return Err(not_yet(
            step,
            "Template build steps (`run:`)",
            "Build the root filesystem beforehand and point `from:` at it",
        ));
    }
    Ok(())
}

fn non_empty_list(value: &serde_json::Value, key: &str) -> bool {
    (value.get(key).and_then(|v| v.as_array())).is_some_and(|items| !items.is_empty())
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
    if text("agent") != "shell" {
        return Err(not_yet(
            step,
            &format!("Agent `{}` sandboxes", text("agent")),
            &format!("Set `sandboxes.{name}.agent: shell` for now"),
        ));
    }
    if non_empty_list(sandbox, "models") {
        return Err(not_yet(
            step,
            "Sandbox `models`",
            &format!("Remove `sandboxes.{name}.models` for now"),
        ));
    }
    Ok(())
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
        let rootfs = self
            .sandboxes
            .template_rootfs(&self.project, template)
            .ok_or_else(|| HostError {
                message: format!("Template `{template}` of `{}` is not built", desired.id),
                help: Some("Run `aistack up` again".to_owned()),
            })?;
        let proxy = match sandbox.get("network_policy").and_then(|p| p.as_str()) {
            Some(policy) => Some(
                self.proxies
                    .attach(&self.project, policy, &desired.id.name)
                    .await?,
            ),
            None => None,
        };
        progress.message("starting");
        let socket = self
            .sandboxes
            .start(&self.project, &desired.id.name, sandbox, &rootfs, proxy)
            .await?;
        let requested = sandbox
            .get("isolation")
            .and_then(|i| i.as_str())
            .unwrap_or("auto");
        let choice = aistack_sandbox::isolation::choose(
            requested,
            aistack_sandbox::isolation::Host::probe(),
        );
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
        let sandbox = Payload::Sandbox { sandbox: json!({}) };
        assert!(host.check(&step(Kind::Sandbox, "", "", sandbox)).is_err());
    }
}
