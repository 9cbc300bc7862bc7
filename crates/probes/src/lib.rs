//! Kestrel's BPF programs and their lifecycle.
//!
//! open the object → size every map from the `kestrel-sizing` plan → load →
//! attach each enabled [`Probe`] (per online CPU where it samples) → follow CPU
//! hotplug → drain the ring buffer on the poll interval → detach on drop.
//!
//! Probes are plugins: each implements [`Probe`] in its own module and is listed
//! once in [`REGISTRY`].

mod abi;
mod bpf;
pub mod features;
mod off_cpu;
mod on_cpu;
pub mod perf;
pub mod record;
mod session;

use std::time::Duration;

use thiserror::Error;

pub use features::{KernelFeatures, OffCpuHook, Outcome};
pub use record::{RawSample, SampleKind};
pub use session::{Counters, CpuChange, MapMemory, Session, OFF_CPU_IN_FLIGHT_COUNTER};

/// What the probes are asked to do; validated by the binary's configuration.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub frequency_hz: u32,
    /// 0 disables off-CPU measurement entirely (its maps are not created).
    pub off_cpu_probability: f64,
    /// Waits shorter than this are counted but not reported.
    pub off_cpu_min_duration: Duration,
    /// Only these processes (by pid); empty means every process.
    pub pids: Vec<u32>,
    /// Sample Kestrel's own process too.
    pub profile_self: bool,
    /// Frames per stack, 1..=127.
    pub stack_depth: u32,
    /// Force an off-CPU hook flavour; `None` picks the best the kernel allows.
    pub off_cpu_hook: Option<OffCpuHook>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            frequency_hz: 19,
            off_cpu_probability: 0.0,
            off_cpu_min_duration: Duration::ZERO,
            pids: Vec::new(),
            profile_self: false,
            stack_depth: kestrel_sizing::MAX_STACK_DEPTH,
            off_cpu_hook: None,
        }
    }
}

/// What can go wrong while loading, attaching and running the probes.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("opening Kestrel's BPF object failed: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error(
        "loading Kestrel's BPF programs failed: {}; KernelFeatures::probe() tells which \
         program and map types this kernel refuses",
        features::explain_load_error(.0)
    )]
    Load(#[source] libbpf_rs::Error),
    #[error(
        "the BPF object has no .rodata section to hold its configuration: it was not \
         built from bpf/kestrel.bpf.c"
    )]
    NoRodata,
    #[error(
        "the BPF object's .rodata is {found} bytes but this library writes {expected}: \
         the object and the library were built from different versions of bpf/kestrel.h"
    )]
    RodataSize { found: usize, expected: usize },
    #[error("sizing map `{map}` failed: {source}")]
    Size {
        map: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("the sizing plan has no row for map `{0}`, which an enabled probe needs; this is a bug in kestrel-sizing")]
    MissingPlanRow(String),
    #[error("opening the cpu-clock perf event on CPU {cpu} failed: {source}")]
    PerfEvent {
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the loaded BPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error(
        "attaching program `{program}`{} failed: {source}",
        cpu.map(|c| format!(" on CPU {c}")).unwrap_or_default()
    )]
    Attach {
        program: &'static str,
        /// The CPU, for programs attached once per CPU.
        cpu: Option<u32>,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error(
        "off-CPU profiling needs a tp_btf or raw_tp program on sched_switch and this kernel \
         refuses both; set ProbeConfig::off_cpu_probability to 0 to profile on-CPU only"
    )]
    NoOffCpuHook,
    #[error(
        "the off-CPU hook {0} was asked for (ProbeConfig::off_cpu_hook) but this kernel \
         refuses it; leave off_cpu_hook unset to use the best hook the kernel allows"
    )]
    OffCpuHookRefused(&'static str),
    #[error("BPF map operation on `{map}` failed: {source}")]
    Map {
        map: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("reading the online CPUs failed: {0}")]
    Topology(#[source] kestrel_sizing::SizingError),
}

/// A sampling or tracing probe: which programs of the shared object it needs and
/// how it attaches them.
pub trait Probe: Send {
    /// Stable name, shown in logs and `stats.json`.
    fn name(&self) -> &'static str;
    /// Programs of `bpf/kestrel.bpf.c` this probe needs loaded.
    fn programs(&self) -> Vec<&'static str>;
    /// Attach after load, on every CPU in `online` where that matters.
    fn attach(&mut self, object: &libbpf_rs::Object, online: &[u32]) -> Result<(), ProbeError>;
    /// A CPU came online while running.
    fn cpu_online(&mut self, _object: &libbpf_rs::Object, _cpu: u32) -> Result<(), ProbeError> {
        Ok(())
    }
    /// A CPU went offline while running.
    fn cpu_offline(&mut self, _cpu: u32) {}
    /// Drop every attachment (the programs stay loaded): used to swap in a
    /// re-planned object.
    fn detach(&mut self);
    /// Number of live attachments (links).
    fn attachments(&self) -> usize;
}

/// Builds a probe when the configuration enables it.
pub type ProbeFactory =
    fn(&ProbeConfig, &KernelFeatures) -> Result<Option<Box<dyn Probe>>, ProbeError>;

/// Every probe Kestrel knows: adding one is its module plus one line here.
pub const REGISTRY: &[(&str, ProbeFactory)] =
    &[("on_cpu", on_cpu::factory), ("off_cpu", off_cpu::factory)];

/// While set, libbpf's warnings are expected (feature probing tries things that
/// may be refused) and are logged at debug level only.
static LIBBPF_QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn libbpf_to_tracing(level: libbpf_rs::PrintLevel, message: String) {
    let message = message.trim_end();
    let quiet = LIBBPF_QUIET.load(std::sync::atomic::Ordering::Relaxed);
    match level {
        libbpf_rs::PrintLevel::Warn if !quiet => tracing::warn!(target: "libbpf", "{message}"),
        libbpf_rs::PrintLevel::Warn | libbpf_rs::PrintLevel::Info => {
            tracing::debug!(target: "libbpf", "{message}")
        }
        libbpf_rs::PrintLevel::Debug => tracing::trace!(target: "libbpf", "{message}"),
    }
}

/// Send libbpf's messages (verifier logs included) to `tracing` instead of
/// stderr. Idempotent.
pub fn route_libbpf_logs() {
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, libbpf_to_tracing)));
}

/// Runs `f` with libbpf's warnings demoted to debug.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> T {
    let was = LIBBPF_QUIET.swap(true, std::sync::atomic::Ordering::Relaxed);
    let out = f();
    LIBBPF_QUIET.store(was, std::sync::atomic::Ordering::Relaxed);
    out
}
