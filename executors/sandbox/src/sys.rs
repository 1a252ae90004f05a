//! The system calls sandboxes need that std does not wrap: namespaces, mounts, identity
//! changes, process reaping, signals and terminals. Every `unsafe` block of the crate is
//! here; the rest of the crate, and the guest agent, call these safe wrappers.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

use crate::protocol::{ExitStatus, WindowSize};

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// Who a confined command runs as, and what it may still do.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// The user id it runs as, in the sandbox's user namespace.
    pub uid: u32,
    /// The group id it runs as.
    pub gid: u32,
    /// Its supplementary group ids, in place of the agent's.
    pub groups: Vec<u32>,
    /// Make the command a session leader with its standard input as the controlling
    /// terminal (TTY mode).
    pub controlling_tty: bool,
    /// Drop every capability (the bounding set too); a non-root user gets this.
    pub drop_capabilities: bool,
    /// The compiled seccomp filters, installed last, just before `execve`.
    pub seccomp: Vec<seccompiler::BpfProgram>,
}

/// Spawns `command` in its own session, as `confinement` says, with `no_new_privs` set.
pub fn spawn_confined(command: &mut Command, confinement: Confinement) -> io::Result<Child> {
    // SAFETY: the closure runs in the forked child before `execve`. It calls only
    // async-signal-safe system calls (setsid, open, write, close, ioctl, setgroups,
    // setres[ug]id, prctl, seccomp through seccompiler, which builds its `sock_fprog` on
    // the stack) on data moved into the closure before the fork; it allocates only to
    // report an error (`io::Error::other`), after which the child exits.
    unsafe {
        command.pre_exec(move || {
            check(libc::setsid())?;
            // The agent runs unkillable by the OOM killer; its commands must not inherit
            // that, or a memory hog could never be stopped.
            let adj = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if adj >= 0 {
                libc::write(adj, c"0".as_ptr().cast(), 1);
                libc::close(adj);
            }
            if confinement.controlling_tty {
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            check(libc::setgroups(
                confinement.groups.len(),
                confinement.groups.as_ptr(),
            ))?;
            if confinement.drop_capabilities {
                // The bounding set would let a set-uid binary get capabilities back.
                // Dropping needs CAP_SETPCAP, which setresuid to a non-zero uid takes
                // away: so before it. The loop ends at the first capability this kernel
                // does not know (EINVAL); any other failure fails the command.
                for cap in 0..=libc::c_ulong::from(63u8) {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == -1 {
                        if *libc::__errno_location() == libc::EINVAL {
                            break;
                        }
                        return Err(io::Error::last_os_error());
                    }
                }
                check(libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL,
                    0,
                    0,
                    0,
                ))?;
            }
            check(libc::setresgid(
                confinement.gid,
                confinement.gid,
                confinement.gid,
            ))?;
            // After setresuid to a non-zero uid the effective and permitted sets are empty.
            check(libc::setresuid(
                confinement.uid,
                confinement.uid,
                confinement.uid,
            ))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            for program in &confinement.seccomp {
                seccompiler::apply_filter(program).map_err(io::Error::other)?;
            }
            Ok(())
        })
    };
    command.spawn()
}

/// Waits for any child. `None` when there is none.
pub fn wait_any() -> io::Result<Option<(u32, ExitStatus)>> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes only to `status`, a valid local.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid > 0 {
            return Ok(Some((pid as u32, decode_status(status))));
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(error),
        }
    }
}

/// Waits for one child.
pub fn wait_pid(pid: u32) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes only to `status`, a valid local.
        let result = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if result > 0 {
            return Ok(decode_status(status));
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}

fn decode_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(status) {
        ExitStatus {
            code: Some(libc::WEXITSTATUS(status)),
            signal: None,
        }
    } else {
        ExitStatus {
            code: None,
            signal: Some(libc::WTERMSIG(status)),
        }
    }
}

