//! The machine behind the walker: each step goes to the module of its kind
//! ([`crate::kinds`]), which carries it out on this host with the daemon's runtime.
//! Nothing is decided here: the plan's typed payloads say what to do.

use std::sync::Arc;

use aistack_apply::{Host, HostError, Outputs, Progress, Unsupported};
use aistack_planner::{Applied, Desired, Step, with_kind, with_plan};

use crate::kinds::{Cx, Executor};
use crate::runtime::Runtime;

/// Carries out the plan steps of one project on this machine.
pub struct MachineHost {
    runtime: Arc<Runtime>,
    project: String,
}

impl MachineHost {
    /// A host applying `project` with `runtime`.
    pub fn new(runtime: Arc<Runtime>, project: &str) -> Self {
        MachineHost {
            runtime,
            project: project.to_owned(),
        }
    }

    fn cx<'a>(&'a self, name: &'a str, hash: &'a str) -> Cx<'a> {
        Cx {
            runtime: &self.runtime,
            project: &self.project,
            name,
            hash,
        }
    }
}

impl Host for MachineHost {
    fn check(&self, step: &Step) -> Result<(), Unsupported> {
        // A removal only undoes what an earlier apply did, so it is always possible.
        let Some(desired) = &step.desired else {
            return Ok(());
        };
        let cx = self.cx(&desired.id.name, &desired.hash);
        with_plan!(&desired.payload, plan => plan.check(&cx)).map_err(|e| Unsupported {
            id: step.id.clone(),
            message: e.message,
            help: e.help,
        })
    }

    async fn create(&self, desired: &Desired, progress: &Progress) -> Result<Outputs, HostError> {
        let cx = self.cx(&desired.id.name, &desired.hash);
        with_plan!(&desired.payload, plan => plan.create(&cx, progress).await)
    }

    async fn change(
        &self,
        current: &Applied,
        desired: &Desired,
        progress: &Progress,
    ) -> Result<Outputs, HostError> {
        let cx = self.cx(&desired.id.name, &desired.hash);
        with_plan!(&desired.payload, plan => plan.change(current, &cx, progress).await)
    }

    async fn remove(
        &self,
        current: &Applied,
        delete_artifact: bool,
        progress: &Progress,
    ) -> Result<(), HostError> {
        let cx = self.cx(&current.id.name, &current.hash);
        with_kind!(current.id.kind, P => P::remove(current, delete_artifact, &cx, progress).await)
    }
}

#[cfg(test)]
mod tests {
    use aistack_planner::{
        Action, Artifact, Cause, EngineOptions, GatewayPlan, ModelPlan, ModelSettings, Payload,
        SandboxPlan, SandboxSettings, Serving,
    };
    use aistack_spec::model::NetworkPolicy;
    use aistack_spec::values::{Agent, EngineKind, GpuLayers, Isolation, KeepAlive, ModelMode};
    use aistack_store::Store;

    use super::*;
    use crate::home::Home;

    fn step(payload: Payload) -> Step {
        let desired = Desired::new("chat", payload, Vec::new());
        Step {
            id: desired.id.clone(),
            action: Action::Create,
            cause: Cause::Missing,
            desired: Some(desired),
            current: None,
            delete_artifact: false,
        }
    }

    fn serving(engine: EngineKind, mode: ModelMode) -> Serving {
        Serving {
            engine,
            context_size: None,
            parallel: Some(4),
            keep_alive: KeepAlive::Forever,
            mode,
            runtime_flags: Vec::new(),
            options: EngineOptions::LlamaCpp {
                threads: None,
                gpu_layers: GpuLayers::Auto,
            },
        }
    }

    fn model(engine: EngineKind, mode: ModelMode) -> Payload {
        Payload::Model(ModelPlan {
            settings: ModelSettings {
                source: "./chat.gguf".into(),
                digests: Vec::new(),
                serving: serving(engine, mode),
            },
            artifact: Artifact::Import { files: Vec::new() },
        })
    }

    fn sandbox(isolation: Isolation) -> Payload {
        Payload::Sandbox(Box::new(SandboxPlan {
            settings: SandboxSettings {
                template: "dev".into(),
                agent: Agent::Claude,
                agent_model: None,
                args: Vec::new(),
                workspace: "/work".into(),
                isolation,
                cpus: None,
                memory: None,
                network_policy: None,
                models: Vec::new(),
                ports: Vec::new(),
                env: Default::default(),
                agent_setup: String::new(),
            },
            environment: Default::default(),
            files: Vec::new(),
            program: "claude".into(),
            install: "npm install -g @anthropic-ai/claude-code".into(),
            limits: aistack_planner::Limits::of(None, None),
            read_only: Vec::new(),
            hidden: Vec::new(),
        }))
    }

    #[test]
    fn llama_cpp_models_and_engines_run_and_the_rest_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let store = Arc::new(Store::open(&home.models()).unwrap());
        let runtime = Arc::new(Runtime::new(home, store, "aistack".into()));
        let host = MachineHost::new(runtime, "demo");
        let gateway = Payload::Gateway(GatewayPlan {
            listen: "127.0.0.1:12434".parse().unwrap(),
            cors_origins: Vec::new(),
            api_key_env: None,
            memory_budget: None,
        });
        assert!(host.check(&step(gateway)).is_ok());
        let llama = EngineKind::LlamaCpp;
        assert!(host.check(&step(model(llama, ModelMode::Chat))).is_ok());
        assert!(
            host.check(&step(model(llama, ModelMode::Embedding)))
                .is_ok()
        );
        let engine = Payload::Engine(serving(llama, ModelMode::Chat));
        assert!(host.check(&step(engine)).is_ok());

        let vllm = host
            .check(&step(model(EngineKind::Vllm, ModelMode::Chat)))
            .unwrap_err();
        assert_eq!(vllm.message, "Engine `vllm` is not supported yet");
        let image = host
            .check(&step(model(llama, ModelMode::Image)))
            .unwrap_err();
        assert_eq!(image.message, "Image models are not supported yet");
        let engine = Payload::Engine(serving(EngineKind::Vllm, ModelMode::Chat));
        assert!(host.check(&step(engine)).is_err());
        let proxy = Payload::Proxy(NetworkPolicy {
            default: Default::default(),
            allow: Vec::new(),
            deny: Vec::new(),
            bypass: Vec::new(),
            credentials: Vec::new(),
        });
        assert!(host.check(&step(proxy)).is_ok());
        assert!(host.check(&step(sandbox(Isolation::Auto))).is_ok());
        assert!(host.check(&step(sandbox(Isolation::Microvm))).is_ok());
    }
}
