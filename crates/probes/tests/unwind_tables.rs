//! Real BPF: the table unwinder's loader keeps its pools within the plan's
//! unwind cap by evicting the least recently sampled file's table (counted),
//! and the maps' kernel memory is what the plan says. Run as root.

use std::process::{Child, Command};
use std::time::Duration;

use kestrel_probes::{KernelFeatures, ProbeConfig, Session};
use kestrel_sizing::{plan, PlanInputs, Topology};

fn spawn(program: &str, args: &[&str]) -> Child {
    let child = Command::new(program)
        .args(args)
        .spawn()
        .expect("test process starts");
    // Let the dynamic loader map every library.
    std::thread::sleep(Duration::from_millis(300));
    child
}

#[test]
fn a_table_past_the_cap_evicts_the_least_recently_sampled_file() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads real BPF programs: run it as root (CI does)"
    );
    let mut sleeper = spawn("sleep", &["30"]);
    let mut python = spawn("python3", &["-c", "import time; time.sleep(30)"]);
    let pids = vec![sleeper.id(), python.id()];

    // Rows pool = 14/16 × 320 KiB = 71,680 rows: libc (~23k rows, mapped by
    // both) and python3.11 (~58k rows) cannot both be in it.
    let cap = 320 * 1024;
    let features = KernelFeatures::probe();
    let topology = Topology::detect().expect("topology");
    let config = ProbeConfig {
        pids: pids.clone(),
        unwind_tables: true,
        ..ProbeConfig::default()
    };
    let map_plan = plan(&PlanInputs {
        topology: topology.clone(),
        pid_filter_len: 2,
        unwind_cap_bytes: cap,
        ..PlanInputs::default()
    })
    .expect("plan");
    // Session::start loads both processes' tables, sleep's first.
    let mut session =
        Session::start(&config, &map_plan, &features, &topology.online).expect("session starts");
    let stats = session.unwind_stats().expect("the unwinder is on");
    assert_eq!(stats.processes, 2, "{stats:?}");
    assert!(stats.tables_loaded >= 3, "{stats:?}");
    assert!(
        stats.tables_evicted >= 1,
        "python3's table needed room: {stats:?}"
    );
    assert!(
        stats.table_bytes <= cap,
        "the loaded tables exceed the cap: {stats:?}"
    );

    // Sampling sleep again re-reads nothing (it is known) but marks its files
    // used; a reload of python after that evicts again, never past the cap.
    session
        .unwind_processes([(pids[0], false), (pids[1], true)])
        .expect("reload");
    let again = session.unwind_stats().expect("on");
    assert!(again.table_bytes <= cap, "{again:?}");

    // The pools' kernel memory is the plan's.
    for m in session.map_memory() {
        if let Some(row) = map_plan.get(&m.name) {
            if m.map_type == "Array" {
                assert_eq!(m.memlock_bytes, row.bytes_cap, "{}", m.name);
            }
        }
    }
    let _ = sleeper.kill();
    let _ = python.kill();
    let _ = sleeper.wait();
    let _ = python.wait();
}
