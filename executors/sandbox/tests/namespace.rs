//! The namespace backend end to end: a busybox template, the static guest agent as PID 1,
//! commands through the protocol, and what a command inside can and cannot reach.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aistack_sandbox::backend::{Backend, Layout, Running, Spec};
use aistack_sandbox::cgroup::{DEFAULT_PIDS, Limits};
use aistack_sandbox::client::{GuestClient, Output};
use aistack_sandbox::idmap::{DEFAULT_BASE, IdRange};
use aistack_sandbox::namespace::Namespace;
use aistack_sandbox::protocol::Exec;
use aistack_sandbox::rootfs;
use aistack_sandbox::setup::Workspace;
use aistack_tests::sandbox::{busybox_rootfs, guest_bin};

const RANGE: IdRange = IdRange { base: DEFAULT_BASE };

struct Sandbox {
    dir: tempfile::TempDir,
    running: Running,
    client: GuestClient,
}

/// A failed assertion must not leave the sandbox running: its host process going takes
/// PID 1 with it.
impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.running.child.start_kill();
    }
}

impl Sandbox {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("guest.log")).unwrap_or_default()
    }

    fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    async fn sh(&self, script: &str) -> Output {
        self.run(None, script).await
    }

    async fn run(&self, user: Option<&str>, script: &str) -> Output {
        let exec = Exec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            user: user.map(str::to_owned),
            env: BTreeMap::new(),
            ..Exec::default()
        };
        match self.client.output(exec).await {
            Ok(output) => output,
            Err(e) => panic!("{script}: {e:?}\n{}", self.log()),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

async fn start(limits: Limits) -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let source = busybox_rootfs(&dir.path().join("source"));
    let template = dir.path().join("template");
    rootfs::import(&source, &template, RANGE).unwrap();
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    let owner = std::fs::metadata(&workspace).unwrap();
    let id = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let layout = Layout::new(&dir.path().join("sandbox"), &dir.path().join("control"));
    let spec = Spec {
        guest: guest_bin().to_path_buf(),
        layout: layout.clone(),
        lower: vec![template],
        workspace: Some(Workspace {
            path: workspace,
            owner: (owner.uid(), owner.gid()),
            agent: RANGE.agent(),
            read_only: Vec::new(),
            hidden: Vec::new(),
        }),
        hostname: "coder".into(),
        range: RANGE,
        limits,
        tmp_bytes: 64 << 20,
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        cgroup_id: format!("test-{id}"),
        log: dir.path().join("guest.log"),
        network: None,
        env: Vec::new(),
    };
    let running = match Namespace.start(&spec).await {
        Ok(running) => running,
        Err(e) => panic!(
            "{e}: {:?}\n{}",
            std::error::Error::source(&e),
            std::fs::read_to_string(dir.path().join("guest.log")).unwrap_or_default()
        ),
    };
    let client = GuestClient::new(&layout.socket());
    Sandbox {
        dir,
        running,
        client,
    }
}

fn default_limits() -> Limits {
    Limits {
        memory: Some(256 << 20),
        cpus: Some(1.0),
        pids: DEFAULT_PIDS,
    }
}

#[tokio::test]
async fn commands_run_as_the_agent_with_their_exit_codes() {
    let sandbox = start(default_limits()).await;
    let health = sandbox.client.health().await.unwrap();
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));

    let out = sandbox
        .sh("id -u; id -g; hostname; echo oops >&2; exit 7")
        .await;
    assert_eq!(text(&out.stdout), "1000\n1000\ncoder");
    assert_eq!(text(&out.stderr), "oops");
    assert_eq!(out.status.unwrap().code, Some(7));

    let root = sandbox.run(Some("root"), "id -u").await;
    assert_eq!(text(&root.stdout), "0");

    let killed = sandbox.sh("kill -9 $$").await;
    assert_eq!(killed.status.unwrap().shell_code(), 137);

    let missing = sandbox
        .client
        .output(Exec {
            argv: vec!["no-such-command".into()],
            ..Exec::default()
        })
        .await;
    let error = missing.expect_err("no such command").to_string();
    assert!(error.contains("no-such-command"), "{error}");
    stop(sandbox).await;
}

