//! Inputs → map plan.

use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::cost::{self, task_storage_buckets, task_storage_bytes_per_task, KernelCostModel};
use crate::{
    CpuSet, MapType, SizingError, Topology, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_F_RDONLY_PROG,
    EXPECTED_FRAMES_PER_STACK, MAX_STACK_DEPTH, NUM_COUNTERS, RECORD_HEADER_BYTES,
    RECORD_MAX_BYTES, RODATA_BYTES, WAKE_RECORD_BYTES,
};

/// Smallest `events` ring buffer: room for bursts at any rate.
pub const EVENTS_FLOOR_BYTES: u32 = 64 * 1024;
/// Largest `events` ring buffer.
pub const EVENTS_CAP_BYTES: u32 = 4 * 1024 * 1024;
/// `BPF_RINGBUF_HDR_SZ`: the header the kernel puts before every record.
pub const RINGBUF_RECORD_HEADER_BYTES: u32 = 8;
/// Bounds of the off-CPU in-flight store, in entries (tasks).
pub const OFFCPU_ENTRIES_FLOOR: u32 = 1024;
pub const OFFCPU_ENTRIES_CAP: u32 = 65536;
/// Value of an off-CPU in-flight entry: `sizeof(struct kestrel_in_flight)`
/// (switch-out time and a reserved word) in `bpf/kestrel.bpf.c`.
pub const OFFCPU_VALUE_BYTES: u32 = 16;
/// Default memory cap for all maps together.
pub const DEFAULT_MEMORY_CAP_BYTES: u64 = 8 * 1024 * 1024;
/// `PID_MAX_LIMIT` on 64-bit Linux: a PID filter can never need more.
pub const PID_FILTER_MAX_LEN: u32 = 1 << 22;

const KEY_U32_BYTES: u32 = 4;
const PAGE_SIZE_U32: u32 = 4096;
const FREQUENCY_RANGE: (u32, u32) = (1, 10_000);
const DEPTH_RANGE: (u32, u32) = (1, MAX_STACK_DEPTH);
const POLL_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(10));
const SCHED_EVENTS_MAX: u32 = 10_000_000;

/// Which store the kernel allows for tasks that are switched out: task
/// storage (5.11+, needs BTF) or, as a fallback, a hash keyed by thread id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OffCpuState {
    TaskStorage,
    Hash,
}

/// Everything the policy depends on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanInputs {
    pub topology: Topology,
    /// On-CPU samples per second per CPU.
    pub frequency_hz: u32,
    /// Fraction of scheduler switches that are recorded as off-CPU samples;
    /// 0 disables off-CPU profiling (and its maps).
    pub off_cpu_probability: f64,
    /// Upper bound on context switches per second per CPU that matter.
    pub sched_events_per_cpu_s: u32,
    /// How often user space drains the ring buffer.
    #[serde(rename = "poll_interval_ms", serialize_with = "serialize_millis")]
    pub poll_interval: Duration,
    /// Deepest stack recorded, in frames, per kernel and user stack.
    pub max_stack_depth: u32,
    /// Kernel memory all maps together may use.
    pub memory_cap_bytes: u64,
    /// Number of PIDs to filter on; 0 profiles every process (no filter map).
    pub pid_filter_len: u32,
    pub off_cpu_state: OffCpuState,
    /// The `events` ring buffer's size as the live tiers chose it (a re-plan
    /// after growth or shrink); `None` starts at the size the on-CPU rate needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_bytes: Option<u32>,
    /// The kernel's struct layout the bytes are priced with: on a live host,
    /// `KernelCostModel::for_running_kernel()`.
    pub kernel: KernelCostModel,
}

fn serialize_millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64() * 1000.0)
}

impl Default for PlanInputs {
    fn default() -> Self {
        PlanInputs {
            topology: Topology::synthetic(1, 1),
            frequency_hz: 19,
            off_cpu_probability: 0.0,
            sched_events_per_cpu_s: 1000,
            poll_interval: Duration::from_millis(250),
            max_stack_depth: MAX_STACK_DEPTH,
            memory_cap_bytes: DEFAULT_MEMORY_CAP_BYTES,
            pid_filter_len: 0,
            off_cpu_state: OffCpuState::TaskStorage,
            events_bytes: None,
            kernel: KernelCostModel::default(),
        }
    }
}

/// Where a map's size landed relative to its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// A fixed size, or a formula clamped up to its floor.
    Floor,
    /// The formula landed between floor and cap: the size follows the load.
    Growth,
    /// The formula was clamped down to its cap (or the map was shrunk to fit
    /// the memory cap).
    Cap,
}

/// One BPF map of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "MapRowJson")]
pub struct MapRow {
    /// The map's name in `bpf/*.bpf.c` (and in the skeleton).
    pub name: String,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    /// What user space sets with `bpf_map__set_max_entries` before load; for
    /// a ring buffer its data size in bytes; 0 for task storage.
    pub max_entries: u32,
    /// The most `max_entries` may become when the live tiers grow the map
    /// (re-plan and swap); equal to `max_entries` for maps that never grow.
    pub max_entries_cap: u32,
    pub map_flags: u32,
    /// True when the kernel allocates all of the map's memory at creation.
    pub preallocated: bool,
    /// True when the map's bytes depend on the number of possible CPUs.
    pub scales_with_possible_cpus: bool,
    /// The part of `bytes_cap` that exists because of the possible CPUs
    /// (bytes_cap minus the same map's cost with zero possible CPUs).
    pub possible_cpu_bytes: u64,
    pub tier: Tier,
    /// Kernel memory right after creation (empty map).
    pub bytes_floor: u64,
    /// Kernel memory when the map holds as much as the plan allows.
    pub bytes_cap: u64,
    /// How `max_entries` was derived, with the numbers filled in.
    pub formula: String,
    /// The named inputs of `formula`.
    pub formula_inputs: Vec<(String, String)>,
}

/// The JSON form of a [`MapRow`]: adds `bytes` (= `bytes_cap`, the figure a
/// reader wants first) and writes `formula_inputs` as an object.
#[derive(Serialize)]
struct MapRowJson {
    name: String,
    map_type: MapType,
    kernel_map_type: &'static str,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    max_entries_cap: u32,
    map_flags: u32,
    preallocated: bool,
    scales_with_possible_cpus: bool,
    possible_cpu_bytes: u64,
    tier: Tier,
    bytes: u64,
    bytes_floor: u64,
    bytes_cap: u64,
    formula: String,
    #[serde(serialize_with = "serialize_pairs_as_map")]
    formula_inputs: Vec<(String, String)>,
}

