//! `kestrel plan`: the map plan for this machine or a given topology, beside the
//! reference agent's off-CPU table for the same inputs.

use anyhow::{Context, Result};
use kestrel_probes::{KernelFeatures, OffCpuHook};
use kestrel_sizing::{
    plan, read_pid_max, reference_cost, KernelCostModel, MapPlan, OffCpuState, PlanInputs,
    ReferenceCost, Topology, Virtualization,
};
use serde::Serialize;

use crate::cli::PlanArgs;
use crate::config::Config;

/// The inputs of a plan from the configuration and a topology.
pub fn inputs(config: &Config, topology: Topology, off_cpu_state: OffCpuState) -> PlanInputs {
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
        // The map bytes follow this kernel's struct layout.
        kernel: KernelCostModel::for_running_kernel(),
    }
}

/// The in-flight store this kernel supports (task storage unless only raw_tp loads).
pub fn off_cpu_state(hook: Option<OffCpuHook>) -> OffCpuState {
    match hook {
        Some(OffCpuHook::RawTpHash) => OffCpuState::Hash,
        _ => OffCpuState::TaskStorage,
    }
}

#[derive(Serialize)]
struct PlanReport<'a> {
    #[serde(flatten)]
    plan: &'a MapPlan,
    total_bytes: u64,
    /// Where this runs (detected even for a --online/--possible plan).
    virtualization: &'a Virtualization,
    /// Set when possible CPUs exceed online ones by a large factor.
    possible_cpu_warning: Option<String>,
    reference: &'a ReferenceCost,
    /// Kestrel's total over the reference's original off-CPU table alone.
    ratio_to_reference_original: f64,
}

pub fn run(config: &Config, args: &PlanArgs) -> Result<()> {
    let detected =
        Topology::detect().context("detecting the CPU topology from /sys/devices/system/cpu")?;
    let topology = match (args.online, args.possible) {
        (None, None) => detected,
        (online, possible) => {
            let online = online.unwrap_or(detected.online.len());
            let possible = possible.unwrap_or_else(|| detected.possible.len().max(online));
            anyhow::ensure!(
                online >= 1 && possible >= online,
                "--online {online} --possible {possible}: need 1 <= online <= possible"
            );
            Topology::synthetic(online, possible)
        }
    };
    // What the kernel allows decides the in-flight store; probing needs root, and
    // a plan for another machine assumes task storage (any 5.11+ kernel).
    let state = if args.online.is_some() || args.possible.is_some() {
        match config.off_cpu.forced_hook() {
            Some(OffCpuHook::RawTpHash) => OffCpuState::Hash,
            _ => OffCpuState::TaskStorage,
        }
    } else {
        let probe_config = crate::record::probe_config(config);
        off_cpu_state(
            kestrel_probes::features::choose_off_cpu_hook(&probe_config, &KernelFeatures::probe())
                .unwrap_or(None),
        )
    };
    let mut inputs = inputs(config, topology, state);
    inputs.pid_filter_len = inputs.pid_filter_len.max(args.pids);
    let map_plan = plan(&inputs).context("computing the map plan")?;
    let pid_max = match args.pid_max {
        Some(p) => p,
        None => read_pid_max().context("reading /proc/sys/kernel/pid_max (or pass --pid-max)")?,
    };
    let reference = reference_cost(
        inputs.topology.possible.len(),
        inputs.off_cpu_probability,
        pid_max,
    );
    let total = map_plan.total_bytes();
    let virtualization = Virtualization::detect();
    let warning = possible_cpu_warning(&map_plan, &inputs);
    let report = PlanReport {
        plan: &map_plan,
        total_bytes: total,
        virtualization: &virtualization,
        possible_cpu_warning: warning.clone(),
        reference: &reference,
        ratio_to_reference_original: if reference.original_offcpu_bytes == 0 {
            0.0
        } else {
            total as f64 / reference.original_offcpu_bytes as f64
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&map_plan, &reference));
        println!(
            "running on: {}",
            match &virtualization.hypervisor {
                Some(h) => format!("a virtual machine ({h})"),
                None => "bare metal (no hypervisor detected)".to_string(),
            }
        );
        if let Some(w) = warning {
            println!("warning: {w}");
        }
    }
    Ok(())
}

/// Possible CPUs at least this many times the online ones deserve a warning.
const POSSIBLE_CPU_WARNING_FACTOR: u32 = 4;

