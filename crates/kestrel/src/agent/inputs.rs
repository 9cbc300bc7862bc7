//! Everything a start needs, decided once from the configuration: the probes'
//! configuration, the plan's inputs (with the measured topology and the off-CPU
//! store the chosen hook implies), the symbol store's configuration and the
//! live tiers' policy. `record`, `run`, `plan` and `soak` all start from here.

use std::path::Path;
use std::time::Duration;

use kestrel_probes::features::choose_off_cpu_hook;
use kestrel_probes::{KernelFeatures, OffCpuHook, ProbeConfig};
use kestrel_sizing::{KernelCostModel, OffCpuState, PlanInputs, TierPolicy, Topology};
use kestrel_symbols::SymbolsConfig;

use super::AgentError;
use crate::config::Config;

/// The decided inputs of one agent.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The probes' configuration; `off_cpu_hook` holds the hook chosen for this
    /// kernel (never "auto" once decided).
    pub probe: ProbeConfig,
    /// The sizing policy's inputs; `topology` is the one measured at start.
    pub plan: PlanInputs,
    pub symbols: SymbolsConfig,
    pub tier_policy: TierPolicy,
    /// What the kernel allowed when probed.
    pub features: KernelFeatures,
    pub poll_interval: Duration,
}

impl Inputs {
    /// Probe the kernel, refuse early when sampling cannot work here, measure
    /// the topology and choose the off-CPU hook.
    pub fn from_config(config: &Config) -> Result<Inputs, AgentError> {
        let features = KernelFeatures::probe();
        preflight(&features, config)?;
        let topology = Topology::detect().map_err(AgentError::Topology)?;
        let mut probe = probe_config(config);
        let hook = choose_off_cpu_hook(&probe, &features).map_err(AgentError::OffCpuHook)?;
        probe.off_cpu_hook = hook;
        Ok(Inputs {
            plan: plan_inputs(config, topology, off_cpu_state(hook)),
            probe,
            symbols: symbols_config(config),
            tier_policy: tier_policy(config),
            features,
            poll_interval: config.sampling.poll_interval(),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.plan.topology
    }

    pub fn frequency_hz(&self) -> u32 {
        self.probe.frequency_hz
    }

    pub fn off_cpu_enabled(&self) -> bool {
        self.probe.off_cpu_probability > 0.0
    }

    /// Each measured wait stands for 1/p waits (the off-CPU sampling
    /// probability p); 1 when off-CPU is off.
    pub fn off_cpu_scale(&self) -> f64 {
        off_cpu_scale(self.probe.off_cpu_probability)
    }
}

/// 1/p for an off-CPU probability p > 0, else 1.
pub fn off_cpu_scale(probability: f64) -> f64 {
    if probability > 0.0 {
        1.0 / probability
    } else {
        1.0
    }
}

/// The inputs of a plan from the configuration and a topology (also what
/// `kestrel plan` shows for a topology given on its command line).
pub fn plan_inputs(config: &Config, topology: Topology, off_cpu_state: OffCpuState) -> PlanInputs {
    PlanInputs {
        topology,
        frequency_hz: config.sampling.frequency_hz,
        off_cpu_probability: config.off_cpu.probability,
        sched_events_per_cpu_s: config.off_cpu.sched_events_per_cpu_s,
        poll_interval: config.sampling.poll_interval(),
        max_stack_depth: config.sampling.stack_depth,
        memory_cap_bytes: config.memory.bpf_cap_bytes,
        pid_filter_len: u32::try_from(config.sampling.pids.len()).unwrap_or(u32::MAX),
        off_cpu_state,
        events_bytes: None,
        kernel: KernelCostModel::for_running_kernel(),
    }
}

/// The in-flight store a hook implies (task storage unless only raw_tp loads).
pub fn off_cpu_state(hook: Option<OffCpuHook>) -> OffCpuState {
    match hook {
        Some(OffCpuHook::RawTpHash) => OffCpuState::Hash,
        _ => OffCpuState::TaskStorage,
    }
}

pub fn probe_config(config: &Config) -> ProbeConfig {
    ProbeConfig {
        frequency_hz: config.sampling.frequency_hz,
        off_cpu_probability: config.off_cpu.probability,
        off_cpu_min_duration: Duration::from_micros(config.off_cpu.min_duration_us),
        pids: config.sampling.pids.clone(),
        profile_self: config.sampling.profile_self,
        stack_depth: config.sampling.stack_depth,
        off_cpu_hook: config.off_cpu.forced_hook(),
    }
}

pub fn symbols_config(config: &Config) -> SymbolsConfig {
    SymbolsConfig {
        cache_dir: if config.symbols.cache_dir.as_os_str().is_empty() {
            None
        } else {
            Some(config.symbols.cache_dir.clone())
        },
        memory_bytes: config.symbols.memory_bytes,
        disk_bytes: config.symbols.disk_bytes,
        dwarf_max_file_bytes: config.symbols.dwarf_max_file_bytes,
        debug_dirs: config.symbols.debug_dirs.clone(),
        debuginfod_urls: config.symbols.debuginfod_urls.clone(),
        debuginfod_honour_env: config.symbols.debuginfod_honour_env,
        debuginfod_allow_http: config.symbols.debuginfod_allow_http,
        debuginfod_timeout_s: config.symbols.debuginfod_timeout_s,
        debuginfod_cache_bytes: config.symbols.debuginfod_cache_bytes,
        debuginfod_max_in_flight: config.symbols.debuginfod_max_in_flight,
    }
}

/// The live tiers' grow/shrink policy from `[memory]` and the poll interval.
pub fn tier_policy(config: &Config) -> TierPolicy {
    let polls =
        config.memory.ring_shrink_after_s * 1000.0 / config.sampling.poll_interval_ms as f64;
    TierPolicy {
        grow_above: config.memory.ring_grow_above,
        shrink_below: config.memory.ring_shrink_below,
        shrink_after_polls: polls.ceil().max(1.0) as u32,
    }
}

/// Refuse early, naming each thing the kernel refuses, when sampling cannot work.
fn preflight(features: &KernelFeatures, config: &Config) -> Result<(), AgentError> {
    let f = features;
    let mut missing = Vec::new();
    let mut need = |ok: bool, what: &str, error: &Option<String>| {
        if !ok {
            missing.push(format!("{what} ({})", error.as_deref().unwrap_or("?")));
        }
    };
    need(
        f.bpf_syscall.ok,
        "bpf() is not permitted",
        &f.bpf_syscall.error,
    );
    need(
        f.perf_event_program.ok,
        "perf_event programs do not load",
        &f.perf_event_program.error,
    );
    need(
        f.cpu_clock_event.ok,
        "the cpu-clock perf event does not open",
        &f.cpu_clock_event.error,
    );
    need(
        f.ringbuf_map.ok,
        "ring buffers are unavailable",
        &f.ringbuf_map.error,
    );
    if config.off_cpu.probability > 0.0 && f.off_cpu_hook().is_none() {
        missing.push(
            "off-CPU needs tp_btf or raw_tp on sched_switch and both are refused".to_string(),
        );
    }
    if !missing.is_empty() {
        return Err(AgentError::Unsupported { missing });
    }
    for &pid in &config.sampling.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(AgentError::NoSuchProcess { pid });
        }
    }
    Ok(())
}
