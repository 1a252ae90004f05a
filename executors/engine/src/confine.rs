//! The engine process's confinement. An engine parses a model file nobody here wrote (GGUF
//! metadata and tensors that llama.cpp trusts, a Jinja chat template), so it runs with as
//! little as serving needs:
//!
//! - as another user, when the daemon names one (`aistack engine --user`): an id that owns
//!   nothing on the host, with no supplementary groups;
//! - with `no_new_privs`, so nothing it could run regains privileges;
//! - under Landlock, where the kernel has it: no writes anywhere by path, reads only of the
//!   files it holds open (the model) and of [`READABLE`], no TCP, no signals to processes
//!   and no abstract unix sockets outside itself. A kernel without Landlock is reported, not
//!   fatal: the user and seccomp still hold;
//! - under seccomp: the sandboxes' deny list (`aistack_sandbox::seccomp`: mounts, modules,
//!   ptrace, keys, new namespaces…) and what an engine never needs (`exec`, new sockets).
//!
//! Whatever the engine needs by path (its model, chat template and socket) is opened before
//! [`confine`], while it may still traverse a home only root can. A change of user, Landlock
//! and a seccomp filter apply to the calling thread (and the threads it starts later), so
//! [`confine`] must run while the process has one thread: before any async runtime starts.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::str::FromStr;

use landlock::{
    ABI, Access, AccessFs, AccessNet, LandlockStatus, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};
use rustix::process::{Gid, Uid};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The newest Landlock rights asked for; a kernel with an older ABI enforces what it has.
const LANDLOCK_ABI: ABI = ABI::V9;

/// What an engine reads by path besides its model (found by tracing one): the CPU's name,
/// which ggml puts in its device's description. Its model's `/proc/self/fd/N` path is
/// checked as the model itself.
pub const READABLE: &[&str] = &["/proc/cpuinfo"];

/// System calls an engine never makes, refused with `EPERM` on top of the sandboxes' list:
/// running another program, and any new socket (it serves on the one it was given).
const ENGINE_DENIED: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
];

