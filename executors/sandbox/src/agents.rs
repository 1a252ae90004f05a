//! The agents a sandbox runs: each one's command, how a template installs it, and the
//! environment it expects.
//!
//! API keys are placeholders: the policy proxy sets the real value on the way out (a
//! policy's `credentials`), so a sandbox never holds one. Base-URL variables name the
//! vendor's API, where the agent reads one, so that a sandbox's `env:` can point it
//! elsewhere (a local gateway, a stand-in) by the name the agent documents.

use std::path::Path;

use crate::setup::PATH;

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

/// The profile of the agent spelled `name` in the file (`claude`, `codex`, ...).
#[must_use]
pub fn profile(name: &str) -> Option<Profile> {
    let profile = match name {
        "claude" => Profile {
            command: "claude",
            install: "npm install -g @anthropic-ai/claude-code",
            keys: &["ANTHROPIC_API_KEY"],
            env: &[
                ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
                ("DISABLE_AUTOUPDATER", "1"),
            ],
        },
        "codex" => Profile {
            command: "codex",
            install: "npm install -g @openai/codex",
            keys: &["OPENAI_API_KEY"],
            env: &[("OPENAI_BASE_URL", "https://api.openai.com/v1")],
        },
        "copilot" => Profile {
            command: "copilot",
            install: "npm install -g @github/copilot",
            keys: &["GH_TOKEN", "GITHUB_TOKEN"],
            env: &[],
        },
        "gemini" => Profile {
            command: "gemini",
            install: "npm install -g @google/gemini-cli",
            keys: &["GEMINI_API_KEY"],
            env: &[(
                "GOOGLE_GEMINI_BASE_URL",
                "https://generativelanguage.googleapis.com",
            )],
        },
        "opencode" => Profile {
            command: "opencode",
            install: "npm install -g opencode-ai",
            keys: &["ANTHROPIC_API_KEY", "OPENAI_API_KEY"],
            env: &[],
        },
        "kiro" => Profile {
            command: "kiro-cli",
            install: "curl -fsSL https://cli.kiro.dev/install | bash",
            keys: &[],
            env: &[],
        },
        "docker-agent" => Profile {
            command: "cagent",
            install: "curl -fsSL -o /usr/local/bin/cagent https://github.com/docker/cagent/releases/latest/download/cagent-linux-amd64 && chmod +x /usr/local/bin/cagent",
            keys: &["OPENAI_API_KEY", "ANTHROPIC_API_KEY"],
            env: &[],
        },
        "shell" => Profile {
            command: "sh",
            install: "apt-get install -y dash",
            keys: &[],
            env: &[],
        },
        _ => return None,
    };
    Some(profile)
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

    /// Whether a root filesystem has the agent's command on the sandbox's `PATH`. A
    /// symbolic link counts as it is (npm links its commands, often by absolute path,
    /// which means the sandbox's root, not the host's).
    #[must_use]
    pub fn is_installed(&self, rootfs: &Path) -> bool {
        PATH.split(':').any(|dir| {
            let path = rootfs.join(dir.trim_start_matches('/')).join(self.command);
            path.symlink_metadata().is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_of_the_file_has_a_profile() {
        for name in [
            "claude",
            "codex",
            "copilot",
            "gemini",
            "opencode",
            "kiro",
            "docker-agent",
            "shell",
        ] {
            assert!(profile(name).is_some(), "{name}");
        }
        assert_eq!(profile("vim"), None);
    }

    #[test]
    fn keys_are_placeholders_and_base_urls_name_the_vendor() {
        let env = profile("codex").unwrap().environment();
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
    }

    #[test]
    fn a_command_is_found_on_the_path_of_the_root_and_a_link_counts() {
        let root = tempfile::tempdir().unwrap();
        let codex = profile("codex").unwrap();
        assert!(!codex.is_installed(root.path()));
        std::fs::create_dir_all(root.path().join("usr/local/bin")).unwrap();
        // npm's link points into the sandbox's root, which the host does not have.
        std::os::unix::fs::symlink(
            "/usr/local/lib/node_modules/@openai/codex/bin/codex.js",
            root.path().join("usr/local/bin/codex"),
        )
        .unwrap();
        assert!(codex.is_installed(root.path()));
        assert!(!profile("claude").unwrap().is_installed(root.path()));
    }
}
