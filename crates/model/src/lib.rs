//! The profile model shared by the symbol store, the exporters and the binary.
//!
//! It is deliberately plain data: the `symbols` crate produces [`Frame`]s and
//! [`ProcessInfo`], the binary aggregates them into a [`Profile`], and every exporter
//! consumes a `&Profile`. Nothing here does I/O.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Where a frame's code lives; exporters use it to annotate and colour frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Kernel,
    /// Native user code from an ELF file (executable or shared object).
    Native,
    /// Code generated at run time and named by a perf map (`/tmp/perf-PID.map`).
    Jit,
}

/// A file mapped into a process; pprof and OTLP carry these as mappings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub path: Arc<str>,
    /// GNU build ID, lower-case hex, when the file has one.
    pub build_id: Option<Arc<str>>,
}

/// One symbolized frame. An address that hit inlined code expands into several
/// frames sharing `address`: the innermost (inlined callee) first with
/// `inlined = true`, the outer function last with `inlined = false`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    pub kind: FrameKind,
    /// The sampled virtual address (instruction pointer or return address).
    pub address: u64,
    /// Demangled function name; `None` when nothing could name it.
    pub function: Option<Arc<str>>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    pub inlined: bool,
    pub mapping: Option<Arc<Mapping>>,
}

impl Frame {
    /// A frame nothing could name: keeps the address so it still shows as `0x...`.
    pub fn unknown(kind: FrameKind, address: u64, mapping: Option<Arc<Mapping>>) -> Self {
        Frame {
            kind,
            address,
            function: None,
            file: None,
            line: None,
            inlined: false,
            mapping,
        }
    }

    /// The label used by folded stacks and flamegraphs: the function name, else
    /// `[path]+0xoffset` for a known mapping, else the raw address.
    pub fn label(&self) -> String {
        if let Some(f) = &self.function {
            return f.to_string();
        }
        match &self.mapping {
            Some(m) => {
                let offset = self
                    .address
                    .wrapping_sub(m.start)
                    .wrapping_add(m.file_offset);
                let name = m.path.rsplit('/').next().unwrap_or(&m.path);
                format!("[{name}]+0x{offset:x}")
            }
            None => format!("0x{:x}", self.address),
        }
    }
}

/// What Kestrel knows about a process, captured when it is first seen so that a
/// process that exits before symbolization still has a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The process name (`comm` of its main thread, or the executable's file name).
    pub name: Arc<str>,
    pub executable_path: Option<Arc<str>>,
    pub build_id: Option<Arc<str>>,
    /// Container ID parsed from `/proc/PID/cgroup`, when the cgroup path holds one.
    pub container_id: Option<Arc<str>>,
}

/// The values a stack accumulates. One stack can be seen both on and off CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SampleValues {
    /// Number of on-CPU samples (each is one period of `1 / frequency_hz`).
    pub cpu_samples: u64,
    /// Total nanoseconds spent off CPU (blocked) with this stack.
    pub off_cpu_ns: u64,
    /// Number of off-CPU waits measured with this stack.
    pub off_cpu_waits: u64,
}

impl SampleValues {
    pub fn add(&mut self, other: &SampleValues) {
        self.cpu_samples += other.cpu_samples;
        self.off_cpu_ns += other.off_cpu_ns;
        self.off_cpu_waits += other.off_cpu_waits;
    }
}

/// One aggregated (process, thread, stack) row of a profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackSample {
    pub process: Arc<ProcessInfo>,
    pub tid: u32,
    pub thread_name: Arc<str>,
    /// Leaf first: `frames[0]` is where the CPU was (or where the thread blocked).
    /// Kernel frames come before user frames, as the stack grows.
    pub frames: Vec<Frame>,
    pub values: SampleValues,
}

/// Facts about the host, for titles, resource attributes and metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct HostInfo {
    pub hostname: String,
    /// `uname -m` style, e.g. `x86_64`.
    pub arch: String,
    pub kernel_release: String,
}

/// A profile of one recording or one report interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub host: HostInfo,
    pub start: SystemTime,
    pub duration: Duration,
    /// On-CPU sampling frequency; one CPU sample stands for `1e9 / frequency_hz` ns.
    pub frequency_hz: u32,
    /// Whether off-CPU measurement was enabled (exporters then emit its sample type).
    pub off_cpu_enabled: bool,
    pub samples: Vec<StackSample>,
}

impl Profile {
    /// Nanoseconds one on-CPU sample stands for.
    pub fn sample_period_ns(&self) -> u64 {
        if self.frequency_hz == 0 {
            return 0;
        }
        1_000_000_000 / u64::from(self.frequency_hz)
    }

    /// Sum of every stack's values.
    pub fn totals(&self) -> SampleValues {
        let mut total = SampleValues::default();
        for s in &self.samples {
            total.add(&s.values);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_prefers_function_then_mapping_offset_then_address() {
        let mapping = Arc::new(Mapping {
            start: 0x1000,
            end: 0x2000,
            file_offset: 0x500,
            path: Arc::from("/usr/lib/libfoo.so"),
            build_id: None,
        });
        let mut f = Frame::unknown(FrameKind::Native, 0x1010, Some(mapping));
        assert_eq!(f.label(), "[libfoo.so]+0x510");
        f.function = Some(Arc::from("foo"));
        assert_eq!(f.label(), "foo");
        assert_eq!(
            Frame::unknown(FrameKind::Kernel, 0xff, None).label(),
            "0xff"
        );
    }

    #[test]
    fn period_and_totals() {
        let p = Profile {
            host: HostInfo::default(),
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            frequency_hz: 19,
            off_cpu_enabled: false,
            samples: vec![],
        };
        assert_eq!(p.sample_period_ns(), 52_631_578);
        assert_eq!(p.totals(), SampleValues::default());
    }
}
