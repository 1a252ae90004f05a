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
use aistack_spec::model::{Engines, Model, Sandbox, Template};
use aistack_spec::values::{EngineKind, KeepAlive, Source, TemplateFrom};
use petgraph::graph::DiGraph;
use serde::Serialize;

use crate::payload::{
    Artifact, Base, EngineOptions, GatewayPlan, Limits, ModelPlan, ModelSettings, SandboxPlan,
    SandboxSettings, Serving, TemplatePlan, TemplateSettings,
};
use crate::{
    Action, Cause, Desired, Kind, LocalFile, MANIFEST_OUTPUT, Observed, Payload, Plan, ResourceId,
    Step, agents,
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

/// The name under which a sandbox reaches its models (DESIGN §7): its proxy routes it to
/// the project's gateway.
pub const MODELS_HOST: &str = "models.aistack.internal";

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
/// The same code path as [`reconcile`], with a spec that has no resources. With
/// `delete_models` (`down --models`), each removed model's artifact is deleted from the
/// shared store too, unless another project records it ([`Observed::other_artifacts`]).
pub fn reconcile_down(project: &str, observed: &Observed, delete_models: bool) -> Plan {
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
    let mut plan = reconcile(project, &empty, Path::new("/"), observed)
        .expect("a spec without resources names no files");
    if delete_models {
        for step in plan.graph.node_weights_mut() {
            step.delete_artifact = step.id.kind == Kind::Model
                && (step.current.as_ref())
                    .and_then(|c| c.outputs.get(MANIFEST_OUTPUT))
                    .is_some_and(|m| !observed.other_artifacts.contains(m));
        }
    }
    plan
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

/// The settings from `engines:` that apply to models served by `engine`, defaults applied.
fn engine_options(engines: &Engines, engine: EngineKind) -> EngineOptions {
    match engine {
        EngineKind::LlamaCpp => EngineOptions::LlamaCpp {
            threads: engines.llama_cpp.threads,
            gpu_layers: engines.llama_cpp.gpu_layers,
        },
        EngineKind::Vllm => EngineOptions::Vllm {
            gpu_memory_utilization: engines.vllm.gpu_memory_utilization.unwrap_or(0.9),
            tensor_parallel_size: engines.vllm.tensor_parallel_size.unwrap_or(1),
            hf_overrides: engines.vllm.hf_overrides.clone(),
        },
        EngineKind::Diffusers => EngineOptions::Diffusers {},
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
                let fields = desired.fields();
                let names: BTreeSet<&String> = current.fields.keys().chain(fields.keys()).collect();
                let changed: Vec<String> = names
                    .into_iter()
                    .filter(|n| current.fields.get(*n) != fields.get(*n))
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
                            || changed.iter().any(|f| desired.payload.replaces(f));
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
                delete_artifact: false,
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
        let plan = GatewayPlan {
            listen: gateway.listen,
            cors_origins: gateway.cors_origins.clone(),
            api_key_env: gateway.api_key_env.clone(),
            memory_budget: gateway.memory_budget.map(|b| b.0),
        };
        for (project, other) in &self.observed.other_gateways {
            if other.listen != plan.listen {
                continue;
            }
            let differing = plan.disagreement(other);
            if !differing.is_empty() {
                self.error(
                    "gateway".to_owned(),
                    format!(
                        "The gateway on `{}` is shared with project `{project}`, whose \
                         settings differ: {}",
                        plan.listen,
                        differing.join(", ")
                    ),
                    Some(format!(
                        "Use the same `gateway:` settings as project `{project}`, or another \
                         `gateway.listen` address"
                    )),
                );
            }
        }
        self.decide(Desired::new(GATEWAY, Payload::Gateway(plan), Vec::new()));
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
        let Payload::Model(ModelPlan {
            artifact:
                Artifact::Pull {
                    digest: Some(digest),
                    ..
                },
            ..
        }) = &desired.payload
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
            delete_artifact: false,
        };
        self.steps.insert(id.clone(), step);
    }

    fn desired_model(&mut self, key: &str, model: &Model) -> Option<Desired> {
        let (engine, digests, artifact) = match &model.source {
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
                let digests = shards.iter().map(|s| s.digest.clone()).collect();
                (engine, digests, Artifact::Import { files: shards })
            }
            Source::Oci(reference) => {
                let reference = reference.to_string();
                let engine = model.engine.unwrap_or(EngineKind::LlamaCpp);
                let fact = self.observed.registry.get(&reference);
                let digest = fact.map(|f| f.digest.clone());
                let size = fact.and_then(|f| f.size);
                (
                    engine,
                    vec![reference.clone()],
                    Artifact::Pull {
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
        let settings = ModelSettings {
            source: match &model.source {
                Source::Oci(reference) => reference.to_string(),
                Source::Local(written) => written.clone(),
            },
            digests,
            serving: Serving {
                engine,
                context_size: model.context_size,
                parallel,
                keep_alive,
                mode: model.mode,
                runtime_flags: model.runtime_flags.clone(),
                options: engine_options(&self.spec.engines, engine),
            },
        };
        let payload = Payload::Model(ModelPlan { settings, artifact });
        let gateway = vec![ResourceId::new(Kind::Gateway, GATEWAY)];
        Some(Desired::new(key, payload, gateway))
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
            let Some(Payload::Model(m)) = self.desired.get(&model_id).map(|d| &d.payload) else {
                continue;
            };
            let serving = Payload::Engine(m.settings.serving.clone());
            self.decide(Desired::new(key, serving, vec![model_id]));
        }
    }

    fn reconcile_proxies(&mut self) {
        for (name, policy) in &self.spec.network_policies {
            let payload = Payload::Proxy(policy.clone());
            self.decide(Desired::new(name, payload, Vec::new()));
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
        let mut image_in_store = None;
        let (from, parent) = match &template.from {
            TemplateFrom::Template(name) => {
                let parent_id = ResourceId::new(Kind::Template, name);
                let hash = self.desired.get(&parent_id).map(|d| d.hash.clone());
                depends_on.push(parent_id);
                (Base::Template(name.clone()), hash)
            }
            TemplateFrom::Path(path) => {
                let path = normalise(self.base_dir, path);
                (Base::Path(path.to_string_lossy().into_owned()), None)
            }
            TemplateFrom::Image(reference) => {
                let reference = reference.to_string();
                image_in_store = self.observed.images.get(&reference).cloned();
                (Base::Image(reference), None)
            }
        };
        if let Some(policy) = &template.network_policy {
            depends_on.push(ResourceId::new(Kind::Proxy, policy));
        }
        let settings = TemplateSettings {
            from,
            run: template.run.clone(),
            env: self.template_env(key),
            network_policy: template.network_policy.clone(),
            parent,
        };
        let payload = Payload::Template(TemplatePlan {
            settings,
            limits: Limits::of(None, None),
            image_in_store,
        });
        Desired::new(key, payload, depends_on)
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
        // The agent's model is reachable as the listed ones are.
        let mut models = sandbox.models.clone();
        if let Some(model) = sandbox.agent.model.as_ref().filter(|m| !models.contains(m)) {
            models.push(model.clone());
        }
        depends_on.extend(models.iter().map(|m| ResourceId::new(Kind::Model, m)));
        let workspace = normalise(self.base_dir, &sandbox.workspace);
        let mut env = self.template_env(&sandbox.template);
        env.extend(sandbox.env.clone());
        let agent = sandbox.agent.name;
        let profile = agents::profile(agent);
        let mut environment: BTreeMap<String, String> = profile.environment().into_iter().collect();
        for model in &models {
            let key = model_variable(model);
            environment.insert(
                format!("{key}_URL"),
                format!("http://{MODELS_HOST}/engines/v1/"),
            );
            environment.insert(format!("{key}_MODEL"), model.clone());
        }
        let workspace_text = workspace.to_string_lossy().into_owned();
        let local = sandbox.agent.model.as_ref().and_then(|name| {
            let context = self.spec.models.get(name)?.context_size?;
            agents::on_local_model(
                agent,
                agents::LocalModel {
                    name,
                    context,
                    workspace: &workspace_text,
                },
            )
        });
        let local = local.unwrap_or_default();
        environment.extend(local.env);
        let agent_setup = crate::resource::canonical_hash(&serde_json::json!({
            "environment": environment,
            "files": local.files,
        }));
        environment.extend(env.clone());
        let settings = SandboxSettings {
            template: sandbox.template.clone(),
            agent,
            agent_model: sandbox.agent.model.clone(),
            args: sandbox.args.clone(),
            workspace: workspace_text,
            isolation: sandbox.isolation,
            cpus: sandbox.cpus,
            memory: sandbox.memory,
            network_policy: sandbox.network_policy.clone(),
            models,
            ports: sandbox.ports.clone(),
            env,
            agent_setup,
        };
        let inside = |path: &&PathBuf| path.starts_with(&workspace);
        let text = |path: &PathBuf| path.to_string_lossy().into_owned();
        let payload = Payload::Sandbox(Box::new(SandboxPlan {
            limits: Limits::of(settings.memory, settings.cpus),
            read_only: self
                .observed
                .spec_files
                .iter()
                .filter(inside)
                .map(text)
                .collect(),
            hidden: self
                .observed
                .dotenv
                .iter()
                .filter(inside)
                .map(text)
                .collect(),
            settings,
            environment,
            files: local.files,
            program: profile.command.to_owned(),
            install: profile.install.to_owned(),
        }));
        Desired::new(key, payload, depends_on)
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
                delete_artifact: false,
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

/// The prefix of a model's variables in a sandbox, as Compose makes it: `chat-v2` sets
/// `CHAT_V2_URL` and `CHAT_V2_MODEL`.
fn model_variable(model: &str) -> String {
    (model.chars())
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}
