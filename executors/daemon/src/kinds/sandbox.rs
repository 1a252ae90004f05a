//! The `sandbox` kind: started on its template's layers by the backend `isolation`
//! chose ([`Sandboxes`]), with its way out (its own proxy listener) and its published
//! ports. A sandbox outlives the daemon; readoption gives a running one its channels again.
//!
//! [`Sandboxes`]: crate::sandboxes::Sandboxes

use aistack_apply::{HostError, Outputs, Progress};
use aistack_planner::{Applied, SandboxPlan, SandboxSettings};
use aistack_sandbox::backend::Backend;
use aistack_sandbox::client::GuestClient;
use aistack_sandbox::isolation;
use aistack_sandbox::microvm::{Accel, Kernel, Microvm, Missing, Programs};
use aistack_sandbox::namespace::Namespace;
use aistack_spec::values::Isolation;
use aistack_store::Store;

use super::{Cx, Executor};
use crate::proxies::{Access, ModelAccess};
use crate::sandboxes::{ACCELERATOR, ISOLATION, ISOLATION_REASON, KERNEL, SOCKET, Sandboxes};

impl Executor for SandboxPlan {
    /// Starts the sandbox on its template's layers (recorded by the template's step,
    /// which this step depends on).
    async fn create(&self, cx: &Cx<'_>, progress: &Progress) -> Result<Outputs, HostError> {
        let (runtime, project, name) = (cx.runtime, cx.project, cx.name);
        let template = &self.settings.template;
        let layers = runtime.templates.layers(project, template).ok_or_else(|| {
            HostError::new(format!(
                "Template `{template}` of `sandbox {name}` is not built"
            ))
            .with_help("Run `aistack up` again")
        })?;
        let proxy = match access(cx, &self.settings).await? {
            Some(access) => Some(runtime.proxies.attach(project, name, access).await?),
            None => None,
        };
        // The first call runs a guest for up to a tenth of a second: off the runtime.
        let host = tokio::task::spawn_blocking(isolation::Host::this_machine)
            .await
            .map_err(|e| HostError::new(format!("The host probe stopped: {e}")))?;
        let requested = self.settings.isolation;
        let files = (requested == Isolation::Microvm || host.kvm_at_speed())
            .then(|| microvm_files(&runtime.home));
        let missing = match &files {
            Some(Err(missing)) => Some(missing.message.as_str()),
            _ => None,
        };
        let choice = isolation::choose(requested.as_str(), host, missing);
        let microvm = match (choice.backend, files) {
            ("microvm", Some(Ok((kernel, programs)))) => Some(Microvm {
                kernel,
                programs,
                accel: if choice.emulated {
                    Accel::Tcg
                } else {
                    Accel::Kvm
                },
            }),
            ("microvm", Some(Err(missing))) => {
                return Err(HostError::new(format!(
                    "Sandbox `{name}` cannot run as a microVM: {}",
                    missing.message
                ))
                .with_help(missing.help));
            }
            _ => None,
        };
        if choice.emulated {
            tracing::warn!(project, sandbox = name, "{}", choice.reason);
        }
        let vm_outputs: Vec<(String, String)> = match &microvm {
            Some(vm) => vec![
                (ACCELERATOR.to_owned(), vm.accel.as_str().to_owned()),
                (
                    KERNEL.to_owned(),
                    format!(
                        "{} at `{}` (sha256 {})",
                        vm.kernel.origin,
                        vm.kernel.path.display(),
                        vm.kernel.sha256
                    ),
                ),
            ],
            None => Vec::new(),
        };
        let backend: Box<dyn Backend> = match microvm {
            Some(vm) => Box::new(vm),
            None => Box::new(Namespace),
        };
        if choice.emulated {
            progress.message("starting a microVM under TCG (software emulation: slow)");
        }
        if !choice.emulated {
            progress.message("starting");
        }
        let socket = (runtime.sandboxes)
            .start(project, name, self, &layers, proxy, backend.as_ref())
            .await?;
        crate::sandboxes::write_agent_files(&socket, name, &self.files).await?;
        Ok(Outputs::from([
            (SOCKET.to_owned(), socket.to_string_lossy().into_owned()),
            (ISOLATION.to_owned(), choice.backend.to_owned()),
            (ISOLATION_REASON.to_owned(), choice.reason),
        ])
        .into_iter()
        .chain(vm_outputs)
        .collect())
    }

    async fn remove(
        _current: &Applied,
        _delete_artifact: bool,
        cx: &Cx<'_>,
        progress: &Progress,
    ) -> Result<(), HostError> {
        progress.message("stopping");
        cx.runtime.proxies.detach(cx.project, cx.name).await;
        cx.runtime.sandboxes.remove(cx.project, cx.name).await
    }

    /// Gives a running sandbox its channels again: its published ports, its own proxy
    /// listener and the forwarder of its `proxy.sock` live in the daemon, while the
    /// sandbox outlives it. One that no longer runs is left to the next `up`.
    async fn readopt(
        _record: &Applied,
        settings: SandboxSettings,
        cx: &Cx<'_>,
    ) -> Result<(), HostError> {
        let (runtime, project, name) = (cx.runtime, cx.project, cx.name);
        let layout = Sandboxes::layout_in(&runtime.home, project, name);
        let client = GuestClient::new(&layout.socket());
        if runtime.channels.are_open(project, name)
            || !client.is_up(aistack_sandbox::client::ANSWER_TIMEOUT).await
        {
            return Ok(());
        }
        (runtime.channels)
            .publish(project, name, &settings.ports, &layout.socket())
            .await?;
        if let Some(access) = access(cx, &settings).await? {
            let address = runtime.proxies.attach(project, name, access).await?;
            runtime.channels.forward(project, name, &layout, address)?;
        }
        Ok(())
    }

    /// Which backend runs it, and why (`isolation: auto` says what it found).
    fn recorded(record: &Applied, _store: &Store) -> (String, Option<String>) {
        let detail = (record.outputs.get(ISOLATION)).map(|backend| {
            let kernel = (record.outputs.get(KERNEL)).map(|k| format!("; kernel {k}"));
            match record.outputs.get(ISOLATION_REASON) {
                Some(reason) => format!("{backend} ({reason}{})", kernel.unwrap_or_default()),
                None => backend.clone(),
            }
        });
        ("applied".to_owned(), detail)
    }
}

/// The microVM's kernel (verified against its pin) and programs, or what is missing.
fn microvm_files(home: &crate::home::Home) -> Result<(Kernel, Programs), Missing> {
    Ok((Kernel::find(&home.kernel())?, Programs::find()?))
}

/// How a sandbox goes out: its policy, and its models on the project's gateway; `None`
/// when it reaches nothing at all.
async fn access(cx: &Cx<'_>, sandbox: &SandboxSettings) -> Result<Option<Access>, HostError> {
    let (project, name) = (cx.project, cx.name);
    let models = if sandbox.models.is_empty() {
        None
    } else {
        let (gateway, key_env) = cx.runtime.gateways.endpoint(project).await.ok_or_else(|| {
            HostError::new(format!(
                "The gateway of project `{project}` is not running, so sandbox `{name}` cannot reach its models"
            ))
            .with_help("Run `aistack up` again; see `aistack logs` if it fails")
        })?;
        Some(ModelAccess {
            gateway,
            key_env,
            models: sandbox.models.clone(),
        })
    };
    let policy = sandbox.network_policy.clone();
    Ok((policy.is_some() || models.is_some()).then_some(Access { policy, models }))
}
