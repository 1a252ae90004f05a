//! How an engine process is started: its command line, its environment (chosen here, never
//! the daemon's, which is that of whoever ran `aistack up`, secrets included), the user it
//! confines itself to, and the files it is handed.
//!
//! The engine opens its model, chat template and socket before it changes user and
//! confines itself (`aistack_engine::confine`), so a home only root can search still
//! works. It then reads the model through its own descriptor (`/proc/self/fd/N`), which the
//! kernel lets through whatever the directories above, but which checks the file's own
//! mode: the model is made readable to all here. Store blobs are immutable, pulled ones are
//! 0644 already, and the store's directories are what keep other users out.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aistack_engine_api::Mode;
use tokio::process::Command;

use crate::config::{Launcher, ModelConfig};

/// An engine's `PATH`: it runs no program (its seccomp filter refuses `exec`), but libraries
/// that look one up find the system's.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Variables an engine takes from the daemon's environment, by name: its own log switch,
/// Rust's backtraces.
const PASSED: &[&str] = &["AISTACK_ENGINE_LOG", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE"];

/// ...and by prefix: what llama.cpp, ggml and the OpenMP runtime read on purpose (their
/// tuning and debugging switches).
const PASSED_PREFIXES: &[&str] = &["GGML_", "LLAMA_", "OMP_", "GOMP_", "KMP_"];

/// The whole environment of an engine, from the daemon's `vars`: [`PATH`], and the variables
/// llama.cpp and the engine read on purpose. Nothing else reaches it.
pub fn engine_environment(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> =
        vars.into_iter().filter(|(name, _)| passed(name)).collect();
    env.push(("PATH".into(), PATH.into()));
    env.sort();
    env
}

fn passed(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    PASSED.contains(&name) || PASSED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The engine process for `config`, serving on `socket` with `threads`, logging to `log`.
pub(crate) fn command(
    launcher: &Launcher,
    config: &ModelConfig,
    socket: &Path,
    threads: u32,
    log: File,
) -> std::io::Result<Command> {
    let stderr = log.try_clone()?;
    let mut command = Command::new(&launcher.program);
    command
        .args(&launcher.args)
        .arg("--model")
        .arg(&config.model_path)
        .arg("--socket")
        .arg(socket)
        .arg("--parallel")
        .arg(config.parallel.max(1).to_string())
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--mode")
        .arg(match config.mode {
            Mode::Chat => "chat",
            Mode::Embedding => "embedding",
        })
        .env_clear()
        .envs(launcher.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .kill_on_drop(true);
    if let Some(user) = launcher.user {
        command
            .arg("--user")
            .arg(format!("{}:{}", user.uid, user.gid));
    }
    if let Some(template) = &config.chat_template {
        command.arg("--chat-template").arg(template);
    }
    if let Some(context) = config.context_size {
        command.arg("--context-size").arg(context.to_string());
    }
    if !config.runtime_flags.is_empty() {
        command.arg("--").args(&config.runtime_flags);
    }
    Ok(command)
}

/// Makes the model readable by an engine running as another user (see the module's doc).
pub(crate) fn share_model(
    launcher: &Launcher,
    model: &Path,
) -> Result<(), (PathBuf, std::io::Error)> {
    if launcher.user.is_none() {
        return Ok(());
    }
    let failed = |e| (model.to_owned(), e);
    let mode = std::fs::metadata(model)
        .map_err(failed)?
        .permissions()
        .mode();
    if mode & 0o044 != 0o044 {
        std::fs::set_permissions(model, std::fs::Permissions::from_mode(mode | 0o044))
            .map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_get_only_what_llama_cpp_reads_and_a_path() {
        let daemon = [
            ("HOME", "/root"),
            ("ANTHROPIC_API_KEY", "sk-secret"),
            ("PATH", "/home/me/bin:/usr/bin"),
            ("GGML_SCHED_DEBUG", "1"),
            ("OMP_WAIT_POLICY", "passive"),
            ("AISTACK_ENGINE_LOG", "1"),
            ("AISTACK_HOME", "/root/.local/share/aistack"),
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("RUST_BACKTRACE", "1"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = engine_environment(daemon);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "AISTACK_ENGINE_LOG",
                "GGML_SCHED_DEBUG",
                "OMP_WAIT_POLICY",
                "PATH",
                "RUST_BACKTRACE"
            ]
        );
        assert!(env.contains(&("PATH".into(), PATH.into())));
    }
}
