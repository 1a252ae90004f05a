//! The agents a sandbox runs: each one's command, how a template installs it, and the
//! environment it expects. The planner reads it to make a sandbox's environment and the
//! program its template must have; `sandbox run` reads it for the command.
//!
//! API keys are placeholders: the policy proxy sets the real value on the way out (a
//! policy's `credentials`), so a sandbox never holds one. Base-URL variables name the
//! vendor's API, where the agent reads one, so that a sandbox's `env:` can point it
//! elsewhere (a local gateway, a stand-in) by the name the agent documents.

use aistack_spec::values::Agent;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What an agent sees in place of an API key.
pub const PLACEHOLDER: &str = "aistack-placeholder";

/// One agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// The program `sandbox run` starts, looked up on the sandbox's `PATH`.
    pub command: &'static str,
    /// The build step that installs it, for the error that says it is missing.
    pub install: &'static str,
    /// Variables holding API keys: set to [`PLACEHOLDER`].
    pub keys: &'static [&'static str],
    /// Other variables and their defaults (base URLs, switches that keep the agent from
    /// updating itself at start).
    pub env: &'static [(&'static str, &'static str)],
}

/// The profile of an agent.
#[must_use]
pub fn profile(agent: Agent) -> Profile {
    match agent {
        Agent::Claude => Profile {
            command: "claude",
            install: "npm install -g @anthropic-ai/claude-code",
            keys: &["ANTHROPIC_API_KEY"],
            env: &[
                ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
                ("DISABLE_AUTOUPDATER", "1"),
            ],
        },
        Agent::Codex => Profile {
            command: "codex",
            install: "npm install -g @openai/codex",
            keys: &["OPENAI_API_KEY"],
            env: &[("OPENAI_BASE_URL", "https://api.openai.com/v1")],
        },
        Agent::Copilot => Profile {
            command: "copilot",
            install: "npm install -g @github/copilot",
            keys: &["GH_TOKEN", "GITHUB_TOKEN"],
            env: &[],
        },
        Agent::Gemini => Profile {
            command: "gemini",
            install: "npm install -g @google/gemini-cli",
            keys: &["GEMINI_API_KEY"],
            env: &[(
                "GOOGLE_GEMINI_BASE_URL",
                "https://generativelanguage.googleapis.com",
            )],
        },
        Agent::Opencode => Profile {
            command: "opencode",
            install: "npm install -g opencode-ai",
            keys: &["ANTHROPIC_API_KEY", "OPENAI_API_KEY"],
            env: &[],
        },
        Agent::Kiro => Profile {
            command: "kiro-cli",
            install: "curl -fsSL https://cli.kiro.dev/install | bash",
            keys: &[],
            env: &[],
        },
        Agent::DockerAgent => Profile {
            command: "cagent",
            install: "curl -fsSL -o /usr/local/bin/cagent https://github.com/docker/cagent/releases/latest/download/cagent-linux-amd64 && chmod +x /usr/local/bin/cagent",
            keys: &["OPENAI_API_KEY", "ANTHROPIC_API_KEY"],
            env: &[],
        },
        Agent::Shell => Profile {
            command: "sh",
            install: "apt-get install -y dash",
            keys: &[],
            env: &[],
        },
    }
}

/// A header the policy proxy sets on requests to a vendor's API, from a variable of the
/// user's environment (a policy's `credentials` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    /// The API host.
    pub host: &'static str,
    /// The header the proxy sets.
    pub header: &'static str,
    /// The variable of `aistack up`'s environment holding the header's value.
    pub from_env: &'static str,
    /// What that value is, for the message that says it is unset.
    pub value: &'static str,
}

/// What an agent reaches: the quick start's (`aistack sandbox run AGENT` without a spec)
/// network policies are made from it. Only the vendor's API, and at build time the host
/// its install step downloads from; telemetry and update checks are left to be refused
/// (the network log shows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vendor {
    /// Hosts the agent's API calls go to (its sandbox's policy allows them).
    pub api: &'static [&'static str],
    /// Credentials for those hosts.
    pub credentials: &'static [Credential],
    /// Hosts [`Profile::install`] downloads from (its template build's policy allows
    /// them); empty for an agent the base template already has.
    pub install_hosts: &'static [&'static str],
}

