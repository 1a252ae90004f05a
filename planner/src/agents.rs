//! The agents a sandbox runs: each one's command, how a template installs it, and the
//! environment it expects. The planner reads it to make a sandbox's environment and the
//! program its template must have; `sandbox run` reads it for the command.
//!
//! API keys are placeholders: the policy proxy sets the real value on the way out (a
//! policy's `credentials`), so a sandbox never holds one. Base-URL variables name the
//! vendor's API, where the agent reads one, so that a sandbox's `env:` can point it
//! elsewhere (a local gateway, a stand-in) by the name the agent documents.

use aistack_spec::values::Agent;

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
}
