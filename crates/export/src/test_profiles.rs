//! Profiles shaped like the agent's output, for the encoders' tests: kernel frames,
//! native frames in two files with build IDs, an inline chain, a frame nothing could
//! name, JIT frames, names that need sanitizing, rows on and off CPU and a zero row.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kestrel_model::{
    Frame, FrameKind, HostInfo, Mapping, ProcessInfo, Profile, SampleValues, StackSample,
};

use crate::pprof::{Location, PprofProfile};

pub(crate) fn frame(
    kind: FrameKind,
    address: u64,
    name: &str,
    mapping: Option<&Arc<Mapping>>,
) -> Frame {
    Frame {
        function: Some(Arc::from(name)),
        file: mapping.map(|_| Arc::from("src/myprog.c")),
        line: mapping.map(|_| 10 + (address % 97) as u32),
        ..Frame::unknown(kind, address, mapping.cloned())
    }
}

fn inlined(address: u64, name: &str, mapping: &Arc<Mapping>) -> Frame {
    Frame {
        inlined: true,
        ..frame(FrameKind::Native, address, name, Some(mapping))
    }
}

fn kernel(address: u64, name: &str) -> Frame {
    frame(FrameKind::Kernel, address, name, None)
}

fn values(cpu_samples: u64, off_cpu_ns: u64, off_cpu_waits: u64) -> SampleValues {
    SampleValues {
        cpu_samples,
        off_cpu_ns,
        off_cpu_waits,
    }
}

pub(crate) fn mixed_profile() -> Profile {
    let exe = Arc::new(Mapping {
        start: 0x40_0000,
        end: 0x50_0000,
        file_offset: 0,
        path: Arc::from("/usr/bin/myprog"),
        build_id: Some(Arc::from("abcdef0123456789")),
    });
    let libc = Arc::new(Mapping {
        start: 0x7f00_0000_0000,
        end: 0x7f00_0020_0000,
        file_offset: 0x28000,
        path: Arc::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        build_id: Some(Arc::from("1234abcd")),
    });
    let myprog = Arc::new(ProcessInfo {
        pid: 4242,
        name: Arc::from("myprog"),
        executable_path: Some(Arc::from("/usr/bin/myprog")),
        build_id: Some(Arc::from("abcdef0123456789")),
        container_id: Some(Arc::from("c0ffee")),
    });
    let other = Arc::new(ProcessInfo {
        pid: 99,
        name: Arc::from("other;prog \n"),
        executable_path: None,
        build_id: None,
        container_id: None,
    });
    let native = |address, name| frame(FrameKind::Native, address, name, Some(&exe));
    let main = || native(0x40_1300, "main");
    let row = |process: &Arc<ProcessInfo>, tid, thread: &str, frames, values| StackSample {
        process: process.clone(),
        tid,
        thread_name: Arc::from(thread),
        frames,
        values,
    };

    let samples = vec![
        row(
            &myprog,
            4243,
            "worker-1",
            vec![
                inlined(0x40_1100, "inlined_leaf", &exe),
                inlined(0x40_1100, "inlined_middle", &exe),
                native(0x40_1100, "compute"),
                native(0x40_1200, "work"),
                main(),
            ],
            values(30, 0, 0),
        ),
        row(
            &myprog,
            4243,
            "worker-1",
            vec![
                kernel(0xffff_ffff_8110_0010, "finish_task_switch"),
                kernel(0xffff_ffff_8110_0200, "schedule"),
                kernel(0xffff_ffff_8120_0000, "do_nanosleep"),
                frame(
                    FrameKind::Native,
                    0x7f00_0001_0000,
                    "clock_nanosleep",
                    Some(&libc),
                ),
                main(),
            ],
            values(0, 5_000_000, 3),
        ),
        row(
            &myprog,
            4244,
            "worker-2",
            vec![
                Frame::unknown(FrameKind::Native, 0x7f00_0002_0000, Some(libc.clone())),
                native(0x40_1200, "work"),
                main(),
            ],
            values(7, 0, 0),
        ),
        row(
            &myprog,
            4243,
            "worker-1",
            vec![
                kernel(0xffff_ffff_8130_0000, "__x64_sys_read"),
                frame(FrameKind::Native, 0x7f00_0003_0000, "read", Some(&libc)),
                main(),
            ],
            values(5, 1_000_000, 1),
        ),
        row(&myprog, 4245, "idle", vec![main()], values(0, 0, 0)),
        row(
            &other,
            99,
            "other",
            vec![
                frame(FrameKind::Jit, 0x7e00_0000_1000, "LInterpreter;run\n", None),
                Frame::unknown(FrameKind::Jit, 0x7e00_0000_2000, None),
                frame(FrameKind::Native, 0x1000, "start ", None),
            ],
            values(4, 0, 0),
        ),
    ];

    Profile {
        host: HostInfo {
            hostname: "testhost".into(),
            arch: "x86_64".into(),
            kernel_release: "6.18.0".into(),
        },
        start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        duration: Duration::from_secs(10),
        frequency_hz: 99,
        off_cpu_enabled: true,
        samples,
    }
}

/// An agent report with no samples at all (an idle interval).
pub(crate) fn empty_profile() -> Profile {
    Profile {
        samples: Vec::new(),
        ..mixed_profile()
    }
}

/// The function names of a pprof location's lines, in order.
pub(crate) fn names_of_location<'a>(
    profile: &'a PprofProfile,
    location: &Location,
) -> Vec<&'a str> {
    location
        .line
        .iter()
        .map(|line| {
            let function = &profile.function[line.function_id as usize - 1];
            profile.string(function.name).unwrap_or("<bad index>")
        })
        .collect()
}
