//! Plans for the scenarios a user meets, snapshotted as text and JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aistack_planner::{
    Action, Applied, Artifact, Cause, FileFact, GatewayPlan, Kind, LocalFile, MANIFEST_OUTPUT,
    ModelPlan, Observed, Payload, Plan, PlanError, ResourceId, SandboxSettings, Serving,
    TemplateSettings, reconcile, reconcile_down,
};
use aistack_spec::Spec;
use aistack_spec::model::{
    Credential, Engines, Gateway, LlamaCppDefaults, Model, NetworkPolicy, Sandbox, Template,
};
use aistack_spec::values::{
    Agent, ByteSize, EngineKind, GpuLayers, HostRule, Isolation, KeepAlive, ModelMode, OciRef,
    PolicyDefault, PortMapping, RuleTarget, Source, TemplateFrom,
};

const BASE: &str = "/home/dev/demo";
const CHAT_FILE: &str = "./models/SmolLM2-135M-Instruct.Q4_1.gguf";
const CHAT_PATH: &str = "/home/dev/demo/models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn oci(registry: &str, repository: &str, tag: &str) -> OciRef {
    OciRef {
        registry: registry.into(),
        repository: repository.into(),
        tag: Some(tag.into()),
        digest: None,
    }
}

fn host(name: &str) -> HostRule {
    HostRule {
        target: RuleTarget::Host(name.into()),
        port: None,
    }
}

fn model(source: Source) -> Model {
    Model {
        source,
        engine: None,
        context_size: None,
        parallel: None,
        keep_alive: None,
        preload: false,
        mode: ModelMode::Chat,
        runtime_flags: Vec::new(),
    }
}

/// DESIGN §4's full example, with the chat model as a local file so that its digest can
/// change, and the `build` policy the example's template names.
fn full_spec() -> Spec {
    let mut models = BTreeMap::new();
    models.insert(
        "chat".to_owned(),
        Model {
            engine: Some(EngineKind::LlamaCpp),
            context_size: Some(4096),
            parallel: Some(4),
            keep_alive: Some(KeepAlive::After(Duration::from_secs(300))),
            preload: true,
            ..model(Source::Local(CHAT_FILE.into()))
        },
    );
    models.insert(
        "embed".to_owned(),
        Model {
            mode: ModelMode::Embedding,
            keep_alive: Some(KeepAlive::Forever),
            ..model(Source::Oci(oci(
                "127.0.0.1:5000",
                "ai/smollm2",
                "135M-Q4_1",
            )))
        },
    );

    let mut templates = BTreeMap::new();
    templates.insert(
        "base".to_owned(),
        Template {
            from: TemplateFrom::Image(oci("127.0.0.1:5000", "sandbox/debian", "bookworm")),
            run: Vec::new(),
            network_policy: None,
            env: BTreeMap::new(),
        },
    );
    templates.insert(
        "dev".to_owned(),
        Template {
            from: TemplateFrom::Template("base".into()),
            run: vec!["apt-get install -y git".into()],
            network_policy: Some("build".into()),
            env: [("LANG".to_owned(), "C.UTF-8".to_owned())].into(),
        },
    );

    let mut network_policies = BTreeMap::new();
    network_policies.insert(
        "agents".to_owned(),
        NetworkPolicy {
            default: PolicyDefault::Deny,
            allow: vec![
                host("api.anthropic.com"),
                HostRule {
                    target: RuleTarget::Wildcard("npmjs.org".into()),
                    port: None,
                },
                HostRule {
                    target: RuleTarget::Ip("10.1.2.3".parse().unwrap()),
                    port: Some(22),
                },
                HostRule {
                    target: RuleTarget::Cidr("203.0.113.0/24".parse().unwrap()),
                    port: None,
                },
            ],
            deny: vec![host("evil.example.com")],
            bypass: Vec::new(),
            credentials: vec![Credential {
                host: "api.anthropic.com".into(),
                header: "x-api-key".into(),
                from_env: "ANTHROPIC_API_KEY".into(),
            }],
        },
    );
    network_policies.insert(
        "build".to_owned(),
        NetworkPolicy {
            default: PolicyDefault::Deny,
            allow: vec![host("deb.debian.org")],
            deny: Vec::new(),
            bypass: Vec::new(),
            credentials: Vec::new(),
        },
    );

    let mut sandboxes = BTreeMap::new();
    sandboxes.insert(
        "coder".to_owned(),
        Sandbox {
            template: "dev".into(),
            agent: Agent::Claude.into(),
            args: Vec::new(),
            workspace: ".".into(),
            isolation: Isolation::Auto,
            cpus: Some(2),
            memory: Some(ByteSize(2 << 30)),
            network_policy: Some("agents".into()),
            models: vec!["chat".into()],
            ports: vec![PortMapping {
                host_ip: "127.0.0.1".parse().unwrap(),
                host_port: 8080,
                sandbox_port: 3000,
            }],
            env: BTreeMap::new(),
        },
    );

    Spec {
        version: 1,
        name: Some("demo".into()),
        gateway: Gateway::default(),
        engines: Engines {
            llama_cpp: LlamaCppDefaults {
                threads: Some(2),
                parallel: Some(4),
                gpu_layers: GpuLayers::Auto,
            },
            ..Engines::default()
        },
        models,
        templates,
        network_policies,
        sandboxes,
    }
}

