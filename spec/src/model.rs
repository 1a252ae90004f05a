//! The validated model of an `aistack.yaml`: what the rest of aistack reads.
//!
//! These types are produced only by [`crate::parse`] once every check passed, so their
//! invariants hold: references resolve, template inheritance is acyclic, values are in
//! range. The JSON Schema in `schemas/` is derived
//! from them (schemars), so every doc comment here is also an editor's hover text.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{
    Agent, ByteSize, EngineKind, GpuLayers, HostRule, Isolation, KeepAlive, ModelMode,
    PolicyDefault, PortMapping, Source, TemplateFrom,
};

/// An aistack file: the models, engines, sandboxes and network policies of one project.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "aistack.yaml")]
pub struct Spec {
    /// Version of the file format. Only `1` exists.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Project name. Defaults to the name of the directory holding the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-z0-9][a-z0-9_.-]*$"), length(max = 63))]
    pub name: Option<String>,
    /// The model gateway: one HTTP listener serving this project's models.
    #[serde(default)]
    pub gateway: Gateway,
    /// Defaults for each inference engine, applied to every model it serves.
    #[serde(default)]
    pub engines: Engines,
    /// Models, keyed by the name clients send as `model`.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z0-9][a-z0-9_.-]*$", "maxLength": 63 }))]
    pub models: BTreeMap<String, Model>,
    /// Sandbox templates: a root filesystem plus build steps.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z0-9][a-z0-9_.-]*$", "maxLength": 63 }))]
    pub templates: BTreeMap<String, Template>,
    /// Network policies enforced by the filtering proxy.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z0-9][a-z0-9_.-]*$", "maxLength": 63 }))]
    pub network_policies: BTreeMap<String, NetworkPolicy>,
    /// Agent sandboxes.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z0-9][a-z0-9_.-]*$", "maxLength": 63 }))]
    pub sandboxes: BTreeMap<String, Sandbox>,
}

/// Settings of the gateway listener. Two projects naming the same `listen` address share
/// one listener and must agree on these settings.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct Gateway {
    /// Address and port the gateway listens on (`HOST:PORT`, HOST an IP address or
    /// `localhost`).
    #[schemars(
        with = "String",
        extend("default" = "127.0.0.1:12434", "pattern" = r"^(localhost|[0-9.]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$")
    )]
    pub listen: SocketAddr,
    /// Origins allowed to call the gateway from a browser (CORS). Empty: none.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Name of an environment variable holding the bearer token clients must send. Unset:
    /// no authentication, and the gateway only accepts loopback clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub api_key_env: Option<String>,
    /// Admission cap for the memory of loaded models, e.g. `8GiB`. Default: 75% of RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<ByteSize>,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            listen: SocketAddr::from(([127, 0, 0, 1], 12434)),
            cors_origins: Vec::new(),
            api_key_env: None,
            memory_budget: None,
        }
    }
}

/// Per-engine defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Engines {
    /// Defaults for llama.cpp (GGUF models).
    #[serde(rename = "llama.cpp", default)]
    pub llama_cpp: LlamaCppDefaults,
    /// Defaults for vLLM (safetensors models; needs an NVIDIA GPU).
    #[serde(default)]
    pub vllm: VllmDefaults,
    /// Defaults for Diffusers (DDUF image models).
    #[serde(default)]
    pub diffusers: DiffusersDefaults,
}

/// llama.cpp settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct LlamaCppDefaults {
    /// CPU threads per model. Default: the cores free for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub threads: Option<u32>,
    /// Sequences decoded together in one batch. Default: 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallel: Option<u32>,
    /// Layers offloaded to the GPU: a count, or `auto`.
    #[serde(default)]
    pub gpu_layers: GpuLayers,
}

/// vLLM settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct VllmDefaults {
    /// Fraction of GPU memory vLLM may use, in (0, 1]. Default: 0.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = 1))]
    pub gpu_memory_utilization: Option<f64>,
    /// Number of GPUs a model is split over. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tensor_parallel_size: Option<u32>,
    /// Overrides merged into the model's Hugging Face config.
    #[serde(default)]
    pub hf_overrides: BTreeMap<String, serde_json::Value>,
}

/// Diffusers settings. None exist yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DiffusersDefaults {}

/// A model served by the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Model {
    /// Where the model comes from: an OCI reference (`ai/smollm2:135M-Q4_1`,
    /// `127.0.0.1:5000/ai/smollm2@sha256:…`) or a local GGUF file starting with `./`,
    /// `../` or `/`, relative to this file.
    pub source: Source,
    /// Engine serving the model. Default: from the artifact's format (GGUF: `llama.cpp`,
    /// safetensors: `vllm`, DDUF: `diffusers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineKind>,
    /// Context window in tokens. Default: the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub context_size: Option<u32>,
    /// Requests served at once. Default: the engine's `parallel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallel: Option<u32>,
    /// Idle time before the model is unloaded: a duration (`30s`, `5m`, `1h`), `0` to unload
    /// after each request, or `-1` to keep it loaded. Default: `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<KeepAlive>,
    /// Load the model at `aistack up` instead of at its first request.
    #[serde(default)]
    pub preload: bool,
    /// What the model serves.
    #[serde(default)]
    pub mode: ModelMode,
    /// Extra engine flags, from the engine's allowlist: llama-server's spelling, a flag and
    /// its value as one entry (`--temp=0.7`, `--flash-attn=off`, `--mlock`).
    #[serde(default)]
    #[schemars(schema_with = "runtime_flags_schema")]
    pub runtime_flags: Vec<String>,
}

