//! The worker's sandbox, entered once the machine is set up and before the guest runs:
//!
//! - **landlock** confines the file system to what the VM needs from then on: its kernel and
//!   initrd (read again on a guest reboot), its disk images, the directories of its own sockets,
//!   the unpacked-kernel cache, and the directories screenshots may be written to. Everything
//!   else, the user's home included, is out of reach.
//! - **seccomp** allows only the system calls in [`ALLOWED_SYSCALLS`], on every thread (the
//!   filter is synchronised to the threads that exist, and inherited by those started later).
//!   Anything else sends SIGSYS; the handler names the call on stderr (the worker's log) and the
//!   worker exits with [`EXIT_SANDBOX_VIOLATION`].
//!
//! Neither needs root. `--no-sandbox` turns both off (for debugging, never by default), and
//! `HANGAR_SANDBOX=log` keeps landlock but only logs unlisted system calls to the kernel log
//! (`dmesg | grep 'type=1326'`), which is how a missing entry is found. RELIABILITY.md has the
//! whole story.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::protocol::SandboxStatus;
use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Exit status of a worker that made a system call its sandbox does not allow.
pub const EXIT_SANDBOX_VIOLATION: i32 = 159;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot set up the file system sandbox (landlock): {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("cannot build the system call filter: {0}")]
    Filter(String),
    #[error("cannot install the system call filter: {0}")]
    Install(String),
    #[error("cannot install the SIGSYS handler: {0}")]
    Signal(std::io::Error),
}

/// How strictly system calls are filtered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    /// Unlisted calls stop the worker.
    Enforce,
    /// Unlisted calls are allowed and logged by the kernel (for finding missing entries).
    Log,
}

/// What the sandbox lets the worker reach.
#[derive(Clone, Debug, Default)]
pub struct SandboxPaths {
    /// Files and directories the worker may read (kernel, initrd, read-only images).
    pub read: Vec<PathBuf>,
    /// Files and directories the worker may read and write (writable images, socket and
    /// screenshot directories, the kernel cache).
    pub read_write: Vec<PathBuf>,
}

/// Every system call the worker makes once set up, on any of its threads. Grouped by purpose;
/// each entry is needed by something named beside it.
pub const ALLOWED_SYSCALLS: &[(&str, i64)] = &[
    // I/O on fds opened during set-up: disks, sockets, eventfds, the serial console.
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    ("preadv2", libc::SYS_preadv2),
    ("pwritev2", libc::SYS_pwritev2),
    ("lseek", libc::SYS_lseek),
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl),
    ("dup", libc::SYS_dup),
    ("ioctl", libc::SYS_ioctl), // KVM, terminal modes, FIONBIO
    // Disks: flush, discard and write-zeroes, growing qcow2 images.
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("fallocate", libc::SYS_fallocate),
    ("ftruncate", libc::SYS_ftruncate),
    // Files, confined by landlock: the kernel and the kernel cache on a guest reboot,
    // screenshots, the sockets removed at exit, /proc/self/task/*/schedstat for stats.
    ("openat", libc::SYS_openat),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("statx", libc::SYS_statx),
    ("getdents64", libc::SYS_getdents64),
    ("mkdir", libc::SYS_mkdir),
    ("mkdirat", libc::SYS_mkdirat),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("rmdir", libc::SYS_rmdir),
    ("utimensat", libc::SYS_utimensat),
    // Memory: the allocator, guest RAM of a rebuilt machine on reset, thread stacks.
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    ("mremap", libc::SYS_mremap),
    ("brk", libc::SYS_brk),
    ("memfd_create", libc::SYS_memfd_create),
    // Threads: device threads start when the guest's driver is ready, vCPU threads on reset.
    ("clone", libc::SYS_clone),   // only with CLONE_THREAD, see below
    ("clone3", libc::SYS_clone3), // answered ENOSYS by a second filter, so glibc uses clone
    ("futex", libc::SYS_futex),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("sched_yield", libc::SYS_sched_yield),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("prctl", libc::SYS_prctl), // thread names
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    // Signals: vCPU kicks (tgkill), SIGTERM handling, stopping a worker-started passt.
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("tgkill", libc::SYS_tgkill),
    ("kill", libc::SYS_kill),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("wait4", libc::SYS_wait4),
    // The event loop, timers and clients.
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("eventfd2", libc::SYS_eventfd2),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    ("accept4", libc::SYS_accept4),
    ("socketpair", libc::SYS_socketpair), // open-display hands a client one end
    ("recvfrom", libc::SYS_recvfrom),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendto", libc::SYS_sendto),
    ("sendmsg", libc::SYS_sendmsg),
    ("shutdown", libc::SYS_shutdown),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    // Time and entropy (virtio-rng).
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("getrandom", libc::SYS_getrandom),
];

