//! The agent's errors, worded for a library user: what failed and why. The
//! binary adds the CLI hint (which flag, which key, `kestrel check`).

use kestrel_probes::ProbeError;
use kestrel_sizing::SizingError;
use kestrel_symbols::SymbolsError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    /// The kernel refuses something sampling needs; each item names it and the
    /// kernel's answer.
    #[error("this machine cannot run the probes as configured:\n  - {}", .missing.join("\n  - "))]
    Unsupported { missing: Vec<String> },
    #[error("no such process {pid}: it is not in /proc")]
    NoSuchProcess { pid: u32 },
    #[error("detecting the CPU topology from sysfs failed")]
    Topology(#[source] SizingError),
    #[error("computing the BPF map plan failed")]
    Plan(#[source] SizingError),
    #[error("choosing the off-CPU hook failed")]
    OffCpuHook(#[source] ProbeError),
    #[error("starting the BPF probes failed")]
    Start(#[source] ProbeError),
    #[error("draining the ring buffer failed")]
    Drain(#[source] ProbeError),
    #[error("reading the BPF counters failed")]
    Counters(#[source] ProbeError),
    #[error("opening the symbol store failed")]
    Symbols(#[source] SymbolsError),
    #[error("the events ring is missing from the map plan (a kestrel-sizing bug)")]
    NoRingInPlan,
}
