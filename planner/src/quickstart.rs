//! The quick start's spec: what `aistack sandbox run AGENT [PATH]` runs in a directory
//! without `aistack.yaml`, written as the `aistack.yaml` that does the same, so that the
//! quick start and a committed file are one mechanism (the CLI parses this text and plans
//! it as any spec, and `--print-spec` prints it).
//!
//! Its shape, per agent (see [`crate::agents::vendor`]):
//!
//! - template `debian`: the base image (Debian's, from Docker Hub, unless `--from` names
//!   another image or a directory) with git, curl, Node.js and npm, Python 3, make, jq and
//!   ripgrep from Debian's mirror, under policy `debian` (only `deb.debian.org`);
//! - template `AGENT`: `debian` plus the agent's install step, under a policy that allows
//!   only the hosts that step downloads from (`npm`: `registry.npmjs.org`);
//! - policy `AGENT`: deny by default, the vendor's API hosts allowed, its key set by the
//!   proxy from the user's environment (the sandbox holds a placeholder);
//! - sandbox `AGENT`: the workspace `.` (the directory the quick start is for).
//!
//! The `shell` agent needs nothing installed and reaches no vendor: its template is the
//! base alone and it has no network, so it starts offline. With a local model (`--model`)
//! the model is declared with a 32k window (what agents' prompts need) and the agent runs
//! on it (`agent: {name, model}`; an agent that cannot, such as the shell, has it in
//! `models:`), and the vendor's policy and key are left out: the sandbox reaches its model
//! and nothing else.
//!
//! Every template and policy name is fixed, so the templates' hashes, and the trees built
//! for them, are the same for every project: a second quick start anywhere builds nothing.

use std::fmt::Write as _;

use aistack_spec::values::Agent;

use crate::agents::{self, Credential};

/// The base of the templates when `--from` names none: Debian's current stable release,
/// whose Node.js (20) every npm agent but Copilot (22) runs on.
pub const DEFAULT_FROM: &str = "debian:trixie-slim";

/// The `debian` template's step: the tools an agent expects, from Debian's mirror.
pub const TOOLS: &str = "apt-get update && apt-get install -y --no-install-recommends ca-certificates curl git jq make nodejs npm python3 ripgrep && rm -rf /var/lib/apt/lists/*";

/// Debian's mirror, the one host the `debian` template's step reaches.
pub const DEBIAN_MIRROR: &str = "deb.debian.org";

/// What a quick start is made of, as its spec writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickStart {
    /// The agent.
    pub agent: Agent,
    /// The base of its templates as `from:` writes it: an image, or a path.
    pub from: String,
    /// A local model instead of the vendor's API: its key and its `source:` as written.
    pub model: Option<(String, String)>,
}

