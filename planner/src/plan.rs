//! The plan: a DAG of steps, printable, serialisable and deterministic.

use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

use crate::{Applied, Desired, ResourceId};

/// What a step does to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `+`: make it.
    Create,
    /// `~`: change it in place.
    Change,
    /// `-`: remove it.
    Remove,
    /// `±`: remove it, then make it anew.
    Replace,
}

impl Action {
    /// The symbol shown in plan text.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Change => "~",
            Action::Remove => "-",
            Action::Replace => "±",
        }
    }
}

/// Why a step is planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Cause {
    /// In the spec, not applied.
    Missing,
    /// Applied, but these fields differ from the spec.
    Changed {
        /// The differing fields, sorted.
        fields: Vec<String>,
    },
    /// Applied, no longer in the spec.
    NotInSpec,
    /// Unchanged itself, but a resource it depends on is replaced.
    DependencyReplaced {
        /// The replaced dependency.
        dependency: ResourceId,
    },
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The resource.
    pub id: ResourceId,
    /// What happens to it.
    pub action: Action,
    /// Why.
    pub cause: Cause,
    /// The resource as the spec wants it; `None` for a removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Desired>,
    /// The resource as applied; `None` for a creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Applied>,
}

/// Index of a step in a [`Plan`].
pub type StepIndex = NodeIndex;

/// Counts in terraform's sense: a replacement is one to add and one to remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Creations and replacements.
    pub add: usize,
    /// In-place changes.
    pub change: usize,
    /// Removals and replacements.
    pub remove: usize,
}

/// A DAG of steps: an edge `a -> b` means `b` starts only after `a` succeeded.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The project the plan is for.
    pub project: String,
    /// The steps and their ordering.
    pub graph: DiGraph<Step, ()>,
}
