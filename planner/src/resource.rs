//! Resources: what a plan creates, changes and removes, and what apply records.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The kinds of resource, in the fixed order reconcile visits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
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
        ResourceId { kind, name: name.into() }
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
    /// Import local GGUF files (one per shard, in order) into the store.
    LocalModel {
        /// The shards, in order, each with the digest observed before planning.
        files: Vec<crate::FileFact>,
    },
    /// Pull an artifact from a registry.
    RegistryModel {
        /// The normalised OCI reference.
        reference: String,
    },
    /// Start an engine for a preloaded model.
    Engine {
        /// The model resource whose artifact it serves.
        model: String,
        /// `llama.cpp`, `vllm` or `diffusers`.
        engine: String,
        /// Context window, if set.
        context_size: Option<u32>,
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

/// Absolute path, as a plain string in JSON.
pub type AbsPath = PathBuf;