fn chat_file(digest_byte: char) -> LocalFile {
    LocalFile::Present {
        shards: vec![FileFact {
            path: CHAT_PATH.into(),
            size: 100_000_000,
            digest: format!("sha256:{}", digest_byte.to_string().repeat(64)),
        }],
    }
}

/// Nothing applied; the local model file is there.
fn fresh() -> Observed {
    Observed::default().with_local_file(CHAT_PATH, chat_file('a'))
}

fn plan(spec: &Spec, observed: &Observed) -> Plan {
    reconcile("demo", spec, Path::new(BASE), observed).expect("plans")
}

/// What apply would record after carrying `plan` out completely.
fn apply(plan: &Plan, observed: &Observed) -> Observed {
    let mut after = observed.clone();
    for step in plan.steps() {
        match step.action {
            Action::Remove => {
                after.resources.remove(&step.id);
            }
            _ => {
                let desired = step.desired.as_ref().expect("non-removals carry desired");
                after.resources.insert(
                    step.id.clone(),
                    Applied::from_desired(desired, BTreeMap::new()),
                );
            }
        }
    }
    after
}

/// The full example applied.
fn applied() -> Observed {
    let observed = fresh();
    apply(&plan(&full_spec(), &observed), &observed)
}

/// Checks that applying `plan` converges and that its JSON round-trips, then returns its
/// text.
fn check(spec: &Spec, observed: &Observed) -> Plan {
    let plan = plan(spec, observed);
    let after = apply(&plan, observed);
    assert_eq!(
        reconcile("demo", spec, Path::new(BASE), &after)
            .unwrap()
            .render_text(),
        "No changes.\n"
    );
    let json = plan.render_json();
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan);
    assert_eq!(back.render_json(), json);
    plan
}

#[test]
fn empty_creates_everything() {
    let plan = check(&full_spec(), &fresh());
    insta::assert_snapshot!(plan.render_text());
    insta::assert_snapshot!("empty_creates_everything_json", plan.render_json());
}

#[test]
fn applied_has_no_changes() {
    let plan = plan(&full_spec(), &applied());
    assert!(plan.is_empty());
    assert_eq!(plan.render_text(), "No changes.\n");
    insta::assert_snapshot!(plan.render_json());
}

#[test]
fn changed_context_size_changes_the_model() {
    let mut spec = full_spec();
    spec.models.get_mut("chat").unwrap().context_size = Some(8192);
    spec.models.get_mut("embed").unwrap().context_size = Some(512);
    let plan = check(&spec, &applied());
    insta::assert_snapshot!(plan.render_text());
    insta::assert_snapshot!("changed_context_size_json", plan.render_json());
}

#[test]
fn changed_model_digest_replaces_model_and_engine() {
    let observed = applied().with_local_file(CHAT_PATH, chat_file('b'));
    let plan = check(&full_spec(), &observed);
    insta::assert_snapshot!(plan.render_text());
    let chat = plan.find(&ResourceId::new(Kind::Model, "chat")).unwrap();
    let engine = plan.find(&ResourceId::new(Kind::Engine, "chat")).unwrap();
    assert_eq!(plan.step(engine).action, Action::Replace);
    assert_eq!(
        plan.step(engine).cause,
        Cause::DependencyReplaced {
            dependency: ResourceId::new(Kind::Model, "chat")
        }
    );
    assert_eq!(plan.dependencies(engine), vec![chat]);
    assert!(plan.dependents(chat).contains(&engine));
}