/// What per-CPU maps cost because possible CPUs exceed online ones, when they
/// do so by a large factor; `None` otherwise.
pub fn possible_cpu_warning(plan: &MapPlan, inputs: &PlanInputs) -> Option<String> {
    let (online, possible) = (inputs.topology.online.len(), inputs.topology.possible.len());
    if possible < online.saturating_mul(POSSIBLE_CPU_WARNING_FACTOR) {
        return None;
    }
    let at_online = plan_at_possible(inputs, online)?;
    let extra = plan
        .total_bytes_cap
        .saturating_sub(at_online.total_bytes_cap);
    let per_cpu: Vec<String> = plan
        .maps
        .iter()
        .filter(|m| m.scales_with_possible_cpus)
        .map(|m| {
            let small = at_online.get(&m.name).map(|r| r.bytes_cap).unwrap_or(0);
            format!(
                "{} {} (vs {} at possible = online)",
                m.name,
                human_bytes(m.bytes_cap),
                human_bytes(small)
            )
        })
        .collect();
    Some(format!(
        "{possible} possible CPUs are {}x the {online} online ones (room for hot-added vCPUs); the kernel sizes per-CPU memory for every possible CPU. Here that costs {} more than with possible = online: {}.",
        possible / online.max(1),
        human_bytes(extra),
        per_cpu.join(", ")
    ))
}

fn plan_at_possible(inputs: &PlanInputs, possible: u32) -> Option<MapPlan> {
    let topology = Topology::synthetic(inputs.topology.online.len(), possible);
    plan(&PlanInputs {
        topology,
        ..inputs.clone()
    })
    .ok()
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn render_table(p: &MapPlan, r: &ReferenceCost) -> String {
    let i = &p.inputs;
    let mut out = format!(
        "Kestrel map plan: {} online / {} possible CPUs, {} Hz, off-CPU p = {}, poll {} ms, cap {}\n\n",
        i.online,
        i.possible,
        i.frequency_hz,
        i.off_cpu_probability,
        i.poll_interval_ms,
        human_bytes(p.memory_cap_bytes)
    );
    out.push_str(&format!(
        "{:<14} {:<14} {:>5} {:>6} {:>11} {:>11} {:>6} {:>7} {:>11} {:>11}\n",
        "map",
        "type",
        "key",
        "value",
        "max_entries",
        "grows to",
        "prealloc",
        "tier",
        "at floor",
        "at cap"
    ));
    for m in &p.maps {
        out.push_str(&format!(
            "{:<14} {:<14} {:>5} {:>6} {:>11} {:>11} {:>8} {:>7} {:>11} {:>11}{}\n",
            m.name,
            m.map_type.kernel_name(),
            m.key_size,
            m.value_size,
            m.max_entries,
            if m.max_entries_cap != m.max_entries {
                m.max_entries_cap.to_string()
            } else {
                "-".to_string()
            },
            if m.preallocated { "yes" } else { "no" },
            format!("{:?}", m.tier).to_lowercase(),
            human_bytes(m.bytes_floor),
            human_bytes(m.bytes_cap),
            if m.scales_with_possible_cpus {
                "  (x possible CPUs)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!(
        "{:<14} {:>85} {:>11}\n\n",
        "total",
        human_bytes(p.total_bytes_floor),
        human_bytes(p.total_bytes_cap)
    ));
    out.push_str("formulas:\n");
    for m in &p.maps {
        out.push_str(&format!("  {:<14} {}\n", m.name, m.formula));
    }
    out.push_str(&format!(
        "\nreference agent's off-CPU table (per-CPU LRU hash of u64, pid_max = {}):\n  original: {} entries x {} possible CPUs = {} ({:.2} GB)\n  current:  {} entries x {} possible CPUs = {}\nKestrel's whole plan at its cap: {} ({:.4} % of the original table)\n",
        r.pid_max,
        r.original_offcpu_entries,
        i.possible,
        human_bytes(r.original_offcpu_bytes),
        r.original_offcpu_bytes as f64 / 1e9,
        r.current_offcpu_entries,
        i.possible,
        human_bytes(r.current_offcpu_bytes),
        human_bytes(p.total_bytes_cap),
        if r.original_offcpu_bytes == 0 { 0.0 } else { 100.0 * p.total_bytes_cap as f64 / r.original_offcpu_bytes as f64 },
    ));
    out
}