impl QuickStart {
    /// The credentials the sandbox's policy injects: the user's environment must hold
    /// them. None with a local model.
    #[must_use]
    pub fn credentials(&self) -> &'static [Credential] {
        if self.model.is_some() {
            &[]
        } else {
            agents::vendor(self.agent).credentials
        }
    }

    /// The name of the sandbox (and of its agent's template and policy).
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.agent.as_str()
    }

    /// The spec, as YAML text; deterministic.
    #[must_use]
    pub fn spec(&self) -> String {
        let agent = self.name();
        let profile = agents::profile(self.agent);
        let vendor = agents::vendor(self.agent);
        let shell = self.agent == Agent::Shell;
        let install_policy = if vendor.install_hosts == ["registry.npmjs.org"] {
            "npm".to_owned()
        } else {
            format!("{agent}-install")
        };
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# `aistack sandbox run {agent}` as a spec: commit it as `aistack.yaml` in the workspace\n\
             # and `aistack up` there runs the same project"
        );
        w.push_str("version: 1\n");
        if let Some((key, source)) = &self.model {
            let _ = writeln!(
                w,
                "models:\n  {}:\n    source: {}\n    context_size: {AGENT_CONTEXT}",
                scalar(key),
                scalar(source)
            );
        }
        w.push_str("templates:\n");
        let template = if shell {
            let _ = writeln!(w, "  {agent}:\n    from: {}", scalar(&self.from));
            agent
        } else {
            let _ = writeln!(
                w,
                "  debian:\n    from: {}\n    network_policy: debian\n    run:\n      - {}",
                scalar(&self.from),
                scalar(TOOLS)
            );
            let _ = writeln!(
                w,
                "  {agent}:\n    from: debian\n    network_policy: {install_policy}\n    run:\n      - {}",
                scalar(profile.install)
            );
            agent
        };
        let vendor_policy = !shell && self.model.is_none() && !vendor.api.is_empty();
        if !shell {
            w.push_str("network_policies:\n");
            policy(w, "debian", &[DEBIAN_MIRROR], &[]);
            policy(w, &install_policy, vendor.install_hosts, &[]);
            if vendor_policy {
                policy(w, agent, vendor.api, vendor.credentials);
            }
        }
        let _ = writeln!(w, "sandboxes:\n  {agent}:\n    template: {template}");
        match &self.model {
            Some((key, _)) if self.agent.runs_on_local_models() => {
                let _ = writeln!(w, "    agent: {{ name: {agent}, model: {} }}", scalar(key));
            }
            _ => {
                let _ = writeln!(w, "    agent: {agent}");
            }
        }
        let _ = writeln!(w, "    workspace: .");
        if vendor_policy {
            let _ = writeln!(w, "    network_policy: {agent}");
        }
        if let Some((key, _)) = self
            .model
            .as_ref()
            .filter(|_| !self.agent.runs_on_local_models())
        {
            let _ = writeln!(w, "    models: [{}]", scalar(key));
        }
        out
    }
}

fn policy(w: &mut String, name: &str, allow: &[&str], credentials: &[Credential]) {
    let hosts: Vec<String> = allow.iter().map(|h| scalar(h)).collect();
    let _ = writeln!(
        w,
        "  {name}:\n    default: deny\n    allow: [{}]",
        hosts.join(", ")
    );
    if !credentials.is_empty() {
        w.push_str("    credentials:\n");
        for c in credentials {
            let _ = writeln!(
                w,
                "      - {{ host: {}, header: {}, from_env: {} }}",
                scalar(c.host),
                scalar(c.header),
                c.from_env
            );
        }
    }
}

/// The window a quick start's model gets: agents send 10k to 15k tokens of instructions
/// and tools before the user's first question.
pub const AGENT_CONTEXT: u32 = 32768;

/// The key a model is declared under: the GGUF file's name without `.gguf`, else the
/// reference's last path component, lowercase, as a spec name; `model` when nothing of it
/// is a name.
#[must_use]
pub fn model_key(source: &str, is_path: bool) -> String {
    let last = source.rsplit('/').next().unwrap_or(source);
    let base = if is_path {
        last.strip_suffix(".gguf").unwrap_or(last)
    } else {
        last.split(['@', ':']).next().unwrap_or(last)
    };
    let mut key: String = (base.to_lowercase().chars())
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    key = key
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    key.truncate(63);
    if aistack_spec::is_name(&key) {
        key
    } else {
        "model".to_owned()
    }
}

