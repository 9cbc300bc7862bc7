//! An aggregate becomes a [`Profile`]: every stack resolved through the one store.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kestrel_model::{HostInfo, Profile, StackSample};
use kestrel_symbols::{ProcessImage, Symbols};

use super::aggregate::{Aggregate, StackKey};

/// What a profile says about itself besides its samples.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: SystemTime,
    pub duration: Duration,
}

/// Resolve every aggregated stack through the symbol store into a profile.
pub async fn build_profile(
    agg: &Aggregate,
    symbols: &Symbols,
    window: Window,
    frequency_hz: u32,
    off_cpu_enabled: bool,
) -> Profile {
    // One symbolizer request for every stack: misses are batched by file, so
    // each file is parsed once per report, not once per stack.
    let entries: Vec<(&StackKey, &(String, kestrel_model::SampleValues))> =
        agg.stacks.iter().collect();
    let user: Vec<(ProcessImage, &[u64])> = entries
        .iter()
        .map(|(k, _)| (k.image(), k.user_stack.as_slice()))
        .collect();
    let kernel: Vec<&[u64]> = entries
        .iter()
        .map(|(k, _)| k.kernel_stack.as_slice())
        .collect();
    let (user_frames, kernel_frames) = symbols.symbolize_many(&user, &kernel).await;
    let mut samples = Vec::with_capacity(entries.len());
    for (((key, (comm, values)), user), mut frames) in
        entries.into_iter().zip(user_frames).zip(kernel_frames)
    {
        frames.extend(user);
        samples.push(StackSample {
            process: symbols.process_info(key.image()),
            tid: key.tid,
            thread_name: Arc::from(comm.as_str()),
            frames,
            values: *values,
        });
    }
    Profile {
        host: host_info(),
        start: window.start,
        duration: window.duration,
        frequency_hz,
        off_cpu_enabled,
        samples,
    }
}

/// The host as the profile names it (uname).
pub fn host_info() -> HostInfo {
    let uts = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uts.as_ref()
            .map(|u| f(u).to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    HostInfo {
        hostname: field(|u| u.nodename()),
        arch: field(|u| u.machine()),
        kernel_release: field(|u| u.release()),
    }
}