#[tokio::test]
async fn the_workspace_is_shared_and_files_belong_to_its_owner() {
    let sandbox = start(default_limits()).await;
    let workspace = sandbox.workspace();
    std::fs::write(workspace.join("from-host"), "hello").unwrap();
    let script = format!(
        "cat {0}/from-host && echo && echo written > {0}/from-sandbox && pwd",
        workspace.display()
    );
    let out = sandbox.sh(&script).await;
    assert_eq!(out.status.unwrap().code, Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n/home/agent");
    let written = workspace.join("from-sandbox");
    let host_owner = std::fs::metadata(&workspace).unwrap();
    let file = std::fs::metadata(&written).unwrap();
    assert_eq!(
        (file.uid(), file.gid()),
        (host_owner.uid(), host_owner.gid())
    );
    assert_eq!(std::fs::read_to_string(written).unwrap(), "written\n");
    stop(sandbox).await;
}

#[tokio::test]
async fn nothing_of_the_host_is_reachable() {
    let sandbox = start(default_limits()).await;
    let host_file = sandbox.dir.path().join("secret");
    std::fs::write(&host_file, "host secret").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    let checks: Vec<(&str, String)> = vec![
        (
            "a host file outside the workspace",
            format!("cat {}", host_file.display()),
        ),
        ("the host's root", "ls /work || ls /var/cache".into()),
        // Root of the sandbox could mount a tmpfs in its own mount namespace; seccomp
        // refuses the system call.
        (
            "mounting",
            "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m".into(),
        ),
        (
            "loading a module",
            "echo junk > /tmp/m.ko && insmod /tmp/m.ko".into(),
        ),
        (
            "a host loopback port",
            format!("nc -w 1 127.0.0.1 {port} </dev/null"),
        ),
        (
            "a raw TCP connection out",
            "nc -w 1 192.0.2.1 80 </dev/null".into(),
        ),
        ("a DNS query", "nslookup example.com 192.0.2.53".into()),
    ];
    for (what, script) in checks {
        for user in [None, Some("root")] {
            let out = sandbox.run(user, &script).await;
            assert_ne!(
                out.status.unwrap().code,
                Some(0),
                "{what} as {user:?} succeeded: {}",
                text(&out.stdout)
            );
        }
    }
    let processes = sandbox.sh("ls -d /proc/[0-9]*").await;
    let pids: Vec<u32> = text(&processes.stdout)
        .lines()
        .filter_map(|p| p.trim_start_matches("/proc/").parse().ok())
        .collect();
    assert!(
        pids.contains(&1) && pids.len() < 5,
        "only the sandbox's processes: {pids:?}"
    );
    let interfaces = sandbox
        .sh("ls /sys/class/net 2>/dev/null || ip -o link | cut -d: -f2")
        .await;
    assert_eq!(text(&interfaces.stdout), "lo");
    stop(sandbox).await;
}

#[tokio::test]
async fn a_fork_bomb_and_a_memory_hog_hit_the_limits() {
    let limits = Limits {
        memory: Some(64 << 20),
        cpus: Some(1.0),
        pids: 64,
    };
    let sandbox = start(limits).await;
    let bomb = sandbox
        .sh("i=0; while [ $i -lt 200 ]; do sleep 1 & i=$((i+1)); done; wait")
        .await;
    // A shell that cannot fork gives up and leaves its children to the agent; they end
    // within the second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(bomb.status.unwrap().code, Some(0));
    assert!(
        text(&bomb.stderr).contains("fork") || text(&bomb.stderr).contains("resource"),
        "{}",
        text(&bomb.stderr)
    );
    let hog = sandbox
        .sh("head -c 200m /dev/zero | tail > /dev/null")
        .await;
    // `tail` holds the last line, all 200 MiB of it; the OOM killer ends it and the
    // shell reports 128 + SIGKILL.
    let hog_status = hog.status.unwrap();
    assert_eq!(
        hog_status.shell_code(),
        137,
        "{hog_status:?}: {}",
        sandbox.log()
    );
    let after = sandbox.sh("echo alive").await;
    assert_eq!(text(&after.stdout), "alive");
    stop(sandbox).await;
}

async fn stop(mut sandbox: Sandbox) {
    sandbox
        .client
        .shutdown(Duration::from_secs(2))
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), sandbox.running.child.wait())
        .await
        .expect("the sandbox ends")
        .unwrap();
    assert!(status.success(), "{status:?}");
    sandbox.running.cgroup.remove().unwrap();
    assert!(!Path::new(&format!("/proc/{}", sandbox.running.init_pid)).exists());
}
