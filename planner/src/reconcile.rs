//! Desired versus observed: the one place where aistack decides what to do.
//!
//! As in Compose's `reconcile.go`, there is one `reconcile_<kind>` function per kind of
//! resource, called in a fixed order (gateway, models, engines, proxies, templates,
//! sandboxes) so
//! that each kind sees the decisions already taken for what it depends on. Each turns the
//! spec into [`Desired`] resources, with every default resolved and every path made
//! absolute, and compares each with the applied record in [`Observed`]:
//!
//! - not applied: `+` create, cause `missing`;
//! - same hash: nothing, unless a dependency is replaced, then `±` with cause
//!   `replaced: <dependency>` (transitively, since dependencies are decided first);
//! - different hash: the differing fields are listed; if one of them is a replace field (or
//!   a dependency is replaced) the resource is replaced, else changed in place.
//!
//! Then every applied resource no longer desired is removed, and the edges are added: a
//! creation, change or replacement runs after the steps of what it depends on; a removal
//! runs before the removal or replacement of what it depended on when applied.
//!
//! Problems that only the observed state reveals (a local model file that is not there)
//! are collected as [`PlanError`]s, all of them, each naming the spec path to point at.
//!
//! Choices made here (recorded in ARCHITECTURE.md by the lead):
//! - a project has one `gateway` resource, and only when it has models; a new `listen`
//!   replaces it (and so re-registers every model on the new listener), other settings
//!   change in place; projects naming the same address must agree on the rest;
//! - every network policy has a proxy, used or not: host processes run under a policy
//!   through its listener, as sandboxes will;
//! - a registry model without `engine:` is served by llama.cpp (the artifact's format is
//!   only known after the pull, and the Docker AI catalogue is GGUF); a local file is GGUF;
//! - llama.cpp's `parallel` resolves to the model's, else `engines.llama.cpp.parallel`,
//!   else 4; `keep_alive` to `5m`; `threads` stays `null` (the engine uses the free cores).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use aistack_spec::Spec;
use aistack_spec::model::{Engines, Model, NetworkPolicy, Sandbox, Template};
use aistack_spec::values::{EngineKind, KeepAlive, Source, TemplateFrom};
use petgraph::graph::DiGraph;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    Action, Cause, Desired, Kind, LocalFile, MANIFEST_OUTPUT, Observed, Payload, Plan, ResourceId,
    Step,
};

/// A problem found while planning, pointing at the spec value that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanError {
    /// Dotted path of the offending value in the spec (`models.chat.source`); the CLI
    /// turns it into a span through the document's location map.
    pub path: String,
    /// One capitalised line, names in backticks, no trailing period.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PlanError {}

/// The name of a project's one gateway resource (`gateway gateway` in plans).
pub const GATEWAY: &str = "gateway";

/// The gateway settings (every field but `listen`) on which two gateway records differ,
/// sorted: the projects sharing a listener must agree on all of them.
pub fn gateway_disagreement(
    a: &BTreeMap<String, Value>,
    b: &BTreeMap<String, Value>,
) -> Vec<String> {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|n| *n != "listen" && a.get(*n) != b.get(*n))
        .cloned()
        .collect()
}

/// Fields whose value is derived from a dependency (a template's `parent` hash): when only
/// they differ and that dependency is replaced, the cause is the dependency.
const DERIVED_FIELDS: &[&str] = &["parent"];

/// Plans `project`: what to do so that reality matches `spec`.
///
/// `base_dir` is the directory of the spec file; relative paths (local model files,
/// template root filesystems, workspaces) are joined to it and normalised lexically. The
/// facts about local model files come from `observed.local_files`, keyed by those paths.
/// Every problem is returned at once.
pub fn reconcile(
    project: &str,
    spec: &Spec,
    base_dir: &Path,
    observed: &Observed,
) -> Result<Plan, Vec<PlanError>> {
    let mut r = Reconciler {
        spec,
        base_dir,
        observed,
        desired: BTreeMap::new(),
        wanted: BTreeSet::new(),
        steps: BTreeMap::new(),
        errors: Vec::new(),
    };
    r.reconcile_gateway();
    r.reconcile_models();
    r.reconcile_engines();
    r.reconcile_proxies();
    r.reconcile_templates();
    r.reconcile_sandboxes();
    r.reconcile_removals();
    if !r.errors.is_empty() {
        return Err(r.errors);
    }
    Ok(r.into_plan(project))
}