const NPM: &[&str] = &["registry.npmjs.org"];

const ANTHROPIC: Credential = Credential {
    host: "api.anthropic.com",
    header: "x-api-key",
    from_env: "ANTHROPIC_API_KEY",
    value: "your Anthropic API key",
};

/// The vendor of an agent.
#[must_use]
pub fn vendor(agent: Agent) -> Vendor {
    match agent {
        Agent::Claude | Agent::Opencode => Vendor {
            api: &["api.anthropic.com"],
            credentials: &[ANTHROPIC],
            install_hosts: NPM,
        },
        Agent::Codex => Vendor {
            api: &["api.openai.com"],
            credentials: &[Credential {
                host: "api.openai.com",
                header: "authorization",
                from_env: "OPENAI_BEARER",
                value: "`Bearer ` and your OpenAI API key (`export OPENAI_BEARER=\"Bearer $OPENAI_API_KEY\"`)",
            }],
            install_hosts: NPM,
        },
        Agent::Copilot => Vendor {
            api: &["api.github.com", "*.githubcopilot.com"],
            credentials: &[Credential {
                host: "api.github.com",
                header: "authorization",
                from_env: "GH_BEARER",
                value: "`Bearer ` and a GitHub token with Copilot access (`export GH_BEARER=\"Bearer $GH_TOKEN\"`)",
            }],
            install_hosts: NPM,
        },
        Agent::Gemini => Vendor {
            api: &["generativelanguage.googleapis.com"],
            credentials: &[Credential {
                host: "generativelanguage.googleapis.com",
                header: "x-goog-api-key",
                from_env: "GEMINI_API_KEY",
                value: "your Gemini API key",
            }],
            install_hosts: NPM,
        },
        Agent::Kiro => Vendor {
            // Kiro signs in through AWS (Builder ID); it has no key to inject.
            api: &[
                "*.kiro.dev",
                "oidc.us-east-1.amazonaws.com",
                "q.us-east-1.amazonaws.com",
            ],
            credentials: &[],
            install_hosts: &["cli.kiro.dev", "desktop-release.q.us-east-1.amazonaws.com"],
        },
        Agent::DockerAgent => Vendor {
            api: &["api.anthropic.com"],
            credentials: &[ANTHROPIC],
            install_hosts: &[
                "github.com",
                "objects.githubusercontent.com",
                "release-assets.githubusercontent.com",
            ],
        },
        Agent::Shell => Vendor {
            api: &[],
            credentials: &[],
            install_hosts: &[],
        },
    }
}

impl Profile {
    /// The agent's variables, keys as placeholders.
    #[must_use]
    pub fn environment(&self) -> Vec<(String, String)> {
        let keys = self.keys.iter().map(|k| (*k, PLACEHOLDER));
        (keys.chain(self.env.iter().copied()))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The project model an agent runs on, as the agent must be told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalModel<'a> {
    /// The model's key in `models:`, which the gateway serves it by.
    pub name: &'a str,
    /// Its context window in tokens.
    pub context: u32,
    /// The sandbox's workspace, which the agent is told it may trust.
    pub workspace: &'a str,
}

/// A file an agent reads at start, written into the sandbox before the agent first runs
/// (and left alone afterwards: agents keep their own state in some of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFile {
    /// Where, relative to the agent user's home.
    pub path: String,
    /// What it holds.
    pub contents: String,
}

/// What an agent needs to run on a local model: the variables over its profile's, and its
/// configuration files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalSetup {
    /// Variables, over the profile's (its base URL now names the gateway).
    pub env: Vec<(String, String)>,
    /// Configuration files.
    pub files: Vec<AgentFile>,
}

/// How the sandbox reaches the project's gateway (through its proxy).
fn gateway() -> String {
    format!("http://{}", crate::MODELS_HOST)
}

/// The most a reply may take of the window: a quarter, at most 8k tokens (agents ask for
/// 32k by default, which would leave no room for their prompt in a 32k window).
fn output_tokens(context: u32) -> u32 {
    (context / 4).min(8192)
}

