//! The namespace backend's host side: the launch of the guest agent in `sandbox` mode
//! with the user-namespace handshake (`setup` has the agent's side), in the sandbox's
//! directories and cgroup.

use std::fs;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::backend::{Backend, Running, START_TIMEOUT, Spec, Start, StartError};
use crate::cgroup::Cgroup;
use crate::idmap::IdMap;
use crate::protocol;
use crate::setup::{Launch, MAPPED, READY, USERNS};

/// Linux namespaces, overlayfs and seccomp around the guest agent as PID 1: runs on every
/// Linux host.
#[derive(Debug, Clone, Copy)]
pub struct Namespace;

impl Backend for Namespace {
    fn kind(&self) -> &'static str {
        "namespace"
    }

    fn start<'a>(&'a self, spec: &'a Spec) -> Start<'a> {
        Box::pin(start(spec))
    }
}

async fn start(spec: &Spec) -> Result<Running, StartError> {
    let prepare = |what| move |source| StartError::Prepare { what, source };
    spec.layout
        .prepare(spec.range)
        .map_err(prepare("directories"))?;
    crate::backend::claim_own_layer(spec).map_err(prepare("own layer"))?;
    let map = IdMap::of(spec.range);
    let cgroup = Cgroup::create(&spec.cgroup_root, &spec.cgroup_id, spec.limits)
        .map_err(prepare("cgroup"))?;
    let launch = spec.launch(&cgroup);
    let _ = fs::remove_file(spec.layout.socket());
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(prepare("log"))?;
    let mut child = Command::new(&spec.guest)
        .arg("sandbox")
        // The agent's environment is the launch's: nothing of whoever started the daemon.
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: a Ctrl-C in the daemon's terminal is not the sandbox's.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| StartError::Agent(format!("cannot run `{}`: {e}", spec.guest.display())))?;
    let handshake = handshake(&mut child, &launch, &map);
    match tokio::time::timeout(START_TIMEOUT, handshake).await {
        Ok(Ok(init_pid)) => {
            // The agent must outlive whatever exhausts the sandbox's memory; its commands
            // set their own score back to 0 (`sys::spawn_confined`).
            let _ = fs::write(format!("/proc/{init_pid}/oom_score_adj"), "-1000");
            Ok(Running {
                child,
                init_pid,
                cgroup,
            })
        }
        outcome => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = cgroup.remove();
            let what = match outcome {
                Ok(Err(e)) => e,
                _ => format!("it was not serving after {START_TIMEOUT:?}"),
            };
            Err(StartError::Agent(
                match crate::backend::last_line(&spec.log) {
                    Some(said) => format!("{what}: {said}"),
                    None => what,
                },
            ))
        }
    }
}

async fn handshake(child: &mut Child, launch: &Launch, map: &IdMap) -> Result<u32, String> {
    let pid = child.id().ok_or("it exited at once")?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    let mut expect = async |what: &str| -> Result<String, String> {
        line.clear();
        match stdout.read_line(&mut line).await {
            Ok(0) | Err(_) => Err(format!("it exited before it said `{what}`")),
            Ok(_) => Ok(line.trim().to_owned()),
        }
    };
    stdin
        .write_all(&protocol::json_line(launch))
        .await
        .map_err(|e| e.to_string())?;
    if expect(USERNS).await? != USERNS {
        return Err("it did not make a user namespace".to_owned());
    }
    for file in ["uid_map", "gid_map"] {
        fs::write(format!("/proc/{pid}/{file}"), map.proc_text())
            .map_err(|e| format!("writing its {file}: {e}"))?;
    }
    stdin
        .write_all(format!("{MAPPED}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let init = expect("pid").await?;
    let init_pid = init
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("it said `{init}` instead of its pid"))?;
    if expect(READY).await? != READY {
        return Err("it did not say it was ready".to_owned());
    }
    Ok(init_pid)
}
