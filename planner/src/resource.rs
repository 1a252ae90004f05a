//! Resources: what a plan creates, changes and removes, and what apply records.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

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

/// A resource's identity within a project: its kind and the name from the spec.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceId {
    /// The kind.
    pub kind: Kind,
    /// The key in the spec (`chat` for `models.chat`).
    pub name: String,
}

impl ResourceId {
    /// A resource id.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ResourceId {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// A resource as the spec wants it, with every decision already made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    /// Which resource.
    pub id: ResourceId,
    /// The fields whose change requires a step, in canonical JSON form. A change to a field
    /// named in [`Desired::replace_fields`] replaces the resource; others change it in place.
    pub fields: BTreeMap<String, serde_json::Value>,
    /// Fields whose change forces a replacement.
    pub replace_fields: Vec<String>,
    /// sha256 over `fields`: divergence is detected by comparing it with the applied hash.
    pub hash: String,
    /// Resources that must exist first.
    pub depends_on: Vec<ResourceId>,
    /// What the executor needs to carry the step out.
    pub payload: Payload,
}

/// What the executor needs for each kind of resource; all paths are absolute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Payload {
    /// Start (or join) the gateway listener that serves the project's models.
    Gateway {
        /// `HOST:PORT`.
        listen: String,
        /// Origins allowed to call it from a browser.
        cors_origins: Vec<String>,
        /// The name of the environment variable holding the bearer token clients must send;
        /// its value travels beside the plan (`ApplyRequest::secrets`), never in it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_env: Option<String>,
        /// Admission cap in bytes for loaded models; `None` leaves the default (75% of the
        /// machine's memory) to the daemon, which knows the machine it runs on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory_budget: Option<u64>,
    },
    /// Import local GGUF files (one per shard, in order) into the store.
    LocalModel {
        /// The shards, in order, each with the digest observed before planning.
        files: Vec<crate::FileFact>,
    },
    /// Pull an artifact from a registry.
    RegistryModel {
        /// The normalised OCI reference.
        reference: String,
        /// The manifest digest the reference resolved to while planning, if it was resolved;
        /// the pull must yield exactly this artifact.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        /// The artifact's size in bytes, once known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// Start an engine for a preloaded model.
    Engine {
        /// The model resource whose artifact it serves.
        model: String,
        /// `llama.cpp`, `vllm` or `diffusers`.
        engine: String,
        /// Context window, if set; `None` means the model's own.
        context_size: Option<u32>,
        /// Requests served at once, resolved with the engine's default; `None` leaves it to
        /// the engine (vLLM and Diffusers schedule by themselves).
        #[serde(default)]
        parallel: Option<u32>,
        /// `chat`, `embedding` or `image`.
        #[serde(default)]
        mode: String,
        /// Extra engine flags, as written.
        #[serde(default)]
        runtime_flags: Vec<String>,
        /// The engine's settings from `engines:` (llama.cpp: `threads`, `gpu_layers`; vLLM:
        /// `gpu_memory_utilization`, `tensor_parallel_size`, `hf_overrides`).
        #[serde(default)]
        options: BTreeMap<String, serde_json::Value>,
    },
    /// Start a proxy listener for a network policy.
    Proxy {
        /// The policy, as canonical JSON.
        policy: serde_json::Value,
    },
    /// Build a template.
    Template {
        /// The template, as canonical JSON, with its base resolved.
        template: serde_json::Value,
    },
    /// Create and start a sandbox.
    Sandbox {
        /// The sandbox, as canonical JSON, with its workspace made absolute.
        sandbox: serde_json::Value,
    },
}

impl Desired {
    /// A desired resource, its [`hash`](Desired::hash) computed from `fields`.
    /// `replace_fields` and `depends_on` are sorted and deduplicated.
    pub fn new(
        id: ResourceId,
        fields: BTreeMap<String, serde_json::Value>,
        mut replace_fields: Vec<String>,
        mut depends_on: Vec<ResourceId>,
        payload: Payload,
    ) -> Self {
        replace_fields.sort();
        replace_fields.dedup();
        depends_on.sort();
        depends_on.dedup();
        let hash = fields_hash(&fields);
        Desired {
            id,
            fields,
            replace_fields,
            hash,
            depends_on,
            payload,
        }
    }
}

/// sha256 (lower-case hex) over the canonical JSON of `fields`: object keys sorted at every
/// level, no whitespace. Independent of serde_json's `preserve_order` feature.
pub fn fields_hash(fields: &BTreeMap<String, serde_json::Value>) -> String {
    use sha2::{Digest, Sha256};
    let mut text = String::new();
    let object: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    write_canonical(&serde_json::Value::Object(object), &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Canonical JSON of `value`: object keys sorted at every level, no whitespace.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut text = String::new();
    write_canonical(value, &mut text);
    text
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Output of a model resource: the manifest digest of its artifact in the store.
pub const MANIFEST_OUTPUT: &str = "manifest";

/// What apply recorded for a resource: the applied fields and what the host reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Which resource.
    pub id: ResourceId,
    /// The fields as applied.
    pub fields: BTreeMap<String, serde_json::Value>,
    /// The hash of `fields` as applied.
    pub hash: String,
    /// What it depended on when applied; removals run in the reverse order.
    pub depends_on: Vec<ResourceId>,
    /// What the host reported (a manifest digest, an endpoint, a pid).
    pub outputs: BTreeMap<String, String>,
}

impl Applied {
    /// The record apply keeps after carrying out `desired`: its id, fields, hash and
    /// dependencies, plus what the host reported.
    pub fn from_desired(desired: &Desired, outputs: BTreeMap<String, String>) -> Self {
        Applied {
            id: desired.id.clone(),
            fields: desired.fields.clone(),
            hash: desired.hash.clone(),
            depends_on: desired.depends_on.clone(),
            outputs,
        }
    }
}