impl From<MapRow> for MapRowJson {
    fn from(row: MapRow) -> Self {
        MapRowJson {
            kernel_map_type: row.map_type.kernel_name(),
            bytes: row.bytes_cap,
            name: row.name,
            map_type: row.map_type,
            key_size: row.key_size,
            value_size: row.value_size,
            max_entries: row.max_entries,
            max_entries_cap: row.max_entries_cap,
            map_flags: row.map_flags,
            preallocated: row.preallocated,
            scales_with_possible_cpus: row.scales_with_possible_cpus,
            possible_cpu_bytes: row.possible_cpu_bytes,
            tier: row.tier,
            bytes_floor: row.bytes_floor,
            bytes_cap: row.bytes_cap,
            formula: row.formula,
            formula_inputs: row.formula_inputs,
        }
    }
}

fn serialize_pairs_as_map<S: Serializer>(
    pairs: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(name, value)| (name, value)))
}

/// The inputs as the plan saw them, plus the rates derived from them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanInputsSummary {
    /// CPU counts.
    pub online: u32,
    pub possible: u32,
    pub present: u32,
    /// CPU lists.
    pub online_cpus: CpuSet,
    pub possible_cpus: CpuSet,
    pub present_cpus: CpuSet,
    pub frequency_hz: u32,
    pub off_cpu_probability: f64,
    pub sched_events_per_cpu_s: u32,
    pub poll_interval_ms: f64,
    pub max_stack_depth: u32,
    pub memory_cap_bytes: u64,
    pub pid_filter_len: u32,
    pub off_cpu_state: OffCpuState,
    /// Bytes of an average on-CPU record in the ring buffer, its header
    /// included.
    pub sample_record_bytes: u32,
    /// Bytes an off-CPU event adds: a sample record plus a wake record.
    pub off_cpu_event_bytes: u32,
    /// Expected ring buffer traffic, all online CPUs together.
    pub ring_buffer_bytes_per_s: f64,
    /// Expected off-CPU events per second, all online CPUs together.
    pub off_cpu_events_per_s: f64,
}

/// The sizes of every BPF map Kestrel creates for one configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapPlan {
    pub inputs: PlanInputsSummary,
    pub maps: Vec<MapRow>,
    /// Sum of the maps' `bytes_floor`: memory right after load.
    pub total_bytes_floor: u64,
    /// Sum of the maps' `bytes_cap`: never above `memory_cap_bytes`.
    pub total_bytes_cap: u64,
    pub memory_cap_bytes: u64,
}

impl MapPlan {
    /// The row of the map called `name`, if the plan has one (maps of
    /// disabled features are absent).
    pub fn get(&self, name: &str) -> Option<&MapRow> {
        self.maps.iter().find(|row| row.name == name)
    }

    /// The most kernel memory the maps can use: `total_bytes_cap`.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes_cap
    }
}

/// `roundup_pow_of_two` for map sizes: the smallest power of two ≥ `n`;
/// `next_pow2(0) == 1`. Saturates at 2^31, the largest power of two a `u32`
/// `max_entries` can hold.
pub fn next_pow2(n: u64) -> u32 {
    const LARGEST: u32 = 1 << 31;
    match n.checked_next_power_of_two() {
        Some(pow) if pow <= u64::from(LARGEST) => pow as u32,
        _ => LARGEST,
    }
}

/// Computes the map plan. Validates the inputs first; every error names the
/// field, its value and the allowed range.
pub fn plan(inputs: &PlanInputs) -> Result<MapPlan, SizingError> {
    validate(inputs)?;
    let possible = inputs.topology.possible_count();
    let rates = Rates::of(inputs);

    let mut maps = vec![
        events_row(inputs, &rates, possible, &inputs.kernel),
        scratch_row(possible, &inputs.kernel),
        counters_row(possible, &inputs.kernel),
    ];
    if inputs.pid_filter_len > 0 {
        maps.push(pid_filter_row(
            inputs.pid_filter_len,
            possible,
            &inputs.kernel,
        ));
    }
    if inputs.off_cpu_probability > 0.0 {
        maps.push(off_cpu_row(inputs, possible, &inputs.kernel));
    }
    maps.push(rodata_row(possible, &inputs.kernel));

    fit_memory_cap(&mut maps, inputs.memory_cap_bytes, possible, &inputs.kernel)?;

    let total_bytes_floor = maps
        .iter()
        .map(|row| row.bytes_floor)
        .fold(0, u64::saturating_add);
    let total_bytes_cap = maps
        .iter()
        .map(|row| row.bytes_cap)
        .fold(0, u64::saturating_add);
    let topology = &inputs.topology;
    Ok(MapPlan {
        inputs: PlanInputsSummary {
            online: topology.online_count(),
            possible,
            present: topology.present.len(),
            online_cpus: topology.online.clone(),
            possible_cpus: topology.possible.clone(),
            present_cpus: topology.present.clone(),
            frequency_hz: inputs.frequency_hz,
            off_cpu_probability: inputs.off_cpu_probability,
            sched_events_per_cpu_s: inputs.sched_events_per_cpu_s,
            poll_interval_ms: inputs.poll_interval.as_secs_f64() * 1000.0,
            max_stack_depth: inputs.max_stack_depth,
            memory_cap_bytes: inputs.memory_cap_bytes,
            pid_filter_len: inputs.pid_filter_len,
            off_cpu_state: inputs.off_cpu_state,
            sample_record_bytes: rates.sample_record_bytes,
            off_cpu_event_bytes: rates.off_cpu_event_bytes,
            ring_buffer_bytes_per_s: rates.ring_buffer_bytes_per_s,
            off_cpu_events_per_s: rates.off_cpu_events_per_s,
        },
        maps,
        total_bytes_floor,
        total_bytes_cap,
        memory_cap_bytes: inputs.memory_cap_bytes,
    })
}

