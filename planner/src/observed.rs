//! A plain snapshot of reality, gathered by the shell before planning.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Applied, GatewayPlan, ResourceId};

/// What is there: the project's applied resources and the facts about local files the spec
/// names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Applied resources of this project, as recorded by apply.
    pub resources: BTreeMap<ResourceId, Applied>,
    /// Facts about each local model file the spec names, keyed by its absolute path.
    pub local_files: BTreeMap<PathBuf, LocalFile>,
    /// What each registry reference the spec names points at, keyed by the normalised
    /// reference: from the local store, or from the registry when the user asked to
    /// re-resolve tags (`up --pull`). Absent when neither knows it.
    #[serde(default)]
    pub registry: BTreeMap<String, RegistryFact>,
    /// The applied gateway of every other project of this home, keyed by project: a
    /// listener is shared by the projects that name its address, and they must agree on its
    /// settings.
    #[serde(default)]
    pub other_gateways: BTreeMap<String, GatewayPlan>,
    /// The manifest digests other projects' model records name: `down --models` leaves
    /// those artifacts in the shared store.
    #[serde(default)]
    pub other_artifacts: BTreeSet<String>,
    /// The template images the store holds: manifest digest by normalised reference.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    /// The files the spec was read from, absolute: a sandbox whose workspace holds them
    /// may not change them.
    #[serde(default)]
    pub spec_files: Vec<PathBuf>,
    /// The `.env` read beside the spec, absolute, when there is one.
    #[serde(default)]
    pub dotenv: Option<PathBuf>,
}

/// A registry reference, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryFact {
    /// The manifest digest the reference points at.
    pub digest: String,
    /// The artifact's size in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl Observed {
    /// A snapshot holding these applied resources and no local file facts.
    pub fn from_applied(applied: impl IntoIterator<Item = Applied>) -> Self {
        Observed {
            resources: applied.into_iter().map(|a| (a.id.clone(), a)).collect(),
            local_files: BTreeMap::new(),
            registry: BTreeMap::new(),
            other_gateways: BTreeMap::new(),
            other_artifacts: BTreeSet::new(),
            images: BTreeMap::new(),
            spec_files: Vec::new(),
            dotenv: None,
        }
    }

    /// Adds the facts about the local file at `path` (absolute, lexically normalised).
    pub fn with_local_file(mut self, path: impl Into<PathBuf>, file: LocalFile) -> Self {
        self.local_files.insert(path.into(), file);
        self
    }
}

/// A local model source as found on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LocalFile {
    /// Present: the file, or every shard of a sharded model, in order.
    Present {
        /// One entry per shard; one entry for an unsharded file.
        shards: Vec<FileFact>,
    },
    /// Not there, or not readable.
    Missing {
        /// Why, in one line (`No such file or directory`).
        reason: String,
    },
}

/// One local file: its absolute path, size and sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFact {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// `sha256:<hex>`.
    pub digest: String,
}