/// Sends `signal` to a process group.
pub fn kill_group(pgid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(-(pgid as libc::pid_t), signal) }).map(drop)
}

/// Sends `signal` to every process this one may signal but itself (and PID 1). Only the
/// init of a PID namespace calls this, where "every process" is the sandbox.
pub fn kill_every_other(signal: i32) {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(-1, signal) };
}

/// Sends `signal` to one process.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(pid as libc::pid_t, signal) }).map(drop)
}

fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset adds to it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks `signals` in this thread and the threads it starts afterwards, so that one
/// thread can take them with [`wait_signal`]. Children get an empty mask back: std
/// resets it before `execve`.
pub fn block_signals(signals: &[i32]) -> io::Result<()> {
    let set = signal_set(signals);
    // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
    let result = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if result != 0 {
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(())
}

/// Waits for one of `signals` (blocked beforehand with [`block_signals`]).
pub fn wait_signal(signals: &[i32]) -> io::Result<i32> {
    let set = signal_set(signals);
    let mut signal = 0;
    // SAFETY: `set` is initialised and `signal` is a valid local to write to.
    let result = unsafe { libc::sigwait(&set, &mut signal) };
    if result != 0 {
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(signal)
}

/// A new pseudo-terminal pair of the given size: (controller, terminal).
pub fn open_pty(size: WindowSize) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut controller = -1;
    let mut terminal = -1;
    let winsize = winsize(size);
    // SAFETY: openpty writes the two descriptors; the name pointer may be null, the
    // termios pointer is null (defaults) and `winsize` is a valid struct.
    check(unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            &winsize,
        )
    })?;
    // SAFETY: openpty succeeded, so both are new descriptors that nothing else owns.
    let pair = unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    };
    for fd in [&pair.0, &pair.1] {
        // SAFETY: fcntl on a descriptor we own.
        check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok(pair)
}

fn winsize(size: WindowSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Tells a terminal its new size (the kernel sends SIGWINCH to its foreground group).
pub fn set_window_size(controller: &OwnedFd, size: WindowSize) -> io::Result<()> {
    let winsize = winsize(size);
    // SAFETY: TIOCSWINSZ reads a `winsize` from a valid pointer.
    check(unsafe { libc::ioctl(controller.as_raw_fd(), libc::TIOCSWINSZ, &winsize) }).map(drop)
}

// ---- namespace setup ----

/// `unshare(2)` with `CLONE_NEW*` flags.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare with namespace flags only changes this process's namespaces; the
    // caller is single-threaded (the setup process), as CLONE_NEWUSER requires.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// Which side of a [`fork`] this process is.
pub enum Fork {
    /// The new process.
    Child,
    /// The parent, with the child's pid as this process's PID namespace numbers it.
    Parent(u32),
}

/// `fork(2)`. Only for the single-threaded setup process.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the setup process has one thread, so the child's copy of memory is
    // consistent (no lock held by another thread).
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid as u32)
    })
}

/// Become root of the current user namespace (uid and gid 0, no supplementary groups).
pub fn become_root() -> io::Result<()> {
    // SAFETY: plain identity system calls on integers.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(0, 0, 0))?;
        check(libc::setresuid(0, 0, 0))?;
    }
    Ok(())
}

/// Becomes `uid`:`gid` with `groups`, which leaves no capabilities, and sets
/// `no_new_privs`, so nothing it executes gains privilege.
pub fn become_user(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: identity system calls on integers; the groups' pointer and length describe
    // `groups`.
    unsafe {
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setresgid(gid, gid, gid))?;
        check(libc::setresuid(uid, uid, uid))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

/// The process gets SIGKILL when its parent exits.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }).map(drop)
}

/// `mount(2)`: mounts `source` on `target` with the filesystem type, `MS_*` flags and options
/// given.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = CString::new(source)?;
    let target = cstring(target)?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    })
    .map(drop)
}