/// `text` as a YAML scalar that the spec reads back as `text`: plain when YAML reads it as
/// the same string (also inside a flow sequence), else double-quoted (JSON's quoting is
/// YAML's), with `$` written `$$`.
fn scalar(text: &str) -> String {
    let indicator = |c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c);
    let special = ["true", "false", "yes", "no", "on", "off", "null", "~"];
    let plain = !text.is_empty()
        && !text.starts_with(indicator)
        && !text.starts_with(' ')
        && !text.ends_with([' ', ':'])
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.contains([',', '[', ']', '{', '}', '\n', '\t', '"', '\''])
        && !special.contains(&text.to_lowercase().as_str())
        && text.parse::<f64>().is_err();
    // `$` starts a variable where a spec is read: `$$` is a literal one.
    let text = text.replace('$', "$$");
    if plain {
        text
    } else {
        serde_json::to_string(&text).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parse(text: &str) -> aistack_spec::Spec {
        let file = aistack_spec::SourceFile {
            name: "quick start".to_owned(),
            text: text.to_owned(),
        };
        match aistack_spec::parse(&[file], &BTreeMap::new()) {
            Ok(document) => document.spec,
            Err(d) => panic!("the quick start's spec is invalid: {d:?}\n{text}"),
        }
    }

    #[test]
    fn every_agent_has_a_valid_spec_with_and_without_a_model() {
        for name in Agent::NAMES {
            let agent = Agent::from_name(name).unwrap();
            let quick = QuickStart {
                agent,
                from: DEFAULT_FROM.to_owned(),
                model: None,
            };
            let spec = parse(&quick.spec());
            let sandbox = &spec.sandboxes[*name];
            assert_eq!(sandbox.agent, agent.into());
            assert_eq!(sandbox.workspace, ".");
            let vendor = agents::vendor(agent);
            match &sandbox.network_policy {
                Some(policy) => {
                    let policy = &spec.network_policies[policy];
                    assert_eq!(policy.allow.len(), vendor.api.len(), "{name}");
                    assert_eq!(policy.credentials.len(), vendor.credentials.len());
                }
                None => assert!(vendor.api.is_empty(), "{name}"),
            }
            let with_model = QuickStart {
                model: Some(("smollm2".to_owned(), "./models/s m.gguf".to_owned())),
                from: "./my rootfs".to_owned(),
                ..quick
            };
            let spec = parse(&with_model.spec());
            let sandbox = &spec.sandboxes[*name];
            if agent.runs_on_local_models() {
                assert_eq!(sandbox.agent.model.as_deref(), Some("smollm2"), "{name}");
                assert!(sandbox.models.is_empty());
            } else {
                assert_eq!(sandbox.models, ["smollm2"]);
            }
            assert_eq!(spec.models["smollm2"].context_size, Some(AGENT_CONTEXT));
            assert_eq!(spec.sandboxes[*name].network_policy, None);
            assert!(with_model.credentials().is_empty());
        }
    }

    #[test]
    fn the_shell_is_the_base_alone_without_network() {
        let quick = QuickStart {
            agent: Agent::Shell,
            from: "/var/cache/rootfs".to_owned(),
            model: None,
        };
        let spec = parse(&quick.spec());
        assert_eq!(spec.templates.len(), 1);
        assert!(spec.templates["shell"].run.is_empty());
        assert!(spec.network_policies.is_empty());
    }

    #[test]
    fn model_keys_are_names() {
        assert_eq!(
            model_key("./models/SmolLM2-135M-Instruct.Q4_1.gguf", true),
            "smollm2-135m-instruct.q4_1"
        );
        assert_eq!(model_key("ai/smollm2:135M-Q4_1", false), "smollm2");
        assert_eq!(
            model_key("127.0.0.1:5000/ai/qwen3@sha256:00", false),
            "qwen3"
        );
        assert_eq!(model_key("./__.gguf", true), "model");
    }

    #[test]
    fn scalars_read_back_as_written() {
        let texts = [
            "debian:trixie-slim",
            "*.kiro.dev",
            "yes",
            "1.5",
            "a: b",
            "./x y",
            "@",
            "a #b",
            "/a$b",
            "${X}",
        ];
        for text in texts {
            let yaml = format!(
                "version: 1\ntemplates:\n  t:\n    from: ./r\n    env: {{ K: {} }}\n",
                scalar(text)
            );
            assert_eq!(parse(&yaml).templates["t"].env["K"], text, "{yaml}");
        }
        assert_eq!(scalar("*.kiro.dev"), "\"*.kiro.dev\"");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("debian:trixie-slim"), "debian:trixie-slim");
    }
}
