//! What a step carries, per kind of resource: complete, typed, and read by the executor
//! field by field.
//!
//! Each kind has its *settings*, the part apply records (`Applied::fields`) and the planner
//! compares (a resource diverges when their hash differs), and, for some kinds, what the
//! step needs beyond them: the files to import, the pull decision, the final environment.
//! Every default is applied here, so the executor and the CLI never fall back on one of
//! their own. A record's settings are read back with [`crate::Applied::settings`]; their
//! JSON names and shapes are those of every earlier record, so state files stay readable
//! and their hashes stay valid across versions.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

pub use aistack_spec::model::NetworkPolicy;
use aistack_spec::values::{
    Agent, ByteSize, EngineKind, GpuLayers, Isolation, KeepAlive, ModelMode, PortMapping,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::FileFact;

/// The kinds of resource, in the fixed order reconcile visits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The project's model gateway: an HTTP listener, shared with the other projects that
    /// name the same address.
    Gateway,
    /// A model artifact in the store, registered with the project's gateway.
    Model,
    /// A running engine process for a preloaded model.
    Engine,
    /// A network-policy proxy listener.
    Proxy,
    /// A built sandbox template.
    Template,
    /// A sandbox.
    Sandbox,
}

impl Kind {
    /// The lower-case name used in plan text, JSON and state.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Model => "model",
            Kind::Engine => "engine",
            Kind::Proxy => "proxy",
            Kind::Template => "template",
            Kind::Sandbox => "sandbox",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The settings of one kind, as apply records them and [`crate::Applied::settings`] reads
/// them back.
pub trait Settings: Serialize + DeserializeOwned {
    /// The kind whose records hold these settings.
    const KIND: Kind;
}

/// The plan type of one kind (the type inside its [`Payload`] variant), and the settings its
/// records hold.
pub trait KindPlan {
    /// What apply records for this kind.
    type Settings: Settings;
}

impl KindPlan for GatewayPlan {
    type Settings = GatewayPlan;
}
impl KindPlan for ModelPlan {
    type Settings = ModelSettings;
}
impl KindPlan for Serving {
    type Settings = Serving;
}
impl KindPlan for NetworkPolicy {
    type Settings = NetworkPolicy;
}
impl KindPlan for TemplatePlan {
    type Settings = TemplateSettings;
}
impl KindPlan for SandboxPlan {
    type Settings = SandboxSettings;
}

/// What the executor needs to carry out a step, by kind; all paths are absolute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Payload {
    /// Start (or join) the gateway listener that serves the project's models.
    Gateway(GatewayPlan),
    /// Bring an artifact into the store and register it with the gateway.
    Model(ModelPlan),
    /// Load a model at `up` (`preload: true`).
    Engine(Serving),
    /// Run a listener that enforces a network policy.
    Proxy(NetworkPolicy),
    /// Build a template's layers.
    Template(TemplatePlan),
    /// Create and start a sandbox (boxed: it is by far the largest).
    Sandbox(Box<SandboxPlan>),
}

impl Payload {
    /// The kind of resource this payload makes.
    pub fn kind(&self) -> Kind {
        match self {
            Payload::Gateway(_) => Kind::Gateway,
            Payload::Model(_) => Kind::Model,
            Payload::Engine(_) => Kind::Engine,
            Payload::Proxy(_) => Kind::Proxy,
            Payload::Template(_) => Kind::Template,
            Payload::Sandbox(_) => Kind::Sandbox,
        }
    }

    /// The settings apply records, as a JSON object.
    pub fn settings(&self) -> serde_json::Value {
        let value = match self {
            Payload::Gateway(plan) => serde_json::to_value(plan),
            Payload::Model(plan) => serde_json::to_value(&plan.settings),
            Payload::Engine(serving) => serde_json::to_value(serving),
            Payload::Proxy(policy) => serde_json::to_value(policy),
            Payload::Template(plan) => serde_json::to_value(&plan.settings),
            Payload::Sandbox(plan) => serde_json::to_value(&plan.settings),
        };
        value.expect("settings serialise to JSON")
    }

    /// Whether a change of the setting `field` replaces the resource rather than changing it
    /// in place: a gateway's address, a model's artifact, anything of an engine, template
    /// or sandbox (each is made whole, from its settings, once); nothing of a proxy, whose
    /// policy is swapped in place.
    pub fn replaces(&self, field: &str) -> bool {
        match self {
            Payload::Gateway(_) => field == "listen",
            Payload::Model(_) => matches!(field, "source" | "digests"),
            Payload::Proxy(_) => false,
            Payload::Engine(_) | Payload::Template(_) | Payload::Sandbox(_) => true,
        }
    }

