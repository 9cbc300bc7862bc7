//! perf_event_open for the software cpu-clock event, one per CPU.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;

/// Open a cpu-clock sampling event on `cpu` for every task, sampling at
/// `frequency_hz`. This kernel class may have no hardware PMU, so the software
/// clock is the one event that always exists.
pub fn open_cpu_clock(cpu: u32, frequency_hz: u32) -> io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is a plain C struct of integers and unions of
    // integers; all-zero is its documented "unset" state.
    let mut attr: libbpf_sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = libbpf_sys::PERF_TYPE_SOFTWARE;
    attr.size = std::mem::size_of::<libbpf_sys::perf_event_attr>() as u32;
    attr.config = u64::from(libbpf_sys::PERF_COUNT_SW_CPU_CLOCK);
    attr.__bindgen_anon_1.sample_freq = u64::from(frequency_hz);
    attr.set_freq(1);
    let cpu = i32::try_from(cpu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: attr is a valid, fully initialised perf_event_attr that outlives the
    // call; pid -1 with a cpu means "every task on that CPU"; group fd -1 = none.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const libbpf_sys::perf_event_attr,
            -1i32,
            cpu,
            -1i32,
            libbpf_sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
