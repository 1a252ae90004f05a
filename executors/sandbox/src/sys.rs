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
    // setres[ug]id, prctl,
    // seccomp through seccompiler, which builds its `sock_fprog` on the stack) on data
    // moved into the closure before the fork, and allocates nothing.
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
            check(libc::setresgid(
                confinement.gid,
                confinement.gid,
                confinement.gid,
            ))?;
            check(libc::setresuid(
                confinement.uid,
                confinement.uid,
                confinement.uid,
            ))?;
            if confinement.drop_capabilities {
                // After setresuid to a non-zero uid the effective and permitted sets are
                // empty; the bounding set would let a set-uid binary get them back.
                for cap in 0..=libc::c_ulong::from(63u8) {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == -1 {
                        break;
                    }
                }
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL,
                    0,
                    0,
                    0,
                );
            }
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