/// Plans `aistack down`: every applied resource of the project removed, dependents first.
/// The same code path as [`reconcile`], with a spec that has no resources.
pub fn reconcile_down(project: &str, observed: &Observed) -> Plan {
    let empty = Spec {
        version: 1,
        name: None,
        gateway: Default::default(),
        engines: Default::default(),
        models: BTreeMap::new(),
        templates: BTreeMap::new(),
        network_policies: BTreeMap::new(),
        sandboxes: BTreeMap::new(),
    };
    reconcile(project, &empty, Path::new("/"), observed)
        .expect("a spec without resources names no files")
}

/// The absolute path of a local model file written as `written` in a spec whose directory
/// is `base_dir`: the key of its facts in [`Observed::local_files`].
pub fn local_path(base_dir: &Path, written: &str) -> PathBuf {
    normalise(base_dir, written)
}

/// Joins `path` to `base` (unless absolute) and removes `.` and `..` lexically.
pub fn normalise(base: &Path, path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

struct Reconciler<'a> {
    spec: &'a Spec,
    base_dir: &'a Path,
    observed: &'a Observed,
    /// Every desired resource, whether or not it needs a step.
    desired: BTreeMap<ResourceId, Desired>,
    /// Every resource the spec wants, including those that could not be planned.
    wanted: BTreeSet<ResourceId>,
    steps: BTreeMap<ResourceId, Step>,
    errors: Vec<PlanError>,
}

fn to_value(value: impl Serialize) -> Value {
    serde_json::to_value(value).expect("spec values serialise to JSON")
}