/// Looks up an allowed system call's name, for the violation message and tests.
pub fn syscall_name(number: i64) -> Option<&'static str> {
    ALLOWED_SYSCALLS
        .iter()
        .find(|(_, nr)| *nr == number)
        .map(|(name, _)| *name)
}

/// The main filter: the allowlist, with `clone` limited to new threads.
fn allowlist(mode: SeccompMode) -> Result<BpfProgram, SandboxError> {
    let filter_err = |err: seccompiler::BackendError| SandboxError::Filter(err.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(_, number) in ALLOWED_SYSCALLS {
        rules.insert(number, Vec::new());
    }
    // clone(flags, ...) only for threads: no new processes from a sandboxed worker.
    let thread_only = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )
    .map_err(filter_err)?;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![thread_only]).map_err(filter_err)?],
    );
    let mismatch = match mode {
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(filter_err)?
        .try_into()
        .map_err(|err: seccompiler::BackendError| SandboxError::Filter(err.to_string()))
}

/// The second filter: clone3 answers ENOSYS, as on an older kernel. Its flags sit in memory
/// seccomp cannot read, so glibc is sent back to clone, which the allowlist can check.
fn clone3_enosys() -> Result<BpfProgram, SandboxError> {
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_clone3, Vec::new());
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .and_then(TryInto::try_into)
    .map_err(|err| SandboxError::Filter(err.to_string()))
}

/// Confines the file system with landlock. Best effort: an older kernel enforces what it
/// knows, one without landlock nothing; the status says which.
fn restrict_files(paths: &SandboxPaths) -> Result<String, SandboxError> {
    let abi = ABI::V3;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(&paths.read, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(
            &paths.read_write,
            AccessFs::from_all(abi),
        ))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "enforced",
        RulesetStatus::PartiallyEnforced => "partial",
        RulesetStatus::NotEnforced => "unsupported",
    }
    .to_string())
}

/// Enters the sandbox: landlock on this thread (inherited by the threads it starts), then the
/// seccomp filters on every thread of the process.
pub fn enter(paths: &SandboxPaths, mode: SeccompMode) -> Result<SandboxStatus, SandboxError> {
    let landlock = restrict_files(paths)?;
    install_sigsys_handler()?;
    let allow = allowlist(mode)?;
    let clone3 = clone3_enosys()?;
    // The allowlist last: it does not allow seccomp(2) itself.
    for program in [&clone3, &allow] {
        seccompiler::apply_filter_all_threads(program)
            .map_err(|err| SandboxError::Install(err.to_string()))?;
    }
    Ok(SandboxStatus {
        landlock,
        seccomp: match mode {
            SeccompMode::Enforce => "enforced",
            SeccompMode::Log => "log",
        }
        .into(),
    })
}

/// Writes "hangar-vmm: sandbox: ..." naming the blocked call to stderr and exits. Runs in a
/// signal handler: only async-signal-safe calls (write, _exit), no allocation.
extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS. On x86_64 its `_sigsys` member
    // starts at offset 16 with the call address (8 bytes), then the system call number (int).
    let number = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let mut message = [0u8; 160];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        let n = bytes.len().min(message.len() - len);
        message[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    push(b"hangar-vmm: sandbox: blocked system call ");
    let mut digits = [0u8; 12];
    let mut at = digits.len();
    let mut value = number.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    push(&digits[at..]);
    push(b" (`ausyscall ");
    push(&digits[at..]);
    push(b"` names it); the worker stops. See RELIABILITY.md, \"Worker sandbox\".\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer lives on this stack.
    unsafe {
        libc::write(2, message.as_ptr().cast(), len);
        libc::_exit(EXIT_SANDBOX_VIOLATION);
    }
}

fn install_sigsys_handler() -> Result<(), SandboxError> {
    // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SandboxError::Signal(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_has_no_duplicates_and_no_process_or_exec_calls() {
        let mut numbers: Vec<i64> = ALLOWED_SYSCALLS.iter().map(|(_, nr)| *nr).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), ALLOWED_SYSCALLS.len());
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_open_by_handle_at,
        ] {
            assert!(syscall_name(forbidden).is_none(), "{forbidden} is allowed");
        }
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
    }

    #[test]
    fn both_filters_compile() {
        assert!(!allowlist(SeccompMode::Enforce).unwrap().is_empty());
        assert!(!allowlist(SeccompMode::Log).unwrap().is_empty());
        assert!(!clone3_enosys().unwrap().is_empty());
    }
}
