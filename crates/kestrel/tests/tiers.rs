//! Live tiers with real BPF: a burst of context switches grows the ring buffer
//! within its cap, nothing is lost beyond the counted drops, and it shrinks back
//! when the burst ends. Run as root.

mod common;

use common::*;

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_context_switch_burst_grows_the_ring_and_it_shrinks_back() {
    let _g = serial();
    let r = record_workload_env(
        "pingpong",
        "3",
        &["--off-cpu-probability", "1", "--duration", "8"],
        &[("KESTREL_MEMORY__RING_SHRINK_AFTER_S", "1")],
    );
    let replans = r.stats["replans"].as_array().expect("replans[]");
    let grew: Vec<_> = replans
        .iter()
        .filter(|p| u(&p["new_entries"]) > u(&p["old_entries"]))
        .collect();
    let shrank: Vec<_> = replans
        .iter()
        .filter(|p| p["reason"] == "ring_idle" && u(&p["new_entries"]) < u(&p["old_entries"]))
        .collect();
    assert!(
        !grew.is_empty(),
        "the burst must grow the ring: {replans:?}"
    );
    assert!(
        !shrank.is_empty(),
        "after the burst the ring must shrink back: {replans:?}"
    );
    let events = r.stats["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "events")
        .expect("events map");
    let cap = u(&events["planned_cap_bytes"]);
    for p in replans {
        assert!(u(&p["new_bytes"]) <= cap, "re-plan beyond the cap: {p}");
        assert!(p["reason"].is_string() && p["time_s"].is_number());
    }
    // Measured memory equals the final plan after the swaps.
    assert_eq!(u(&events["memlock_bytes"]), u(&events["planned_bytes"]));

    // Nothing lost beyond what is counted: every recorded switch-out is a
    // reported wait, a wait below the minimum, or a counted ring loss.
    let off = &r.stats["off_cpu"];
    let c = &r.stats["counters"];
    let recorded = u(&off["recorded"]);
    let accounted = u(&off["waits_reported"])
        + u(&off["short"])
        + u(&c["ringbuf_lost"])
        + u(&c["off_cpu_pending_dropped"])
        + u(&c["off_cpu_missed_wakes"]);
    assert!(recorded > 10_000, "the burst produced {recorded} switches");
    assert!(
        accounted + 16 >= recorded,
        "{recorded} recorded, only {accounted} reported or counted as dropped: {off} {c}"
    );
    let folded = r.folded("offcpu.folded");
    assert!(sum_with(&folded, "kestrel_pingpong_wait") > 0);
}
