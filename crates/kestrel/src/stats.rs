//! `stats.json`: what a recording did, what it lost, and what its maps cost.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use kestrel_probes::{Counters, MapMemory, OffCpuHook};
use kestrel_sizing::{MapPlan, Topology, Virtualization};
use kestrel_symbols::StoreStats;
use serde::Serialize;

use crate::record::{write_atomic, Aggregate};
use crate::tiers::ReplanRecord;

pub struct RunFacts<'a> {
    pub duration: Duration,
    pub frequency_hz: u32,
    pub topology: &'a Topology,
    pub online_at_end: u32,
    pub plan: &'a MapPlan,
    pub replans: &'a [ReplanRecord],
    pub maps: &'a [MapMemory],
    pub counters: &'a Counters,
    pub agg: &'a Aggregate,
    pub off_cpu_probability: f64,
    pub off_cpu_hook: Option<OffCpuHook>,
    pub symbols: StoreStats,
    pub interrupted: bool,
}

#[derive(Serialize)]
struct Samples {
    /// frequency × online CPUs × duration.
    expected: u64,
    received: u64,
    /// Records the ring buffer had no room for (on- and off-CPU).
    lost: u64,
    /// Samples that found the CPU idle; not recorded.
    idle: u64,
    kernel_stack_errors: u64,
    user_stack_errors: u64,
    per_cpu: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct OffCpuStats {
    enabled: bool,
    probability: f64,
    hook: Option<&'static str>,
    store: Option<&'static str>,
    /// Voluntary switch-outs of tasks that passed the filters.
    events_seen: u64,
    /// Of those, chosen by the probability and recorded.
    recorded: u64,
    /// Lost: store full, ring buffer full, or block records shed.
    dropped: u64,
    /// Shorter than the minimum duration.
    short: u64,
    /// Waits reported in the profile (including those cut at the end).
    waits_reported: u64,
    /// Estimated off-CPU time: measured time scaled by 1/probability (what the
    /// profiles report).
    total_ns: u64,
    /// Off-CPU time actually measured, before scaling.
    measured_ns: u64,
    in_flight_at_end: i64,
}

#[derive(Serialize)]
struct MapStats {
    name: String,
    map_type: String,
    max_entries: u32,
    planned_bytes: u64,
    planned_cap_bytes: u64,
    memlock_bytes: u64,
}

#[derive(Serialize)]
struct TopologyLists {
    online: String,
    possible: String,
    present: String,
}

#[derive(Serialize)]
struct Stats<'a> {
    duration_s: f64,
    frequency_hz: u32,
    online_cpus: u32,
    online_cpus_at_end: u32,
    possible_cpus: u32,
    present_cpus: u32,
    /// The CPU lists, as sysfs gives them.
    topology: TopologyLists,
    virtualization: Virtualization,
    interrupted: bool,
    samples: Samples,
    off_cpu: OffCpuStats,
    maps: Vec<MapStats>,
    total_memlock_bytes: u64,
    total_planned_bytes: u64,
    plan_cap_bytes: u64,
    /// The plan's total at its floor (what an idle agent holds).
    plan_floor_bytes: u64,
    replans: &'a [ReplanRecord],
    counters: &'a Counters,
    symbols: &'a StoreStats,
}

pub fn write(path: &Path, f: &RunFacts<'_>) -> Result<()> {
    let c = f.counters;
    let expected =
        (f64::from(f.frequency_hz) * f64::from(f.topology.online.len()) * f.duration.as_secs_f64())
            .round() as u64;
    let maps: Vec<MapStats> = f
        .maps
        .iter()
        .map(|m| {
            let row = f.plan.get(&m.name);
            MapStats {
                name: m.name.clone(),
                map_type: m.map_type.clone(),
                max_entries: m.max_entries,
                planned_bytes: row.map(|r| r.bytes_floor).unwrap_or(0),
                planned_cap_bytes: row.map(|r| r.bytes_cap).unwrap_or(0),
                memlock_bytes: m.memlock_bytes,
            }
        })
        .collect();
    let stats = Stats {
        duration_s: f.duration.as_secs_f64(),
        frequency_hz: f.frequency_hz,
        online_cpus: f.topology.online.len(),
        online_cpus_at_end: f.online_at_end,
        possible_cpus: f.topology.possible.len(),
        present_cpus: f.topology.present.len(),
        topology: TopologyLists {
            online: f.topology.online.to_string(),
            possible: f.topology.possible.to_string(),
            present: f.topology.present.to_string(),
        },
        virtualization: Virtualization::detect(),
        interrupted: f.interrupted,
        samples: Samples {
            expected,
            received: f.agg.on_cpu_received,
            lost: c.ringbuf_lost,
            idle: c.idle_skipped,
            kernel_stack_errors: c.kernel_stack_errors,
            user_stack_errors: c.user_stack_errors,
            per_cpu: f
                .agg
                .per_cpu
                .iter()
                .map(|(cpu, n)| (cpu.to_string(), *n))
                .collect(),
        },
        off_cpu: OffCpuStats {
            enabled: f.off_cpu_probability > 0.0,
            probability: f.off_cpu_probability,
            hook: f.off_cpu_hook.map(|h| h.program_name()),
            store: f.off_cpu_hook.map(|h| match h {
                OffCpuHook::TpBtfTaskStorage => "task_storage",
                OffCpuHook::RawTpHash => "hash",
            }),
            events_seen: c.off_cpu_switches,
            recorded: c.off_cpu_sampled,
            dropped: c.off_cpu_store_full + c.off_cpu_pending_dropped + c.off_cpu_missed_wakes,
            short: c.off_cpu_short,
            waits_reported: f.agg.off_cpu_waits,
            total_ns: f.agg.off_cpu_ns,
            measured_ns: f.agg.off_cpu_measured_ns,
            in_flight_at_end: c.off_cpu_in_flight,
        },
        total_memlock_bytes: maps.iter().map(|m| m.memlock_bytes).sum(),
        total_planned_bytes: maps.iter().map(|m| m.planned_bytes).sum(),
        plan_cap_bytes: f.plan.total_bytes_cap,
        plan_floor_bytes: f.plan.total_bytes_floor,
        replans: f.replans,
        maps,
        counters: c,
        symbols: &f.symbols,
    };
    write_atomic(path, serde_json::to_string_pretty(&stats)?.as_bytes())
}
