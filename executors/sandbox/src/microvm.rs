//! The microVM backend's host side: one QEMU `microvm` machine per sandbox, with its own
//! kernel, no NIC, and two vhost-user daemons beside it, all in the sandbox's cgroup:
//!
//! - `virtiofsd` serves the root filesystem (the template's layers and the sandbox's own,
//!   with the workspace at its path), assembled by `aistack-guest share` in a mount
//!   namespace that ends with it; guest ids map onto the sandbox's host range, as the
//!   namespace backend's user namespace maps them;
//! - `vhost-device-vsock` bridges the guest's vsock to unix sockets in the control
//!   directory, as Firecracker's hybrid vsock: the host's client dials the agent through
//!   `vsock.sock`, and the agent's proxy connections reach `vsock.sock_3128`, a link to
//!   `proxy.sock`. No TCP listener on the host reaches the guest.
//!
//! The guest boots an initramfs that holds the static guest agent as `/init` and its
//! [`Boot`]; the sandbox is up once the agent answers over vsock.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::backend::{Backend, Running, Spec, Start, StartError};
use crate::boot::{self, Boot, INIT_ARG, PROXY_PORT, ROOT_TAG, VSOCK_SOCKET};
use crate::cgroup::{Cgroup, Limits};
use crate::client::GuestClient;
use crate::jail::{self, Jail};
use crate::protocol;
use crate::setup::PROXY_SOCKET;

/// How long a microVM may take from the VMM's start to its agent serving: a kernel boots
/// in about 2 s under TCG here.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the VMM process and its daemons need beyond the guest's memory (and, under TCG,
/// the translation cache).
pub const VMM_OVERHEAD_BYTES: u64 = 256 << 20;

/// The size of TCG's translation cache, in MiB. QEMU's default (1 GiB) grows with the code
/// the guest runs until the sandbox's memory limit kills the VMM (Docker inside did).
pub const TCG_CACHE_MIB: u64 = 256;

/// The guest's vsock context id; each VMM has its own vsock device, so all may use it.
const GUEST_CID: u32 = 3;

/// How the VMM runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation: slow, but a real machine with its own kernel.
    Tcg,
}

impl Accel {
    /// As QEMU's `-accel` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The guest kernel, verified against the sha256 it is pinned by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The uncompressed `vmlinux` (booted through PVH).
    pub path: PathBuf,
    /// Its sha256, hex.
    pub sha256: String,
    /// How it was built, or where it came from, for `status`.
    pub origin: String,
}

/// Why the microVM backend cannot run here.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Missing {
    /// What is missing or wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl Kernel {
    /// The kernel `scripts/build-guest-kernel` installed in `dir` (`$AISTACK_HOME/kernel`),
    /// or the prebuilt one `AISTACK_KERNEL` names, which `AISTACK_KERNEL_SHA256` must pin.
    pub fn find(dir: &Path) -> Result<Kernel, Missing> {
        if let Some(path) = std::env::var_os("AISTACK_KERNEL").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            let Some(pin) = std::env::var("AISTACK_KERNEL_SHA256")
                .ok()
                .filter(|p| !p.is_empty())
            else {
                return Err(Missing {
                    message: format!(
                        "The prebuilt kernel `{}` is not pinned by its sha256",
                        path.display()
                    ),
                    help: "Set `AISTACK_KERNEL_SHA256` to the sha256 of the kernel you trust"
                        .to_owned(),
                });
            };
            return Kernel::verified(path, &pin, "prebuilt, named by `AISTACK_KERNEL`".into());
        }
        let path = dir.join("vmlinux");
        let build = || Missing {
            message: format!("There is no guest kernel in `{}`", dir.display()),
            help: "Build it with `scripts/build-guest-kernel` (Debian's linux-source-6.12 and \
                   the committed config; about 10 minutes on 2 cores)"
                .to_owned(),
        };
        let info = fs::read_to_string(dir.join("build-info")).map_err(|_| build())?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .map(str::to_owned)
        };
        let pin = field("sha256").ok_or_else(build)?;
        let origin = format!(
            "{}, built from {} with {}",
            field("release").unwrap_or_default(),
            field("source").unwrap_or_default(),
            field("config").unwrap_or_default(),
        );
        Kernel::verified(path, &pin, origin)
    }

    fn verified(path: PathBuf, pin: &str, origin: String) -> Result<Kernel, Missing> {
        let bytes = fs::read(&path).map_err(|e| Missing {
            message: format!("Cannot read the guest kernel `{}`: {e}", path.display()),
            help: "Build it with `scripts/build-guest-kernel`".to_owned(),
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if !sha256.eq_ignore_ascii_case(pin.trim()) {
            return Err(Missing {
                message: format!(
                    "The guest kernel `{}` has sha256 {sha256}, not the {} it is pinned by",
                    path.display(),
                    pin.trim()
                ),
                help: "Build it again with `scripts/build-guest-kernel`, or pin the kernel you \
                       trust"
                    .to_owned(),
            });
        }
        Ok(Kernel {
            path,
            sha256,
            origin,
        })
    }
}

/// The programs a microVM needs on the host.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `qemu-system-x86_64` (Debian's `qemu-system-x86`).
    pub qemu: PathBuf,
    /// `virtiofsd`.
    pub virtiofsd: PathBuf,
    /// `vhost-device-vsock`.
    pub vsock: PathBuf,
}

