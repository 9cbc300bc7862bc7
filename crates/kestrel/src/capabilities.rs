//! Least privilege: once the BPF programs are loaded and attached, Kestrel keeps
//! only the capabilities it still uses and drops the rest, in every thread.
//!
//! What is still needed after attach, and why:
//! - `CAP_PERFMON`: a cpu-clock perf event for every CPU that comes online later
//!   (`kernel.perf_event_paranoid` > 0 refuses system-wide events without it).
//!   Attaching the already loaded program to that event (`BPF_LINK_CREATE`) needs
//!   no capability since Linux 5.19.
//! - `CAP_SYS_PTRACE`: `/proc/PID/maps`, `/proc/PID/root` and `/proc/PID/exe` of
//!   processes of other users (ptrace read access).
//! - `CAP_SYSLOG`: real addresses in `/proc/kallsyms` when `kernel.kptr_restrict`
//!   hides them.
//! - `CAP_DAC_READ_SEARCH`, only if it was granted: mapped files that sit in
//!   directories the agent's user cannot search (`/root`, private home
//!   directories). Without it those frames stay unknown and are counted.
//!
//! `CAP_BPF` is dropped: reading maps, draining the ring buffer and creating links
//! through descriptors opened before need no capability since Linux 5.19 (the
//! `unprivileged_bpf_disabled` check moved from every `bpf()` command to program
//! load and map creation). On older kernels with `unprivileged_bpf_disabled` set,
//! every `bpf()` command needs it, so it is kept there. `CAP_SYS_ADMIN` is kept
//! only when it stands in for a missing `CAP_PERFMON` or `CAP_BPF`, or when
//! `kernel.perf_event_paranoid` is above 2 (a Debian/Ubuntu patch under which
//! only `CAP_SYS_ADMIN` may open perf events, needed for hot-added CPUs).
//!
//! When the agent may load programs again later (live tiers re-plan the maps and
//! swap in a new object when the ring buffer must grow or CPUs change), `CAP_BPF`
//! (and `CAP_SYS_ADMIN` where it stands in for `CAP_BPF` or `CAP_PERFMON`) stays
//! in the *permitted* set only: it is not effective, so no ordinary code path
//! can use it, and [`while_loading`] raises it in the loading thread for the
//! duration of the load.
//!
//! Capabilities belong to threads, not processes: `capset(2)` changes the calling
//! thread only. Threads that exist when the drop happens (the async runtime's
//! workers) are each made to drop their own with a signal, the way glibc's
//! `setuid` reaches every thread; every thread is then checked in
//! `/proc/self/task`. Each thread also sets `no_new_privs`, so no later `execve`
//! can regain anything.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

/// Capability numbers from `linux/capability.h`.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYSLOG: u32 = 34;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Capabilities kept after attach when held, with what each is still used for.
pub const KEPT_AFTER_ATTACH: &[(u32, &str, &str)] = &[
    (
        CAP_PERFMON,
        "CAP_PERFMON",
        "perf events for CPUs that come online later",
    ),
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "/proc/PID/maps, root and exe of other users' processes",
    ),
    (
        CAP_SYSLOG,
        "CAP_SYSLOG",
        "kernel symbol addresses in /proc/kallsyms",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "mapped files in directories the agent's user cannot search",
    ),
];

/// Why the drop did not (fully) happen.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("reading this thread's capabilities failed: {0}")]
    Capget(#[source] io::Error),
    #[error("lowering this thread's capabilities failed: {0}")]
    Capset(#[source] io::Error),
    #[error(
        "no real-time signal is free to reach the other threads (all have handlers or are blocked)"
    )]
    NoSignal,
    #[error("installing the signal handler that makes each thread drop its capabilities: {0}")]
    Handler(#[source] io::Error),
    #[error("listing this process's threads in /proc/self/task: {0}")]
    Threads(#[source] io::Error),
    #[error(
        "threads {0:?} still hold capabilities Kestrel meant to drop; \
         they may block real-time signals"
    )]
    Stragglers(Vec<i32>),
}