#[test]
fn changed_template_run_replaces_template_and_sandbox() {
    let mut spec = full_spec();
    spec.templates
        .get_mut("dev")
        .unwrap()
        .run
        .push("apt-get install -y curl".into());
    let plan = check(&spec, &applied());
    insta::assert_snapshot!(plan.render_text());
}

#[test]
fn changed_parent_template_replaces_its_children() {
    let mut spec = full_spec();
    spec.templates
        .get_mut("base")
        .unwrap()
        .env
        .insert("TZ".into(), "UTC".into());
    let plan = check(&spec, &applied());
    insta::assert_snapshot!(plan.render_text());
}

#[test]
fn changed_policy_changes_the_proxy_only() {
    let mut spec = full_spec();
    spec.network_policies
        .get_mut("agents")
        .unwrap()
        .allow
        .push(host("registry.npmjs.org"));
    let plan = check(&spec, &applied());
    insta::assert_snapshot!(plan.render_text());
    insta::assert_snapshot!("changed_policy_json", plan.render_json());
}

#[test]
fn removed_sandbox_is_removed() {
    let mut spec = full_spec();
    spec.sandboxes.clear();
    let plan = check(&spec, &applied());
    insta::assert_snapshot!(plan.render_text());
}

#[test]
fn down_removes_everything_dependents_first() {
    let observed = applied();
    let plan = reconcile_down("demo", &observed, false);
    insta::assert_snapshot!(plan.render_text());
    insta::assert_snapshot!("down_json", plan.render_json());
    let order: Vec<_> = plan.steps().iter().map(|s| s.id.clone()).collect();
    let position = |kind, name| {
        order
            .iter()
            .position(|id| *id == ResourceId::new(kind, name))
            .unwrap()
    };
    assert!(position(Kind::Sandbox, "coder") < position(Kind::Template, "dev"));
    assert!(position(Kind::Template, "dev") < position(Kind::Template, "base"));
    assert!(position(Kind::Template, "dev") < position(Kind::Proxy, "build"));
    assert!(position(Kind::Engine, "chat") < position(Kind::Model, "chat"));
    assert!(position(Kind::Sandbox, "coder") < position(Kind::Model, "chat"));
    // The same code path: an empty spec plans the same.
    let mut empty = full_spec();
    empty.models.clear();
    empty.templates.clear();
    empty.network_policies.clear();
    empty.sandboxes.clear();
    assert_eq!(
        reconcile("demo", &empty, Path::new(BASE), &observed).unwrap(),
        plan
    );
    assert!(apply(&plan, &observed).resources.is_empty());
}

#[test]
fn mixed_plan() {
    // Everything at once: a new model, a changed policy, a replaced template, a model and
    // an engine no longer wanted.
    let mut spec = full_spec();
    spec.models.get_mut("chat").unwrap().preload = false;
    spec.models.insert(
        "code".into(),
        model(Source::Oci(oci("docker.io", "ai/qwen2.5-coder", "latest"))),
    );
    spec.models.remove("embed");
    spec.network_policies
        .get_mut("agents")
        .unwrap()
        .deny
        .push(host("pastebin.com"));
    spec.templates.get_mut("dev").unwrap().from = TemplateFrom::Path("../rootfs".into());
    let plan = check(&spec, &applied());
    insta::assert_snapshot!(plan.render_text());
}

#[test]
fn missing_local_file_is_an_error_at_the_source() {
    let observed = Observed::default().with_local_file(
        CHAT_PATH,
        LocalFile::Missing {
            reason: "No such file or directory".into(),
        },
    );
    let errors = reconcile("demo", &full_spec(), Path::new(BASE), &observed).unwrap_err();
    assert_eq!(
        errors,
        vec![PlanError {
            path: "models.chat.source".into(),
            message: "Model file `./models/SmolLM2-135M-Instruct.Q4_1.gguf` not found".into(),
            help: Some(
                "Looked for `/home/dev/demo/models/SmolLM2-135M-Instruct.Q4_1.gguf` (No such \
                 file or directory); fix `source:` (relative to the spec's directory) or put \
                 the file there"
                    .into()
            ),
        }]
    );
    // A file never inspected is reported the same way.
    let errors =
        reconcile("demo", &full_spec(), Path::new(BASE), &Observed::default()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "models.chat.source");
}