impl Programs {
    /// Each from its variable (`AISTACK_QEMU`, `AISTACK_VIRTIOFSD`, `AISTACK_VHOST_VSOCK`),
    /// else the `PATH`.
    pub fn find() -> Result<Programs, Missing> {
        Programs::find_with(|var| std::env::var_os(var))
    }

    /// As [`Programs::find`], with the variables `var` gives.
    pub fn find_with(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Programs, Missing> {
        let find = |var_name: &str, name: &str, help: &str| -> Result<PathBuf, Missing> {
            if let Some(path) = var(var_name).filter(|p| !p.is_empty()) {
                return Ok(PathBuf::from(path));
            }
            let path = var("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
                .ok_or_else(|| Missing {
                    message: format!(
                        "The microVM backend needs `{name}`, which is not on the PATH"
                    ),
                    help: format!("{help}, or set `{var_name}` to its path"),
                })
        };
        let vhost = "Install it with `scripts/build-vhost-user` (crates.io) and add the \
                     directory it prints to the PATH";
        let qemu = find(
            "AISTACK_QEMU",
            "qemu-system-x86_64",
            "Install Debian's `qemu-system-x86`",
        )?;
        if !qemu.starts_with("/usr/") {
            return Err(Missing {
                message: format!(
                    "The VMM `{}` is not under `/usr`, the only host directory its jail holds",
                    qemu.display()
                ),
                help: "Use Debian's `qemu-system-x86` (`/usr/bin/qemu-system-x86_64`)".to_owned(),
            });
        }
        Ok(Programs {
            qemu,
            virtiofsd: find("AISTACK_VIRTIOFSD", "virtiofsd", vhost)?,
            vsock: find("AISTACK_VHOST_VSOCK", "vhost-device-vsock", vhost)?,
        })
    }
}

/// One QEMU `microvm` per sandbox.
#[derive(Debug, Clone)]
pub struct Microvm {
    /// The guest kernel.
    pub kernel: Kernel,
    /// The VMM and its daemons.
    pub programs: Programs,
    /// KVM where the probe passed, else TCG.
    pub accel: Accel,
}

impl Backend for Microvm {
    fn kind(&self) -> &'static str {
        "microvm"
    }

    fn start<'a>(&'a self, spec: &'a Spec) -> Start<'a> {
        Box::pin(self.start(spec))
    }
}

/// The control directory's files of a microVM.
struct Control<'a>(&'a Path);

impl Control<'_> {
    fn fs(&self) -> PathBuf {
        self.0.join("fs.sock")
    }
    fn vsock_device(&self) -> PathBuf {
        self.0.join("vsock-device.sock")
    }
    fn vsock(&self) -> PathBuf {
        self.0.join(VSOCK_SOCKET)
    }
    fn initramfs(&self) -> PathBuf {
        self.0.join("initramfs")
    }
    fn qmp(&self) -> PathBuf {
        self.0.join("qmp.sock")
    }
}