/// Whether Kestrel may load BPF programs or create maps again after the drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The probes stay as attached: `CAP_BPF` goes (where the kernel allows).
    // Chosen when live tiers are frozen; `record` and `run` may re-plan today.
    #[allow(dead_code)]
    Never,
    /// A later re-plan may load a new object: `CAP_BPF` stays permitted, not effective.
    Possible,
}

/// What [`drop_after_attach`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DropReport {
    /// Capabilities still effective in every thread.
    pub kept: Vec<String>,
    /// Capabilities kept permitted but not effective, raised only while loading.
    pub kept_for_loading: Vec<String>,
    /// Capabilities that were held and are now gone.
    pub dropped: Vec<String>,
    /// Threads checked in /proc/self/task after the drop.
    pub threads: usize,
}

/// The capability sets of one thread, as 64-bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCaps {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub bounding: u64,
    pub no_new_privs: bool,
}

/// Parses the `Cap*:` and `NoNewPrivs:` lines of a `/proc/.../status` file.
pub fn parse_status(status: &str) -> ThreadCaps {
    let mut caps = ThreadCaps::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let mask = || u64::from_str_radix(value, 16).unwrap_or(0);
        match key {
            "CapEff" => caps.effective = mask(),
            "CapPrm" => caps.permitted = mask(),
            "CapInh" => caps.inheritable = mask(),
            "CapAmb" => caps.ambient = mask(),
            "CapBnd" => caps.bounding = mask(),
            "NoNewPrivs" => caps.no_new_privs = value == "1",
            _ => {}
        }
    }
    caps
}

/// Capability names of a mask, for logs and reports.
pub fn names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(name)
        .collect()
}

fn name(bit: u32) -> String {
    const NAMES: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    NAMES
        .get(bit as usize)
        .map(|n| (*n).to_string())
        .unwrap_or_else(|| format!("CAP_{bit}"))
}

const fn bit(cap: u32) -> u64 {
    1u64 << cap
}

/// Whether every `bpf()` command, not only program load and map creation, needs
/// `CAP_BPF` here: kernels before 5.19 with `kernel.unprivileged_bpf_disabled` set.
fn bpf_commands_need_cap_bpf(release: &str, unprivileged_bpf_disabled: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version < (5, 19) && unprivileged_bpf_disabled.trim() != "0"
}

/// Whether opening a perf event needs `CAP_SYS_ADMIN` here: Debian and Ubuntu
/// kernels add `kernel.perf_event_paranoid = 3`, at which `CAP_PERFMON` is not
/// enough (seen in the VM rig: hot-added CPUs could not be sampled).
fn perf_events_need_admin(perf_event_paranoid: &str) -> bool {
    perf_event_paranoid
        .trim()
        .parse::<i32>()
        .is_ok_and(|level| level > 2)
}

/// The capabilities to keep effective out of `held`, on a kernel where `bpf()`
/// commands on open descriptors do (`bpf_needs_cap`) or do not need `CAP_BPF`,
/// and where perf events for CPUs that come online later do (`perf_needs_admin`)
/// or do not need `CAP_SYS_ADMIN`.
pub fn kept_mask(held: u64, bpf_needs_cap: bool, perf_needs_admin: bool) -> u64 {
    let mut keep = 0u64;
    for &(cap, _, _) in KEPT_AFTER_ATTACH {
        keep |= held & bit(cap);
    }
    if bpf_needs_cap {
        keep |= held & bit(CAP_BPF);
    }
    let perfmon_missing = held & bit(CAP_PERFMON) == 0;
    let bpf_missing = bpf_needs_cap && held & bit(CAP_BPF) == 0;
    if perfmon_missing || bpf_missing || perf_needs_admin {
        // CAP_SYS_ADMIN is what let perf_event_open (or bpf()) work then.
        keep |= held & bit(CAP_SYS_ADMIN);
    }
    keep
}