#[test]
fn local_file_for_another_engine_is_an_error_at_the_engine() {
    let mut spec = full_spec();
    spec.models.get_mut("chat").unwrap().engine = Some(EngineKind::Vllm);
    let errors = reconcile("demo", &spec, Path::new(BASE), &fresh()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "models.chat.engine");
    assert_eq!(
        errors[0].message,
        "Engine `vllm` cannot serve the GGUF file `./models/SmolLM2-135M-Instruct.Q4_1.gguf`"
    );
}

#[test]
fn paths_are_absolute() {
    let plan = plan(&full_spec(), &fresh());
    let sandbox = plan.find(&ResourceId::new(Kind::Sandbox, "coder")).unwrap();
    let fields = plan.step(sandbox).desired.as_ref().unwrap().fields();
    assert_eq!(fields["workspace"], BASE);
    assert_eq!(
        aistack_planner::normalise(Path::new("/a/b"), "../c/./d"),
        PathBuf::from("/a/c/d")
    );
    assert_eq!(
        aistack_planner::normalise(Path::new("/a"), "/x/../y"),
        PathBuf::from("/y")
    );
    assert_eq!(
        aistack_planner::normalise(Path::new("/"), "../x"),
        PathBuf::from("/x")
    );
}

#[test]
fn secrets_never_appear() {
    let json = plan(&full_spec(), &fresh()).render_json();
    assert!(json.contains("ANTHROPIC_API_KEY"));
    assert!(!json.contains("sk-ant"));
}