impl Microvm {
    async fn start(&self, spec: &Spec) -> Result<Running, StartError> {
        let prepare = |what| move |source| StartError::Prepare { what, source };
        spec.layout
            .prepare(spec.range)
            .map_err(prepare("directories"))?;
        crate::backend::claim_own_layer(spec).map_err(prepare("own layer"))?;
        let guest_memory = spec.limits.memory.unwrap_or(1 << 30);
        let vcpus = spec
            .limits
            .cpus
            .map_or(1, |cpus| cpus.ceil().max(1.0) as u32);
        let cache = match self.accel {
            Accel::Tcg => TCG_CACHE_MIB << 20,
            Accel::Kvm => 0,
        };
        let limits = Limits {
            memory: Some(guest_memory + VMM_OVERHEAD_BYTES + cache),
            cpus: spec.limits.cpus,
            pids: spec.limits.pids,
        };
        let cgroup = Cgroup::create(&spec.cgroup_root, &spec.cgroup_id, limits)
            .map_err(prepare("cgroup"))?;
        // What a killed daemon left of an earlier life of this sandbox.
        cgroup.kill().map_err(prepare("cgroup"))?;
        let control = Control(&spec.layout.control);
        for stale in [
            control.fs(),
            control.vsock_device(),
            control.vsock(),
            control.qmp(),
            spec.layout.socket(),
        ] {
            let _ = fs::remove_file(stale);
        }
        let proxy_link = spec
            .layout
            .control
            .join(format!("{VSOCK_SOCKET}_{PROXY_PORT}"));
        let _ = fs::remove_file(&proxy_link);
        if spec.network.is_some() {
            std::os::unix::fs::symlink(PROXY_SOCKET, &proxy_link)
                .map_err(prepare("proxy channel"))?;
        }
        write_initramfs(&control.initramfs(), &spec.guest, &boot_of(spec))
            .map_err(prepare("initramfs"))?;
        open_log(&spec.log).map_err(prepare("log"))?;

        let mut started = Vec::new();
        let outcome = self
            .launch(spec, &control, &cgroup, guest_memory, vcpus, &mut started)
            .await;
        match outcome {
            Ok(vmm) => {
                let init_pid = vmm.id().unwrap_or_default();
                if let Some(identity) = Identity::of(init_pid) {
                    for daemon in started {
                        watch(daemon, identity);
                    }
                }
                Ok(Running {
                    init_pid,
                    child: vmm,
                    cgroup,
                })
            }
            Err(what) => {
                let _ = cgroup.kill();
                for mut child in started {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                let _ = cgroup.remove();
                Err(StartError::Agent(
                    match crate::backend::last_line(&spec.log) {
                        Some(said) => format!("{what}: {said}"),
                        None => what,
                    },
                ))
            }
        }
    }

    /// Starts virtiofsd, the vsock daemon and the VMM, in that order (QEMU connects to both
    /// daemons' sockets), and waits for the agent. `started` collects each child, so a
    /// failure can stop them; the VMM is returned.
    async fn launch(
        &self,
        spec: &Spec,
        control: &Control<'_>,
        cgroup: &Cgroup,
        memory: u64,
        vcpus: u32,
        started: &mut Vec<Child>,
    ) -> Result<Child, String> {
        // Where this boot's console lines start in the sandbox's log.
        let log_start = fs::metadata(&spec.log).map_or(0, |m| m.len());
        let stderr = || {
            open_log(&spec.log)
                .map(Stdio::from)
                .map_err(|e| format!("its log: {e}"))
        };
        let base = spec.range.base;
        let launch = spec.launch(cgroup);
        let mut share = Command::new(&spec.guest);
        share
            .arg("share")
            .arg(control.fs())
            .arg(&self.programs.virtiofsd)
            .args(["--translate-uid", &format!("map:0:{base}:65536")])
            .args(["--translate-gid", &format!("map:0:{base}:65536")])
            // The guest's extended attributes live under `user.virtiofs.` on the host: a
            // container runtime inside copies them, and none of them (file capabilities,
            // security labels) means anything to the host.
            .args(["--xattr", "--xattrmap=:map::user.virtiofs.:"])
            .args(["--log-level", "warn"])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr()?);
        let mut virtiofsd = spawn(&mut share, "virtiofsd")?;
        let mut stdin = virtiofsd.stdin.take().ok_or("virtiofsd has no stdin")?;
        started.push(virtiofsd);
        stdin
            .write_all(&protocol::json_line(&launch))
            .await
            .map_err(|e| format!("sending virtiofsd's launch: {e}"))?;
        drop(stdin);
        wait_for_socket(&control.fs(), &mut started[0], "virtiofsd").await?;

        let mut vsock = Command::new(&self.programs.vsock);
        vsock
            .arg("--vm")
            .arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                control.vsock_device().display(),
                control.vsock().display()
            ))
            .env_clear()
            .stdout(Stdio::null())
            .stderr(stderr()?);
        let vsock = spawn(&mut vsock, "vhost-device-vsock")?;
        join(cgroup, &vsock)?;
        started.push(vsock);
        wait_for_socket(
            &control.vsock_device(),
            &mut started[1],
            "vhost-device-vsock",
        )
        .await?;

        // The VMM runs as the sandbox's root id, which must reach what it connects to.
        let owner = Some(base);
        for file in [control.fs(), control.vsock_device(), control.initramfs()] {
            std::os::unix::fs::chown(&file, owner, owner)
                .map_err(|e| format!("giving `{}` to the VMM: {e}", file.display()))?;
        }
        let jail = Jail {
            cgroup_procs: cgroup.procs_files(),
            uid: base,
            gid: base,
            kernel: self.kernel.path.clone(),
            control: spec.layout.control.clone(),
            kvm: self.accel == Accel::Kvm,
        };
        let mut qemu = Command::new(&spec.guest);
        qemu.arg("jail")
            .arg(&self.programs.qemu)
            .args(self.qemu_args(memory, vcpus))
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(stderr()?)
            .stderr(stderr()?);
        let mut vmm = spawn(&mut qemu, "qemu-system-x86_64")?;
        let mut stdin = vmm.stdin.take().ok_or("the VMM's jail has no stdin")?;
        let sent = stdin.write_all(&protocol::json_line(&jail)).await;
        drop(stdin);
        if let Err(e) = sent {
            let _ = vmm.start_kill();
            return Err(format!("sending the VMM's jail: {e}"));
        }
        let agent = GuestClient::new(&spec.layout.socket());
        let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
        // The agent's channel is dialled once the agent says on the console that it serves:
        // connections to a guest whose vsock device is not yet up go to the vsock daemon
        // before the guest can take them.
        let said_ready = || {
            let log = fs::read(&spec.log).unwrap_or_default();
            let said = log.get(log_start as usize..).unwrap_or_default();
            String::from_utf8_lossy(said).contains(boot::READY_LINE)
        };
        loop {
            if said_ready() && agent.is_up(crate::client::ANSWER_TIMEOUT).await {
                return Ok(vmm);
            }
            if let Ok(Some(status)) = vmm.try_wait() {
                return Err(format!("the VMM exited ({status}) before the agent served"));
            }
            for (child, name) in started.iter_mut().zip(["virtiofsd", "vhost-device-vsock"]) {
                if let Ok(Some(status)) = child.try_wait() {
                    let _ = vmm.start_kill();
                    return Err(format!("{name} exited ({status}) before the agent served"));
                }
            }
            if tokio::time::Instant::now() > deadline {
                let _ = vmm.start_kill();
                let _ = vmm.wait().await;
                return Err(format!("the agent was not serving after {BOOT_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The VMM's command line, with the paths of its jail: [`Microvm::machine_args`]
    /// booting the agent, plus virtio-fs, vsock and an entropy source, and a QMP socket;
    /// nothing else: no NIC.
    fn qemu_args(&self, memory: u64, vcpus: u32) -> Vec<String> {
        let control = Control(Path::new(jail::CONTROL));
        let mut args = self.machine_args(
            memory,
            vcpus,
            Path::new(jail::KERNEL),
            &control.initramfs(),
            &["/init", INIT_ARG],
        );
        let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
        push(&[
            "-chardev",
            &format!("socket,id=fs,path={}", control.fs().display()),
            "-device",
            &format!("vhost-user-fs-device,chardev=fs,tag={ROOT_TAG}"),
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=vsock,path={}", control.vsock_device().display()),
            "-device",
            "vhost-user-vsock-device,chardev=vsock",
        ]);
        push(&["-device", "virtio-rng-device"]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", control.qmp().display()),
        ]);
        args
    }

    /// A `microvm` machine with `memory` bytes that QEMU shares with the vhost-user daemons
    /// and `vcpus`, no firmware and no default devices, booting `kernel` straight (PVH)
    /// with `initramfs`, whose `init` (its path, then its arguments: words the kernel does
    /// not know, which it passes on; not after `--`, since QEMU appends the virtio-mmio
    /// devices to the command line) runs first; the serial console on standard output. The guest's reset
    /// ends QEMU (`-no-reboot`).
    pub fn machine_args(
        &self,
        memory: u64,
        vcpus: u32,
        kernel: &Path,
        initramfs: &Path,
        init: &[&str],
    ) -> Vec<String> {
        let memory_mib = memory.div_ceil(1 << 20);
        let mut cmdline = vec!["console=ttyS0", "reboot=t", "panic=-1", "quiet"];
        let rdinit = format!("rdinit={}", init[0]);
        cmdline.push(&rdinit);
        cmdline.extend_from_slice(&init[1..]);
        let accel = match self.accel {
            Accel::Kvm => "kvm".to_owned(),
            Accel::Tcg => format!("tcg,tb-size={TCG_CACHE_MIB}"),
        };
        let mut args: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-M",
            // TCG needs the PIT and the RTC to calibrate the guest's clock.
            "microvm,x-option-roms=off,acpi=off,isa-serial=on,auto-kernel-cmdline=on",
            // QEMU's own seccomp filter: no obsolete calls, no change of identity, no new
            // processes, no scheduler or resource changes.
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-accel",
            &accel,
            "-cpu",
            if self.accel == Accel::Kvm {
                "host"
            } else {
                "max"
            },
        ]
        .map(str::to_owned)
        .to_vec();
        let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
        push(&["-smp", &vcpus.to_string(), "-m", &format!("{memory_mib}M")]);
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
            "-numa",
            "node,memdev=mem",
        ]);
        push(&[
            "-kernel",
            &kernel.display().to_string(),
            "-initrd",
            &initramfs.display().to_string(),
            "-append",
            &cmdline.join(" "),
        ]);
        push(&["-serial", "stdio"]);
        args
    }
}