/// Makes the working directory the root: `pivot_root(".", ".")`, then detaches the old
/// root stacked beneath it, as runc does.
pub fn pivot_to_cwd() -> io::Result<()> {
    let dot = CString::new(".")?;
    // SAFETY: both arguments are valid NUL-terminated strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as i32)?;
    // SAFETY: as above.
    check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })?;
    Ok(())
}

/// `sethostname(2)`: names the host of the current UTS namespace.
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// The value of extended attribute `name` of `path` itself (not a link's target), if it
/// has one of at most 64 bytes.
pub fn xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut value = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer's
    // pointer and length describe `value`.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    usize::try_from(n).ok().map(|n| value[..n].to_vec())
}

/// Brings up `lo`, the network namespace's only interface.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a socket() call with constant arguments; the descriptor is owned at once.
    let socket = unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the `ifreq` we pass.
    unsafe {
        check(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut request,
        ))?;
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &request,
        ))?;
    }
    Ok(())
}

/// This process's pid, as its PID namespace numbers it.
pub fn pid() -> u32 {
    std::process::id()
}

// ---- detached mounts (the new mount API) ----

fn cstr(text: &str) -> io::Result<CString> {
    CString::new(text)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a string with a NUL byte"))
}

/// Takes ownership of a descriptor a system call returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(fd as libc::c_int)?;
    // SAFETY: the system call succeeded, so `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An overlay of `lower` (top first) under `upper`, with `work` on the same mount as
/// `upper`, as a detached mount for [`attach`]. It reads and writes overlayfs's metadata
/// as `user.overlay.*` (`userxattr`), as the layers built in user namespaces have it.
/// The paths given are what the overlay shows in `mountinfo`.
pub fn overlay(lower: &[&Path], upper: &Path, work: &Path) -> io::Result<OwnedFd> {
    let kind = cstr("overlay")?;
    // SAFETY: fsopen reads a NUL-terminated name.
    let context =
        owned(unsafe { libc::syscall(libc::SYS_fsopen, kind.as_ptr(), libc::FSOPEN_CLOEXEC) })?;
    let set = |key: &str, value: Option<&Path>| -> io::Result<()> {
        let key = cstr(key)?;
        let value = value.map(cstring).transpose()?;
        let command = match value {
            Some(_) => libc::FSCONFIG_SET_STRING,
            None => libc::FSCONFIG_SET_FLAG,
        };
        // SAFETY: the key and value are NUL-terminated strings (or null for a flag) that
        // outlive the call; the descriptor is the open filesystem context.
        let result = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                command,
                key.as_ptr(),
                value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr()),
                0,
            )
        };
        check(result as libc::c_int).map(drop)
    };
    for layer in lower {
        set("lowerdir+", Some(layer))?;
    }
    set("upperdir", Some(upper))?;
    set("workdir", Some(work))?;
    set("userxattr", None)?;
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    } as libc::c_int)?;
    // SAFETY: fsmount takes the context's descriptor and integer flags.
    owned(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            libc::MOUNT_ATTR_NODEV,
        )
    })
}