    /// A short description of what the step makes, for the plan's text
    /// (`127.0.0.1:12434, key from KEY`, `default deny, 3 allow, 1 deny`).
    pub fn detail(&self) -> String {
        match self {
            Payload::Gateway(plan) => plan.detail(),
            Payload::Model(plan) => plan.detail(),
            Payload::Engine(serving) => match serving.context_size {
                Some(n) => format!("{}, context {n}", serving.engine),
                None => serving.engine.to_string(),
            },
            Payload::Proxy(policy) => policy_detail(policy),
            Payload::Template(plan) => plan.settings.detail(),
            Payload::Sandbox(plan) => {
                format!(
                    "{}, template {}",
                    plan.settings.agent, plan.settings.template
                )
            }
        }
    }
}

/// Runs `$body` with `$plan` bound to the typed plan inside `$payload`, whatever its kind:
/// an executor's static dispatch over [`Payload`], written once here beside the enum so
/// that a new kind is a compile error wherever it is not handled.
///
/// ```
/// # use aistack_planner::{with_plan, Payload};
/// fn kind_name(payload: &Payload) -> &'static str {
///     with_plan!(payload, plan => std::any::type_name_of_val(plan))
/// }
/// ```
#[macro_export]
macro_rules! with_plan {
    ($payload:expr, $plan:ident => $body:expr) => {
        match $payload {
            $crate::Payload::Gateway($plan) => $body,
            $crate::Payload::Model($plan) => $body,
            $crate::Payload::Engine($plan) => $body,
            $crate::Payload::Proxy($plan) => $body,
            $crate::Payload::Template($plan) => $body,
            $crate::Payload::Sandbox($plan) => {
                let $plan = &**$plan;
                $body
            }
        }
    };
}

/// Runs `$body` with the type `$plan` naming the plan type of `$kind` (the type inside
/// its [`Payload`] variant): static dispatch for what has only a record, such as a
/// removal.
#[macro_export]
macro_rules! with_kind {
    ($kind:expr, $plan:ident => $body:expr) => {
        match $kind {
            $crate::Kind::Gateway => {
                type $plan = $crate::GatewayPlan;
                $body
            }
            $crate::Kind::Model => {
                type $plan = $crate::ModelPlan;
                $body
            }
            $crate::Kind::Engine => {
                type $plan = $crate::Serving;
                $body
            }
            $crate::Kind::Proxy => {
                type $plan = $crate::payload::NetworkPolicy;
                $body
            }
            $crate::Kind::Template => {
                type $plan = $crate::TemplatePlan;
                $body
            }
            $crate::Kind::Sandbox => {
                type $plan = $crate::SandboxPlan;
                $body
            }
        }
    };
}

/// `1 credential`, `2 credentials`; nothing for none.
fn counted(n: usize, one: &str, many: &str) -> Option<String> {
    match n {
        0 => None,
        1 => Some(format!("1 {one}")),
        n => Some(format!("{n} {many}")),
    }
}

/// The project's gateway listener. Projects naming the same `listen` share it and must
/// agree on the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayPlan {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Origins allowed to call it from a browser.
    pub cors_origins: Vec<String>,
    /// The name of the environment variable holding the bearer token clients must send;
    /// its value travels beside the plan (`ApplyRequest::secrets`), never in it.
    pub api_key_env: Option<String>,
    /// Admission cap in bytes for loaded models; `None` leaves the default (75% of the
    /// machine's memory) to the daemon, which knows the machine it runs on.
    pub memory_budget: Option<u64>,
}

impl Settings for GatewayPlan {
    const KIND: Kind = Kind::Gateway;
}

impl GatewayPlan {
    /// The settings (every one but `listen`) on which `self` and `other` differ, in name
    /// order: projects sharing a listener must agree on all of them.
    pub fn disagreement(&self, other: &GatewayPlan) -> Vec<&'static str> {
        let mut differing = Vec::new();
        if self.api_key_env != other.api_key_env {
            differing.push("api_key_env");
        }
        if self.cors_origins != other.cors_origins {
            differing.push("cors_origins");
        }
        if self.memory_budget != other.memory_budget {
            differing.push("memory_budget");
        }
        differing
    }

    fn detail(&self) -> String {
        let mut parts = vec![self.listen.to_string()];
        if let Some(env) = &self.api_key_env {
            parts.push(format!("key from {env}"));
        }
        parts.extend(counted(
            self.cors_origins.len(),
            "CORS origin",
            "CORS origins",
        ));
        if let Some(budget) = self.memory_budget {
            parts.push(format!(
                "budget {}",
                aistack_spec::values::human_size(budget)
            ));
        }
        parts.join(", ")
    }
}

