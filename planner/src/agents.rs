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