fn validate(inputs: &PlanInputs) -> Result<(), SizingError> {
    fn invalid(field: &'static str, value: String, allowed: &'static str) -> SizingError {
        SizingError::InvalidInput {
            field,
            value,
            allowed,
        }
    }
    let (low, high) = FREQUENCY_RANGE;
    if !(low..=high).contains(&inputs.frequency_hz) {
        return Err(invalid(
            "frequency_hz",
            inputs.frequency_hz.to_string(),
            "1..=10000 Hz",
        ));
    }
    let p = inputs.off_cpu_probability;
    if !p.is_finite() || !(0.0..=1.0).contains(&p) {
        return Err(invalid(
            "off_cpu_probability",
            p.to_string(),
            "0.0..=1.0 (a finite fraction; 0 disables off-CPU profiling)",
        ));
    }
    let (low, high) = DEPTH_RANGE;
    if !(low..=high).contains(&inputs.max_stack_depth) {
        return Err(invalid(
            "max_stack_depth",
            inputs.max_stack_depth.to_string(),
            "1..=127 frames (the kernel's default perf_event_max_stack)",
        ));
    }
    let (low, high) = POLL_RANGE;
    if !(low..=high).contains(&inputs.poll_interval) {
        return Err(invalid(
            "poll_interval",
            format!("{:?}", inputs.poll_interval),
            "10ms..=10s",
        ));
    }
    if inputs.memory_cap_bytes == 0 {
        return Err(invalid(
            "memory_cap_bytes",
            "0".to_owned(),
            "1.. bytes (> 0)",
        ));
    }
    if inputs.sched_events_per_cpu_s > SCHED_EVENTS_MAX {
        return Err(invalid(
            "sched_events_per_cpu_s",
            inputs.sched_events_per_cpu_s.to_string(),
            "0..=10000000 per CPU per second",
        ));
    }
    if inputs.pid_filter_len > PID_FILTER_MAX_LEN {
        return Err(invalid(
            "pid_filter_len",
            inputs.pid_filter_len.to_string(),
            "0..=4194304 (PID_MAX_LIMIT)",
        ));
    }
    inputs.topology.validate()
}

/// Rates derived from the inputs, shared by the rows and the summary.
struct Rates {
    online: u32,
    poll_s: f64,
    sample_record_bytes: u32,
    off_cpu_event_bytes: u32,
    ring_buffer_bytes_per_s: f64,
    off_cpu_events_per_s: f64,
}

impl Rates {
    fn of(inputs: &PlanInputs) -> Rates {
        let online = inputs.topology.online_count();
        let frames = inputs.max_stack_depth.min(EXPECTED_FRAMES_PER_STACK);
        // header + kernel and user stacks + the ring buffer's record header
        let sample_record_bytes =
            RECORD_HEADER_BYTES + 2 * frames * 8 + RINGBUF_RECORD_HEADER_BYTES;
        let off_cpu_event_bytes =
            sample_record_bytes + WAKE_RECORD_BYTES + RINGBUF_RECORD_HEADER_BYTES;
        let p = inputs.off_cpu_probability;
        let sched = f64::from(inputs.sched_events_per_cpu_s);
        let per_cpu = f64::from(inputs.frequency_hz) * f64::from(sample_record_bytes)
            + sched * p * f64::from(off_cpu_event_bytes);
        Rates {
            online,
            poll_s: inputs.poll_interval.as_secs_f64(),
            sample_record_bytes,
            off_cpu_event_bytes,
            ring_buffer_bytes_per_s: f64::from(online) * per_cpu,
            off_cpu_events_per_s: f64::from(online) * sched * p,
        }
    }
}

/// A formula's result rounded to a power of two and clamped.
struct Clamped {
    pow2: u32,
    value: u32,
    tier: Tier,
}

fn clamp_pow2(raw: u64, floor: u32, cap: u32) -> Clamped {
    let pow2 = next_pow2(raw);
    let (value, tier) = if pow2 < floor {
        (floor, Tier::Floor)
    } else if pow2 > cap {
        (cap, Tier::Cap)
    } else {
        (pow2, Tier::Growth)
    };
    Clamped { pow2, value, tier }
}

/// `ceil` of a non-negative finite product as an integer (saturating).
fn ceil_u64(x: f64) -> u64 {
    // `as` saturates out-of-range floats; inputs are validated finite.
    x.ceil() as u64
}

