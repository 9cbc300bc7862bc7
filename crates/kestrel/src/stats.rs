//! `stats.json`: what a recording did, what it lost, and what its maps cost.

use std::collections::BTreeMap;
use std::time::Duration;

use kestrel_probes::{Counters, OffCpuHook};
use kestrel_sizing::Virtualization;
use kestrel_symbols::StoreStats;
use serde::Serialize;

use crate::agent::{Finished, ReplanRecord};

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

/// `stats.json` of a finished recording of `duration`, as pretty JSON.
pub fn render(
    f: &Finished,
    duration: Duration,
    interrupted: bool,
) -> Result<Vec<u8>, serde_json::Error> {
    // A counters map that could not be read reports zeros (the failure was logged).
    let unread = Counters::default();
    let c = f.counters.as_ref().unwrap_or(&unread);
    let topology = f.inputs.topology();
    let frequency_hz = f.inputs.frequency_hz();
    let off_cpu_probability = f.inputs.probe.off_cpu_probability;
    let expected =
        (f64::from(frequency_hz) * f64::from(topology.online.len()) * duration.as_secs_f64())
            .round() as u64;
    let symbols = f.symbols.stats();
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
        duration_s: duration.as_secs_f64(),
        frequency_hz,
        online_cpus: topology.online.len(),
        online_cpus_at_end: f.online_at_end,
        possible_cpus: topology.possible.len(),
        present_cpus: topology.present.len(),
        topology: TopologyLists {
            online: topology.online.to_string(),
            possible: topology.possible.to_string(),
            present: topology.present.to_string(),
        },
        virtualization: Virtualization::detect(),
        interrupted,
        samples: Samples {
            expected,
            received: f.aggregate.on_cpu_received,
            lost: c.ringbuf_lost,
            idle: c.idle_skipped,
            kernel_stack_errors: c.kernel_stack_errors,
            user_stack_errors: c.user_stack_errors,
            per_cpu: f
                .aggregate
                .per_cpu
                .iter()
                .map(|(cpu, n)| (cpu.to_string(), *n))
                .collect(),
        },
        off_cpu: OffCpuStats {
            enabled: off_cpu_probability > 0.0,
            probability: off_cpu_probability,
            hook: f.off_cpu_hook.map(|h| h.program_name()),
            store: f.off_cpu_hook.map(|h| match h {
                OffCpuHook::TpBtfTaskStorage => "task_storage",
                OffCpuHook::RawTpHash => "hash",
            }),
            events_seen: c.off_cpu_switches,
            recorded: c.off_cpu_sampled,
            dropped: c.off_cpu_store_full + c.off_cpu_pending_dropped + c.off_cpu_missed_wakes,
            short: c.off_cpu_short,
            waits_reported: f.aggregate.off_cpu_waits,
            total_ns: f.aggregate.off_cpu_ns,
            measured_ns: f.aggregate.off_cpu_measured_ns,
            in_flight_at_end: c.off_cpu_in_flight,
        },
        total_memlock_bytes: maps.iter().map(|m| m.memlock_bytes).sum(),
        total_planned_bytes: maps.iter().map(|m| m.planned_bytes).sum(),
        plan_cap_bytes: f.plan.total_bytes_cap,
        plan_floor_bytes: f.plan.total_bytes_floor,
        replans: &f.replans,
        maps,
        counters: c,
        symbols: &symbols,
    };
    serde_json::to_vec_pretty(&stats)
}
