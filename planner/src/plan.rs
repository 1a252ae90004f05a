//! The plan: a DAG of steps, printable, serialisable and deterministic.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::{Applied, Desired, Kind, ResourceId};

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

impl fmt::Display for Cause {
    /// `missing`, `changed: allow, deny`, `not in spec`, `replaced: template dev`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Missing => f.write_str("missing"),
            Cause::Changed { fields } if fields.is_empty() => f.write_str("changed"),
            Cause::Changed { fields } => write!(f, "changed: {}", fields.join(", ")),
            Cause::NotInSpec => f.write_str("not in spec"),
            Cause::DependencyReplaced { dependency } => write!(f, "replaced: {dependency}"),
        }
    }
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
    /// A removed model's artifact is deleted from the shared store too: `down --models`
    /// asked for it, and no other project records it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_artifact: bool,
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
///
/// Plans made by [`crate::reconcile`] or read from JSON hold their steps in the order of
/// [`Plan::steps`], so the lowest [`StepIndex`] among ready steps is also the first in the
/// printed plan.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The project the plan is for.
    pub project: String,
    /// The steps and their ordering.
    pub graph: DiGraph<Step, ()>,
}

/// The version of the JSON shape of a plan. 2: typed payloads (`desired.payload`), no
/// `fields` in desired records, `delete_artifact` on removals.
pub const FORMAT_VERSION: u32 = 2;

impl Summary {
    /// `Plan: 3 to add, 1 to change, 2 to remove.`
    pub fn line(&self) -> String {
        format!(
            "Plan: {} to add, {} to change, {} to remove.",
            self.add, self.change, self.remove
        )
    }
}

/// Tie-break between steps that are ready together: creations, changes and replacements
/// first, in kind order then name; then removals, dependents' kinds first.
fn order_key(step: &Step) -> (u8, u8, &str) {
    let rank = step.id.kind as u8;
    match step.action {
        Action::Remove => (1, Kind::Sandbox as u8 - rank, step.id.name.as_str()),
        _ => (0, rank, step.id.name.as_str()),
    }
}

impl Plan {
    /// A plan over `graph`, its nodes renumbered into the order of [`Plan::steps`].
    pub fn from_graph(project: impl Into<String>, graph: DiGraph<Step, ()>) -> Plan {
        let unordered = Plan {
            project: project.into(),
            graph,
        };
        let order = unordered.order();
        let mut position = vec![0; order.len()];
        let mut graph = DiGraph::with_capacity(order.len(), unordered.graph.edge_count());
        for (i, &old) in order.iter().enumerate() {
            position[old.index()] = i;
            graph.add_node(unordered.graph[old].clone());
        }
        let mut edges: Vec<(usize, usize)> = (unordered.graph.edge_references())
            .map(|e| (position[e.source().index()], position[e.target().index()]))
            .collect();
        edges.sort_unstable();
        edges.dedup();
        for (a, b) in edges {
            graph.add_edge(NodeIndex::new(a), NodeIndex::new(b), ());
        }
        Plan {
            project: unordered.project,
            graph,
        }
    }

    /// Step indices in one deterministic topological order: among the steps whose
    /// predecessors are all listed, creations, changes and replacements come first in kind
    /// order (gateway, model, engine, proxy, template, sandbox) then by name, then removals in the
    /// reverse kind order (dependents first). Should the graph have a cycle, the steps on it
    /// come last, in the same tie-break order.
    pub fn order(&self) -> Vec<StepIndex> {
        let g = &self.graph;
        let mut indegree: Vec<usize> = g
            .node_indices()
            .map(|n| g.neighbors_directed(n, Direction::Incoming).count())
            .collect();
        let key = |n: NodeIndex| (order_key(&g[n]), n.index());
        let mut ready: BinaryHeap<Reverse<_>> = g
            .node_indices()
            .filter(|n| indegree[n.index()] == 0)
            .map(|n| Reverse(key(n)))
            .collect();
        let mut order = Vec::with_capacity(g.node_count());
        let mut listed = vec![false; g.node_count()];
        while let Some(Reverse((_, i))) = ready.pop() {
            let n = NodeIndex::new(i);
            order.push(n);
            listed[i] = true;
            for next in g.neighbors_directed(n, Direction::Outgoing) {
                indegree[next.index()] -= 1;
                if indegree[next.index()] == 0 {
                    ready.push(Reverse(key(next)));
                }
            }
        }
        if order.len() < g.node_count() {
            let mut rest: Vec<_> = g.node_indices().filter(|n| !listed[n.index()]).collect();
            rest.sort_by_key(|&n| key(n));
            order.extend(rest);
        }
        order
    }