/// A model: its artifact, and how the gateway serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPlan {
    /// What apply records.
    pub settings: ModelSettings,
    /// How the artifact gets into the store.
    pub artifact: Artifact,
}

impl ModelPlan {
    fn detail(&self) -> String {
        let source = &self.settings.source;
        match &self.artifact {
            Artifact::Import { files } if files.len() > 1 => {
                format!("{source} ({} shards)", files.len())
            }
            Artifact::Pull {
                size: Some(size), ..
            } => format!("{source} ({})", aistack_spec::values::human_size(*size)),
            _ => source.clone(),
        }
    }
}

/// A model's recorded settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSettings {
    /// The source as written (a local path) or normalised (an OCI reference).
    pub source: String,
    /// What identifies the artifact: the digest of each local shard, in order, or the
    /// reference. A change replaces the model.
    pub digests: Vec<String>,
    /// How it is served.
    #[serde(flatten)]
    pub serving: Serving,
}

impl Settings for ModelSettings {
    const KIND: Kind = Kind::Model;
}

/// How the gateway serves a model, every default resolved: also an engine's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Serving {
    /// The engine.
    pub engine: EngineKind,
    /// Context window in tokens; `None` means the model's own (capped by the daemon, which
    /// reads the GGUF header).
    pub context_size: Option<u32>,
    /// Requests served at once; `None` leaves it to engines that schedule by themselves
    /// (vLLM, Diffusers).
    pub parallel: Option<u32>,
    /// Idle time before the engine stops.
    pub keep_alive: KeepAlive,
    /// What it serves.
    pub mode: ModelMode,
    /// Extra engine flags, validated by the spec.
    pub runtime_flags: Vec<String>,
    /// The engine's settings from `engines:`.
    pub options: EngineOptions,
}

impl Settings for Serving {
    const KIND: Kind = Kind::Engine;
}

/// The settings from `engines:` of the engine that serves a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EngineOptions {
    /// llama.cpp.
    LlamaCpp {
        /// CPU threads; `None`: the cores other engines leave free.
        threads: Option<u32>,
        /// Layers offloaded to the GPU.
        gpu_layers: GpuLayers,
    },
    /// vLLM, defaults applied.
    Vllm {
        /// Fraction of GPU memory it may use.
        gpu_memory_utilization: f64,
        /// GPUs a model is split over.
        tensor_parallel_size: u32,
        /// Overrides merged into the model's Hugging Face config.
        hf_overrides: BTreeMap<String, serde_json::Value>,
    },
    /// Diffusers, which has none. Last: it reads any object.
    Diffusers {},
}

/// How a model's artifact gets into the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Artifact {
    /// Import local GGUF files, one per shard, in order, each with the digest observed
    /// before planning.
    Import {
        /// The shards.
        files: Vec<FileFact>,
    },
    /// Pull from a registry.
    Pull {
        /// The normalised OCI reference.
        reference: String,
        /// The manifest digest the reference resolved to while planning, if it was resolved:
        /// the pull must yield exactly this artifact, and one the store has is not fetched
        /// again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        /// The artifact's size in bytes, once known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
}

/// Where a template's tree starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    /// Another template of the project: its layers.
    Template(String),
    /// A root filesystem directory, absolute, imported.
    Path(String),
    /// An OCI image, by normalised reference.
    Image(String),
}

/// What a sandbox (or a template's build) may use: the spec's limits, else these defaults,
/// so that no sandbox runs unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory in bytes: `memory:`, else [`Limits::DEFAULT_MEMORY`].
    pub memory: u64,
    /// CPUs: `cpus:`, else [`Limits::DEFAULT_CPUS`].
    pub cpus: f64,
    /// Processes and threads at once.
    pub pids: u64,
    /// The size of its `/tmp` (a tmpfs, whose pages count as its memory): half its memory.
    pub tmp: u64,
}

impl Limits {
    /// Enough for an agent, a language server and a build; `memory:` says otherwise.
    pub const DEFAULT_MEMORY: u64 = 4 << 30;
    /// `cpus:` says otherwise.
    pub const DEFAULT_CPUS: f64 = 2.0;
    /// A fork bomb stops here, and the host stays responsive.
    pub const PIDS: u64 = 2048;

    /// The limits of a sandbox with these `memory:` and `cpus:` settings.
    pub fn of(memory: Option<ByteSize>, cpus: Option<u32>) -> Limits {
        let memory = memory.map_or(Limits::DEFAULT_MEMORY, |m| m.0);
        Limits {
            memory,
            cpus: cpus.map_or(Limits::DEFAULT_CPUS, f64::from),
            pids: Limits::PIDS,
            tmp: memory / 2,
        }
    }
}

