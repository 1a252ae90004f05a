//! The control API's wire types, shared by the daemon and its client (the CLI).
//!
//! HTTP/JSON over `run/aistack.sock`:
//! - `GET /v1/health` → [`Health`]
//! - `GET /v1/projects/{name}` → [`ProjectStatus`]
//! - `POST /v1/projects/{name}/apply` with [`ApplyRequest`] → NDJSON stream of [`ApplyLine`]
//! - `POST /v1/projects/{name}/cancel` → 204; the running apply stops starting steps

use aistack_planner::{Plan, ResourceId};
use serde::{Deserialize, Serialize};

/// The daemon is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// aistack's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
}

/// Apply a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The plan, as `aistack plan --json` prints it.
    pub plan: Plan,
    /// Delete models from the shared store on removal (`down --models`).
    pub remove_models: bool,
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
}

/// One resource in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// `model`, `engine`, `proxy`, `template` or `sandbox`.
    pub kind: String,
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