/// Asks the VMM of the sandbox whose control directory is `control` to quit, over QMP:
/// the way to end a guest whose agent no longer answers. `Ok` when QEMU took the command;
/// an error when no VMM serves there.
pub async fn quit(control: &Path) -> io::Result<()> {
    // A VMM blocked on a stalled vhost-user daemon does not answer: bounded.
    tokio::time::timeout(crate::client::ANSWER_TIMEOUT, ask_quit(control))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the VMM did not answer QMP"))?
}

async fn ask_quit(control: &Path) -> io::Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let stream = tokio::net::UnixStream::connect(Control(control).qmp()).await?;
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let mut expect = async |what: &str| match lines.next_line().await? {
        Some(line) if line.contains(what) => Ok(()),
        other => Err(io::Error::other(format!(
            "QMP answered {other:?}, not `{what}`"
        ))),
    };
    expect("\"QMP\"").await?;
    writer
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .await?;
    expect("\"return\"").await?;
    writer.write_all(b"{\"execute\":\"quit\"}\n").await?;
    expect("\"return\"").await
}

/// A process named by its pid and start time, which no later process with that pid shares.
#[derive(Debug, Clone, Copy)]
struct Identity {
    pid: u32,
    start: u64,
}

impl Identity {
    fn of(pid: u32) -> Option<Identity> {
        Some(Identity {
            pid,
            start: start_time(pid)?,
        })
    }

