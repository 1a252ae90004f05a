//! Sandbox start-up and exec round trip, against bubblewrap (Debian's `bwrap`) on the same
//! busybox tree, interleaved A B A B, medians.
//!
//! A: the namespace backend from spawn until its guest agent answers.
//! B: `bwrap` with user, PID, network, IPC and UTS namespaces running `true` to its end.
//! Also: one `exec true` round trip through the agent's socket.
//!
//! `cargo bench -p aistack-tests --bench sandbox` (needs root and `bubblewrap`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aistack_sandbox::backend::{Backend, Layout, Spec};
use aistack_sandbox::cgroup::Limits;
use aistack_sandbox::client::GuestClient;
use aistack_sandbox::idmap::{DEFAULT_BASE, IdRange};
use aistack_sandbox::namespace::Namespace;
use aistack_sandbox::protocol::Exec;
use aistack_sandbox::rootfs;
use aistack_tests::bench::{median, wait_idle};
use aistack_tests::sandbox::{busybox_rootfs, guest_bin};

const ROUNDS: usize = 15;
const EXECS: usize = 200;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if Command::new("bwrap").arg("--version").output().is_err() {
        eprintln!("skipped: `bwrap` is not installed (apt-get install bubblewrap)");
        return;
    }
    let load = wait_idle(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let source = busybox_rootfs(&dir.path().join("source"));
    let range = IdRange { base: DEFAULT_BASE };
    let template = dir.path().join("template");
    rootfs::import(&source, &template, range).unwrap();
    let guest = guest_bin().to_path_buf();

    let (mut ours, mut peer, mut execs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let sandbox = dir.path().join(format!("sandbox-{round}"));
        let spec = Spec {
            guest: guest.clone(),
            layout: Layout::new(&sandbox, &sandbox.join("control")),
            lower: vec![template.clone()],
            workspace: None,
            hostname: "bench".into(),
            range,
            limits: Limits::default(),
            tmp_bytes: 64 << 20,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_id: format!("bench-{}-{round}", std::process::id()),
            log: dir.path().join("guest.log"),
            network: None,
            env: Vec::new(),
        };
        let started = Instant::now();
        let mut running = Namespace.start(&spec).await.expect("the sandbox starts");
        ours.push(started.elapsed().as_secs_f64() * 1e3);

        let client = GuestClient::new(&spec.layout.socket());
        if round == 0 {
            for _ in 0..EXECS {
                let started = Instant::now();
                let out = client
                    .output(Exec {
                        argv: vec!["true".into()],
                        env: BTreeMap::new(),
                        ..Exec::default()
                    })
                    .await
                    .unwrap();
                assert_eq!(out.status.unwrap().code, Some(0));
                execs.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        client.shutdown(Duration::from_secs(1)).await.unwrap();
        running.child.wait().await.unwrap();
        let _ = running.cgroup.remove();

        let started = Instant::now();
        let status = Command::new("bwrap")
            .args([
                "--unshare-user",
                "--unshare-pid",
                "--unshare-net",
                "--unshare-ipc",
            ])
            .args(["--unshare-uts", "--die-with-parent", "--bind"])
            .arg(&source)
            .args([
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "/bin/true",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        peer.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (a, b, e) = (median(ours), median(peer), median(execs));
    println!("load before the run: {load:.2}");
    println!("sandbox start to agent ready: {a:.2} ms (median of {ROUNDS})");
    println!("bwrap running `true`:         {b:.2} ms (median of {ROUNDS})");
    println!("ratio (ours / bwrap):         {:.2}x", a / b);
    println!("exec `true` round trip:       {e:.3} ms (median of {EXECS})");
}
