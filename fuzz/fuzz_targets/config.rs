//! The configuration file, through the agent library's own loader
//! (`kestrel::config`): the TOML is merged over the defaults by figment,
//! extracted and validated exactly as `kestrel --config FILE` does. Never a panic; an accepted configuration is within every
//! documented range; a refused one says why.
#![no_main]

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use libfuzzer_sys::fuzz_target;

use kestrel::config;

#[derive(serde::Serialize)]
struct NoOverrides {}

fuzz_target!(|text: &str| {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"kestrel.toml".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: the descriptor was just created and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(text.as_bytes()).expect("write to memfd");
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    match config::load(Some(Path::new(&path)), &NoOverrides {}) {
        Ok(c) => {
            assert!((1..=10_000).contains(&c.sampling.frequency_hz));
            assert!((1..=127).contains(&c.sampling.stack_depth));
            assert!((0.0..=1.0).contains(&c.off_cpu.probability));
            assert!(c.record.duration_s > 0.0 && c.record.duration_s <= 86_400.0);
        }
        Err(e) => assert!(!format!("{e:#}").is_empty()),
    }
});
