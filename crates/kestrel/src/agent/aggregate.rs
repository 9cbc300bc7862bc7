//! Samples aggregated by (process image, thread, stacks) as they are drained.

use std::collections::{BTreeMap, HashMap, HashSet};

use kestrel_model::SampleValues;
use kestrel_probes::{RawSample, SampleKind};
use kestrel_symbols::ProcessImage;

/// One aggregation key: a thread and its two stacks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub pid: u32,
    /// Which execve of `pid` (see `RawSample::exec_seq`): an exec's two images
    /// have different mappings and executables.
    pub exec_seq: u16,
    pub tid: u32,
    pub kernel_stack: Vec<u64>,
    pub user_stack: Vec<u64>,
}

impl StackKey {
    pub fn image(&self) -> ProcessImage {
        ProcessImage::new(self.pid, self.exec_seq)
    }
}

/// Samples aggregated by (process, thread, stack) as they are drained.
///
/// Off-CPU waits are sampled with probability p, so each measured wait stands
/// for 1/p waits: values are scaled by `off_cpu_scale` (from
/// [`Inputs::off_cpu_scale`](super::Inputs::off_cpu_scale), the one place it is
/// decided) to estimate the true time.
#[derive(Debug, Default)]
pub struct Aggregate {
    pub off_cpu_scale: f64,
    /// Measured (unscaled) off-CPU nanoseconds.
    pub off_cpu_measured_ns: u64,
    pub stacks: HashMap<StackKey, (String, SampleValues)>,
    pub on_cpu_received: u64,
    pub per_cpu: BTreeMap<u32, u64>,
    pub off_cpu_waits: u64,
    pub off_cpu_ns: u64,
    /// `(pid, exec_seq)` of every process image seen.
    pub images_seen: HashSet<(u32, u16)>,
}

impl Aggregate {
    pub fn new(off_cpu_scale: f64) -> Aggregate {
        Aggregate {
            off_cpu_scale,
            ..Aggregate::default()
        }
    }

    /// An empty aggregate with the same scale, for the next report window.
    pub fn fresh(&self) -> Aggregate {
        Aggregate::new(self.off_cpu_scale)
    }

    /// Every pid seen, once (a pid that exec'd has several images).
    pub fn pids_seen(&self) -> HashSet<u32> {
        self.images_seen.iter().map(|&(pid, _)| pid).collect()
    }

    /// Add one sample; returns true when its process image is seen for the
    /// first time.
    pub fn add(&mut self, s: RawSample) -> bool {
        let mut v = SampleValues::default();
        match s.kind {
            SampleKind::OnCpu => {
                v.cpu_samples = 1;
                self.on_cpu_received += 1;
                *self.per_cpu.entry(s.cpu).or_default() += 1;
            }
            SampleKind::OffCpu => {
                let scale = if self.off_cpu_scale > 0.0 {
                    self.off_cpu_scale
                } else {
                    1.0
                };
                v.off_cpu_ns = (s.value as f64 * scale).round() as u64;
                v.off_cpu_waits = 1;
                self.off_cpu_waits += 1;
                self.off_cpu_ns += v.off_cpu_ns;
                self.off_cpu_measured_ns += s.value;
            }
        }
        let first = self.images_seen.insert((s.pid, s.exec_seq));
        let key = StackKey {
            pid: s.pid,
            exec_seq: s.exec_seq,
            tid: s.tid,
            kernel_stack: s.kernel_stack,
            user_stack: s.user_stack,
        };
        let entry = self
            .stacks
            .entry(key)
            .or_insert_with(|| (s.comm.clone(), SampleValues::default()));
        entry.0 = s.comm;
        entry.1.add(&v);
        first
    }
}