/// The user and group an engine runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl FromStr for User {
    type Err = String;

    /// `UID:GID`, as `aistack engine --user` takes it.
    fn from_str(text: &str) -> Result<User, String> {
        let (uid, gid) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` is not `UID:GID`"))?;
        let id = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("`{s}` in `{text}` is not a numeric id"))
        };
        Ok(User {
            uid: id(uid)?,
            gid: id(gid)?,
        })
    }
}

/// What [`confine`] put in place, for the engine's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    /// The user it runs as now, if it changed.
    pub user: Option<User>,
    /// The Landlock ABI enforced; `None` where the kernel has no Landlock.
    pub landlock: Option<i32>,
}

impl fmt::Display for Confined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.user {
            Some(user) => write!(f, "user {user}")?,
            None => write!(f, "user unchanged")?,
        }
        f.write_str(", no_new_privs, seccomp, ")?;
        match self.landlock {
            Some(abi) => write!(f, "Landlock ABI {abi}"),
            None => f.write_str("no Landlock (the kernel has none)"),
        }
    }
}

/// The engine could not confine itself.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// Other threads would keep the privileges this thread drops.
    #[error("The engine has {threads} threads and can confine itself only while it has one")]
    Threads {
        /// Threads counted in `/proc/self/task`.
        threads: usize,
    },
    /// The user could not be taken on.
    #[error("Cannot run the engine as user `{user}`")]
    User {
        /// The user asked for.
        user: User,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("Cannot set `no_new_privs` on the engine")]
    NoNewPrivs(#[source] io::Error),
    /// The Landlock ruleset could not be built or enforced.
    #[error("Cannot restrict the engine's files with Landlock")]
    Landlock(#[source] landlock::RulesetError),
    /// The seccomp filter could not be built or installed.
    #[error("Cannot install the engine's seccomp filter")]
    Seccomp(#[source] seccompiler::Error),
}

impl ConfineError {
    /// What to do about it.
    #[must_use]
    pub fn help(&self) -> Option<String> {
        match self {
            ConfineError::User { .. } => Some(
                "Only a daemon running as root starts engines as another user; run it as root, or leave out `--user`"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// Confines this process: `user` (if any), `no_new_privs`, Landlock with reads of
/// `readable` (descriptors opened before, e.g. the model) and of [`READABLE`], seccomp.
/// Must be called while the process has one thread.
///
/// # Errors
///
/// [`ConfineError`] for each step that failed; the process is then partly confined and
/// should exit.
pub fn confine(user: Option<User>, readable: &[BorrowedFd<'_>]) -> Result<Confined, ConfineError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
    if threads != 1 {
        return Err(ConfineError::Threads { threads });
    }
    if let Some(user) = user {
        become_user(user).map_err(|source| ConfineError::User { user, source })?;
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| ConfineError::NoNewPrivs(e.into()))?;
    let landlock = restrict_files(readable).map_err(ConfineError::Landlock)?;
    for program in seccomp_programs().map_err(ConfineError::Seccomp)? {
        seccompiler::apply_filter(&program).map_err(ConfineError::Seccomp)?;
    }
    Ok(Confined { user, landlock })
}

/// Groups first (dropping them needs the privilege the uid change gives up), then the gid,
/// then the uid; real, effective and saved ids alike, so none can be taken back.
fn become_user(user: User) -> io::Result<()> {
    let uid = Uid::from_raw(user.uid);
    let gid = Gid::from_raw(user.gid);
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    Ok(())
}

/// Enforces the Landlock ruleset; the ABI enforced, `None` without Landlock.
fn restrict_files(readable: &[BorrowedFd<'_>]) -> Result<Option<i32>, landlock::RulesetError> {
    let read = AccessFs::from_read(LANDLOCK_ABI);
    let files = readable
        .iter()
        .map(|fd| Ok::<_, landlock::RulesetError>(PathBeneath::new(*fd, AccessFs::ReadFile)));
    // A file this kernel lacks is no rule: nothing is read there.
    let dirs: Vec<_> = READABLE
        .iter()
        .filter_map(|path| landlock::PathFd::new(path).ok())
        .map(|fd| Ok::<_, landlock::RulesetError>(PathBeneath::new(fd, read)))
        .collect();
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))?
        .scope(Scope::from_all(LANDLOCK_ABI))?
        .create()?
        .add_rules(files)?
        .add_rules(dirs)?
        .restrict_self()?;
    Ok(match (status.ruleset, status.landlock) {
        (RulesetStatus::NotEnforced, _) => None,
        (_, LandlockStatus::Available { effective_abi, .. }) => Some(effective_abi as i32),
        _ => None,
    })
}

/// The sandboxes' programs, then the engine's own.
fn seccomp_programs() -> Result<Vec<BpfProgram>, seccompiler::Error> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(seccompiler::Error::Backend)?;
    let denied: BTreeMap<i64, Vec<_>> = ENGINE_DENIED
        .iter()
        .map(|&call| (call, Vec::new()))
        .collect();
    let engine = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(seccompiler::Error::Backend)?;
    // An engine writes no file by path (Landlock), so set-id bits are refused too.
    let mut programs = aistack_sandbox::seccomp::programs(
        aistack_sandbox::seccomp::SetId::Refused,
        aistack_sandbox::seccomp::Kernel::Host,
    );
    programs.push(engine.try_into().map_err(seccompiler::Error::Backend)?);
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_read_as_uid_colon_gid() {
        assert_eq!("5:6".parse::<User>(), Ok(User { uid: 5, gid: 6 }));
        assert!(
            "5".parse::<User>()
                .unwrap_err()
                .contains("`5` is not `UID:GID`")
        );
        assert!("a:6".parse::<User>().is_err());
        assert_eq!(User { uid: 1, gid: 2 }.to_string(), "1:2");
    }

    #[test]
    fn the_programs_compile() {
        // The sandboxes' programs, and the engine's own.
        let sandbox = aistack_sandbox::seccomp::programs(
            aistack_sandbox::seccomp::SetId::Refused,
            aistack_sandbox::seccomp::Kernel::Host,
        );
        assert_eq!(seccomp_programs().unwrap().len(), sandbox.len() + 1);
    }
}
