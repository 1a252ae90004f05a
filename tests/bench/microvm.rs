//! MicroVM boot and exec, interleaved A B A B, medians.
//!
//! A: the microVM backend from its start until the guest agent answers over vsock
//!    (virtiofsd and the vsock daemon started, the kernel booted, the root filesystem
//!    mounted over virtio-fs).
//! B: the VMM's own floor: the same QEMU machine and kernel booting straight to a trivial
//!    init (busybox `reboot -f`) that ends the machine, QEMU's exit included.
//! Also: `exec true` round trips through vsock, and the host memory (PSS) of an idle
//! sandbox's VMM and daemons. With hardware KVM the same runs under KVM (goal: boot to
//! agent ready < 300 ms); elsewhere under TCG, and says so.
//!
//! `cargo bench -p aistack-tests --bench microvm` (needs root, Debian's
//! `qemu-system-x86` and `cpio`, and what scripts/build-guest-kernel and
//! scripts/build-vhost-user build).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aistack_sandbox::backend::{Backend, Layout, Spec};
use aistack_sandbox::cgroup::Limits;
use aistack_sandbox::client::GuestClient;
use aistack_sandbox::idmap::{DEFAULT_BASE, IdRange};
use aistack_sandbox::isolation::{self, Host};
use aistack_sandbox::microvm::{Accel, Kernel, Microvm, Programs};
use aistack_sandbox::protocol::Exec;
use aistack_sandbox::rootfs;
use aistack_tests::bench::{median, wait_idle};
use aistack_tests::sandbox::{BUSYBOX, busybox_rootfs, guest_bin};

const ROUNDS: usize = 9;
const EXECS: usize = 100;
const MEMORY: u64 = 256 << 20;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    aistack_tests::succeed(
        Command::new(aistack_tests::repo_root().join("scripts/build-guest-kernel"))
            .env("AISTACK_HOME", &home),
        "scripts/build-guest-kernel",
    );
    let bin = aistack_tests::script_path("build-vhost-user", &[]);
    let host = Host::this_machine();
    let choice = isolation::choose("microvm", host, None);
    let accel = if choice.emulated {
        Accel::Tcg
    } else {
        Accel::Kvm
    };
    let vm = Microvm {
        kernel: Kernel::find(&home.join("kernel")).unwrap(),
        programs: Programs::find_with(|var| match var {
            "AISTACK_VIRTIOFSD" => Some(bin.join("virtiofsd").into()),
            "AISTACK_VHOST_VSOCK" => Some(bin.join("vhost-device-vsock").into()),
            _ => std::env::var_os(var),
        })
        .unwrap(),
        accel,
    };
    if accel == Accel::Tcg {
        println!(
            "skipped: the KVM run and its < 300 ms goal: {}",
            choice.reason
        );
    }

    let load = wait_idle(Duration::from_secs(60));
    let source = busybox_rootfs(&dir.path().join("source"));
    let range = IdRange { base: DEFAULT_BASE };
    let template = dir.path().join("template");
    rootfs::import(&source, &template, range).unwrap();
    let floor_initramfs = trivial_initramfs(dir.path());

    let (mut ours, mut floor, mut execs, mut pss) = (Vec::new(), Vec::new(), Vec::new(), 0.0);
    let mut healths = Vec::new();
    for round in 0..ROUNDS {
        let sandbox = dir.path().join(format!("sandbox-{round}"));
        let spec = Spec {
            guest: guest_bin().to_path_buf(),
            layout: Layout::new(&sandbox, &sandbox.join("control")),
            lower: vec![template.clone()],
            workspace: None,
            hostname: "bench".into(),
            range,
            limits: Limits {
                memory: Some(MEMORY),
                cpus: Some(1.0),
                pids: 1024,
            },
            tmp_bytes: 64 << 20,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_id: format!("bench-vm-{}-{round}", std::process::id()),
            log: dir.path().join(format!("guest-{round}.log")),
            network: None,
            env: Vec::new(),
        };
        let started = Instant::now();
        let mut running = vm.start(&spec).await.expect("the microVM starts");
        ours.push(started.elapsed().as_secs_f64() * 1e3);

        let client = GuestClient::new(&spec.layout.socket());
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            pss = pss_mib(&running.cgroup.procs_files()[0]);
            for _ in 0..EXECS {
                let started = Instant::now();
                client.health().await.unwrap();
                healths.push(started.elapsed().as_secs_f64() * 1e3);
            }
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
        tokio::time::timeout(Duration::from_secs(20), running.child.wait())
            .await
            .expect("the guest powers off")
            .unwrap();
        running.cgroup.kill().unwrap();
        running.cgroup.remove().unwrap();

        let args = vm.machine_args(
            MEMORY,
            1,
            &vm.kernel.path,
            &floor_initramfs,
            &["/bin/reboot", "-f"],
        );
        let started = Instant::now();
        let status = Command::new(&vm.programs.qemu)
            .args(&args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        floor.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (a, b, e) = (median(ours), median(floor), median(execs));
    println!(
        "load before the run: {load:.2}; accelerator: {}",
        accel.as_str()
    );
    println!("microVM start to agent ready:      {a:.0} ms (median of {ROUNDS})");
    println!("same VMM + kernel, trivial init:   {b:.0} ms (median of {ROUNDS})");
    println!("ratio (ours / floor):              {:.2}x", a / b);
    println!("exec `true` round trip over vsock: {e:.2} ms (median of {EXECS})");
    let h = median(healths);
    println!("health round trip over vsock:      {h:.2} ms (median of {EXECS})");
    println!(
        "host memory of an idle sandbox:    {pss:.1} MiB PSS (VMM + virtiofsd + vsock daemon)"
    );
}

/// An initramfs of Debian's static busybox with `/bin/reboot`: the floor's init.
fn trivial_initramfs(dir: &Path) -> PathBuf {
    let tree = dir.join("floor");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::create_dir_all(tree.join("dev")).unwrap();
    fs::copy(BUSYBOX, tree.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", tree.join("bin/reboot")).unwrap();
    let archive = dir.join("floor.cpio");
    let list = "bin\nbin/busybox\nbin/reboot\ndev\n";
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc"])
        .current_dir(&tree)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&archive).unwrap())
        .spawn()
        .expect("cpio is installed");
    use std::io::Write;
    cpio.stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    assert!(cpio.wait().unwrap().success());
    archive
}

/// The summed PSS, in MiB, of the processes `cgroup.procs` lists.
fn pss_mib(procs: &Path) -> f64 {
    let pids = fs::read_to_string(procs).unwrap();
    let mut kib = 0u64;
    for pid in pids.lines() {
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let pss = rollup.lines().find(|l| l.starts_with("Pss:"));
        kib += pss
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
    }
    kib as f64 / 1024.0
}
