//! Valid files parse to the expected model, with locations; the schema agrees with `parse`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use aistack_spec::values::{
    Agent, ByteSize, EngineKind, GpuLayers, Isolation, KeepAlive, ModelMode, PolicyDefault, Source,
    TemplateFrom,
};
use aistack_spec::{Document, SourceFile, parse, schema};

const FULL: &str = include_str!("fixtures/full.yaml");
const CONVENIENCES: &str = include_str!("fixtures/conveniences.yaml");
const OVERRIDE: &str = include_str!("fixtures/override.yaml");

fn file(name: &str, text: &str) -> SourceFile {
    SourceFile {
        name: name.to_owned(),
        text: text.to_owned(),
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ok(files: &[SourceFile], env: &BTreeMap<String, String>) -> Document {
    match parse(files, env) {
        Ok(d) => d,
        Err(diagnostics) => panic!("{diagnostics:#?}"),
    }
}

#[test]
fn full_example() {
    let doc = ok(&[file("aistack.yaml", FULL)], &BTreeMap::new());
    let spec = &doc.spec;
    assert_eq!(spec.version, 1);
    assert_eq!(spec.name.as_deref(), Some("demo"));
    assert_eq!(
        spec.gateway.listen,
        "127.0.0.1:12434".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(spec.gateway.api_key_env, None);
    assert_eq!(spec.gateway.memory_budget, Some(ByteSize(8 << 30)));
    assert_eq!(spec.engines.llama_cpp.threads, Some(2));
    assert_eq!(spec.engines.llama_cpp.parallel, Some(4));
    assert_eq!(spec.engines.llama_cpp.gpu_layers, GpuLayers::Auto);
    assert_eq!(spec.engines.vllm.gpu_memory_utilization, Some(0.9));
    assert_eq!(spec.engines.vllm.tensor_parallel_size, Some(1));

    let chat = &spec.models["chat"];
    let Source::Oci(reference) = &chat.source else {
        panic!("not an OCI source")
    };
    assert_eq!(reference.registry, "127.0.0.1:5000");
    assert_eq!(reference.repository, "ai/smollm2");
    assert_eq!(reference.tag.as_deref(), Some("135M-Q4_1"));
    assert_eq!(chat.engine, Some(EngineKind::LlamaCpp));
    assert_eq!(chat.context_size, Some(4096));
    assert_eq!(chat.parallel, Some(4));
    assert_eq!(
        chat.keep_alive,
        Some(KeepAlive::After(Duration::from_secs(300)))
    );
    assert!(!chat.preload);
    assert_eq!(chat.mode, ModelMode::Chat);
    assert!(chat.runtime_flags.is_empty());

    let dev = &spec.templates["dev"];
    let TemplateFrom::Image(image) = &dev.from else {
        panic!("not an image")
    };
    assert_eq!(image.to_string(), "127.0.0.1:5000/sandbox/debian:bookworm");
    assert_eq!(dev.run, ["apt-get install -y git"]);
    assert_eq!(dev.network_policy.as_deref(), Some("build"));
    assert_eq!(dev.env["LANG"], "C.UTF-8");

    let agents = &spec.network_policies["agents"];
    assert_eq!(agents.default, PolicyDefault::Deny);
    let allow: Vec<String> = agents.allow.iter().map(ToString::to_string).collect();
    assert_eq!(
        allow,
        [
            "api.anthropic.com",
            "*.npmjs.org",
            "10.1.2.3:22",
            "203.0.113.0/24"
        ]
    );
    assert_eq!(agents.deny[0].to_string(), "evil.example.com");
    assert_eq!(agents.credentials[0].host, "api.anthropic.com");
    assert_eq!(agents.credentials[0].header, "x-api-key");
    assert_eq!(agents.credentials[0].from_env, "ANTHROPIC_API_KEY");

    let coder = &spec.sandboxes["coder"];
    assert_eq!(coder.template, "dev");
    assert_eq!(coder.agent, Agent::Claude.into());
    assert_eq!(coder.workspace, ".");
    assert_eq!(coder.isolation, Isolation::Auto);
    assert_eq!(coder.cpus, Some(2));
    assert_eq!(coder.memory, Some(ByteSize(2 << 30)));
    assert_eq!(coder.network_policy.as_deref(), Some("agents"));
    assert_eq!(coder.models, ["chat"]);
    assert_eq!(coder.ports[0].to_string(), "127.0.0.1:8080:3000");

    // Locations point at the values as written.
    let at = |path: &str| {
        let l = doc
            .location(path)
            .unwrap_or_else(|| panic!("no location for {path}"));
        &FULL[l.span.clone()]
    };
    assert_eq!(
        at("models.chat.source"),
        "127.0.0.1:5000/ai/smollm2:135M-Q4_1"
    );
    assert_eq!(at("sandboxes.coder.models.0"), "chat");
    assert_eq!(at("gateway.listen"), "127.0.0.1:12434");
    assert_eq!(at("engines.llama.cpp.threads"), "2");
    assert_eq!(at("sandboxes.coder.ports.0"), "\"127.0.0.1:8080:3000\"");
    let key = &doc.key_locations["models.chat"];
    assert_eq!(&FULL[key.span.clone()], "chat");
}

#[test]
fn design_example_verbatim_names_an_undefined_policy() {
    // DESIGN §4 as printed has no `build` policy: exactly that is reported.
    let text = FULL.replace(
        "  build:\n    default: deny\n    allow: [\"deb.debian.org\"]\n",
        "",
    );
    let diagnostics = parse(&[file("aistack.yaml", &text)], &BTreeMap::new()).unwrap_err();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0].code, "aistack::unresolved-reference");
    assert_eq!(&text[diagnostics[0].location.span.clone()], "build");
}

#[test]
fn conveniences_anchors_merges_interpolation() {
    let doc = ok(&[file("a.yaml", CONVENIENCES)], &env(&[("CTX", "1024")]));
    let chat = &doc.spec.models["chat"];
    assert_eq!(chat.context_size, Some(1024));
    assert_eq!(chat.source, Source::Local("./models/smol.gguf".into()));
    assert_eq!(
        chat.keep_alive,
        Some(KeepAlive::After(Duration::from_secs(30)))
    );
    let long = &doc.spec.models["chat-long"];
    assert_eq!(long.context_size, Some(8192));
    assert_eq!(long.keep_alive, Some(KeepAlive::Forever));
    let Source::Oci(r) = &long.source else {
        panic!()
    };
    assert_eq!(r.to_string(), "docker.io/ai/smollm2:latest");
    // A merged value points at where it was written: inside the `x-` anchor.
    let l = doc.location("models.chat.keep_alive").unwrap();
    assert_eq!(&CONVENIENCES[l.span.clone()], "30s");

    let doc = ok(&[file("a.yaml", CONVENIENCES)], &BTreeMap::new());
    assert_eq!(doc.spec.models["chat"].context_size, Some(2048));
}

#[test]
fn quoted_interpolation_stays_a_string() {
    let text =
        "version: 1\nname: \"${N}\"\nmodels:\n  m: { source: ai/x, context_size: \"${C}\" }\n";
    let diagnostics = parse(&[file("a.yaml", text)], &env(&[("N", "p"), ("C", "1")])).unwrap_err();
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].code, "aistack::type");
}