fn pairs(items: &[(&str, String)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn json_file(path: &str, value: &serde_json::Value) -> AgentFile {
    AgentFile {
        path: path.to_owned(),
        contents: format!("{value:#}\n"),
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// What `agent` needs to run on `model` through the gateway and reach nothing else:
/// `None` for an agent that cannot ([`Agent::runs_on_local_models`]).
#[must_use]
pub fn on_local_model(agent: Agent, model: LocalModel<'_>) -> Option<LocalSetup> {
    let LocalModel {
        name,
        context,
        workspace,
    } = model;
    let output = output_tokens(context).to_string();
    let v1 = format!("{}/v1", gateway());
    // Node's `fetch` reads the proxy variables only when asked to.
    let node_proxy = ("NODE_USE_ENV_PROXY", "1".to_owned());
    Some(match agent {
        Agent::Claude => LocalSetup {
            env: pairs(&[
                ("ANTHROPIC_BASE_URL", gateway()),
                ("ANTHROPIC_MODEL", name.to_owned()),
                ("ANTHROPIC_DEFAULT_OPUS_MODEL", name.to_owned()),
                ("ANTHROPIC_DEFAULT_SONNET_MODEL", name.to_owned()),
                ("ANTHROPIC_DEFAULT_HAIKU_MODEL", name.to_owned()),
                ("CLAUDE_CODE_SUBAGENT_MODEL", name.to_owned()),
                ("CLAUDE_CODE_MAX_CONTEXT_TOKENS", context.to_string()),
                ("CLAUDE_CODE_MAX_OUTPUT_TOKENS", output),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
                // Claude Code compacts once a prompt passes the window less its output
                // reserve and a 13k buffer: 11.6k tokens of a 32k window, which its own
                // instructions and tools fill before the first tool result. Without it the
                // window is used to its end, where the gateway answers "prompt is too long"
                // as Anthropic's API does, and `/compact` still works.
                ("DISABLE_AUTO_COMPACT", "1".to_owned()),
                node_proxy,
            ]),
            files: vec![json_file(
                ".claude.json",
                &json!({
                    "hasCompletedOnboarding": true,
                    "customApiKeyResponses": {"approved": [PLACEHOLDER], "rejected": []},
                    "projects": {workspace: {"hasTrustDialogAccepted": true}},
                }),
            )],
        },
        Agent::Codex => LocalSetup {
            env: Vec::new(),
            files: vec![AgentFile {
                path: ".codex/config.toml".to_owned(),
                contents: format!(
                    "model = {model}\nmodel_provider = \"aistack\"\nmodel_context_window = {context}\ncheck_for_update_on_startup = false\n\n[analytics]\nenabled = false\n\n[features]\nplugins = false\n\n[model_providers.aistack]\nname = \"aistack\"\nbase_url = {base}\nwire_api = \"responses\"\nenv_key = \"OPENAI_API_KEY\"\n\n[projects.{workspace}]\ntrust_level = \"trusted\"\n",
                    model = toml_string(name),
                    base = toml_string(&v1),
                    workspace = toml_string(workspace),
                ),
            }],
        },
        Agent::Copilot => LocalSetup {
            env: pairs(&[
                ("COPILOT_PROVIDER_BASE_URL", v1),
                ("COPILOT_PROVIDER_TYPE", "openai".to_owned()),
                ("COPILOT_PROVIDER_API_KEY", PLACEHOLDER.to_owned()),
                ("COPILOT_MODEL", name.to_owned()),
                (
                    "COPILOT_PROVIDER_MAX_PROMPT_TOKENS",
                    (context - output_tokens(context)).to_string(),
                ),
                ("COPILOT_PROVIDER_MAX_OUTPUT_TOKENS", output),
                ("COPILOT_OFFLINE", "true".to_owned()),
                node_proxy,
            ]),
            files: Vec::new(),
        },
        Agent::Gemini => LocalSetup {
            env: pairs(&[
                ("GOOGLE_GEMINI_BASE_URL", gateway()),
                ("GEMINI_MODEL", name.to_owned()),
                ("GEMINI_CLI_TRUST_WORKSPACE", "true".to_owned()),
                node_proxy,
            ]),
            files: vec![json_file(
                ".gemini/settings.json",
                &json!({
                    "security": {"auth": {"selectedType": "gemini-api-key"}},
                    "model": {"name": name},
                    "general": {"disableAutoUpdate": true, "disableUpdateNag": true},
                    "privacy": {"usageStatisticsEnabled": false},
                    "telemetry": {"enabled": false},
                }),
            )],
        },
        Agent::Opencode => LocalSetup {
            env: pairs(&[
                ("OPENCODE_DISABLE_MODELS_FETCH", "1".to_owned()),
                ("OPENCODE_DISABLE_AUTOUPDATE", "1".to_owned()),
                // Language servers are otherwise downloaded when a file is first edited.
                ("OPENCODE_DISABLE_LSP_DOWNLOAD", "1".to_owned()),
            ]),
            files: vec![
                // At every start OpenCode installs its plugin SDK into its config directory
                // from registry.npmjs.org unless that directory has `node_modules` and a
                // lockfile naming the SDK. Nothing here uses plugins, and the sandbox reaches
                // no registry, so the directory says it is installed.
                json_file(
                    ".config/opencode/package-lock.json",
                    &json!({
                        "lockfileVersion": 3,
                        "requires": true,
                        "packages": {"": {"dependencies": {"@opencode-ai/plugin": "*"}}},
                    }),
                ),
                json_file(
                    ".config/opencode/node_modules/.package-lock.json",
                    &json!({"lockfileVersion": 3, "requires": true, "packages": {}}),
                ),
                json_file(
                    ".config/opencode/opencode.json",
                    &json!({
                        "$schema": "https://opencode.ai/config.json",
                        "model": format!("aistack/{name}"),
                        "small_model": format!("aistack/{name}"),
                        "autoupdate": false,
                        "share": "disabled",
                        "provider": {"aistack": {
                            "npm": "@ai-sdk/openai-compatible",
                            "name": "aistack",
                            "options": {"baseURL": v1},
                            "models": {name: {
                                "name": name,
                                "tool_call": true,
                                "limit": {"context": context, "output": output_tokens(context)},
                            }},
                        }},
                    }),
                ),
            ],
        },
        Agent::Kiro | Agent::DockerAgent | Agent::Shell => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_placeholders_and_base_urls_name_the_vendor() {
        let env = profile(Agent::Codex).environment();
        assert_eq!(
            env,
            [
                ("OPENAI_API_KEY".to_owned(), PLACEHOLDER.to_owned()),
                (
                    "OPENAI_BASE_URL".to_owned(),
                    "https://api.openai.com/v1".to_owned()
                ),
            ]
        );
        assert_eq!(profile(Agent::DockerAgent).command, "cagent");
    }

    #[test]
    fn each_agent_is_pointed_at_the_gateway_with_the_models_window() {
        let model = LocalModel {
            name: "coder",
            context: 32768,
            workspace: "/home/me/my \"project\"",
        };
        for agent in Agent::NAMES.iter().filter_map(|n| Agent::from_name(n)) {
            let setup = on_local_model(agent, model);
            assert_eq!(setup.is_some(), agent.runs_on_local_models(), "{agent}");
            let Some(setup) = setup else { continue };
            let mut text = String::new();
            for (key, value) in &setup.env {
                text.push_str(&format!("{key}={value}\n"));
            }
            for file in &setup.files {
                text.push_str(&format!("--- ~/{}\n{}", file.path, file.contents));
            }
            assert!(
                !text.contains("api.") && !text.contains("googleapis"),
                "{agent}: {text}"
            );
            insta::assert_snapshot!(format!("local_model_{agent}"), text);
        }
    }

    #[test]
    fn codex_reads_its_config_as_toml() {
        let setup = on_local_model(
            Agent::Codex,
            LocalModel {
                name: "coder",
                context: 32768,
                workspace: "/w/\"odd\" \\ path",
            },
        )
        .unwrap();
        let config: toml::Table = setup.files[0].contents.parse().unwrap();
        assert_eq!(config["model"].as_str(), Some("coder"));
        assert_eq!(config["model_context_window"].as_integer(), Some(32768));
        let provider = &config["model_providers"]["aistack"];
        assert_eq!(provider["wire_api"].as_str(), Some("responses"));
        assert_eq!(
            provider["base_url"].as_str(),
            Some("http://models.aistack.internal/v1")
        );
        assert_eq!(
            config["projects"]["/w/\"odd\" \\ path"]["trust_level"].as_str(),
            Some("trusted")
        );
    }
}