/// A user namespace whose uid and gid maps are `uid_map` and `gid_map` (`/proc/PID/uid_map`
/// lines), held by the returned descriptor: an idmapped mount's mapping. Its one process
/// is gone when this returns. Needs root of the caller's namespace (to write any map).
pub fn user_namespace(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    let (ready_read, ready_write) = pipe()?;
    let (done_read, done_write) = pipe()?;
    // SAFETY: the child only calls unshare, read, write and _exit (async-signal-safe) on
    // descriptors made before the fork, so forking from a threaded process is sound.
    let child = check(unsafe { libc::fork() })?;
    if child == 0 {
        // SAFETY: as above; the child never returns into Rust code.
        unsafe {
            let code = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0
            } else {
                1
            };
            libc::write(ready_write.as_raw_fd(), [code as u8].as_ptr().cast(), 1);
            let mut byte = 0u8;
            libc::read(done_read.as_raw_fd(), (&raw mut byte).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_write);
    drop(done_read);
    let made = (|| {
        let mut status = [1u8];
        std::io::Read::read_exact(&mut std::fs::File::from(ready_read), &mut status)?;
        if status[0] != 0 {
            return Err(io::Error::other(
                "the helper could not make a user namespace",
            ));
        }
        let proc = format!("/proc/{child}");
        std::fs::write(format!("{proc}/uid_map"), uid_map)?;
        std::fs::write(format!("{proc}/setgroups"), "deny")?;
        std::fs::write(format!("{proc}/gid_map"), gid_map)?;
        std::fs::File::open(format!("{proc}/ns/user")).map(OwnedFd::from)
    })();
    // The child holds a copy of the write end too, so it waits for a byte, not for EOF.
    // SAFETY: a one-byte write from a valid local to a descriptor this function owns.
    unsafe { libc::write(done_write.as_raw_fd(), [0u8].as_ptr().cast(), 1) };
    wait_pid(child as u32)?;
    made
}

/// A detached copy of the directory `dir` (not the mounts below it) whose file owners are
/// seen through `userns`'s mapping, and on which set-uid bits and devices mean nothing:
/// the workspace as a sandbox sees it.
pub fn idmapped_bind(dir: &OwnedFd, userns: &OwnedFd) -> io::Result<OwnedFd> {
    let empty = cstr("")?;
    // SAFETY: open_tree reads an empty NUL-terminated path with AT_EMPTY_PATH, so it acts
    // on `dir` itself.
    let tree = owned(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            empty.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    })?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` is a valid mount_attr whose size is passed; the path is empty with
    // AT_EMPTY_PATH, so the call acts on `tree` itself.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &raw const attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    } as libc::c_int)?;
    Ok(tree)
}

/// A detached copy of the mounts at and below `path`, for [`attach`] elsewhere.
pub fn detached_bind(path: &Path) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
    // SAFETY: a NUL-terminated path that outlives the call; the descriptor is owned at once.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })
}

/// Attaches a detached mount ([`overlay`], [`idmapped_bind`]) at `target` in this process's
/// mount namespace.
pub fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    let empty = cstr("")?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    } as libc::c_int)
    .map(drop)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

// ---- probes: what a sandbox must refuse, tried from inside by `aistack-guest check` ----

/// A system call a sandbox's commands must not be able to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `getpid` through the x32 ABI (number with bit 30 set).
    X32,
    /// An `AF_VSOCK` socket, which no network namespace confines.
    Vsock,
    /// An io_uring instance, whose operations seccomp does not see.
    IoUring,
    /// `pidfd_getfd` on this very process.
    PidfdGetfd,
    /// `process_madvise` on this very process.
    ProcessMadvise,
    /// `kcmp` of this process with itself.
    Kcmp,
    /// `personality(ADDR_NO_RANDOMIZE)`, which turns address randomisation off.
    Personality,
}

/// Makes the probe's call with harmless arguments and undoes its effect: `Ok` when the
/// kernel accepted it, else its error.
pub fn probe(probe: Probe) -> io::Result<()> {
    // SAFETY: each call passes integers, a zeroed struct it may write, or descriptors this
    // function owns and closes; none touches memory beyond what it is given.
    unsafe {
        match probe {
            Probe::X32 => {
                const X32_GETPID: libc::c_long = 0x4000_0000 | 39;
                check(libc::syscall(X32_GETPID) as libc::c_int).map(drop)
            }
            Probe::Vsock => {
                let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                check(fd).map(|fd| drop(OwnedFd::from_raw_fd(fd)))
            }
            Probe::IoUring => {
                let mut params = [0u8; 120];
                let fd = libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr());
                owned(fd).map(drop)
            }
            Probe::PidfdGetfd => {
                let pidfd = owned(libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0))?;
                let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), 0, 0);
                owned(fd).map(drop)
            }
            Probe::ProcessMadvise => {
                let pidfd = owned(libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0))?;
                let none: *const libc::iovec = std::ptr::null();
                let result = libc::syscall(
                    libc::SYS_process_madvise,
                    pidfd.as_raw_fd(),
                    none,
                    0,
                    libc::MADV_COLD,
                    0,
                );
                check(result as libc::c_int).map(drop)
            }
            Probe::Kcmp => {
                const KCMP_FILE: libc::c_long = 0;
                let pid = libc::getpid();
                check(libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, 0, 0) as libc::c_int)
                    .map(drop)
            }
            Probe::Personality => {
                const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;
                let previous = check(libc::personality(0xffff_ffff))?;
                check(libc::personality(ADDR_NO_RANDOMIZE))?;
                libc::personality(previous as libc::c_ulong);
                Ok(())
            }
        }
    }
}

// ---- the microVM guest ----

/// The vsock address of the host, as a guest dials it.
pub const VSOCK_HOST_CID: u32 = libc::VMADDR_CID_HOST;

fn vsock_address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: `sockaddr_vm` is plain integers, for which all zeroes is a valid value.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    address.svm_cid = cid;
    address.svm_port = port;
    address
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with integer arguments; a returned descriptor is ours alone.
    let fd =
        check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A vsock listener on `port` of this guest, for any peer.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    let socket = vsock_socket()?;
    let address = vsock_address(libc::VMADDR_CID_ANY, port);
    let size = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: the pointer and size describe `address`, which outlives the call.
    check(unsafe { libc::bind(socket.as_raw_fd(), (&raw const address).cast(), size) })?;
    // SAFETY: listen(2) on a descriptor this function owns.
    check(unsafe { libc::listen(socket.as_raw_fd(), 128) })?;
    Ok(socket)
}

/// The next connection to a [`vsock_listen`] listener, as a [`UnixStream`]: a connected
/// vsock socket answers every call the agent makes of a stream (read, write, shutdown,
/// duplication, timeouts); only its address is of another family, and nothing asks it.
///
/// [`UnixStream`]: std::os::unix::net::UnixStream
pub fn vsock_accept(listener: &OwnedFd) -> io::Result<std::os::unix::net::UnixStream> {
    // SAFETY: null address pointers ask for no peer address; the descriptor is valid.
    let fd = check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) }.into())
}

/// A vsock connection to `port` of `cid` (the host is [`VSOCK_HOST_CID`]), as a
/// [`UnixStream`] ([`vsock_accept`] says why that type).
///
/// [`UnixStream`]: std::os::unix::net::UnixStream
pub fn vsock_connect(cid: u32, port: u32) -> io::Result<std::os::unix::net::UnixStream> {
    let socket = vsock_socket()?;
    let address = vsock_address(cid, port);
    let size = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: the pointer and size describe `address`, which outlives the call.
    check(unsafe { libc::connect(socket.as_raw_fd(), (&raw const address).cast(), size) })?;
    Ok(socket.into())
}

/// Clears close-on-exec of `fd`, so that a program this process executes inherits it.
pub fn keep_on_exec(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller holds, with integer arguments.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) }).map(drop)
}

/// Makes the working directory the root where `pivot_root` cannot (the initramfs is the
/// kernel's rootfs): moves its mount onto `/` and changes root into it, as `switch_root`
/// does.
pub fn move_root_to_cwd() -> io::Result<()> {
    mount(".", Path::new("/"), None, libc::MS_MOVE, None)?;
    let dot = CString::new(".")?;
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")
}

/// Ends the guest: the kernel resets the machine, which the VMM (started with
/// `-no-reboot`) takes as its end. Returns only on failure.
pub fn power_off() -> io::Error {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with a command constant; PID 1 of the guest may call it.
    let _ = unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_RESTART) };
    io::Error::last_os_error()
}