#[test]
fn files_merge_in_order() {
    let files = [file("a.yaml", FULL), file("b.yaml", OVERRIDE)];
    let doc = ok(&files, &BTreeMap::new());
    assert_eq!(doc.spec.name.as_deref(), Some("prod"));
    assert_eq!(doc.spec.gateway.listen.to_string(), "0.0.0.0:12435");
    assert_eq!(doc.spec.gateway.memory_budget, Some(ByteSize(8 << 30)));
    let chat = &doc.spec.models["chat"];
    assert_eq!(chat.context_size, Some(512));
    assert_eq!(chat.parallel, Some(4));
    let l = doc.location("models.chat.context_size").unwrap();
    assert_eq!(l.file, 1);
    assert_eq!(&OVERRIDE[l.span.clone()], "512");
}

#[test]
fn minimal_file_defaults() {
    let doc = ok(
        &[file(
            "a.yaml",
            "version: 1\nmodels:\n  chat:\n    source: smollm2\n",
        )],
        &BTreeMap::new(),
    );
    assert_eq!(doc.spec.gateway.listen.to_string(), "127.0.0.1:12434");
    assert_eq!(doc.spec.models["chat"].mode, ModelMode::Chat);
    let doc = ok(
        &[file(
            "a.yaml",
            "version: 1\nmodels:\nsandboxes:\n  s:\n    template: t\ntemplates:\n  t: {from: ./rootfs}\n  u: {from: t}\n  v: {from: debian}\n",
        )],
        &BTreeMap::new(),
    );
    assert_eq!(
        doc.spec.templates["t"].from,
        TemplateFrom::Path("./rootfs".into())
    );
    assert_eq!(
        doc.spec.templates["u"].from,
        TemplateFrom::Template("t".into())
    );
    let TemplateFrom::Image(image) = &doc.spec.templates["v"].from else {
        panic!()
    };
    assert_eq!(image.to_string(), "docker.io/library/debian:latest");
    assert_eq!(doc.spec.sandboxes["s"].workspace, ".");
}

#[test]
fn keep_alive_forms() {
    for (written, expected) in [
        ("0", KeepAlive::After(Duration::ZERO)),
        ("-1", KeepAlive::Forever),
        ("\"0\"", KeepAlive::After(Duration::ZERO)),
        ("\"-1\"", KeepAlive::Forever),
        ("1h30m", KeepAlive::After(Duration::from_secs(5400))),
        ("250ms", KeepAlive::After(Duration::from_millis(250))),
    ] {
        let text =
            format!("version: 1\nmodels:\n  m:\n    source: ai/x\n    keep_alive: {written}\n");
        let doc = ok(&[file("a.yaml", &text)], &BTreeMap::new());
        assert_eq!(doc.spec.models["m"].keep_alive, Some(expected), "{written}");
    }
}

/// Every object in the schema is closed and every property described.
fn walk(value: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("type").and_then(|t| t.as_str()) == Some("object")
                && map.contains_key("properties")
                && map.get("additionalProperties") != Some(&serde_json::Value::Bool(false))
            {
                problems.push(format!("{path}: additionalProperties is not false"));
            }
            if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                for (name, prop) in props {
                    if prop.get("description").is_none() {
                        problems.push(format!("{path}.{name}: no description"));
                    }
                }
            }
            for (k, v) in map {
                walk(v, &format!("{path}/{k}"), problems);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{path}/{i}"), problems);
            }
        }
        _ => {}
    }
}

#[test]
fn schema_is_closed_and_described() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(schema["$id"].is_string());
    assert!(schema["description"].is_string());
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["patternProperties"]["^x-"].is_object());
    assert_eq!(schema["required"], serde_json::json!(["version"]));
    assert!(schema["properties"]["engines"].is_object());
    let engines = &schema["$defs"]["Engines"]["properties"];
    assert!(engines["llama.cpp"].is_object(), "{engines}");
    let mut problems = Vec::new();
    walk(&schema, "#", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}
