//! Properties of the sizing policy that must hold for every input.

use std::time::Duration;

use kestrel_sizing::{
    next_pow2, plan, KernelCostModel, MapPlan, MapType, OffCpuState, PlanInputs, SizingError, Tier,
    Topology, EVENTS_CAP_BYTES, EVENTS_FLOOR_BYTES,
};
use proptest::prelude::*;

/// A memory cap no plan generated here reaches, so that the cap's
/// ring-buffer halving does not interfere with the per-input properties
/// (the cap has its own properties below).
const ROOMY_CAP: u64 = 1 << 30;

#[derive(Debug, Clone)]
struct Knobs {
    online: u32,
    possible: u32,
    frequency_hz: u32,
    off_cpu_probability: f64,
    sched_events_per_cpu_s: u32,
    poll_ms: u64,
    max_stack_depth: u32,
    pid_filter_len: u32,
    off_cpu_state: OffCpuState,
    memory_cap_bytes: u64,
}

impl Knobs {
    fn inputs(&self) -> PlanInputs {
        PlanInputs {
            topology: Topology::synthetic(self.online, self.possible),
            frequency_hz: self.frequency_hz,
            off_cpu_probability: self.off_cpu_probability,
            sched_events_per_cpu_s: self.sched_events_per_cpu_s,
            poll_interval: Duration::from_millis(self.poll_ms),
            max_stack_depth: self.max_stack_depth,
            memory_cap_bytes: self.memory_cap_bytes,
            pid_filter_len: self.pid_filter_len,
            off_cpu_state: self.off_cpu_state,
            events_bytes: None,
            kernel: KernelCostModel::default(),
        }
    }

    fn plan(&self) -> MapPlan {
        plan(&self.inputs()).unwrap_or_else(|err| panic!("{self:?}: {err}"))
    }
}

fn probability() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64]
}

fn off_cpu_state() -> impl Strategy<Value = OffCpuState> {
    prop_oneof![Just(OffCpuState::TaskStorage), Just(OffCpuState::Hash)]
}

prop_compose! {
    fn knobs()(
        online in 1u32..=256,
        extra_possible in 0u32..=256,
        frequency_hz in 1u32..=10_000,
        off_cpu_probability in probability(),
        sched_events_per_cpu_s in 0u32..=100_000,
        poll_ms in 10u64..=10_000,
        max_stack_depth in 1u32..=127,
        pid_filter_len in prop_oneof![Just(0u32), 1u32..=5000],
        off_cpu_state in off_cpu_state(),
    ) -> Knobs {
        Knobs {
            online,
            possible: online + extra_possible,
            frequency_hz,
            off_cpu_probability,
            sched_events_per_cpu_s,
            poll_ms,
            max_stack_depth,
            pid_filter_len,
            off_cpu_state,
            memory_cap_bytes: ROOMY_CAP,
        }
    }
}