/// The capabilities to keep permitted (but not effective) for loading again.
pub fn loading_mask(held: u64, reload: Reload) -> u64 {
    match reload {
        Reload::Never => 0,
        Reload::Possible => {
            let mut keep = held & bit(CAP_BPF);
            if held & bit(CAP_BPF) == 0 || held & bit(CAP_PERFMON) == 0 {
                keep |= held & bit(CAP_SYS_ADMIN);
            }
            keep
        }
    }
}

// The capset(2) ABI, version 3: two 32-bit words per set.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget_self() -> io::Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are valid, writable, and of the sizes capget(2)
    // expects for _LINUX_CAPABILITY_VERSION_3 (a header and two data words).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

/// The mask every thread is to keep, and the last capability number, for the
/// signal handler (which may only touch atomics).
static TARGET_EFFECTIVE: AtomicU64 = AtomicU64::new(0);
static TARGET_PERMITTED: AtomicU64 = AtomicU64::new(0);
static LAST_CAP: AtomicU32 = AtomicU32::new(40);
static HANDLED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static FIRST_ERRNO: AtomicI32 = AtomicI32::new(0);

/// Lowers the calling thread's capabilities to the target. Only raw system calls
/// and atomics: it runs inside a signal handler.
fn apply_to_current_thread() -> bool {
    let effective = TARGET_EFFECTIVE.load(Ordering::SeqCst);
    let permitted = TARGET_PERMITTED.load(Ordering::SeqCst);
    let last = LAST_CAP.load(Ordering::SeqCst).min(63);
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // capset below removes. Without CAP_SETPCAP this fails and no_new_privs covers
    // the same ground (no execve can gain capabilities).
    for cap in 0..=last {
        if permitted & bit(cap) == 0 {
            // SAFETY: prctl(PR_CAPBSET_DROP, cap) reads no memory.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    if capset_self(effective, permitted).is_err() {
        return false;
    }
    // An empty inheritable set already empties the ambient set; clearing it
    // explicitly covers kernels that order the two differently.
    // SAFETY: these prctl calls read no memory.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    true
}

/// Sets this thread's effective and permitted sets (inheritable empty). Only a
/// raw system call: safe in a signal handler.
fn capset_self(effective: u64, permitted: u64) -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: 0,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data are valid and of the sizes capset(2) expects for
    // version 3; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_drop_signal(_signal: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot; saving and
    // restoring it keeps the interrupted code's errno intact.
    let errno = unsafe { *libc::__errno_location() };
    if !apply_to_current_thread() {
        // SAFETY: as above.
        let e = unsafe { *libc::__errno_location() };
        let _ = FIRST_ERRNO.compare_exchange(0, e, Ordering::SeqCst, Ordering::SeqCst);
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
    HANDLED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// A real-time signal nobody handles or blocks, and its previous disposition.
fn free_signal() -> Option<(libc::c_int, libc::sigaction)> {
    // Highest first: libraries that use real-time signals take them from the bottom.
    for signal in (libc::SIGRTMIN()..=libc::SIGRTMAX()).rev() {
        // SAFETY: an all-zero sigaction is a valid out-parameter.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries; `old` is writable.
        if unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction == libc::SIG_DFL {
            return Some((signal, old));
        }
    }
    None
}

fn thread_ids() -> io::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// Capabilities of one thread of this process; `None` once it has exited.
pub fn thread_caps(tid: i32) -> Option<ThreadCaps> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .ok()
        .map(|s| parse_status(&s))
}

fn thread_done(caps: &ThreadCaps, effective: u64, permitted: u64) -> bool {
    caps.permitted & !permitted == 0
        && caps.effective & !effective == 0
        && caps.inheritable == 0
        && caps.ambient == 0
        && caps.no_new_privs
}

/// Drops, in every thread, each capability Kestrel no longer needs once its
/// programs are loaded and attached (see the module documentation for what is
/// kept and why). Returns what was kept and dropped.
pub fn drop_capabilities(reload: Reload) -> Result<DropReport, PrivilegeError> {
    let (effective, permitted, _) = capget_self().map_err(PrivilegeError::Capget)?;
    let held = effective | permitted;
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let unprivileged_bpf_disabled =
        std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").unwrap_or_default();
    let perf_event_paranoid =
        std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
    let effective = kept_mask(
        held,
        bpf_commands_need_cap_bpf(&release, &unprivileged_bpf_disabled),
        perf_events_need_admin(&perf_event_paranoid),
    );
    let permitted = effective | loading_mask(held, reload);
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    TARGET_EFFECTIVE.store(effective, Ordering::SeqCst);
    TARGET_PERMITTED.store(permitted, Ordering::SeqCst);
    LAST_CAP.store(last_cap, Ordering::SeqCst);

    if !apply_to_current_thread() {
        return Err(PrivilegeError::Capset(io::Error::last_os_error()));
    }
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let pending = |tids: &[i32]| -> Vec<i32> {
        tids.iter()
            .copied()
            .filter(|&t| t != me)
            .filter(|&t| thread_caps(t).is_some_and(|c| !thread_done(&c, effective, permitted)))
            .collect()
    };
    let mut others = pending(&thread_ids().map_err(PrivilegeError::Threads)?);
    if !others.is_empty() {
        broadcast(&mut others, pending)?;
    }
    let tids = thread_ids().map_err(PrivilegeError::Threads)?;
    let stragglers: Vec<i32> = tids
        .iter()
        .copied()
        .filter(|&t| thread_caps(t).is_some_and(|c| !thread_done(&c, effective, permitted)))
        .collect();
    if !stragglers.is_empty() {
        return Err(PrivilegeError::Stragglers(stragglers));
    }
    Ok(DropReport {
        kept: names(effective),
        kept_for_loading: names(permitted & !effective),
        dropped: names(held & !permitted),
        threads: tids.len(),
    })
}

/// Signals each thread in `others` to run [`apply_to_current_thread`], and
/// repeats for threads created meanwhile by a thread that had not dropped yet.
fn broadcast(
    others: &mut Vec<i32>,
    pending: impl Fn(&[i32]) -> Vec<i32>,
) -> Result<(), PrivilegeError> {
    let (signal, previous) = free_signal().ok_or(PrivilegeError::NoSignal)?;
    // SAFETY: an all-zero sigaction is valid; the fields set below make it a plain
    // handler with SA_RESTART, so interrupted system calls resume.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_drop_signal as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is initialised; the old action is not needed here (it was
    // queried by free_signal).
    if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
        return Err(PrivilegeError::Handler(io::Error::last_os_error()));
    }
    let pid = std::process::id() as i32;
    let mut sent = 0u64;
    let started = HANDLED.load(Ordering::SeqCst);
    for _round in 0..5 {
        for &tid in others.iter() {
            // SAFETY: tgkill sends a signal whose handler is installed above.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) } == 0 {
                sent += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while HANDLED.load(Ordering::SeqCst) - started < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        *others = pending(&thread_ids().map_err(PrivilegeError::Threads)?);
        if others.is_empty() {
            break;
        }
    }
    let all_handled = HANDLED.load(Ordering::SeqCst) - started >= sent;
    if all_handled {
        // Every signal sent has been handled: the default disposition can return
        // without a late signal killing the process.
        // SAFETY: `previous` is the disposition queried from the kernel.
        unsafe { libc::sigaction(signal, &previous, std::ptr::null_mut()) };
    }
    let failed = FAILED.swap(0, Ordering::SeqCst);
    if failed > 0 {
        let errno = FIRST_ERRNO.swap(0, Ordering::SeqCst);
        return Err(PrivilegeError::Capset(io::Error::from_raw_os_error(errno)));
    }
    Ok(())
}

/// Drops what is no longer needed after attach and says so in the log; a failure
/// is a warning (sampling goes on with the privileges it had).
pub fn drop_after_attach(reload: Reload) -> Option<DropReport> {
    match drop_capabilities(reload) {
        Ok(report) => {
            info!(
                kept = ?report.kept,
                kept_for_loading = ?report.kept_for_loading,
                dropped = ?report.dropped,
                threads = report.threads,
                "capabilities lowered after attaching the probes"
            );
            Some(report)
        }
        Err(e) => {
            warn!(error = %e, "could not drop the capabilities Kestrel no longer needs; it keeps running with them");
            None
        }
    }
}

/// Runs `f` (a BPF load) with every permitted capability raised in this thread's
/// effective set, then lowers it again. Other threads are unaffected.
pub fn while_loading<T>(f: impl FnOnce() -> T) -> T {
    let before = capget_self().ok();
    if let Some((effective, permitted, _)) = before {
        if permitted & !effective != 0 {
            if let Err(e) = capset_self(permitted, permitted) {
                warn!(error = %e, "could not raise the capabilities kept for loading");
            }
        }
    }
    let result = f();
    if let Some((effective, permitted, _)) = before {
        if permitted & !effective != 0 {
            if let Err(e) = capset_self(effective, permitted) {
                warn!(error = %e, "could not lower the capabilities raised for loading");
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        let caps = parse_status(
            "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000000c000080000\n\
             CapEff:\t000000c000080000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
             NoNewPrivs:\t1\n",
        );
        assert_eq!(
            caps.effective,
            bit(CAP_BPF) | bit(CAP_PERFMON) | bit(CAP_SYS_PTRACE)
        );
        assert!(caps.no_new_privs);
        assert_eq!(
            names(caps.permitted),
            ["CAP_SYS_PTRACE", "CAP_PERFMON", "CAP_BPF"]
        );
    }

    #[test]
    fn cap_bpf_is_kept_only_where_every_bpf_command_needs_it() {
        assert!(bpf_commands_need_cap_bpf("5.15.0-91-generic", "2"));
        assert!(!bpf_commands_need_cap_bpf("5.15.0-91-generic", "0"));
        assert!(!bpf_commands_need_cap_bpf("5.19.0", "2"));
        assert!(!bpf_commands_need_cap_bpf("6.18.44-fc-v769", "1"));
        let four = bit(CAP_BPF) | bit(CAP_PERFMON) | bit(CAP_SYS_PTRACE) | bit(CAP_SYSLOG);
        assert_eq!(kept_mask(four, false, false), four & !bit(CAP_BPF));
        assert_eq!(kept_mask(four, true, false), four);
    }

    #[test]
    fn root_keeps_the_four_and_no_admin() {
        let root = (1u64 << 41) - 1;
        let kept = kept_mask(root, false, false);
        // perf_event_paranoid = 3 (Debian): CAP_PERFMON is not enough for the
        // perf events of hot-added CPUs, so a root agent keeps CAP_SYS_ADMIN.
        assert!(kept_mask(root, false, true) & bit(CAP_SYS_ADMIN) != 0);
        assert!(
            perf_events_need_admin("3\n")
                && !perf_events_need_admin("2")
                && !perf_events_need_admin("")
        );
        assert_eq!(
            names(kept),
            [
                "CAP_DAC_READ_SEARCH",
                "CAP_SYS_PTRACE",
                "CAP_SYSLOG",
                "CAP_PERFMON"
            ]
        );
        // Only CAP_SYS_ADMIN (no CAP_PERFMON) granted: it is what perf_event_open needs.
        let admin_only = bit(CAP_SYS_ADMIN) | bit(CAP_SYS_PTRACE);
        assert_eq!(kept_mask(admin_only, false, false), admin_only);
    }

    #[test]
    fn loading_keeps_cap_bpf_permitted_only_when_a_reload_may_come() {
        let four = bit(CAP_BPF) | bit(CAP_PERFMON) | bit(CAP_SYS_PTRACE) | bit(CAP_SYSLOG);
        assert_eq!(loading_mask(four, Reload::Never), 0);
        assert_eq!(loading_mask(four, Reload::Possible), bit(CAP_BPF));
        let root = (1u64 << 41) - 1;
        assert_eq!(loading_mask(root, Reload::Possible), bit(CAP_BPF));
    }
}