fn fields(entries: impl IntoIterator<Item = (&'static str, Value)>) -> BTreeMap<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// The engine settings from `engines:` that apply to models served by `engine`.
fn engine_options(engines: &Engines, engine: EngineKind) -> BTreeMap<String, Value> {
    match engine {
        EngineKind::LlamaCpp => fields([
            ("threads", to_value(engines.llama_cpp.threads)),
            ("gpu_layers", to_value(engines.llama_cpp.gpu_layers)),
        ]),
        EngineKind::Vllm => fields([
            (
                "gpu_memory_utilization",
                to_value(engines.vllm.gpu_memory_utilization.unwrap_or(0.9)),
            ),
            (
                "tensor_parallel_size",
                to_value(engines.vllm.tensor_parallel_size.unwrap_or(1)),
            ),
            ("hf_overrides", to_value(&engines.vllm.hf_overrides)),
        ]),
        EngineKind::Diffusers => BTreeMap::new(),
    }
}

impl Reconciler<'_> {
    fn error(&mut self, path: String, message: String, help: Option<String>) {
        self.errors.push(PlanError {
            path,
            message,
            help,
        });
    }

    /// Compares `desired` with its applied record and plans the step, if one is needed.
    /// Dependencies must have been decided already.
    fn decide(&mut self, desired: Desired) {
        let replaced_dependency = desired
            .depends_on
            .iter()
            .find(|d| {
                self.steps
                    .get(*d)
                    .is_some_and(|s| s.action == Action::Replace)
            })
            .cloned();
        let current = self.observed.resources.get(&desired.id);
        let decision = match current {
            None => Some((Action::Create, Cause::Missing)),
            Some(current) if current.hash == desired.hash => replaced_dependency
                .map(|dependency| (Action::Replace, Cause::DependencyReplaced { dependency })),
            Some(current) => {
                let names: BTreeSet<&String> =
                    current.fields.keys().chain(desired.fields.keys()).collect();
                let changed: Vec<String> = names
                    .into_iter()
                    .filter(|n| current.fields.get(*n) != desired.fields.get(*n))
                    .cloned()
                    .collect();
                let derived_only = !changed.is_empty()
                    && changed.iter().all(|f| DERIVED_FIELDS.contains(&f.as_str()));
                match replaced_dependency {
                    Some(dependency) if derived_only => {
                        Some((Action::Replace, Cause::DependencyReplaced { dependency }))
                    }
                    replaced => {
                        let replace = replaced.is_some()
                            || changed.iter().any(|f| desired.replace_fields.contains(f));
                        let action = if replace {
                            Action::Replace
                        } else {
                            Action::Change
                        };
                        Some((action, Cause::Changed { fields: changed }))
                    }
                }
            }
        };
        if let Some((action, cause)) = decision {
            let step = Step {
                id: desired.id.clone(),
                action,
                cause,
                desired: Some(desired.clone()),
                current: current.cloned(),
            };
            self.steps.insert(desired.id.clone(), step);
        }
        self.wanted.insert(desired.id.clone());
        self.desired.insert(desired.id.clone(), desired);
    }

    fn reconcile_gateway(&mut self) {
        if self.spec.models.is_empty() {
            return;
        }
        let gateway = &self.spec.gateway;
        let listen = gateway.listen.to_string();
        let memory_budget = gateway.memory_budget.map(|b| b.0);
        let fields = fields([
            ("listen", to_value(&listen)),
            ("cors_origins", to_value(&gateway.cors_origins)),
            ("api_key_env", to_value(&gateway.api_key_env)),
            ("memory_budget", to_value(memory_budget)),
        ]);
        for (project, other) in &self.observed.other_gateways {
            if other.fields.get("listen") != fields.get("listen") {
                continue;
            }
            let differing = gateway_disagreement(&fields, &other.fields);
            if !differing.is_empty() {
                self.error(
                    "gateway".to_owned(),
                    format!(
                        "The gateway on `{listen}` is shared with project `{project}`, whose \
                         settings differ: {}",
                        differing.join(", ")
                    ),
                    Some(format!(
                        "Use the same `gateway:` settings as project `{project}`, or another \
                         `gateway.listen` address"
                    )),
                );
            }
        }
        let payload = Payload::Gateway {
            listen,
            cors_origins: gateway.cors_origins.clone(),
            api_key_env: gateway.api_key_env.clone(),
            memory_budget,
        };
        let id = ResourceId::new(Kind::Gateway, GATEWAY);
        let replace = vec!["listen".to_owned()];
        self.decide(Desired::new(id, fields, replace, Vec::new(), payload));
    }

    fn reconcile_models(&mut self) {
        for (key, model) in &self.spec.models {
            let id = ResourceId::new(Kind::Model, key);
            self.wanted.insert(id.clone());
            if let Some(desired) = self.desired_model(key, model) {
                self.decide(desired);
                self.moved_tag(&id);
            }
        }
    }

    /// A registry model whose reference now resolves to another artifact than the one
    /// applied changes in place (a new pull), though its fields are the same. The registry
    /// is only asked when the user wants tags re-resolved, so offline plans stay stable.
    fn moved_tag(&mut self, id: &ResourceId) {
        if self.steps.contains_key(id) {
            return;
        }
        let (Some(desired), Some(current)) =
            (self.desired.get(id), self.observed.resources.get(id))
        else {
            return;
        };
        let Payload::RegistryModel {
            digest: Some(digest),
            ..
        } = &desired.payload
        else {
            return;
        };
        if current.outputs.get(MANIFEST_OUTPUT) == Some(digest) {
            return;
        }
        let step = Step {
            id: id.clone(),
            action: Action::Change,
            cause: Cause::Changed {
                fields: vec!["digest".to_owned()],
            },
            desired: Some(desired.clone()),
            current: Some(current.clone()),
        };
        self.steps.insert(id.clone(), step);
    }

    fn desired_model(&mut self, key: &str, model: &Model) -> Option<Desired> {
        let (engine, digests, payload) = match &model.source {
            Source::Local(written) => {
                let path = local_path(self.base_dir, written);
                let shards = match self.observed.local_files.get(&path) {
                    Some(LocalFile::Present { shards }) => shards.clone(),
                    Some(LocalFile::Missing { reason }) => {
                        let help = format!(
                            "Looked for `{}` ({reason}); fix `source:` (relative to the spec's \
                             directory) or put the file there",
                            path.display()
                        );
                        self.missing_file(key, written, help);
                        return None;
                    }
                    None => {
                        let help = format!(
                            "`{}` was not inspected before planning; fix `source:` (relative to \
                             the spec's directory) or put the file there",
                            path.display()
                        );
                        self.missing_file(key, written, help);
                        return None;
                    }
                };
                let engine = model.engine.unwrap_or(EngineKind::LlamaCpp);
                if engine != EngineKind::LlamaCpp {
                    self.error(
                        format!("models.{key}.engine"),
                        format!("Engine `{engine}` cannot serve the GGUF file `{written}`"),
                        Some("Use `engine: llama.cpp`, or remove `engine:`".to_owned()),
                    );
                    return None;
                }
                let digests: Vec<Value> = shards
                    .iter()
                    .map(|s| Value::String(s.digest.clone()))
                    .collect();
                (
                    engine,
                    Value::Array(digests),
                    Payload::LocalModel { files: shards },
                )
            }
            Source::Oci(reference) => {
                let reference = reference.to_string();
                let engine = model.engine.unwrap_or(EngineKind::LlamaCpp);
                let fact = self.observed.registry.get(&reference);
                let digest = fact.map(|f| f.digest.clone());
                let size = fact.and_then(|f| f.size);
                (
                    engine,
                    Value::Array(vec![Value::String(reference.clone())]),
                    Payload::RegistryModel {
                        reference,
                        digest,
                        size,
                    },
                )
            }
        };
        let parallel = match engine {
            EngineKind::LlamaCpp => Some(
                model
                    .parallel
                    .or(self.spec.engines.llama_cpp.parallel)
                    .unwrap_or(4),
            ),
            EngineKind::Vllm | EngineKind::Diffusers => model.parallel,
        };
        let keep_alive = model
            .keep_alive
            .unwrap_or(KeepAlive::After(std::time::Duration::from_secs(300)));
        let fields = fields([
            ("source", to_value(&model.source)),
            ("digests", digests),
            ("engine", to_value(engine)),
            ("context_size", to_value(model.context_size)),
            ("parallel", to_value(parallel)),
            ("keep_alive", to_value(keep_alive)),
            ("mode", to_value(model.mode)),
            ("runtime_flags", to_value(&model.runtime_flags)),
            (
                "options",
                to_value(engine_options(&self.spec.engines, engine)),
            ),
        ]);
        let id = ResourceId::new(Kind::Model, key);
        let replace = vec!["source".to_owned(), "digests".to_owned()];
        let gateway = vec![ResourceId::new(Kind::Gateway, GATEWAY)];
        Some(Desired::new(id, fields, replace, gateway, payload))
    }

    fn missing_file(&mut self, key: &str, written: &str, help: String) {
        self.error(
            format!("models.{key}.source"),
            format!("Model file `{written}` not found"),
            Some(help),
        );
    }

    fn reconcile_engines(&mut self) {
        for (key, model) in &self.spec.models {
            if !model.preload {
                continue;
            }
            let id = ResourceId::new(Kind::Engine, key);
            self.wanted.insert(id.clone());
            let model_id = ResourceId::new(Kind::Model, key);
            let Some(m) = self.desired.get(&model_id) else {
                continue;
            };
            let get = |name: &str| m.fields.get(name).cloned().unwrap_or(Value::Null);
            let fields = fields([
                ("engine", get("engine")),
                ("context_size", get("context_size")),
                ("parallel", get("parallel")),
                ("keep_alive", get("keep_alive")),
                ("mode", get("mode")),
                ("runtime_flags", get("runtime_flags")),
                ("options", get("options")),
            ]);
            let engine = get("engine").as_str().unwrap_or_default().to_owned();
            let options = match get("options") {
                Value::Object(map) => map.into_iter().collect(),
                _ => BTreeMap::new(),
            };
            let payload = Payload::Engine {
                model: key.clone(),
                engine,
                context_size: model.context_size,
                parallel: get("parallel").as_u64().map(|p| p as u32),
                mode: model.mode.to_string(),
                runtime_flags: model.runtime_flags.clone(),
                options,
            };
            let replace = fields.keys().cloned().collect();
            self.decide(Desired::new(id, fields, replace, vec![model_id], payload));
        }
    }

    fn reconcile_proxies(&mut self) {
        for (name, policy) in &self.spec.network_policies {
            let id = ResourceId::new(Kind::Proxy, name);
            self.wanted.insert(id.clone());
            self.decide(desired_proxy(id, policy));
        }
    }

    fn reconcile_templates(&mut self) {
        let mut done = BTreeSet::new();
        for key in self.spec.templates.keys() {
            self.reconcile_template(key, &mut done);
        }
    }

    /// Plans template `key` after its parent chain (validation rules out cycles; `done`
    /// would end one anyway).
    fn reconcile_template(&mut self, key: &str, done: &mut BTreeSet<String>) {
        let Some(template) = self.spec.templates.get(key) else {
            return;
        };
        if !done.insert(key.to_owned()) {
            return;
        }
        if let TemplateFrom::Template(parent) = &template.from {
            self.reconcile_template(parent, done);
        }
        let desired = self.desired_template(key, template);
        self.decide(desired);
    }

    fn desired_template(&self, key: &str, template: &Template) -> Desired {
        let mut depends_on = Vec::new();
        let (from, parent) = match &template.from {
            TemplateFrom::Template(name) => {
                let parent_id = ResourceId::new(Kind::Template, name);
                let hash = self
                    .desired
                    .get(&parent_id)
                    .map(|d| Value::String(d.hash.clone()));
                depends_on.push(parent_id);
                (json!({ "template": name }), hash.unwrap_or(Value::Null))
            }
            TemplateFrom::Path(path) => {
                let path = normalise(self.base_dir, path);
                (json!({ "path": path.to_string_lossy() }), Value::Null)
            }
            TemplateFrom::Image(reference) => {
                (json!({ "image": reference.to_string() }), Value::Null)
            }
        };
        if let Some(policy) = &template.network_policy {
            depends_on.push(ResourceId::new(Kind::Proxy, policy));
        }
        let fields = fields([
            ("from", from),
            ("run", to_value(&template.run)),
            ("env", to_value(self.template_env(key))),
            ("network_policy", to_value(&template.network_policy)),
            ("parent", parent),
        ]);
        let payload = Payload::Template {
            template: object(&fields),
        };
        let replace = fields.keys().cloned().collect();
        Desired::new(
            ResourceId::new(Kind::Template, key),
            fields,
            replace,
            depends_on,
            payload,
        )
    }

    fn reconcile_sandboxes(&mut self) {
        for (key, sandbox) in &self.spec.sandboxes {
            let desired = self.desired_sandbox(key, sandbox);
            self.decide(desired);
        }
    }

    fn desired_sandbox(&self, key: &str, sandbox: &Sandbox) -> Desired {
        let mut depends_on = vec![ResourceId::new(Kind::Template, &sandbox.template)];
        if let Some(policy) = &sandbox.network_policy {
            depends_on.push(ResourceId::new(Kind::Proxy, policy));
        }
        depends_on.extend(
            sandbox
                .models
                .iter()
                .map(|m| ResourceId::new(Kind::Model, m)),
        );
        let workspace = normalise(self.base_dir, &sandbox.workspace);
        let mut env = self.template_env(&sandbox.template);
        env.extend(sandbox.env.clone());
        let fields = fields([
            ("template", to_value(&sandbox.template)),
            ("agent", to_value(sandbox.agent)),
            ("args", to_value(&sandbox.args)),
            ("workspace", to_value(workspace.to_string_lossy())),
            ("isolation", to_value(sandbox.isolation)),
            ("cpus", to_value(sandbox.cpus)),
            ("memory", to_value(sandbox.memory)),
            ("network_policy", to_value(&sandbox.network_policy)),
            ("models", to_value(&sandbox.models)),
            ("ports", to_value(&sandbox.ports)),
            ("env", to_value(env)),
        ]);
        let payload = Payload::Sandbox {
            sandbox: object(&fields),
        };
        let replace = fields.keys().cloned().collect();
        Desired::new(
            ResourceId::new(Kind::Sandbox, key),
            fields,
            replace,
            depends_on,
            payload,
        )
    }

    /// A template's variables over those of the templates it is built `from:`, as an image
    /// inherits its base's `ENV`.
    fn template_env(&self, key: &str) -> BTreeMap<String, String> {
        let mut chain = Vec::new();
        let mut next = Some(key);
        while let Some(name) = next.filter(|n| !chain.contains(n)) {
            chain.push(name);
            next = match self.spec.templates.get(name).map(|t| &t.from) {
                Some(TemplateFrom::Template(parent)) => Some(parent.as_str()),
                _ => None,
            };
        }
        let mut env = BTreeMap::new();
        for template in chain
            .iter()
            .rev()
            .filter_map(|n| self.spec.templates.get(*n))
        {
            env.extend(template.env.clone());
        }
        env
    }

    fn reconcile_removals(&mut self) {
        for (id, applied) in &self.observed.resources {
            if self.wanted.contains(id) {
                continue;
            }
            let step = Step {
                id: id.clone(),
                action: Action::Remove,
                cause: Cause::NotInSpec,
                desired: None,
                current: Some(applied.clone()),
            };
            self.steps.insert(id.clone(), step);
        }
    }

    /// The steps and their edges, as a [`Plan`] in its canonical order.
    fn into_plan(self, project: &str) -> Plan {
        let mut graph = DiGraph::new();
        let mut index = BTreeMap::new();
        for (id, step) in &self.steps {
            index.insert(id.clone(), graph.add_node(step.clone()));
        }
        let add = |graph: &mut DiGraph<Step, ()>, from: &ResourceId, to: &ResourceId| {
            let (a, b) = (index[from], index[to]);
            // Applied records from an older spec could order things the other way round;
            // an edge that would close a cycle is left out.
            if a != b
                && graph.find_edge(a, b).is_none()
                && !petgraph::algo::has_path_connecting(&*graph, b, a, None)
            {
                graph.add_edge(a, b, ());
            }
        };
        // Creations, changes and replacements run after the steps of their dependencies.
        for (id, step) in &self.steps {
            let Some(desired) = &step.desired else {
                continue;
            };
            for dep in &desired.depends_on {
                if self
                    .steps
                    .get(dep)
                    .is_some_and(|s| s.action != Action::Remove)
                {
                    add(&mut graph, dep, id);
                }
            }
        }
        // A removal (or the removal half of a replacement) runs before what it depended on
        // when applied is removed or replaced.
        for (id, step) in &self.steps {
            let Some(current) = &step.current else {
                continue;
            };
            for dep in &current.depends_on {
                let Some(dep_step) = self.steps.get(dep) else {
                    continue;
                };
                let ordered = matches!(
                    (step.action, dep_step.action),
                    (
                        Action::Remove,
                        Action::Remove | Action::Replace | Action::Change
                    ) | (Action::Replace | Action::Change, Action::Remove)
                );
                if ordered {
                    add(&mut graph, id, dep);
                }
            }
        }
        Plan::from_graph(project, graph)
    }
}

fn object(fields: &BTreeMap<String, Value>) -> Value {
    Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn desired_proxy(id: ResourceId, policy: &NetworkPolicy) -> Desired {
    let fields = fields([
        ("default", to_value(policy.default)),
        ("allow", to_value(&policy.allow)),
        ("deny", to_value(&policy.deny)),
        ("bypass", to_value(&policy.bypass)),
        ("credentials", to_value(&policy.credentials)),
    ]);
    let payload = Payload::Proxy {
        policy: object(&fields),
    };
    Desired::new(id, fields, Vec::new(), Vec::new(), payload)
}