    fn kill(self) {
        if start_time(self.pid) == Some(self.start) {
            let _ = crate::sys::kill(self.pid, libc::SIGKILL);
        }
    }
}

/// Field 22 of `/proc/PID/stat`, counted after the command name (which may hold spaces).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Ends the VMM once `daemon` (virtiofsd, the vsock daemon) has exited: the guest's files
/// or channel are gone, so the sandbox is, and the VMM's end is what the daemon watches.
fn watch(mut daemon: Child, vmm: Identity) {
    tokio::spawn(async move {
        let _ = daemon.wait().await;
        vmm.kill();
    });
}

fn open_log(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(path)
}

/// The guest's part of the spec.
fn boot_of(spec: &Spec) -> Boot {
    Boot {
        hostname: spec.hostname.clone(),
        tmp_bytes: spec.tmp_bytes,
        workspace: spec.workspace.as_ref().map(|w| w.path.clone()),
        network: spec.network.clone(),
        env: spec.env.clone(),
    }
}

fn spawn(command: &mut Command, name: &str) -> Result<Child, String> {
    command
        // Its own process group: a Ctrl-C in the daemon's terminal is not the sandbox's.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| format!("cannot run `{name}`: {e}"))
}

fn join(cgroup: &Cgroup, child: &Child) -> Result<(), String> {
    let pid = child.id().ok_or("a process exited at once")?;
    for procs in cgroup.procs_files() {
        fs::write(&procs, pid.to_string())
            .map_err(|e| format!("joining the cgroup {}: {e}", procs.display()))?;
    }
    Ok(())
}