struct RowSpec {
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    tier: Tier,
    /// Entries held when the map is as full as the plan allows (matters for
    /// on-demand maps only).
    filled_at_cap: u64,
    formula: String,
    formula_inputs: Vec<(&'static str, String)>,
}

/// Possible-CPU count used to tell whether a row's cost depends on it.
const MANY_POSSIBLE_CPUS: u32 = 1024;

fn build_row(spec: RowSpec, possible: u32, kernel: &KernelCostModel) -> MapRow {
    let cost_at = |cpus: u32, filled: u64| {
        kernel.map_bytes(
            spec.map_type,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            spec.map_flags,
            cpus,
            filled,
        )
    };
    let bytes_floor = cost_at(possible, 0);
    let bytes_cap = cost_at(possible, spec.filled_at_cap);
    let scales_with_possible_cpus =
        cost_at(1, spec.filled_at_cap) != cost_at(MANY_POSSIBLE_CPUS, spec.filled_at_cap);
    let possible_cpu_bytes = bytes_cap.saturating_sub(cost_at(0, spec.filled_at_cap));
    let preallocated = match spec.map_type {
        MapType::TaskStorage => false,
        MapType::Hash | MapType::PerCpuHash => spec.map_flags & BPF_F_NO_PREALLOC == 0,
        _ => true,
    };
    MapRow {
        name: spec.name.to_owned(),
        map_type: spec.map_type,
        key_size: spec.key_size,
        value_size: spec.value_size,
        max_entries: spec.max_entries,
        max_entries_cap: spec.max_entries,
        map_flags: spec.map_flags,
        preallocated,
        scales_with_possible_cpus,
        possible_cpu_bytes,
        tier: spec.tier,
        bytes_floor,
        bytes_cap,
        // Byte figures depend on the kernel's struct layout: say which one.
        formula: format!("{}; bytes per the {kernel}", spec.formula),
        formula_inputs: spec
            .formula_inputs
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .chain(std::iter::once((
                "kernel_layout".to_owned(),
                kernel.layout.to_owned(),
            )))
            .collect(),
    }
}

/// The ring buffer has three tiers: it starts at the size the on-CPU rate
/// needs (never below the floor), grows by re-plan when it fills (see
/// [`crate::tiers`]), and never exceeds the size the upper-bound rates need
/// (scheduler events × p included), itself clamped to [floor, cap].
fn events_row(
    inputs: &PlanInputs,
    rates: &Rates,
    possible: u32,
    kernel: &KernelCostModel,
) -> MapRow {
    let raw = ceil_u64(rates.ring_buffer_bytes_per_s * rates.poll_s);
    // The floor already exceeds a page; max() keeps the kernel's
    // page-multiple rule explicit should the floor ever be lowered.
    let floor = EVENTS_FLOOR_BYTES.max(PAGE_SIZE_U32);
    let upper = clamp_pow2(raw, floor, EVENTS_CAP_BYTES);
    let growth_cap = upper.value;
    // On-CPU samples arrive at a known rate; twice a poll interval's worth is
    // room for jitter in the drain. Off-CPU traffic is load-dependent: the
    // ring grows for it when it is observed.
    let on_cpu_raw = ceil_u64(
        f64::from(rates.online)
            * f64::from(inputs.frequency_hz)
            * f64::from(rates.sample_record_bytes)
            * rates.poll_s
            * 2.0,
    );
    let (start, start_formula) = match inputs.events_bytes {
        Some(bytes) => {
            let v = clamp_pow2(u64::from(bytes), floor, growth_cap).value;
            (
                v,
                format!("re-planned to {bytes} B → clamp [{floor}, {growth_cap}] = {v} B"),
            )
        }
        None => {
            let c = clamp_pow2(on_cpu_raw, floor, growth_cap);
            (
                c.value,
                format!(
                    "starts at next_pow2(ceil({online} cpu × {freq}/s × {sample} B × {poll} s × 2)) = {pow2} → clamp [{floor}, {growth_cap}] = {v} B",
                    online = rates.online,
                    freq = inputs.frequency_hz,
                    sample = rates.sample_record_bytes,
                    poll = rates.poll_s,
                    pow2 = c.pow2,
                    v = c.value,
                ),
            )
        }
    };
    let tier = if start <= floor {
        Tier::Floor
    } else if start >= growth_cap {
        Tier::Cap
    } else {
        Tier::Growth
    };
    let formula = format!(
        "{start_formula}; grows on demand up to next_pow2(ceil({online} cpu × ({freq}/s × {sample} B + {sched}/s × {p} × {offcpu} B) × {poll} s)) \
         = next_pow2({raw}) = {pow2} → clamp [{floor}, {cap}] = {growth_cap} B",
        online = rates.online,
        freq = inputs.frequency_hz,
        sample = rates.sample_record_bytes,
        sched = inputs.sched_events_per_cpu_s,
        p = inputs.off_cpu_probability,
        offcpu = rates.off_cpu_event_bytes,
        poll = rates.poll_s,
        pow2 = upper.pow2,
        cap = EVENTS_CAP_BYTES,
    );
    let mut row = build_row(
        RowSpec {
            name: "events",
            map_type: MapType::RingBuf,
            key_size: 0,
            value_size: 0,
            max_entries: start,
            map_flags: 0,
            tier,
            filled_at_cap: 0,
            formula,
            formula_inputs: vec![
                ("online_cpus", rates.online.to_string()),
                ("frequency_hz", inputs.frequency_hz.to_string()),
                ("sample_record_bytes", rates.sample_record_bytes.to_string()),
                (
                    "sched_events_per_cpu_s",
                    inputs.sched_events_per_cpu_s.to_string(),
                ),
                (
                    "off_cpu_probability",
                    inputs.off_cpu_probability.to_string(),
                ),
                ("off_cpu_event_bytes", rates.off_cpu_event_bytes.to_string()),
                ("poll_interval_s", rates.poll_s.to_string()),
                ("bytes_per_s", rates.ring_buffer_bytes_per_s.to_string()),
                ("floor_bytes", floor.to_string()),
                ("cap_bytes", EVENTS_CAP_BYTES.to_string()),
                ("start_bytes", start.to_string()),
                ("growth_cap_bytes", growth_cap.to_string()),
            ],
        },
        possible,
        kernel,
    );
    row.max_entries_cap = growth_cap;
    row.bytes_cap = kernel.map_bytes(MapType::RingBuf, 0, 0, growth_cap, 0, possible, 0);
    row
}

fn scratch_row(possible: u32, kernel: &KernelCostModel) -> MapRow {
    build_row(
        RowSpec {
            name: "scratch",
            map_type: MapType::PerCpuArray,
            key_size: KEY_U32_BYTES,
            value_size: RECORD_MAX_BYTES,
            max_entries: 1,
            map_flags: 0,
            tier: Tier::Floor,
            filled_at_cap: 0,
            formula: format!(
                "1 record of {RECORD_MAX_BYTES} B ({RECORD_HEADER_BYTES} B header + 2 × \
                 {MAX_STACK_DEPTH} frames × 8 B) per possible CPU × {possible} possible CPUs"
            ),
            formula_inputs: vec![
                ("record_max_bytes", RECORD_MAX_BYTES.to_string()),
                ("possible_cpus", possible.to_string()),
            ],
        },
        possible,
        kernel,
    )
}

fn counters_row(possible: u32, kernel: &KernelCostModel) -> MapRow {
    build_row(
        RowSpec {
            name: "counters",
            map_type: MapType::Array,
            key_size: KEY_U32_BYTES,
            value_size: 8,
            max_entries: NUM_COUNTERS,
            map_flags: 0,
            tier: Tier::Floor,
            filled_at_cap: 0,
            formula: format!("{NUM_COUNTERS} counters × 8 B (fixed)"),
            formula_inputs: vec![("num_counters", NUM_COUNTERS.to_string())],
        },
        possible,
        kernel,
    )
}

fn pid_filter_row(pid_filter_len: u32, possible: u32, kernel: &KernelCostModel) -> MapRow {
    let entries = next_pow2(u64::from(pid_filter_len));
    build_row(
        RowSpec {
            name: "pid_filter",
            map_type: MapType::Hash,
            key_size: KEY_U32_BYTES,
            value_size: 1,
            max_entries: entries,
            map_flags: 0,
            tier: Tier::Floor,
            filled_at_cap: u64::from(entries),
            formula: format!("next_pow2({pid_filter_len} PIDs) = {entries} entries, preallocated"),
            formula_inputs: vec![("pid_filter_len", pid_filter_len.to_string())],
        },
        possible,
        kernel,
    )
}

fn off_cpu_row(inputs: &PlanInputs, possible: u32, kernel: &KernelCostModel) -> MapRow {
    let online = inputs.topology.online_count();
    let poll_s = inputs.poll_interval.as_secs_f64();
    let p = inputs.off_cpu_probability;
    let raw = ceil_u64(f64::from(online) * f64::from(inputs.sched_events_per_cpu_s) * poll_s * p);
    let clamped = clamp_pow2(raw, OFFCPU_ENTRIES_FLOOR, OFFCPU_ENTRIES_CAP);
    let bound = format!(
        "next_pow2(ceil({online} cpu × {sched}/s × {poll_s} s × {p})) = next_pow2({raw}) = {pow2} \
         → clamp [{OFFCPU_ENTRIES_FLOOR}, {OFFCPU_ENTRIES_CAP}] = {value}",
        sched = inputs.sched_events_per_cpu_s,
        pow2 = clamped.pow2,
        value = clamped.value,
    );
    let mut formula_inputs = vec![
        ("online_cpus", online.to_string()),
        (
            "sched_events_per_cpu_s",
            inputs.sched_events_per_cpu_s.to_string(),
        ),
        ("poll_interval_s", poll_s.to_string()),
        ("off_cpu_probability", p.to_string()),
        ("floor_entries", OFFCPU_ENTRIES_FLOOR.to_string()),
        ("cap_entries", OFFCPU_ENTRIES_CAP.to_string()),
    ];
    let spec = match inputs.off_cpu_state {
        OffCpuState::TaskStorage => {
            let buckets = task_storage_buckets(possible);
            let per_task = task_storage_bytes_per_task(OFFCPU_VALUE_BYTES);
            formula_inputs.push(("possible_cpus", possible.to_string()));
            formula_inputs.push(("bytes_per_task_estimate", per_task.to_string()));
            RowSpec {
                name: "offcpu_task",
                map_type: MapType::TaskStorage,
                key_size: KEY_U32_BYTES,
                value_size: OFFCPU_VALUE_BYTES,
                // The kernel requires 0: task storage holds one value per
                // task that has one and is freed with the task.
                max_entries: 0,
                map_flags: BPF_F_NO_PREALLOC,
                tier: clamped.tier,
                filled_at_cap: u64::from(clamped.value),
                formula: format!(
                    "in-flight tasks {bound}; bytes = {map} B map + {buckets} buckets × {bucket} B \
                     (roundup_pow_of_two({possible} possible CPUs), at least 2: scales with \
                     possible CPUs) + {tasks} tasks × {per_task} B per task (estimate: storage element \
                     + per-task anchor, which the kernel's memlock: does not report); \
                     max_entries 0 as the kernel requires",
                    map = kernel.local_storage_map_bytes,
                    bucket = cost::LOCAL_STORAGE_BUCKET_BYTES,
                    tasks = clamped.value,
                ),
                formula_inputs,
            }
        }
        OffCpuState::Hash => RowSpec {
            name: "offcpu_hash",
            map_type: MapType::Hash,
            key_size: KEY_U32_BYTES,
            value_size: OFFCPU_VALUE_BYTES,
            max_entries: clamped.value,
            map_flags: BPF_F_NO_PREALLOC,
            tier: clamped.tier,
            filled_at_cap: u64::from(clamped.value),
            formula: format!(
                "{bound} entries; BPF_F_NO_PREALLOC: bytes_floor empty, bytes_cap full"
            ),
            formula_inputs,
        },
    };
    build_row(spec, possible, kernel)
}

fn rodata_row(possible: u32, kernel: &KernelCostModel) -> MapRow {
    build_row(
        RowSpec {
            name: "rodata",
            map_type: MapType::Array,
            key_size: KEY_U32_BYTES,
            value_size: RODATA_BYTES,
            max_entries: 1,
            // What libbpf 1.x sets for a .rodata map whose variables the
            // skeleton exposes (bpf_object__init_internal_map).
            map_flags: BPF_F_RDONLY_PROG | BPF_F_MMAPABLE,
            tier: Tier::Floor,
            filled_at_cap: 0,
            formula: format!(
                "the BPF object's .rodata section, {RODATA_BYTES} B, created by libbpf as \
                 '<object>.rodata' (mmapable, so page-granular)"
            ),
            formula_inputs: vec![("rodata_bytes", RODATA_BYTES.to_string())],
        },
        possible,
        kernel,
    )
}

/// Halves the `events` growth cap until the sum of `bytes_cap` fits
/// `memory_cap`; the starting size follows it down if it must.
fn fit_memory_cap(
    maps: &mut [MapRow],
    memory_cap: u64,
    possible: u32,
    kernel: &KernelCostModel,
) -> Result<(), SizingError> {
    let total = |maps: &[MapRow]| {
        maps.iter()
            .map(|row| row.bytes_cap)
            .fold(0, u64::saturating_add)
    };
    let ring_cost = |size: u32| kernel.map_bytes(MapType::RingBuf, 0, 0, size, 0, possible, 0);
    let Some(events_index) = maps.iter().position(|row| row.name == "events") else {
        return Ok(());
    };
    let events_floor = EVENTS_FLOOR_BYTES.max(PAGE_SIZE_U32);
    let events = &maps[events_index];
    let needed =
        total(maps) - events.bytes_cap + ring_cost(events_floor.min(events.max_entries_cap));
    if needed > memory_cap {
        return Err(SizingError::CapTooSmall {
            needed_bytes: needed,
            cap_bytes: memory_cap,
        });
    }
    let planned = maps[events_index].max_entries_cap;
    let mut halvings = 0u32;
    while total(maps) > memory_cap {
        let events = &mut maps[events_index];
        // `needed <= memory_cap` above guarantees the loop ends before the
        // ring buffer would go below its floor.
        events.max_entries_cap /= 2;
        events.bytes_cap = ring_cost(events.max_entries_cap);
        if events.max_entries > events.max_entries_cap {
            events.max_entries = events.max_entries_cap;
            events.bytes_floor = events.bytes_cap;
        }
        halvings += 1;
    }
    if halvings > 0 {
        let events = &mut maps[events_index];
        events.tier = Tier::Cap;
        events.formula.push_str(&format!(
            " → growth cap halved {halvings}× from {planned} to fit the {memory_cap} B memory cap = {} B",
            events.max_entries_cap
        ));
        events
            .formula_inputs
            .push(("memory_cap_bytes".to_owned(), memory_cap.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference_cost;

    fn inputs(online: u32, possible: u32) -> PlanInputs {
        PlanInputs {
            topology: Topology::synthetic(online, possible),
            ..PlanInputs::default()
        }
    }

    #[test]
    fn default_plan_has_the_always_on_maps_only() {
        let plan = plan(&PlanInputs::default()).unwrap();
        let names: Vec<&str> = plan.maps.iter().map(|row| row.name.as_str()).collect();
        assert_eq!(names, ["events", "scratch", "counters", "rodata"]);
        assert!(plan.get("pid_filter").is_none());
        assert!(plan.get("offcpu_task").is_none());
        assert!(plan.get("offcpu_hash").is_none());
        assert_eq!(plan.total_bytes(), plan.total_bytes_cap);
        assert_eq!(
            plan.total_bytes_cap,
            plan.maps.iter().map(|row| row.bytes_cap).sum::<u64>()
        );
    }

    #[test]
    fn worked_off_cpu_formula_clamps_up_to_the_floor() {
        // 2 cpu × 1000/s × 0.25 s × 1.0 = 500 → next_pow2 512 → floor 1024.
        let plan = plan(&PlanInputs {
            off_cpu_probability: 1.0,
            off_cpu_state: OffCpuState::Hash,
            ..inputs(2, 2)
        })
        .unwrap();
        let row = plan.get("offcpu_hash").unwrap();
        assert_eq!(row.max_entries, 1024);
        assert_eq!(row.tier, Tier::Floor);
        assert_eq!(row.map_flags, BPF_F_NO_PREALLOC);
        assert!(!row.preallocated);
        assert!(
            row.formula
                .contains("next_pow2(ceil(2 cpu × 1000/s × 0.25 s × 1))"),
            "{}",
            row.formula
        );
        assert!(
            row.formula.contains("= next_pow2(500) = 512"),
            "{}",
            row.formula
        );
        assert!(
            row.formula.contains("clamp [1024, 65536] = 1024"),
            "{}",
            row.formula
        );
        assert!(row.bytes_cap > row.bytes_floor);
        assert_eq!(
            row.formula_inputs
                .iter()
                .find(|(name, _)| name == "online_cpus")
                .unwrap()
                .1,
            "2"
        );
    }

    #[test]
    fn off_cpu_formula_grows_and_caps() {
        let growth = plan(&PlanInputs {
            off_cpu_probability: 0.5,
            off_cpu_state: OffCpuState::Hash,
            sched_events_per_cpu_s: 5000,
            ..inputs(4, 4)
        })
        .unwrap();
        // 4 × 5000 × 0.25 × 0.5 = 2500 → 4096
        let row = growth.get("offcpu_hash").unwrap();
        assert_eq!((row.max_entries, row.tier), (4096, Tier::Growth));

        let capped = plan(&PlanInputs {
            off_cpu_probability: 1.0,
            off_cpu_state: OffCpuState::Hash,
            sched_events_per_cpu_s: 100_000,
            memory_cap_bytes: 64 << 20,
            ..inputs(64, 64)
        })
        .unwrap();
        let row = capped.get("offcpu_hash").unwrap();
        assert_eq!((row.max_entries, row.tier), (65536, Tier::Cap));
    }

    #[test]
    fn task_storage_row_has_zero_max_entries_and_an_estimated_cap() {
        let plan = plan(&PlanInputs {
            off_cpu_probability: 1.0,
            ..inputs(16, 128)
        })
        .unwrap();
        let row = plan.get("offcpu_task").unwrap();
        assert_eq!(row.map_type, MapType::TaskStorage);
        assert_eq!((row.key_size, row.value_size, row.max_entries), (4, 16, 0));
        assert_eq!(row.map_flags, BPF_F_NO_PREALLOC);
        assert!(row.scales_with_possible_cpus);
        // 16 × 1000 × 0.25 = 4000 → 4096 in-flight tasks
        assert_eq!(row.tier, Tier::Growth);
        assert_eq!(
            row.bytes_cap - row.bytes_floor,
            4096 * task_storage_bytes_per_task(16)
        );
        assert_eq!(
            row.bytes_floor,
            KernelCostModel::default().local_storage_map_bytes
                + 128 * cost::LOCAL_STORAGE_BUCKET_BYTES
        );
        assert!(row.formula.contains("estimate"), "{}", row.formula);
        assert!(
            row.formula.contains("4096 tasks × 384 B"),
            "{}",
            row.formula
        );
        assert!(row.formula.contains("possible CPUs"), "{}", row.formula);
    }

    #[test]
    fn pid_filter_only_when_configured() {
        let plan = plan(&PlanInputs {
            pid_filter_len: 100,
            ..inputs(2, 2)
        })
        .unwrap();
        let row = plan.get("pid_filter").unwrap();
        assert_eq!(
            (row.map_type, row.key_size, row.value_size),
            (MapType::Hash, 4, 1)
        );
        assert_eq!(row.max_entries, 128);
        assert!(row.preallocated);
        assert_eq!(row.bytes_floor, row.bytes_cap);
        assert_eq!(row.tier, Tier::Floor);
    }

    #[test]
    fn fixed_rows() {
        let plan = plan(&inputs(2, 2)).unwrap();
        let scratch = plan.get("scratch").unwrap();
        assert_eq!(
            (
                scratch.map_type,
                scratch.key_size,
                scratch.value_size,
                scratch.max_entries
            ),
            (MapType::PerCpuArray, 4, RECORD_MAX_BYTES, 1)
        );
        assert_eq!(RECORD_MAX_BYTES, 2080);
        assert!(scratch.scales_with_possible_cpus);
        assert_eq!(scratch.possible_cpu_bytes, 2 * 2080);
        let counters = plan.get("counters").unwrap();
        assert_eq!(
            (counters.map_type, counters.max_entries),
            (MapType::Array, NUM_COUNTERS)
        );
        assert!(!counters.scales_with_possible_cpus);
        let rodata = plan.get("rodata").unwrap();
        assert_eq!(rodata.map_flags, BPF_F_RDONLY_PROG | BPF_F_MMAPABLE);
        assert_eq!(rodata.map_flags, 0x480);
        assert_eq!(rodata.bytes_cap, 2 * 4096);
    }

    #[test]
    fn ring_buffer_worked_formula() {
        // defaults: 1 cpu × 19/s × 568 B × 0.25 s = 2698 B → 4096 → floor 64 KiB
        let plan = plan(&PlanInputs::default()).unwrap();
        let events = plan.get("events").unwrap();
        assert_eq!(plan.inputs.sample_record_bytes, 48 + 2 * 32 * 8 + 8);
        assert_eq!(events.max_entries, EVENTS_FLOOR_BYTES);
        assert_eq!(events.tier, Tier::Floor);
        assert!(
            events.formula.contains("next_pow2(2698) = 4096"),
            "{}",
            events.formula
        );

        // 8 cpu × (1000/s × 568 B + 1000/s × 0.5 × 608 B) × 0.25 s
        // = 8 × 872000 × 0.25 = 1,744,000 B → 2 MiB
        let plan = plan_of(PlanInputs {
            frequency_hz: 1000,
            off_cpu_probability: 0.5,
            memory_cap_bytes: 64 << 20,
            ..inputs(8, 8)
        });
        let events = plan.get("events").unwrap();
        assert!(
            events.formula.contains("next_pow2(1744000) = 2097152"),
            "{}",
            events.formula
        );
        // The on-CPU rate alone (8 × 1000/s × 568 B × 0.25 s × 2 = 2.27 MB)
        // reaches the growth cap, so the ring starts there.
        assert_eq!((events.max_entries, events.tier), (2 << 20, Tier::Cap));
        assert_eq!(events.max_entries_cap, 2 << 20);

        // Deeper than the expected average does not grow the estimate;
        // shallower shrinks it.
        let shallow = plan_of(PlanInputs {
            frequency_hz: 1000,
            max_stack_depth: 8,
            memory_cap_bytes: 64 << 20,
            ..inputs(8, 8)
        });
        assert_eq!(shallow.inputs.sample_record_bytes, 48 + 2 * 8 * 8 + 8);
    }

    fn plan_of(inputs: PlanInputs) -> MapPlan {
        plan(&inputs).unwrap()
    }

    #[test]
    fn ring_starts_at_the_on_cpu_need_and_grows_to_the_upper_bound() {
        // 16 cpu × 19/s × 568 B × 0.25 s × 2 = 86,336 B → 128 KiB to start;
        // with off-CPU p = 1 the upper bound is 4 MiB.
        let plan = plan_of(PlanInputs {
            off_cpu_probability: 1.0,
            ..inputs(16, 128)
        });
        let events = plan.get("events").unwrap();
        assert_eq!(events.max_entries, 128 << 10);
        assert_eq!(events.max_entries_cap, 4 << 20);
        assert_eq!(events.tier, Tier::Growth);
        assert!(events.bytes_cap > events.bytes_floor);
        // A re-plan after growth keeps the cap and takes the asked size.
        let grown = plan_of(PlanInputs {
            off_cpu_probability: 1.0,
            events_bytes: Some(1 << 20),
            ..inputs(16, 128)
        });
        assert_eq!(grown.get("events").unwrap().max_entries, 1 << 20);
        let beyond = plan_of(PlanInputs {
            off_cpu_probability: 1.0,
            events_bytes: Some(64 << 20),
            ..inputs(16, 128)
        });
        assert_eq!(
            beyond.get("events").unwrap().max_entries,
            4 << 20,
            "never beyond the growth cap"
        );
    }

    #[test]
    fn idle_floor_is_small_and_the_cap_bounded_for_a_large_vm() {
        // Issue 11's target: (16 online, 128 possible, p = 1) at most 1 MiB at
        // idle (the floor) and at most 8 MiB at the cap.
        let plan = plan_of(PlanInputs {
            off_cpu_probability: 1.0,
            ..inputs(16, 128)
        });
        assert!(
            plan.total_bytes_floor <= 1 << 20,
            "floor {} B",
            plan.total_bytes_floor
        );
        assert!(
            plan.total_bytes_cap <= 8 << 20,
            "cap {} B",
            plan.total_bytes_cap
        );
    }

    #[test]
    fn ring_buffer_caps_at_4_mib() {
        let plan = plan_of(PlanInputs {
            frequency_hz: 10_000,
            memory_cap_bytes: 64 << 20,
            ..inputs(64, 64)
        });
        let events = plan.get("events").unwrap();
        assert_eq!(
            (events.max_entries, events.tier),
            (EVENTS_CAP_BYTES, Tier::Cap)
        );
    }

    #[test]
    fn memory_cap_halves_the_ring_buffer() {
        let roomy = plan_of(PlanInputs {
            frequency_hz: 10_000,
            memory_cap_bytes: 64 << 20,
            ..inputs(64, 64)
        });
        let cap = 2 << 20;
        let tight = plan_of(PlanInputs {
            frequency_hz: 10_000,
            memory_cap_bytes: cap,
            ..inputs(64, 64)
        });
        let events = tight.get("events").unwrap();
        assert!(tight.total_bytes_cap <= cap);
        assert!(events.max_entries < roomy.get("events").unwrap().max_entries);
        assert!(events.max_entries.is_power_of_two());
        assert!(events.max_entries >= EVENTS_FLOOR_BYTES);
        assert_eq!(events.tier, Tier::Cap);
        assert!(events.formula.contains("memory cap"), "{}", events.formula);
        // The halving stops at the first size that fits: twice as much
        // would not.
        let over = tight.total_bytes_cap - events.bytes_cap
            + cost::map_bytes(MapType::RingBuf, 0, 0, events.max_entries * 2, 0, 64, 0);
        assert!(over > cap);
    }

    #[test]
    fn cap_below_the_floors_is_an_error_naming_both_numbers() {
        let err = plan(&PlanInputs {
            memory_cap_bytes: 50_000,
            ..PlanInputs::default()
        })
        .unwrap_err();
        let SizingError::CapTooSmall {
            needed_bytes,
            cap_bytes,
        } = err.clone()
        else {
            panic!("expected CapTooSmall, got {err}");
        };
        assert_eq!(cap_bytes, 50_000);
        let floor_plan = plan(&PlanInputs::default()).unwrap();
        assert_eq!(needed_bytes, floor_plan.total_bytes_cap);
        let message = err.to_string();
        assert!(message.contains(&needed_bytes.to_string()), "{message}");
        assert!(message.contains("50000"), "{message}");
        // Exactly the needed amount is enough.
        plan(&PlanInputs {
            memory_cap_bytes: needed_bytes,
            ..PlanInputs::default()
        })
        .unwrap();
    }

    fn with(change: impl FnOnce(&mut PlanInputs)) -> PlanInputs {
        let mut inputs = PlanInputs::default();
        change(&mut inputs);
        inputs
    }

    #[test]
    fn invalid_inputs_name_field_value_and_range() {
        let cases = [
            (with(|i| i.frequency_hz = 0), "frequency_hz", "0"),
            (with(|i| i.frequency_hz = 10_001), "frequency_hz", "10001"),
            (
                with(|i| i.off_cpu_probability = -0.1),
                "off_cpu_probability",
                "-0.1",
            ),
            (
                with(|i| i.off_cpu_probability = 1.5),
                "off_cpu_probability",
                "1.5",
            ),
            (
                with(|i| i.off_cpu_probability = f64::NAN),
                "off_cpu_probability",
                "NaN",
            ),
            (
                with(|i| i.off_cpu_probability = f64::INFINITY),
                "off_cpu_probability",
                "inf",
            ),
            (with(|i| i.max_stack_depth = 0), "max_stack_depth", "0"),
            (with(|i| i.max_stack_depth = 128), "max_stack_depth", "128"),
            (
                with(|i| i.poll_interval = Duration::from_millis(9)),
                "poll_interval",
                "9ms",
            ),
            (
                with(|i| i.poll_interval = Duration::from_secs(11)),
                "poll_interval",
                "11s",
            ),
            (with(|i| i.memory_cap_bytes = 0), "memory_cap_bytes", "0"),
            (
                with(|i| i.sched_events_per_cpu_s = u32::MAX),
                "sched_events_per_cpu_s",
                "4294967295",
            ),
            (
                with(|i| i.pid_filter_len = PID_FILTER_MAX_LEN + 1),
                "pid_filter_len",
                "4194305",
            ),
        ];
        for (bad, field, value) in cases {
            let err = plan(&bad).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, SizingError::InvalidInput { field: f, .. } if f == field),
                "{message}"
            );
            assert!(message.contains(field), "{message}");
            assert!(message.contains(&format!("= {value}:")), "{message}");
            assert!(message.contains("allowed range is"), "{message}");
        }
        // The ends of each range are allowed.
        let edges = [
            with(|i| i.frequency_hz = 1),
            with(|i| i.frequency_hz = 10_000),
            with(|i| i.max_stack_depth = 1),
            with(|i| i.poll_interval = Duration::from_millis(10)),
            with(|i| i.poll_interval = Duration::from_secs(10)),
            with(|i| i.off_cpu_probability = 1.0),
            with(|i| i.sched_events_per_cpu_s = 0),
        ];
        for good in edges {
            plan(&good).unwrap();
        }
    }

    #[test]
    fn empty_topology_is_rejected() {
        let err = plan(&inputs(0, 4)).unwrap_err();
        assert!(matches!(err, SizingError::InvalidTopology { .. }), "{err}");
    }

    #[test]
    fn next_pow2_edges() {
        assert_eq!(next_pow2(0), 1);
        assert_eq!(next_pow2(1), 1);
        assert_eq!(next_pow2(3), 4);
        assert_eq!(next_pow2(4096), 4096);
        assert_eq!(next_pow2(4097), 8192);
        assert_eq!(next_pow2(u64::MAX), 1 << 31);
    }

    /// `kestrel plan --online 16 --possible 128 --off-cpu-probability 1
    /// --pid-max 4194304`: the reference agent's original table needs
    /// gigabytes, Kestrel stays within its 8 MiB default cap.
    #[test]
    fn vm_with_128_possible_cpus_reference_gigabytes_vs_kestrel_megabytes() {
        let kestrel = plan(&PlanInputs {
            off_cpu_probability: 1.0,
            ..inputs(16, 128)
        })
        .unwrap();
        let reference = reference_cost(128, 1.0, 4_194_304);
        assert!(
            kestrel.total_bytes() <= 8 * 1024 * 1024,
            "{}",
            kestrel.total_bytes()
        );
        assert_eq!(reference.original_offcpu_entries, 4_194_304);
        assert!(
            reference.original_offcpu_bytes >= 1_000_000_000,
            "{} B is not gigabytes",
            reference.original_offcpu_bytes
        );
        // The table alone is > 500× everything Kestrel may allocate.
        assert!(reference.original_offcpu_bytes > 500 * kestrel.total_bytes());
        // Even the fixed reference table (4096 per-CPU entries) costs more
        // than Kestrel's whole off-CPU store does at its cap.
        let kestrel_off_cpu = kestrel.get("offcpu_task").unwrap();
        assert!(reference.current_offcpu_bytes > kestrel_off_cpu.bytes_cap);
        // Nothing large is per-CPU: the bytes owed to 128 possible CPUs are
        // one record each.
        let per_cpu_total: u64 = kestrel.maps.iter().map(|row| row.possible_cpu_bytes).sum();
        assert!(
            per_cpu_total < 128 * (u64::from(RECORD_MAX_BYTES) + 100),
            "{per_cpu_total}"
        );
    }

    #[test]
    fn json_has_the_fields_the_cli_prints() {
        let plan = plan(&PlanInputs {
            off_cpu_probability: 0.5,
            pid_filter_len: 3,
            ..inputs(2, 4)
        })
        .unwrap();
        let json: serde_json::Value = serde_json::to_value(&plan).unwrap();
        let maps = json["maps"].as_array().unwrap();
        assert_eq!(maps.len(), plan.maps.len());
        for (value, row) in maps.iter().zip(&plan.maps) {
            assert_eq!(value["name"], row.name.as_str());
            assert_eq!(value["map_type"], row.map_type.kernel_name());
            assert_eq!(value["max_entries"], row.max_entries);
            assert_eq!(value["bytes"], row.bytes_cap);
            assert_eq!(value["bytes_floor"], row.bytes_floor);
            assert_eq!(value["tier"], serde_json::to_value(row.tier).unwrap());
            assert!(value["formula_inputs"].is_object());
        }
        assert_eq!(json["inputs"]["online"], 2);
        assert_eq!(json["inputs"]["possible"], 4);
        assert_eq!(json["inputs"]["possible_cpus"], "0-3");
        assert_eq!(json["inputs"]["off_cpu_state"], "task_storage");
        assert_eq!(json["total_bytes_cap"], plan.total_bytes_cap);

        let inputs_json = serde_json::to_value(PlanInputs::default()).unwrap();
        assert_eq!(inputs_json["poll_interval_ms"], 250.0);
        assert_eq!(inputs_json["topology"]["online"], "0");
    }
}