/// Every row of `smaller` is in `larger` with no smaller size.
fn assert_sizes_non_decreasing(smaller: &MapPlan, larger: &MapPlan, what: &str) {
    for row in &smaller.maps {
        let bigger = larger
            .get(&row.name)
            .unwrap_or_else(|| panic!("{what}: map {} disappeared when the input grew", row.name));
        assert!(
            bigger.max_entries >= row.max_entries,
            "{what}: {} max_entries {} -> {}",
            row.name,
            row.max_entries,
            bigger.max_entries
        );
        assert!(
            bigger.bytes_floor >= row.bytes_floor,
            "{what}: {} bytes_floor {} -> {}",
            row.name,
            row.bytes_floor,
            bigger.bytes_floor
        );
        assert!(
            bigger.bytes_cap >= row.bytes_cap,
            "{what}: {} bytes_cap {} -> {}",
            row.name,
            row.bytes_cap,
            bigger.bytes_cap
        );
    }
    assert!(
        larger.total_bytes_floor >= smaller.total_bytes_floor,
        "{what}: total floor"
    );
    assert!(
        larger.total_bytes_cap >= smaller.total_bytes_cap,
        "{what}: total cap"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn next_pow2_is_the_smallest_power_of_two_not_below(n in 1u64..=(1 << 31)) {
        let pow = next_pow2(n);
        prop_assert!(pow.is_power_of_two());
        prop_assert!(u64::from(pow) >= n);
        prop_assert!(u64::from(pow) < 2 * n);
    }

    #[test]
    fn sizes_the_kernel_wants_as_powers_of_two_are(k in knobs(), cap in 1u64..=(64 << 20)) {
        let mut k = k;
        k.memory_cap_bytes = cap;
        let Ok(plan) = plan(&k.inputs()) else { return Ok(()); };
        let events = plan.get("events").expect("events is always planned");
        prop_assert_eq!(events.map_type, MapType::RingBuf);
        prop_assert!(events.max_entries.is_power_of_two());
        prop_assert_eq!(events.max_entries % 4096, 0);
        prop_assert!(events.max_entries >= EVENTS_FLOOR_BYTES);
        prop_assert!(events.max_entries <= EVENTS_CAP_BYTES);
        for name in ["offcpu_hash", "pid_filter"] {
            if let Some(row) = plan.get(name) {
                prop_assert!(row.max_entries.is_power_of_two(), "{} = {}", name, row.max_entries);
            }
        }
        if let Some(row) = plan.get("offcpu_task") {
            prop_assert_eq!(row.max_entries, 0);
        }
    }

    #[test]
    fn maps_exist_exactly_for_enabled_features(k in knobs()) {
        let plan = k.plan();
        prop_assert_eq!(plan.get("pid_filter").is_some(), k.pid_filter_len > 0);
        let off_cpu = k.off_cpu_probability > 0.0;
        prop_assert_eq!(
            plan.get("offcpu_task").is_some(),
            off_cpu && k.off_cpu_state == OffCpuState::TaskStorage
        );
        prop_assert_eq!(
            plan.get("offcpu_hash").is_some(),
            off_cpu && k.off_cpu_state == OffCpuState::Hash
        );
        for name in ["events", "scratch", "counters", "rodata"] {
            prop_assert!(plan.get(name).is_some(), "{} missing", name);
        }
    }

    #[test]
    fn monotone_in_online_cpus(k in knobs(), more in 0u32..=256) {
        let mut bigger = k.clone();
        bigger.online = k.online + more;
        // Keep possible fixed where it allows, so only online changes.
        bigger.possible = k.possible.max(bigger.online);
        assert_sizes_non_decreasing(&k.plan(), &bigger.plan(), "online");
    }

    #[test]
    fn monotone_in_possible_cpus(k in knobs(), more in 0u32..=512) {
        let mut bigger = k.clone();
        bigger.possible = k.possible + more;
        assert_sizes_non_decreasing(&k.plan(), &bigger.plan(), "possible");
    }

    #[test]
    fn monotone_in_frequency(k in knobs(), frequency in 1u32..=10_000) {
        let mut bigger = k.clone();
        bigger.frequency_hz = k.frequency_hz.max(frequency);
        assert_sizes_non_decreasing(&k.plan(), &bigger.plan(), "frequency");
    }

    #[test]
    fn monotone_in_off_cpu_probability(k in knobs(), p in probability()) {
        let mut bigger = k.clone();
        bigger.off_cpu_probability = k.off_cpu_probability.max(p);
        assert_sizes_non_decreasing(&k.plan(), &bigger.plan(), "probability");
    }

    #[test]
    fn monotone_in_sched_events(k in knobs(), sched in 0u32..=100_000) {
        let mut bigger = k.clone();
        bigger.sched_events_per_cpu_s = k.sched_events_per_cpu_s.max(sched);
        assert_sizes_non_decreasing(&k.plan(), &bigger.plan(), "sched events");
    }

    #[test]
    fn monotone_in_poll_interval(k in knobs(), poll_ms in 10u64..=10_000) {
        let mut bigger = k.clone();
        bigger.poll_ms = k.poll_ms.max(poll_ms);
        assert_sizes_non_decreasing(&k.plan(), &bigger.plan(), "poll interval");
    }

    #[test]
    fn monotone_in_stack_depth(k in knobs(), depth in 1u32..=127) {
        let mut bigger = k.clone();
        bigger.max_stack_depth = k.max_stack_depth.max(depth);
        assert_sizes_non_decreasing(&k.plan(), &bigger.plan(), "depth");
    }

    #[test]
    fn monotone_in_pid_filter_length(k in knobs(), len in 0u32..=5000) {
        let mut bigger = k.clone();
        bigger.pid_filter_len = k.pid_filter_len.max(len);
        assert_sizes_non_decreasing(&k.plan(), &bigger.plan(), "pid filter");
    }

    #[test]
    fn total_never_exceeds_the_memory_cap(k in knobs(), cap in 1u64..=(64 << 20)) {
        let mut k = k;
        k.memory_cap_bytes = cap;
        match plan(&k.inputs()) {
            Ok(plan) => {
                prop_assert!(plan.total_bytes_cap <= cap, "{} > {}", plan.total_bytes_cap, cap);
                prop_assert_eq!(plan.total_bytes(), plan.total_bytes_cap);
                prop_assert_eq!(
                    plan.total_bytes_cap,
                    plan.maps.iter().map(|row| row.bytes_cap).sum::<u64>()
                );
                prop_assert!(plan.total_bytes_floor <= plan.total_bytes_cap);
            }
            Err(SizingError::CapTooSmall { needed_bytes, cap_bytes }) => {
                prop_assert_eq!(cap_bytes, cap);
                prop_assert!(needed_bytes > cap);
                // The needed amount is enough: the error's advice works.
                k.memory_cap_bytes = needed_bytes;
                let plan = plan(&k.inputs()).unwrap();
                prop_assert!(plan.total_bytes_cap <= needed_bytes);
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }

    #[test]
    fn a_binding_cap_only_shrinks_the_ring_buffer(k in knobs(), cap in 1u64..=(16 << 20)) {
        let roomy = k.plan();
        let mut tight = k.clone();
        tight.memory_cap_bytes = cap;
        let Ok(tight) = plan(&tight.inputs()) else { return Ok(()); };
        prop_assert_eq!(roomy.maps.len(), tight.maps.len());
        for (a, b) in roomy.maps.iter().zip(&tight.maps) {
            if a.name == "events" && a != b {
                // The cap bounds what the ring may grow to; its starting size
                // follows only when it no longer fits under the halved cap.
                prop_assert!(b.max_entries_cap < a.max_entries_cap);
                prop_assert!(b.max_entries <= a.max_entries);
                prop_assert!(b.max_entries <= b.max_entries_cap);
                prop_assert!(b.bytes_cap < a.bytes_cap);
                prop_assert_eq!(b.tier, Tier::Cap);
                prop_assert!(b.formula.contains("memory cap"));
            } else {
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn possible_cpus_change_only_rows_that_say_they_scale(
        k in knobs(),
        other_possible in 1u32..=1024,
    ) {
        let mut other = k.clone();
        other.possible = other_possible.max(k.online);
        let a = k.plan();
        let b = other.plan();
        prop_assert_eq!(a.maps.len(), b.maps.len());
        for (row_a, row_b) in a.maps.iter().zip(&b.maps) {
            prop_assert_eq!(&row_a.name, &row_b.name);
            prop_assert_eq!(row_a.scales_with_possible_cpus, row_b.scales_with_possible_cpus);
            if !row_a.scales_with_possible_cpus {
                prop_assert_eq!(row_a, row_b);
                prop_assert_eq!(row_a.possible_cpu_bytes, 0);
            }
        }
    }
}

#[test]
fn the_scaling_rows_are_the_per_cpu_scratch_and_the_kernels_per_cpu_bookkeeping() {
    let inputs = PlanInputs {
        topology: Topology::synthetic(2, 64),
        off_cpu_probability: 0.5,
        pid_filter_len: 10,
        ..PlanInputs::default()
    };
    let plan = plan(&inputs).unwrap();
    let scaling: Vec<&str> = plan
        .maps
        .iter()
        .filter(|row| row.scales_with_possible_cpus)
        .map(|row| row.name.as_str())
        .collect();
    // scratch: a per-CPU array; pid_filter: a preallocated hash keeps spare
    // elements per CPU; offcpu_task: its bucket count follows possible CPUs.
    assert_eq!(scaling, ["scratch", "pid_filter", "offcpu_task"]);
}