/// A template to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplatePlan {
    /// What apply records.
    pub settings: TemplateSettings,
    /// What its build sandbox may use.
    pub limits: Limits,
    /// The manifest digest of the `from:` image in the store, when the store has it: it is
    /// used as it is, as Docker's default pull policy does. Otherwise the image is pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_in_store: Option<String>,
}

/// A template's recorded settings: every input of its layers, so their hash names the
/// built tree (`templates/<hash>`), which projects share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateSettings {
    /// Where its tree starts.
    pub from: Base,
    /// Build steps, in order.
    pub run: Vec<String>,
    /// Its variables over those of the templates it is built from.
    pub env: BTreeMap<String, String>,
    /// The policy of its build steps; none: no network.
    pub network_policy: Option<String>,
    /// The hash of the parent template's settings, when it is built from one: a rebuilt
    /// parent rebuilds its children.
    pub parent: Option<String>,
}

impl Settings for TemplateSettings {
    const KIND: Kind = Kind::Template;
}

impl TemplateSettings {
    /// `from 127.0.0.1:5000/sandbox/debian:bookworm, 2 steps`.
    pub fn detail(&self) -> String {
        let from = match &self.from {
            Base::Template(name) => format!("template {name}"),
            Base::Path(path) => path.clone(),
            Base::Image(reference) => reference.clone(),
        };
        match counted(self.run.len(), "step", "steps") {
            Some(steps) => format!("from {from}, {steps}"),
            None => format!("from {from}"),
        }
    }
}

/// A sandbox to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxPlan {
    /// What apply records.
    pub settings: SandboxSettings,
    /// Every variable its commands get: the agent's (placeholder keys, base URLs), its
    /// models' `<KEY>_URL` and `<KEY>_MODEL`, then the template chain's and its own `env:`,
    /// which win. Derived from the settings, so not compared on its own.
    pub environment: BTreeMap<String, String>,
    /// The configuration files an agent on a local model reads (relative to its home),
    /// written before it first runs. Derived from the settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::agents::AgentFile>,
    /// The agent's program, which the template must have on `PATH`.
    pub program: String,
    /// The build step that installs it, for the error that says it is missing.
    pub install: String,
    /// What it may use.
    pub limits: Limits,
    /// The spec files inside its workspace, which its commands may read but not change.
    pub read_only: Vec<String>,
    /// The `.env` beside the spec, when it is inside its workspace: its commands see it
    /// empty (it holds the project's secrets).
    pub hidden: Vec<String>,
}

/// A sandbox's recorded settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSettings {
    /// The template of its root filesystem.
    pub template: String,
    /// The agent.
    pub agent: Agent,
    /// The project model the agent runs on, instead of its vendor's API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_model: Option<String>,
    /// Extra arguments for the agent.
    pub args: Vec<String>,
    /// The workspace, absolute.
    pub workspace: String,
    /// The backend as asked for (`auto` is decided when it starts).
    pub isolation: Isolation,
    /// CPUs.
    pub cpus: Option<u32>,
    /// Memory limit.
    pub memory: Option<ByteSize>,
    /// Its way out, if any.
    pub network_policy: Option<String>,
    /// Models reachable from inside.
    pub models: Vec<String>,
    /// Sandbox ports published on the host.
    pub ports: Vec<PortMapping>,
    /// The template chain's `env:` under its own.
    pub env: BTreeMap<String, String>,
    /// sha256 over what aistack sets up for the agent: its variables and configuration
    /// files. A new aistack that sets an agent up differently (a renamed variable, a new
    /// config key) changes it, so `up` replaces the sandbox rather than leaving it stale.
    #[serde(default)]
    pub agent_setup: String,
}

impl Settings for SandboxSettings {
    const KIND: Kind = Kind::Sandbox;
}

impl SandboxSettings {
    /// What `sandbox run` starts: the agent's program and its `args`.
    pub fn command(&self) -> Vec<String> {
        let program = crate::agents::profile(self.agent).command.to_owned();
        std::iter::once(program)
            .chain(self.args.iter().cloned())
            .collect()
    }
}

impl Settings for NetworkPolicy {
    const KIND: Kind = Kind::Proxy;
}

fn policy_detail(policy: &NetworkPolicy) -> String {
    let mut parts = vec![
        format!("default {}", policy.default),
        format!("{} allow", policy.allow.len()),
        format!("{} deny", policy.deny.len()),
    ];
    if !policy.bypass.is_empty() {
        parts.push(format!("{} bypass", policy.bypass.len()));
    }
    parts.extend(counted(
        policy.credentials.len(),
        "credential",
        "credentials",
    ));
    parts.join(", ")
}
