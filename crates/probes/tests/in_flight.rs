//! Real BPF: the off-CPU in-flight store keeps no entry for a thread that exited.
//! Run as root.

use std::time::Duration;

use kestrel_probes::{KernelFeatures, OffCpuHook, ProbeConfig, Session};
use kestrel_sizing::{plan, OffCpuState, PlanInputs, Topology};

#[test]
fn no_in_flight_entry_outlives_its_thread_with_the_hash_store() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads real BPF programs: run it as root (CI does)"
    );
    let features = KernelFeatures::probe();
    let topology = Topology::detect().expect("topology");
    let config = ProbeConfig {
        off_cpu_probability: 1.0,
        pids: vec![std::process::id()],
        profile_self: true,
        off_cpu_hook: Some(OffCpuHook::RawTpHash),
        ..ProbeConfig::default()
    };
    let inputs = PlanInputs {
        topology: topology.clone(),
        off_cpu_probability: 1.0,
        pid_filter_len: 1,
        off_cpu_state: OffCpuState::Hash,
        ..PlanInputs::default()
    };
    let map_plan = plan(&inputs).expect("plan");
    let mut session =
        Session::start(&config, &map_plan, &features, &topology.online).expect("session starts");

    // 64 threads that block, wake, block again, and exit while the store is live.
    let handles: Vec<_> = (0..64)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..3 {
                    std::thread::sleep(Duration::from_millis(30));
                }
                nix::unistd::gettid().as_raw() as u32
            })
        })
        .collect();
    // Drain while they run, as the agent does every poll interval: one drain
    // at the end would ask the ring's floor to hold every record at once.
    let mut samples = Vec::new();
    while !handles.iter().all(|h| h.is_finished()) {
        session.drain(&mut samples).expect("drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tids: Vec<u32> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    session.drain(&mut samples).expect("drain");
    let waits = samples.iter().filter(|s| tids.contains(&s.tid)).count();
    assert!(
        waits >= 64,
        "the threads' waits were measured ({waits}); counters: {:?}",
        session.counters()
    );

    let in_flight = session
        .in_flight_tids()
        .expect("the hash store can be listed");
    let leaked: Vec<u32> = in_flight
        .iter()
        .copied()
        .filter(|t| tids.contains(t))
        .collect();
    assert!(
        leaked.is_empty(),
        "in-flight entries outlived their threads: {leaked:?}"
    );
}