    /// The steps in the order of [`Plan::order`].
    pub fn steps(&self) -> Vec<&Step> {
        self.order().into_iter().map(|n| &self.graph[n]).collect()
    }

    /// The step at `idx`.
    pub fn step(&self, idx: StepIndex) -> &Step {
        &self.graph[idx]
    }

    /// The index of the step for `id`, if the plan has one.
    pub fn find(&self, id: &ResourceId) -> Option<StepIndex> {
        self.graph.node_indices().find(|&n| &self.graph[n].id == id)
    }

    /// The steps that must succeed before `idx` starts, by index.
    pub fn dependencies(&self, idx: StepIndex) -> Vec<StepIndex> {
        let mut deps: Vec<_> = self
            .graph
            .neighbors_directed(idx, Direction::Incoming)
            .collect();
        deps.sort();
        deps.dedup();
        deps
    }

    /// The steps that wait for `idx`, by index.
    pub fn dependents(&self, idx: StepIndex) -> Vec<StepIndex> {
        let mut deps: Vec<_> = self
            .graph
            .neighbors_directed(idx, Direction::Outgoing)
            .collect();
        deps.sort();
        deps.dedup();
        deps
    }

    /// Counts in terraform's sense: a replacement is one to add and one to remove.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for step in self.graph.node_weights() {
            match step.action {
                Action::Create => s.add += 1,
                Action::Change => s.change += 1,
                Action::Remove => s.remove += 1,
                Action::Replace => {
                    s.add += 1;
                    s.remove += 1;
                }
            }
        }
        s
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// The plan as text, one line per step (symbol, resource, cause, detail; columns
    /// aligned), a blank line and the summary; or `No changes.`. Every line ends with a
    /// newline (print it with `print!`); no colours.
    ///
    /// ```text
    ///   + model chat     missing         ./models/smollm2.gguf
    ///   ~ proxy agents   changed: allow  default deny, 3 allow, 1 deny
    ///   ± sandbox coder  replaced: template dev
    ///   - model old      not in spec
    ///
    /// Plan: 2 to add, 1 to change, 2 to remove.
    /// ```
    pub fn render_text(&self) -> String {
        if self.is_empty() {
            return "No changes.\n".to_owned();
        }
        let rows: Vec<(&str, String, String, String)> = self
            .steps()
            .into_iter()
            .map(|s| {
                (
                    s.action.symbol(),
                    s.id.to_string(),
                    s.cause.to_string(),
                    detail(s),
                )
            })
            .collect();
        let id_width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        let cause_width = (rows.iter())
            .filter(|r| !r.3.is_empty())
            .map(|r| r.2.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (symbol, id, cause, detail) in rows {
            let line = format!("  {symbol} {id:<id_width$}  {cause:<cause_width$}  {detail}");
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.summary().line());
        out.push('\n');
        out
    }

    /// The plan as a JSON value, the shape of `aistack plan --json` (see [`Plan`]'s
    /// `Serialize`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a plan serialises")
    }

    /// The plan as pretty-printed JSON, the shape of `aistack plan --json` (see
    /// [`Plan`]'s `Serialize`).
    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan serialises")
    }
}

/// A short description of what the step makes, or of what a removal deletes besides.
fn detail(step: &Step) -> String {
    match &step.desired {
        Some(desired) => desired.payload.detail(),
        None if step.delete_artifact => "its artifact is deleted from the store".to_owned(),
        None => String::new(),
    }
}

