//! What the daemon tells the gateway: listener settings, the models it serves and how to
//! launch an engine process for one of them.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aistack_engine_api::Mode;
use aistack_spec::values::human_size;

/// Settings of one listener (DESIGN §4 `gateway:`).
#[derive(Clone)]
pub struct Settings {
    /// Where it listens; fixed for the life of a [`crate::Gateway`].
    pub listen: SocketAddr,
    /// Origins allowed by CORS; `*` allows any.
    pub cors_origins: Vec<String>,
    /// Who may call it.
    pub auth: Auth,
    /// Bytes the loaded models may take together.
    pub memory_budget: u64,
    /// The largest request body, in bytes.
    pub body_limit: usize,
}

impl fmt::Debug for Settings {
    // The key is a secret: it must not reach logs through a `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("cors_origins", &self.cors_origins)
            .field("auth", &self.auth)
            .field("memory_budget", &self.memory_budget)
            .field("body_limit", &self.body_limit)
            .finish()
    }
}

/// Who may call a gateway.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No key: clients on this machine only.
    LoopbackOnly,
    /// Clients that send this bearer token (or Anthropic's `x-api-key`).
    Key(String),
    /// A key is configured but not known to this daemon (it restarted since the last `up`
    /// handed it over): nobody, until `up` runs again. Fails closed, never open.
    KeyUnknown,
}

impl fmt::Debug for Auth {
    // The key is a secret: it must not reach logs through a `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::LoopbackOnly => "LoopbackOnly",
            Auth::Key(_) => "Key(<redacted>)",
            Auth::KeyUnknown => "KeyUnknown",
        })
    }
}

/// How long a loaded model stays loaded without requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Until it is unregistered or the gateway shuts down.
    Never,
    /// Unloaded after this long idle; zero unloads it after each request.
    After(Duration),
}

/// A model the gateway serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The name clients send.
    pub name: String,
    /// The project that declared it.
    pub project: String,
    /// Its OCI reference, also accepted as a model name.
    pub reference: Option<String>,
    /// The manifest digest, `sha256:...`.
    pub digest: String,
    /// Bytes of the artifact.
    pub size: u64,
    /// When the artifact was made, unix seconds.
    pub created: i64,
    /// The GGUF file (the first shard).
    pub model_path: PathBuf,
    /// A chat template overriding the model's own.
    pub chat_template: Option<PathBuf>,
    /// Chat or embedding.
    pub mode: Mode,
    /// Tokens of context per sequence; `None`: the engine's default.
    pub context_size: Option<u32>,
    /// Sequences decoded together, and requests in flight at the engine.
    pub parallel: u32,
    /// CPU threads; `None`: the cores other engines leave free.
    pub threads: Option<u32>,
    /// The model's `runtime_flags`, handed to the engine as they were validated.
    pub runtime_flags: Vec<String>,
    /// When to unload.
    pub keep_alive: KeepAlive,
    /// Bytes it takes loaded, for admission.
    pub memory_estimate: u64,
    /// From the artifact's config, for `/api/show` and `/api/tags`.
    pub architecture: Option<String>,
    /// From the artifact's config.
    pub quantization: Option<String>,
    /// From the artifact's config, e.g. `135M`.
    pub parameters: Option<String>,
}

/// How to start an engine process (`launch.rs` builds the command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// The program, normally the `aistack` binary.
    pub program: PathBuf,
    /// Arguments before the engine's own, normally `["engine"]`.
    pub args: Vec<String>,
    /// Where engine sockets go.
    pub run_dir: PathBuf,
    /// Where engine logs go: `engine-<project>-<name>.log`.
    pub log_dir: PathBuf,
    /// The user engines run as; `None` keeps the daemon's (one that is not root cannot give
    /// its engines another).
    pub user: Option<EngineUser>,
    /// The whole environment of an engine ([`crate::engine_environment`]).
    pub env: Vec<(OsString, OsString)>,
}

/// The user and group an engine process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineUser {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

/// The gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listen address is taken or not ours.
    #[error("Cannot listen on `{addr}`")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another project serves a model of that name on this listener.
    #[error(
        "Model `{name}` of project `{project}` is already served on this gateway by project `{other}`"
    )]
    Conflict {
        /// The model name.
        name: String,
        /// The project registering it.
        project: String,
        /// The project already serving it.
        other: String,
    },
    /// No such model is registered.
    #[error("Model `{name}` of project `{project}` is not registered")]
    UnknownModel {
        /// The project.
        project: String,
        /// The name.
        name: String,
    },
    /// The engine program did not start.
    #[error("Cannot start the engine for model `{model}` with `{}`", program.display())]
    Spawn {
        /// The model.
        model: String,
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The engine exited while loading.
    #[error("The engine for model `{model}` exited while loading ({status}): {log_tail}")]
    EngineExited {
        /// The model.
        model: String,
        /// Its exit status.
        status: String,
        /// The last lines of its log, joined.
        log_tail: String,
        /// The log file.
        log: PathBuf,
    },
    /// The engine did not become ready in time.
    #[error("The engine for model `{model}` did not become ready in {seconds} s")]
    EngineTimeout {
        /// The model.
        model: String,
        /// How long we waited.
        seconds: u64,
        /// The log file.
        log: PathBuf,
    },
    /// The model does not fit in the memory budget, even after unloading idle models.
    #[error("Model `{model}` needs {} but only {} of the {} memory budget is free", human_size(*needed), human_size(*free), human_size(*budget))]
    Memory {
        /// The model.
        model: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes free after evicting every idle model.
        free: u64,
        /// The budget.
        budget: u64,
    },
    /// Preparing the engine's files failed.
    #[error("Cannot prepare `{}` for the engine of model `{model}`", path.display())]
    Io {
        /// The model.
        model: String,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl GatewayError {
    /// What to do about it.
    pub fn help(&self) -> Option<String> {
        Some(match self {
            GatewayError::Bind { addr, .. } => format!(
                "Stop whatever listens on `{addr}` (Docker Model Runner or Ollama?) or set `gateway.listen` in aistack.yaml to a free address"
            ),
            GatewayError::Conflict { name, .. } => format!(
                "Rename model `{name}` in one of the projects, or give one of them its own `gateway.listen`"
            ),
            GatewayError::UnknownModel { .. } => {
                "Declare it under `models:` in aistack.yaml and run `aistack up`".to_owned()
            }
            GatewayError::Spawn { .. } => {
                "Check that the `aistack` binary is installed and executable".to_owned()
            }
            GatewayError::EngineExited { log, .. } | GatewayError::EngineTimeout { log, .. } => {
                format!("See the engine's log at `{}`", log.display())
            }
            GatewayError::Memory { .. } => {
                "Raise `gateway.memory_budget` in aistack.yaml or unload other models".to_owned()
            }
            GatewayError::Io { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_key() {
        let settings = Settings {
            listen: "127.0.0.1:12434".parse().unwrap(),
            cors_origins: vec![],
            auth: Auth::Key("s3cret".into()),
            memory_budget: 1,
            body_limit: 1,
        };
        let text = format!("{settings:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"));
    }
}
