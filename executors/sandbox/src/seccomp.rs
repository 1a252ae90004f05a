//! The seccomp filter every command in a sandbox runs under: a deny list of the system
//! calls that reach past the sandbox (mounts, modules, kexec, bpf, ptrace, keys, new
//! namespaces, raw kernel interfaces, io_uring, vsock, the x32 ABI; in a microVM, whose
//! kernel is its own, mounts, namespaces, bpf and keys are allowed). Everything else is
//! allowed; as in Docker's default profile, the calls that matter here are refused with
//! `EPERM`. Where ours differs from Docker's is in ARCHITECTURE.md ("Threat model").

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// Refused with `EPERM` whatever their arguments, on every kernel (and [`GUEST_ONLY`] on
/// the host's).
const DENIED: &[libc::c_long] = &[
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_perf_event_open,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_clock_adjtime,
    libc::SYS_vhangup,
    // io_uring runs operations in kernel threads that seccomp never sees.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Refused on a shared host kernel, allowed in a microVM, whose kernel is the sandbox's own:
/// what a container runtime inside needs (mounts, namespaces, cgroup device filters, the
/// session keyring), and the kernel's log, which is the guest's own.
const GUEST_ONLY: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_syslog,
];

/// Whose kernel the sandbox's commands call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The host's (the namespace backend): everything in the deny list is refused.
    Host,
    /// The microVM's own: [`GUEST_ONLY`] and new namespaces are allowed, so Docker runs
    /// inside; the host's side of the guest's files refuses set-id bits itself
    /// ([`set_id_filter`]), since guest root can undo anything inside.
    Guest,
}

/// Answered `ENOSYS`, so that the C library falls back to a call this filter can inspect:
/// `clone3` passes its flags in memory (`clone` in a register), `openat2` its mode (`openat`
/// in a register).
const NOT_THERE: &[libc::c_long] = &[libc::SYS_clone3, libc::SYS_openat2];

/// `clone` flags that make a new namespace.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The `personality` values allowed, as Docker's profile: Linux, 32-bit Linux, their
/// `UNAME26` forms, and the query.
const PERSONALITIES: &[u32] = &[0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Whether commands may set the set-uid and set-gid bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetId {
    /// They may (a template build: its files stay in the sandbox's id range).
    Allowed,
    /// They may not: the sandbox has a workspace, whose files are its owner's on the host,
    /// where such a bit would give any local user the owner's privileges.
    Refused,
}

fn arch() -> TargetArch {
    match std::env::consts::ARCH {
        "aarch64" => TargetArch::aarch64,
        "riscv64" => TargetArch::riscv64,
        _ => TargetArch::x86_64,
    }
}

/// One argument condition: `(argument & mask) == value`, on 64 bits.
fn masked(arg: u8, mask: u64, value: u64) -> SeccompCondition {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .expect("valid condition")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("at least one condition")
}

/// Rules matching a mode argument (`mode_arg`) with the set-uid or set-gid bit, when the
/// call creates a file (`flags_arg`, if the call has flags, has `O_CREAT` or `O_TMPFILE`).
fn set_id_rules(mode_arg: u8, flags_arg: Option<u8>) -> Vec<SeccompRule> {
    let bits = [libc::S_ISUID, libc::S_ISGID].map(u64::from);
    let creating = match flags_arg {
        None => vec![None],
        Some(arg) => [libc::O_CREAT, libc::O_TMPFILE]
            .map(|flag| Some(masked(arg, flag as u64, flag as u64)))
            .to_vec(),
    };
    let mut rules = Vec::new();
    for bit in bits {
        for create in &creating {
            let mut conditions = vec![masked(mode_arg, bit, bit)];
            conditions.extend(create.clone());
            rules.push(rule(conditions));
        }
    }
    rules
}

/// The compiled filters, in the order they are installed (the kernel applies the most
/// restrictive answer of all of them).
///
/// Several programs because a seccompiler filter has one action: the deny list answers
/// `EPERM` and [`NOT_THERE`] `ENOSYS`; the last program refuses the x32 ABI, whose
/// calls carry the x86-64 architecture and a number with bit 30 set, which no rule of the
/// others names.
pub fn programs(set_id: SetId, kernel: Kernel) -> Vec<BpfProgram> {
    let host_only = match kernel {
        Kernel::Host => GUEST_ONLY,
        Kernel::Guest => &[],
    };
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = (DENIED.iter().chain(host_only))
        .map(|&call| (call, Vec::new()))
        .collect();
    if kernel == Kernel::Host {
        let clone_rules = NAMESPACE_FLAGS
            .iter()
            .map(|&flag| rule(vec![masked(0, flag as u64, flag as u64)]))
            .collect();
        denied.insert(libc::SYS_clone, clone_rules);
    }
    // vsock ignores network namespaces: it would reach the host and other guests.
    let vsock = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_VSOCK as u64,
    )
    .expect("valid condition");
    denied.insert(libc::SYS_socket, vec![rule(vec![vsock])]);
    let other_personality = PERSONALITIES
        .iter()
        .map(|&p| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, u64::from(p))
                .expect("valid condition")
        })
        .collect();
    denied.insert(libc::SYS_personality, vec![rule(other_personality)]);
    if set_id == SetId::Refused {
        denied.extend(set_id_calls());
    }
    let not_there: BTreeMap<i64, Vec<SeccompRule>> =
        NOT_THERE.iter().map(|&call| (call, Vec::new())).collect();
    let mut programs: Vec<BpfProgram> = [(denied, libc::EPERM), (not_there, libc::ENOSYS)]
        .into_iter()
        .map(|(rules, errno)| {
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno as u32),
                arch(),
            )
            .expect("the filter's rules are valid");
            filter.try_into().expect("the filter compiles")
        })
        .collect();
    if arch() == TargetArch::x86_64 {
        programs.push(no_x32());
    }
    programs
}

