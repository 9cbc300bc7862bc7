//! Command-line interface. Flags are `Option`s: a flag not given never overrides
//! the configuration file or the environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "kestrel",
    version,
    about = "Continuous eBPF profiler with bounded, explainable memory"
)]
pub struct Cli {
    /// Configuration file (TOML); also KESTREL_CONFIG. Defaults: see config.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub logging: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone, Default)]
pub struct LogArgs {
    /// error, warn, info, debug or trace (RUST_LOG overrides).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// human or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile the whole system (or --pid) for a while and write pprof, folded
    /// stacks, flamegraphs and stats.json.
    Record(RecordArgs),
    /// Run as an agent: profile continuously and send a report to every configured
    /// exporter each report interval, until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Print the BPF map plan (sizes, kernel bytes, formulas) for this machine or
    /// for a given topology, beside the reference agent's off-CPU table.
    Plan(PlanArgs),
    /// Check, by really trying, what this kernel and these privileges allow.
    Check(CheckArgs),
    /// Print the effective configuration (defaults ← file ← env ← flags).
    Config,
}

/// The sampling flags `record` and `plan` share.
#[derive(Debug, Args, Clone, Default)]
pub struct RateArgs {
    /// On-CPU samples per second per CPU (1..=10000).
    #[arg(long, short = 'F', value_name = "HZ")]
    pub frequency: Option<u32>,
    /// Fraction of context switches measured off-CPU, 0..=1 (0 disables).
    #[arg(long, value_name = "P")]
    pub off_cpu_probability: Option<f64>,
    /// Context switches per CPU per second the off-CPU tables are sized for.
    #[arg(long, value_name = "N")]
    pub sched_events: Option<u32>,
    /// Ring buffer drain interval in milliseconds.
    #[arg(long, value_name = "MS")]
    pub poll_interval_ms: Option<u64>,
    /// Frames per stack, 1..=127.
    #[arg(long, value_name = "N")]
    pub stack_depth: Option<u32>,
    /// Kernel memory cap for all BPF maps, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub memory_cap: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Seconds to record (Ctrl-C stops early and still writes every file).
    #[arg(long, short = 'd', value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Only this process; repeat for several. Default: the whole system.
    #[arg(long = "pid", short = 'p', value_name = "PID")]
    pub pids: Vec<u32>,
    /// Output directory.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Skip off-CPU waits shorter than this many microseconds.
    #[arg(long, value_name = "MICROSECONDS")]
    pub off_cpu_min_duration: Option<u64>,
    /// Also sample Kestrel itself.
    #[arg(long)]
    pub profile_self: bool,
    /// Output formats; repeat for several: pprof, folded, flamegraph, otlp
    /// (profile.otlp.pb, an ExportProfilesServiceRequest). Default: pprof,
    /// folded, flamegraph.
    #[arg(long = "format", value_name = "FORMAT")]
    pub formats: Vec<String>,
    /// Never draw a progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub rates: RateArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Only this process; repeat for several. Default: the whole system.
    #[arg(long = "pid", short = 'p', value_name = "PID")]
    pub pids: Vec<u32>,
    /// Seconds between reports.
    #[arg(long, value_name = "SECONDS")]
    pub report_interval: Option<f64>,
    #[command(flatten)]
    pub rates: RateArgs,
}

impl RunArgs {
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        self.rates.apply(&mut o);
        if !self.pids.is_empty() {
            o.sampling.pids = Some(self.pids.clone());
        }
        o.agent.report_interval_s = self.report_interval;
        o
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan for this many online CPUs instead of the detected ones.
    #[arg(long, value_name = "N")]
    pub online: Option<u32>,
    /// Plan for this many possible CPUs instead of the detected ones.
    #[arg(long, value_name = "N")]
    pub possible: Option<u32>,
    /// pid_max for the reference agent's table (default /proc/sys/kernel/pid_max).
    #[arg(long, value_name = "N")]
    pub pid_max: Option<u64>,
    /// Plan as if this many pids were filtered with --pid.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub pids: u32,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rates: RateArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Nothing from the command line: used by commands without config flags.
#[derive(Serialize)]
pub struct NoOverrides {}

/// The configuration keys a set of flags sets; `None` fields are skipped.
#[derive(Serialize, Default)]
pub struct Overrides {
    #[serde(skip_serializing_if = "SamplingOverrides::is_empty")]
    sampling: SamplingOverrides,
    #[serde(skip_serializing_if = "OffCpuOverrides::is_empty")]
    off_cpu: OffCpuOverrides,
    #[serde(skip_serializing_if = "MemoryOverrides::is_empty")]
    memory: MemoryOverrides,
    #[serde(skip_serializing_if = "RecordOverrides::is_empty")]
    record: RecordOverrides,
    #[serde(skip_serializing_if = "AgentOverrides::is_empty")]
    agent: AgentOverrides,
}

#[derive(Serialize, Default)]
struct AgentOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    report_interval_s: Option<f64>,
}

impl AgentOverrides {
    fn is_empty(&self) -> bool {
        self.report_interval_s.is_none()
    }
}

#[derive(Serialize, Default)]
struct SamplingOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_hz: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack_depth: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile_self: Option<bool>,
}

impl SamplingOverrides {
    fn is_empty(&self) -> bool {
        self.frequency_hz.is_none()
            && self.stack_depth.is_none()
            && self.poll_interval_ms.is_none()
            && self.pids.is_none()
            && self.profile_self.is_none()
    }
}

#[derive(Serialize, Default)]
struct OffCpuOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_duration_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sched_events_per_cpu_s: Option<u32>,
}

impl OffCpuOverrides {
    fn is_empty(&self) -> bool {
        self.probability.is_none()
            && self.min_duration_us.is_none()
            && self.sched_events_per_cpu_s.is_none()
    }
}

#[derive(Serialize, Default)]
struct MemoryOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    bpf_cap_bytes: Option<u64>,
}

impl MemoryOverrides {
    fn is_empty(&self) -> bool {
        self.bpf_cap_bytes.is_none()
    }
}

#[derive(Serialize, Default)]
struct RecordOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    formats: Option<Vec<String>>,
}

impl RecordOverrides {
    fn is_empty(&self) -> bool {
        self.duration_s.is_none() && self.output_dir.is_none() && self.formats.is_none()
    }
}

impl RateArgs {
    fn apply(&self, o: &mut Overrides) {
        o.sampling.frequency_hz = self.frequency;
        o.sampling.stack_depth = self.stack_depth;
        o.sampling.poll_interval_ms = self.poll_interval_ms;
        o.off_cpu.probability = self.off_cpu_probability;
        o.off_cpu.sched_events_per_cpu_s = self.sched_events;
        o.memory.bpf_cap_bytes = self.memory_cap;
    }
}

impl RecordArgs {
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        self.rates.apply(&mut o);
        o.record.duration_s = self.duration;
        o.record.output_dir = self.output.clone();
        o.off_cpu.min_duration_us = self.off_cpu_min_duration;
        if !self.formats.is_empty() {
            o.record.formats = Some(self.formats.clone());
        }
        if !self.pids.is_empty() {
            o.sampling.pids = Some(self.pids.clone());
        }
        if self.profile_self {
            o.sampling.profile_self = Some(true);
        }
        o
    }
}

impl PlanArgs {
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        self.rates.apply(&mut o);
        o
    }
}
