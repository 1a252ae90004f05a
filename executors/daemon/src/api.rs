//! The control API's wire types, shared by the daemon and its client (the CLI).
//!
//! HTTP/JSON over `run/aistack.sock`:
//! - `GET /v1/health` → [`Health`]
//! - `GET /v1/projects/{name}` → [`ProjectStatus`]
//! - `POST /v1/projects/{name}/apply` with [`ApplyRequest`] → NDJSON stream of [`ApplyLine`]
//! - `POST /v1/projects/{name}/cancel` → 204; the running apply stops starting steps

use std::collections::BTreeMap;
use std::fmt;

use aistack_planner::{Kind, Plan, ResourceId};
use serde::{Deserialize, Serialize};

/// The daemon is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// aistack's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
}

/// An error answer of any route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// One line.
    pub error: String,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// Apply a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The plan, as `aistack plan --json` prints it.
    pub plan: Plan,
    /// The values of the environment variables the plan names as secrets
    /// (`gateway.api_key_env`), read by the CLI: the plan carries only their names. The
    /// daemon keeps them in memory, never in state files or logs.
    #[serde(default)]
    pub secrets: Secrets,
}

/// Secret values by environment variable name; `Debug` shows only the names.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

/// One line of an apply's progress stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ApplyLine {
    /// Nothing ran: these steps cannot be carried out by this version.
    Refused {
        /// One entry per refused step.
        refusals: Vec<Problem>,
    },
    /// A step started.
    Started {
        /// The step's resource.
        id: ResourceId,
    },
    /// A step reports progress.
    Progress {
        /// The step's resource.
        id: ResourceId,
        /// What it is doing, if it says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Bytes done and total, if it counts bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<(u64, u64)>,
        /// The part the bytes are of (a layer digest), when the step has several.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<String>,
    },
    /// A step finished.
    Done {
        /// The step's resource.
        id: ResourceId,
    },
    /// A step failed.
    Failed {
        /// What failed and how to fix it.
        problem: Problem,
    },
    /// A step did not run because a step it depends on failed.
    Skipped {
        /// The step's resource.
        id: ResourceId,
        /// The failed dependency.
        because: ResourceId,
    },
    /// A step did not start because the apply was cancelled.
    Cancelled {
        /// The step's resource.
        id: ResourceId,
    },
    /// The apply ended; `ok` when every step succeeded.
    Finished {
        /// Whether every step succeeded.
        ok: bool,
    },
}

/// An error about one resource, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The resource.
    pub id: ResourceId,
    /// One line.
    pub message: String,
    /// What to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// `aistack status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectStatus {
    /// Project name.
    pub project: String,
    /// Every resource of the project, applied or pending.
    pub resources: Vec<ResourceStatus>,
    /// Where the project's gateway serves (`http://127.0.0.1:12434`); `None` when it is not
    /// running (no models, or no daemon).
    #[serde(default)]
    pub gateway: Option<String>,
    /// The project's models as the running gateway serves them.
    #[serde(default)]
    pub models: Vec<ModelServing>,
}

/// One model as the gateway serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelServing {
    /// The name clients send (the key under `models:`).
    pub name: String,
    /// `chat` or `embedding`.
    pub mode: String,
    /// `loaded` (an engine runs) or `idle` (loads at the next request).
    pub state: String,
    /// What the engine runs with, when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineServing>,
}

/// A running engine process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineServing {
    /// Its process id.
    pub pid: u32,
    /// Memory it uses, in bytes.
    pub memory_bytes: u64,
    /// Threads it computes with.
    pub threads: u32,
    /// Its context window, in tokens.
    pub context_size: u32,
    /// Requests it serves at once.
    pub parallel: u32,
    /// The CPU features ggml was built with (`AVX2 FMA F16C`).
    pub cpu_features: String,
    /// Features this CPU has that the build does not use (`AVX512`): a native build is
    /// faster.
    pub unused_cpu_features: Vec<String>,
    /// Requests being served now.
    pub in_flight: u64,
}

/// One resource in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// `gateway`, `model`, `engine`, `proxy`, `template` or `sandbox`.
    pub kind: Kind,
    /// Its name in the spec.
    pub name: String,
    /// `ready`, `missing` (applied but gone from the machine), …
    pub state: String,
    /// Where to reach it, if it serves something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A short description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_travel_but_never_print() {
        let request = ApplyRequest {
            plan: Plan::default(),
            secrets: Secrets([("API_KEY".to_owned(), "s3cret".to_owned())].into()),
        };
        let debug = format!("{request:?}");
        assert!(
            debug.contains("API_KEY") && !debug.contains("s3cret"),
            "{debug}"
        );
        let json = serde_json::to_value(&request.secrets).unwrap();
        assert_eq!(json, serde_json::json!({"API_KEY": "s3cret"}));
    }
}