/// Waits until `socket` exists (its daemon listens), or the daemon has exited.
async fn wait_for_socket(socket: &Path, child: &mut Child, name: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited ({status})"));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{name} made no socket in 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Writes the initramfs: the agent as `/init`, its [`Boot`], `/dev/console` for its
/// messages, and the directory the root filesystem is mounted on. An uncompressed cpio
/// (`newc`): nothing to decompress at boot.
fn write_initramfs(path: &Path, guest: &Path, boot: &Boot) -> io::Result<()> {
    let agent = fs::read(guest)?;
    let boot = serde_json::to_vec(boot)?;
    let mut cpio = Cpio::default();
    cpio.entry("dev", 0o040755, 0, &[]);
    cpio.entry("dev/console", 0o020600, (5 << 8) | 1, &[]);
    cpio.entry("root", 0o040755, 0, &[]);
    cpio.entry("init", 0o100755, 0, &agent);
    cpio.entry(boot::BOOT_FILE.trim_start_matches('/'), 0o100600, 0, &boot);
    cpio.entry("TRAILER!!!", 0, 0, &[]);
    let partial = path.with_extension("partial");
    let mut file = fs::File::create(&partial)?;
    file.write_all(&cpio.bytes)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    drop(file);
    fs::rename(partial, path)
}

/// A cpio archive in the `newc` format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) {
        self.inode += 1;
        let (rmajor, rminor) = (rdev >> 8, rdev & 0xff);
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let fields = [
            self.inode,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rmajor,
            rminor,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_is_booted_only_when_its_sha256_matches_its_pin() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Kernel::find(dir.path()).unwrap_err();
        assert!(missing.message.starts_with("There is no guest kernel in"));
        assert!(missing.help.contains("scripts/build-guest-kernel"));

        fs::write(dir.path().join("vmlinux"), b"kernel").unwrap();
        let pin = hex::encode(Sha256::digest(b"kernel"));
        let info = format!(
            "release 6.12.118-aistack\nsha256 {pin}\nsource linux-source-6.12 6.12.118-1\nconfig scripts/guest-kernel.config abc\n"
        );
        fs::write(dir.path().join("build-info"), &info).unwrap();
        let kernel = Kernel::find(dir.path()).unwrap();
        assert_eq!(kernel.sha256, pin);
        assert_eq!(
            kernel.origin,
            "6.12.118-aistack, built from linux-source-6.12 6.12.118-1 with scripts/guest-kernel.config abc"
        );

        fs::write(dir.path().join("vmlinux"), b"another kernel").unwrap();
        let changed = Kernel::find(dir.path()).unwrap_err();
        assert!(
            changed
                .message
                .contains(&format!("not the {pin} it is pinned by")),
            "{}",
            changed.message
        );
    }

    #[test]
    fn the_initramfs_is_a_newc_archive_the_kernel_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF agent").unwrap();
        let boot = Boot {
            hostname: "box".into(),
            tmp_bytes: 1 << 20,
            workspace: None,
            network: None,
            env: Vec::new(),
        };
        let path = dir.path().join("initramfs");
        write_initramfs(&path, &agent, &boot).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&path)
            .output()
            .expect("cpio is installed");
        let listing = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(names, ["dev", "dev/console", "root", "init", "boot.json"]);
        assert!(
            listing.lines().nth(1).unwrap().starts_with("crw-------"),
            "{listing}"
        );
        assert!(
            listing.lines().nth(3).unwrap().starts_with("-rwxr-xr-x"),
            "{listing}"
        );
    }
}