/// A sandbox template: a root filesystem and the steps that build it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Template {
    /// Base: another template of this file, a directory (`./rootfs`, `../x`, `/x`), or an
    /// OCI image reference.
    pub from: TemplateFrom,
    /// Shell commands run, in order, inside a sandbox of this template to build it.
    #[serde(default)]
    pub run: Vec<String>,
    /// Network policy for the build steps. Default: no network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<String>,
    /// Environment variables set in sandboxes of this template.
    #[serde(default)]
    #[schemars(schema_with = "env_schema")]
    pub env: BTreeMap<String, String>,
}

/// Which destinations a sandbox may reach through the filtering proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Decision for destinations no rule matches.
    #[serde(default)]
    pub default: PolicyDefault,
    /// Destinations allowed: hosts, `*.` wildcards, IPs, CIDRs, each optionally `:PORT`.
    #[serde(default)]
    pub allow: Vec<HostRule>,
    /// Destinations denied. Deny beats allow.
    #[serde(default)]
    pub deny: Vec<HostRule>,
    /// Destinations tunnelled without TLS interception (and so without credentials).
    #[serde(default)]
    pub bypass: Vec<HostRule>,
    /// Headers the proxy sets on requests to a host, read from the host's environment.
    #[serde(default)]
    pub credentials: Vec<Credential>,
}

/// A secret the proxy injects; the sandbox never sees its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Credential {
    /// Host whose requests get the header.
    pub host: String,
    /// Header name, e.g. `authorization` or `x-api-key`.
    pub header: String,
    /// Environment variable (of the `aistack up` process) holding the value.
    #[schemars(pattern(r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub from_env: String,
}

/// An agent sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Sandbox {
    /// Template the sandbox's root filesystem comes from.
    pub template: String,
    /// Agent started in the sandbox: its name, or `{name, model}` to run it on one of the
    /// project's models instead of its vendor's API.
    #[serde(default)]
    #[schemars(schema_with = "agent_schema")]
    pub agent: AgentChoice,
    /// Extra arguments for the agent.
    #[serde(default)]
    pub args: Vec<String>,
    /// Host directory shared read-write at the same absolute path. Default: `.`.
    #[serde(default = "default_workspace")]
    pub workspace: String,
    /// Isolation backend: `microvm`, `namespace`, or `auto` (microvm where KVM runs guests
    /// at speed, else namespace).
    #[serde(default)]
    pub isolation: Isolation,
    /// CPUs available to the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub cpus: Option<u32>,
    /// Memory limit, e.g. `2GiB`; at least `64MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Network policy for the sandbox's traffic. Default: no network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<String>,
    /// Models reachable from inside, at `http://models.aistack.internal/`; each sets
    /// `<KEY>_URL` and `<KEY>_MODEL`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Sandbox ports published on the host: `[HOST_IP:]HOST_PORT:SANDBOX_PORT`.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Environment variables for the agent.
    #[serde(default)]
    #[schemars(schema_with = "env_schema")]
    pub env: BTreeMap<String, String>,
}

/// The agent a sandbox starts, and the project model it runs on, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentChoice {
    /// The agent.
    pub name: Agent,
    /// A key of `models:` the agent runs on; `None`: its vendor's API.
    pub model: Option<String>,
}

impl From<Agent> for AgentChoice {
    fn from(name: Agent) -> Self {
        AgentChoice { name, model: None }
    }
}

/// As the file writes it: the name alone unless a model is named.
impl Serialize for AgentChoice {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match &self.model {
            None => self.name.serialize(serializer),
            Some(model) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("name", &self.name)?;
                map.serialize_entry("model", model)?;
                map.end()
            }
        }
    }
}

fn agent_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let name = generator.subschema_for::<Agent>();
    let mut named = name.as_value().clone();
    named["description"] = "The agent.".into();
    schemars::json_schema!({
        "anyOf": [
            name,
            {
                "type": "object",
                "properties": {
                    "name": named,
                    "model": {
                        "description": "A key of `models:` the agent runs on, through the gateway, instead of its vendor's API.",
                        "type": "string"
                    }
                },
                "required": ["name"],
                "additionalProperties": false
            }
        ],
        "default": "shell"
    })
}

fn default_workspace() -> String {
    ".".to_owned()
}

/// Environment maps: variable names as keys; strings, numbers or booleans as values (as
/// Compose accepts them), kept as written.
fn runtime_flags_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "string", "pattern": crate::runtime_flags::entry_pattern() },
        "default": []
    })
}

fn env_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "propertyNames": { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" },
        "additionalProperties": { "type": ["string", "number", "boolean"] },
        "default": {}
    })
}