/// The calls that set a mode, each with its rules matching a set-uid or set-gid bit.
fn set_id_calls() -> impl Iterator<Item = (i64, Vec<SeccompRule>)> {
    [
        (libc::SYS_chmod, 1, None),
        (libc::SYS_fchmod, 1, None),
        (libc::SYS_fchmodat, 2, None),
        (libc::SYS_fchmodat2, 2, None),
        (libc::SYS_mknod, 1, None),
        (libc::SYS_mknodat, 2, None),
        (libc::SYS_creat, 1, None),
        (libc::SYS_open, 2, Some(1)),
        (libc::SYS_openat, 3, Some(2)),
    ]
    .into_iter()
    .map(|(call, mode, flags)| (call, set_id_rules(mode, flags)))
}

/// A filter that refuses set-uid and set-gid bits with `EPERM` and allows everything
/// else: for the host's server of a microVM's files (virtiofsd), which applies the guest's
/// modes as host root.
pub fn set_id_filter() -> BpfProgram {
    let filter = SeccompFilter::new(
        set_id_calls().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )
    .expect("the filter's rules are valid");
    filter.try_into().expect("the filter compiles")
}

/// `AUDIT_ARCH_X86_64`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// The bit that marks a system call number of the x32 ABI.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Refuses every x32 call with `EPERM` and allows the rest (the other programs decide).
fn no_x32() -> BpfProgram {
    const LOAD_WORD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JUMP_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JUMP_SET: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let op = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.arch
        op(LOAD_WORD, 4, 0, 0),
        op(JUMP_EQUAL, AUDIT_ARCH_X86_64, 0, 3),
        // seccomp_data.nr
        op(LOAD_WORD, 0, 0, 0),
        op(JUMP_SET, X32_SYSCALL_BIT, 0, 1),
        op(RETURN, RET_ERRNO | libc::EPERM as u32, 0, 0),
        op(RETURN, RET_ALLOW, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile() {
        for kernel in [Kernel::Host, Kernel::Guest] {
            for set_id in [SetId::Allowed, SetId::Refused] {
                let programs = programs(set_id, kernel);
                assert_eq!(programs.len(), 3);
                assert!(programs.iter().all(|p| !p.is_empty()));
            }
        }
        let host = |set_id| programs(set_id, Kernel::Host)[0].len();
        assert!(host(SetId::Refused) > host(SetId::Allowed));
        assert!(programs(SetId::Refused, Kernel::Guest)[0].len() < host(SetId::Refused));
        assert!(!set_id_filter().is_empty());
    }
}