impl PartialEq for Plan {
    /// Same project, same steps at the same indices, same edges.
    fn eq(&self, other: &Self) -> bool {
        let edges = |p: &Plan| {
            let mut e: Vec<_> = (p.graph.edge_references())
                .map(|e| (e.source().index(), e.target().index()))
                .collect();
            e.sort_unstable();
            e
        };
        self.project == other.project
            && self.graph.node_count() == other.graph.node_count()
            && self.graph.node_weights().eq(other.graph.node_weights())
            && edges(self) == edges(other)
    }
}

#[derive(Serialize)]
struct PlanOut<'a> {
    format_version: u32,
    project: &'a str,
    steps: Vec<StepOut<'a>>,
    summary: Summary,
}

#[derive(Serialize)]
struct StepOut<'a> {
    id: &'a ResourceId,
    action: Action,
    cause: &'a Cause,
    depends_on: Vec<&'a ResourceId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    desired: Option<&'a Desired>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<&'a Applied>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delete_artifact: bool,
}

#[derive(Deserialize)]
struct PlanIn {
    format_version: u32,
    project: String,
    steps: Vec<StepIn>,
}

#[derive(Deserialize)]
struct StepIn {
    id: ResourceId,
    action: Action,
    cause: Cause,
    #[serde(default)]
    depends_on: Vec<ResourceId>,
    #[serde(default)]
    desired: Option<Desired>,
    #[serde(default)]
    current: Option<Applied>,
    #[serde(default)]
    delete_artifact: bool,
}

/// The JSON of `aistack plan --json`, also how the CLI hands a plan to the daemon:
///
/// ```json
/// {"format_version": 1, "project": "demo",
///  "steps": [{"id": {"kind": "model", "name": "chat"}, "action": "create",
///             "cause": {"reason": "missing"}, "depends_on": [], "desired": {...}}],
///  "summary": {"add": 1, "change": 0, "remove": 0}}
/// ```
///
/// Steps are in the order of [`Plan::steps`]; `depends_on` lists the steps (by resource id)
/// that must succeed first, i.e. the graph's edges; `desired` is absent for removals and
/// `current` for creations.
impl Serialize for Plan {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let steps = self
            .order()
            .into_iter()
            .map(|n| {
                let step = &self.graph[n];
                let mut deps = self.dependencies(n);
                deps.sort_by(|a, b| self.graph[*a].id.cmp(&self.graph[*b].id));
                StepOut {
                    id: &step.id,
                    action: step.action,
                    cause: &step.cause,
                    depends_on: deps.into_iter().map(|d| &self.graph[d].id).collect(),
                    desired: step.desired.as_ref(),
                    current: step.current.as_ref(),
                    delete_artifact: step.delete_artifact,
                }
            })
            .collect();
        PlanOut {
            format_version: FORMAT_VERSION,
            project: &self.project,
            steps,
            summary: self.summary(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Plan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let input = PlanIn::deserialize(deserializer)?;
        if input.format_version != FORMAT_VERSION {
            return Err(D::Error::custom(format!(
                "unsupported plan format_version {} (expected {FORMAT_VERSION})",
                input.format_version
            )));
        }
        let mut graph = DiGraph::with_capacity(input.steps.len(), 0);
        let mut index = BTreeMap::new();
        let mut edges = Vec::new();
        for step in input.steps {
            let n = graph.add_node(Step {
                id: step.id.clone(),
                action: step.action,
                cause: step.cause,
                desired: step.desired,
                current: step.current,
                delete_artifact: step.delete_artifact,
            });
            if index.insert(step.id.clone(), n).is_some() {
                return Err(D::Error::custom(format!(
                    "plan has two steps for `{}`",
                    step.id
                )));
            }
            edges.extend(step.depends_on.into_iter().map(|d| (d, n)));
        }
        for (dep, n) in edges {
            let Some(&d) = index.get(&dep) else {
                let msg = format!(
                    "step `{}` depends on `{dep}`, which has no step",
                    graph[n].id
                );
                return Err(D::Error::custom(msg));
            };
            graph.add_edge(d, n, ());
        }
        Ok(Plan::from_graph(input.project, graph))
    }
}