/// A small deterministic shuffle (xorshift), so the test needs no `rand`.
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for i in (1..items.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        items.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

#[test]
fn same_inputs_give_identical_output() {
    let mut spec = full_spec();
    spec.templates
        .get_mut("dev")
        .unwrap()
        .run
        .push("true".into());
    spec.sandboxes.clear();
    let base = applied();
    let expected = plan(&spec, &base);
    let (text, json) = (expected.render_text(), expected.render_json());
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..100 {
        let mut resources: Vec<Applied> = base.resources.values().cloned().collect();
        shuffle(&mut resources, &mut seed);
        let mut files: Vec<(PathBuf, LocalFile)> = base.local_files.clone().into_iter().collect();
        shuffle(&mut files, &mut seed);
        let mut observed = Observed::from_applied(resources);
        for (path, file) in files {
            observed = observed.with_local_file(path, file);
        }
        let again = plan(&spec, &observed);
        assert_eq!(again.render_text(), text);
        assert_eq!(again.render_json(), json);
        assert_eq!(again, expected);
    }
}

#[test]
fn json_that_is_not_a_plan_is_refused() {
    let mut json = plan(&full_spec(), &fresh()).to_json();
    json["format_version"] = 1.into();
    let err = serde_json::from_value::<Plan>(json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("format_version 1"), "{err}");

    let mut json = plan(&full_spec(), &fresh()).to_json();
    // Step 3 is `engine chat`, after the gateway and the two models.
    json["steps"][3]["depends_on"][0]["name"] = "nope".into();
    let err = serde_json::from_value::<Plan>(json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("depends on `model nope`"), "{err}");

    let mut json = plan(&full_spec(), &fresh()).to_json();
    let first = json["steps"][0].clone();
    json["steps"].as_array_mut().unwrap().push(first);
    let err = serde_json::from_value::<Plan>(json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("two steps for `gateway gateway`"), "{err}");
}

#[test]
fn summary_counts_a_replacement_as_add_and_remove() {
    let observed = applied().with_local_file(CHAT_PATH, chat_file('c'));
    let mut spec = full_spec();
    spec.network_policies.get_mut("agents").unwrap().default = PolicyDefault::Allow;
    spec.models.remove("embed");
    let summary = plan(&spec, &observed).summary();
    // ± model chat, ± engine chat, ± sandbox coder; ~ proxy agents; - model embed.
    assert_eq!((summary.add, summary.change, summary.remove), (3, 1, 4));
}

/// A spec with one registry model, and what applying it recorded (the pulled manifest).
fn registry_model_applied(manifest: &str) -> (Spec, Observed) {
    let mut spec = full_spec();
    spec.sandboxes.clear();
    spec.templates.clear();
    spec.network_policies.clear();
    spec.models.retain(|k, _| k == "chat");
    let chat = spec.models.get_mut("chat").expect("chat");
    chat.source = Source::Oci(oci("127.0.0.1:5000", "ai/smollm2", "135M-Q4_1"));
    chat.preload = false;
    let observed = Observed::default();
    let plan = plan(&spec, &observed);
    let mut applied = apply(&plan, &observed);
    for record in applied.resources.values_mut() {
        record.outputs.insert(
            aistack_planner::MANIFEST_OUTPUT.to_owned(),
            manifest.to_owned(),
        );
    }
    (spec, applied)
}

#[test]
fn a_registry_tag_is_re_resolved_only_when_asked_and_a_moved_tag_changes_in_place() {
    use aistack_planner::RegistryFact;
    let reference = "127.0.0.1:5000/ai/smollm2:135M-Q4_1".to_owned();
    let (spec, applied) = registry_model_applied("sha256:aaaa");
    // Offline: the store knows nothing newer, nothing to do.
    assert_eq!(plan(&spec, &applied).render_text(), "No changes.\n");
    let mut same = applied.clone();
    same.registry.insert(
        reference.clone(),
        RegistryFact {
            digest: "sha256:aaaa".into(),
            size: Some(98_362_432),
        },
    );
    assert_eq!(plan(&spec, &same).render_text(), "No changes.\n");
    let mut moved = applied.clone();
    moved.registry.insert(
        reference,
        RegistryFact {
            digest: "sha256:bbbb".into(),
            size: None,
        },
    );
    let text = plan(&spec, &moved).render_text();
    insta::assert_snapshot!(text, @r"
      ~ model chat  changed: digest  127.0.0.1:5000/ai/smollm2:135M-Q4_1

    Plan: 0 to add, 1 to change, 0 to remove.
    ");
}

#[test]
fn a_pull_step_shows_the_size_once_known() {
    use aistack_planner::RegistryFact;
    let (spec, _) = registry_model_applied("sha256:aaaa");
    let mut observed = Observed::default();
    observed.registry.insert(
        "127.0.0.1:5000/ai/smollm2:135M-Q4_1".into(),
        RegistryFact {
            digest: "sha256:aaaa".into(),
            size: Some(98_362_432),
        },
    );
    let text = plan(&spec, &observed).render_text();
    assert!(
        text.contains("+ model chat       missing  127.0.0.1:5000/ai/smollm2:135M-Q4_1 (93.8 MiB)"),
        "{text}"
    );
}

#[test]
fn a_new_listen_address_replaces_the_gateway_and_re_registers_every_model() {
    let mut spec = full_spec();
    spec.gateway.listen = "127.0.0.1:12435".parse().unwrap();
    let plan = check(&spec, &applied());
    insta::assert_snapshot!(plan.render_text());
    let gateway = plan
        .find(&ResourceId::new(Kind::Gateway, "gateway"))
        .unwrap();
    let chat = plan.find(&ResourceId::new(Kind::Model, "chat")).unwrap();
    assert_eq!(plan.step(gateway).action, Action::Replace);
    assert_eq!(plan.step(chat).action, Action::Replace);
    assert!(plan.dependents(gateway).contains(&chat));
}

#[test]
fn other_gateway_settings_change_in_place_and_name_only_the_variable() {
    let mut spec = full_spec();
    spec.gateway.cors_origins = vec!["http://localhost:3000".into()];
    spec.gateway.api_key_env = Some("AISTACK_API_KEY".into());
    spec.gateway.memory_budget = Some(ByteSize(8 << 30));
    let plan = check(&spec, &applied());
    insta::assert_snapshot!(plan.render_text(), @r"
      ~ gateway gateway  changed: api_key_env, cors_origins, memory_budget  127.0.0.1:12434, key from AISTACK_API_KEY, 1 CORS origin, budget 8.0 GiB

    Plan: 0 to add, 1 to change, 0 to remove.
    ");
}

#[test]
fn a_project_without_models_has_no_gateway() {
    let mut spec = full_spec();
    spec.models.clear();
    spec.sandboxes.get_mut("coder").unwrap().models.clear();
    let plan = plan(&spec, &fresh());
    assert!(
        plan.find(&ResourceId::new(Kind::Gateway, "gateway"))
            .is_none()
    );
}

#[test]
fn projects_sharing_a_listener_must_agree_on_its_settings() {
    let theirs = |cors: Vec<String>| {
        let mut spec = full_spec();
        spec.gateway.cors_origins = cors;
        let record = plan(&spec, &fresh())
            .steps()
            .into_iter()
            .find(|s| s.id.kind == Kind::Gateway)
            .and_then(|s| s.desired.clone())
            .unwrap();
        // Through the record, as the CLI observes another project's gateway.
        Applied::from_desired(&record, BTreeMap::new())
            .settings::<GatewayPlan>()
            .unwrap()
    };
    let mut observed = fresh();
    observed
        .other_gateways
        .insert("other".into(), theirs(Vec::new()));
    assert!(reconcile("demo", &full_spec(), Path::new(BASE), &observed).is_ok());

    observed
        .other_gateways
        .insert("other".into(), theirs(vec!["http://localhost:3000".into()]));
    let errors = reconcile("demo", &full_spec(), Path::new(BASE), &observed).unwrap_err();
    assert_eq!(
        errors,
        vec![PlanError {
            path: "gateway".into(),
            message: "The gateway on `127.0.0.1:12434` is shared with project `other`, whose \
                      settings differ: cors_origins"
                .into(),
            help: Some(
                "Use the same `gateway:` settings as project `other`, or another \
                 `gateway.listen` address"
                    .into()
            ),
        }]
    );

    // Another address is another listener: nothing to agree on.
    let mut spec = full_spec();
    spec.gateway.listen = "127.0.0.1:12435".parse().unwrap();
    assert!(reconcile("demo", &spec, Path::new(BASE), &observed).is_ok());
}

#[test]
fn records_written_before_typed_payloads_read_back_and_keep_their_hashes() {
    // The records of `full_spec` as the previous version applied them (its `down_json`
    // snapshot): a state file written then must need no step now.
    let records: Vec<Applied> =
        serde_json::from_str(include_str!("fixtures/records-before-typed-payloads.json")).unwrap();
    for record in &records {
        let read = match record.id.kind {
            Kind::Gateway => record.settings::<GatewayPlan>().map(drop),
            Kind::Model => record
                .settings::<aistack_planner::ModelSettings>()
                .map(drop),
            Kind::Engine => record.settings::<Serving>().map(drop),
            Kind::Proxy => record
                .settings::<aistack_spec::model::NetworkPolicy>()
                .map(drop),
            Kind::Template => record.settings::<TemplateSettings>().map(drop),
            Kind::Sandbox => record.settings::<SandboxSettings>().map(drop),
        };
        assert!(read.is_ok(), "{}: {read:?}", record.id);
    }
    let mut observed = Observed::from_applied(records);
    observed.local_files = fresh().local_files;
    let plan = reconcile("demo", &full_spec(), Path::new(BASE), &observed).unwrap();
    // Records of that version carry no digest of the agent's setup, so their sandbox is
    // made again once, with the setup of this version; nothing else changes.
    let steps: Vec<_> = plan
        .steps()
        .into_iter()
        .map(|s| (s.id.to_string(), s.action))
        .collect();
    assert_eq!(steps, [("sandbox coder".to_owned(), Action::Replace)]);
    assert!(
        plan.render_text().contains("agent_setup"),
        "{}",
        plan.render_text()
    );
}

#[test]
fn a_new_agent_setup_replaces_the_sandbox_and_nothing_else() {
    // What an upgrade that sets the agent up differently (a renamed variable, a new
    // config key) leaves in the state: the sandbox's record names another setup.
    let mut observed = applied();
    let coder = ResourceId::new(Kind::Sandbox, "coder");
    let record = observed.resources.get_mut(&coder).unwrap();
    record.fields.insert(
        "agent_setup".into(),
        serde_json::json!("set up by another version"),
    );
    record.hash = "the hash of those fields".into();
    let plan = check(&full_spec(), &observed);
    insta::assert_snapshot!(plan.render_text());
    let step = plan.find(&coder).unwrap();
    assert_eq!(plan.step(step).action, Action::Replace);
    assert_eq!(plan.steps().len(), 1);
}

#[test]
fn a_record_of_another_kind_or_shape_is_one_clear_error() {
    let records = applied();
    let gateway = &records.resources[&ResourceId::new(Kind::Gateway, "gateway")];
    let e = gateway.settings::<SandboxSettings>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "The record of `gateway gateway` is not one this version of aistack reads: it is a \
         gateway, not a sandbox"
    );
    let mut broken = gateway.clone();
    broken.fields.remove("listen");
    let e = broken.settings::<GatewayPlan>().unwrap_err();
    assert!(e.to_string().contains("missing field `listen`"), "{e}");
    assert!(e.help().unwrap().contains("aistack up"));
}

#[test]
fn a_sandbox_payload_is_complete() {
    let plan = plan(&full_spec(), &fresh());
    let step = plan.find(&ResourceId::new(Kind::Sandbox, "coder")).unwrap();
    let Payload::Sandbox(sandbox) = &plan.step(step).desired.as_ref().unwrap().payload else {
        panic!("a sandbox step carries a sandbox payload");
    };
    // The agent's variables, the model's, then `env:` (the template's under its own).
    let env = &sandbox.environment;
    assert_eq!(env["ANTHROPIC_API_KEY"], "aistack-placeholder");
    assert_eq!(env["ANTHROPIC_BASE_URL"], "https://api.anthropic.com");
    assert_eq!(
        env["CHAT_URL"],
        "http://models.aistack.internal/engines/v1/"
    );
    assert_eq!(env["CHAT_MODEL"], "chat");
    assert_eq!(env["LANG"], "C.UTF-8");
    assert_eq!(sandbox.program, "claude");
    assert_eq!(sandbox.settings.command(), ["claude"]);
    assert_eq!(sandbox.settings.ports[0].to_string(), "127.0.0.1:8080:3000");
}

#[test]
fn down_with_models_deletes_only_artifacts_no_other_project_records() {
    let mut observed = applied();
    for (name, digest) in [("chat", "sha256:aaa"), ("embed", "sha256:bbb")] {
        let record = observed
            .resources
            .get_mut(&ResourceId::new(Kind::Model, name))
            .unwrap();
        record
            .outputs
            .insert(MANIFEST_OUTPUT.to_owned(), digest.to_owned());
    }
    observed.other_artifacts.insert("sha256:bbb".to_owned());
    let deleted = |plan: &Plan| -> Vec<String> {
        (plan.steps().into_iter())
            .filter(|s| s.delete_artifact)
            .map(|s| s.id.to_string())
            .collect()
    };
    assert!(deleted(&reconcile_down("demo", &observed, false)).is_empty());
    let plan = reconcile_down("demo", &observed, true);
    assert_eq!(deleted(&plan), ["model chat"]);
    assert!(
        plan.render_text()
            .contains("model chat       not in spec  its artifact is deleted from the store"),
        "{}",
        plan.render_text()
    );
    let back: Plan = serde_json::from_str(&plan.render_json()).unwrap();
    assert_eq!(back, plan);
}

#[test]
fn a_template_image_the_store_holds_is_used_as_it_is() {
    let mut observed = fresh();
    let reference = "127.0.0.1:5000/sandbox/debian:bookworm";
    let pulled = |observed: &Observed| {
        let plan = plan(&full_spec(), observed);
        let step = plan.find(&ResourceId::new(Kind::Template, "base")).unwrap();
        match &plan.step(step).desired.as_ref().unwrap().payload {
            Payload::Template(t) => t.image_in_store.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(pulled(&observed), None);
    observed
        .images
        .insert(reference.to_owned(), "sha256:ccc".to_owned());
    assert_eq!(pulled(&observed).as_deref(), Some("sha256:ccc"));
}

#[test]
fn a_registry_model_pulls_the_digest_planning_resolved() {
    let mut observed = fresh();
    observed.registry.insert(
        "127.0.0.1:5000/ai/smollm2:135M-Q4_1".to_owned(),
        aistack_planner::RegistryFact {
            digest: "sha256:ddd".to_owned(),
            size: Some(98),
        },
    );
    let plan = plan(&full_spec(), &observed);
    let step = plan.find(&ResourceId::new(Kind::Model, "embed")).unwrap();
    let Payload::Model(ModelPlan { artifact, .. }) =
        &plan.step(step).desired.as_ref().unwrap().payload
    else {
        panic!("a model step carries a model payload");
    };
    assert_eq!(
        *artifact,
        Artifact::Pull {
            reference: "127.0.0.1:5000/ai/smollm2:135M-Q4_1".to_owned(),
            digest: Some("sha256:ddd".to_owned()),
            size: Some(98),
        }
    );
}
