//! End-to-end tests of `kestrel record` with real BPF programs, a real workload
//! and real symbolization. Run as root.

mod common;

use std::io::Read;
use std::process::Command;

use common::*;

fn stat_u64(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("stats.json has no number at {path:?}: {v}"))
}

#[test]
fn on_cpu_functions_appear_by_name_in_their_cpu_ratio() {
    let _g = serial();
    let r = record_workload("ratio", "6", &["--frequency", "997", "--duration", "8"]);
    let folded = r.folded("profile.folded");
    let three = sum_with(&folded, "kestrel_burn_three") as f64;
    let one = sum_with(&folded, "kestrel_burn_one") as f64;
    assert!(
        three > 1000.0 && one > 300.0,
        "too few samples: three={three} one={one}\n{folded:?}"
    );
    let ratio = three / one;
    let cpu_ratio: f64 = r
        .workload_lines
        .iter()
        .find_map(|l| l.strip_prefix("cpu_ratio "))
        .expect("the workload reports its CPU ratio")
        .trim()
        .parse()
        .unwrap();
    assert!(
        (2.4..=3.6).contains(&cpu_ratio),
        "the workload's own CPU ratio is {cpu_ratio}, not about 3"
    );
    assert!(
        (ratio / cpu_ratio - 1.0).abs() <= 0.10,
        "profile ratio {ratio:.3} vs the CPU time the workload measured {cpu_ratio:.3}: not within ± 10 % (three={three}, one={one})"
    );
}

#[test]
fn syscall_heavy_function_shows_kernel_frames_under_it() {
    let _g = serial();
    let r = record_workload("syscalls", "3", &["--frequency", "499", "--duration", "5"]);
    let folded = r.folded("profile.folded");
    let total = sum_with(&folded, "kestrel_syscall_storm");
    let with_kernel: u64 = folded
        .iter()
        .filter(|(s, _)| {
            let frames: Vec<&str> = s.split(';').collect();
            let pos = frames.iter().position(|f| *f == "kestrel_syscall_storm");
            // Folded stacks are root first: kernel frames sit after (under) the function.
            pos.is_some_and(|p| frames[p + 1..].iter().any(|f| f.ends_with("_[k]")))
        })
        .map(|(_, v)| v)
        .sum();
    assert!(
        total > 200,
        "too few samples in kestrel_syscall_storm: {total}"
    );
    assert!(
        with_kernel * 4 >= total,
        "only {with_kernel} of {total} samples of the syscall storm carry kernel frames"
    );
    assert!(
        folded
            .keys()
            .any(|s| s.contains("kestrel_syscall_storm") && s.contains("getppid")),
        "no getppid kernel frame under kestrel_syscall_storm"
    );
}

#[test]
fn pinned_threads_get_at_least_95_percent_of_expected_samples_per_cpu() {
    let _g = serial();
    let freq = 99.0;
    // The recording spans the whole workload, so every CPU second the pinned
    // threads got falls inside it; expected = frequency × that CPU time, which
    // stays right when other work on the machine steals time from the threads.
    let r = record_workload("pinned", "3", &["--frequency", "99", "--duration", "5"]);
    let per_cpu = r.stats["samples"]["per_cpu"].as_object().expect("per_cpu");
    let online = stat_u64(&r.stats, &["online_cpus"]);
    let mut seen = 0;
    for line in r.workload_lines.iter().filter(|l| l.starts_with("cpu ")) {
        let mut parts = line.split_whitespace().skip(1);
        let cpu = parts.next().unwrap();
        let cpu_seconds: f64 = parts.next().unwrap().parse().unwrap();
        let expected = freq * cpu_seconds;
        let got = per_cpu.get(cpu).and_then(|v| v.as_u64()).unwrap_or(0) as f64;
        assert!(
            cpu_seconds > 0.5,
            "CPU {cpu}: the pinned thread barely ran ({cpu_seconds:.2} s)"
        );
        assert!(
            got >= 0.95 * expected,
            "CPU {cpu}: {got} samples, expected at least 95 % of {expected:.0}"
        );
        seen += 1;
    }
    assert_eq!(seen, online, "one pinned thread per online CPU");
    assert!(stat_u64(&r.stats, &["samples", "expected"]) > 0);
    assert_eq!(stat_u64(&r.stats, &["samples", "lost"]), 0);
}

#[test]
fn outputs_agree_with_each_other_and_with_real_tools() {
    let _g = serial();
    let r = record_workload("ratio", "2", &["--frequency", "199", "--duration", "3"]);
    let received = stat_u64(&r.stats, &["samples", "received"]);
    assert!(received > 20, "received {received}");

    // folded sums equal the sample count
    let folded = r.folded("profile.folded");
    assert_eq!(
        folded.values().sum::<u64>(),
        received,
        "profile.folded total vs stats.json"
    );

    // pprof decodes with the schema and its totals equal stats.json
    let mut gz = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(r.file("profile.pb.gz")).unwrap())
        .read_to_end(&mut gz)
        .expect("profile.pb.gz is gzip");
    let profile = kestrel_export::decode_pprof(&gz).expect("pprof decodes");
    let names: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|t| profile.string_table[t.r#type as usize].as_str())
        .collect();
    let samples_idx = names
        .iter()
        .position(|n| *n == "samples")
        .expect("samples sample type");
    let total: i64 = profile.sample.iter().map(|s| s.value[samples_idx]).sum();
    assert_eq!(total as u64, received, "pprof total vs stats.json");

    // the real pprof tool reads it and names the workload's functions
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-nodecount=50"])
        .arg(r.file("profile.pb.gz"))
        .output()
        .expect("go tool pprof runs (install golang-go)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("kestrel_burn_three"),
        "pprof -top lacks kestrel_burn_three:\n{text}"
    );

    // the flamegraph is well-formed SVG that names the functions
    let svg = std::fs::read_to_string(r.file("flamegraph.svg")).unwrap();
    let mut reader = quick_xml::Reader::from_str(&svg);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("flamegraph.svg is not well-formed XML: {e}"),
        }
    }
    assert!(
        svg.contains("<svg")
            && svg.contains("kestrel_burn_three")
            && svg.contains("kestrel_burn_one")
    );
}

#[test]
fn measured_map_memory_equals_the_plan() {
    let _g = serial();
    let r = record_workload(
        "offcpu",
        "0",
        &["--duration", "3", "--off-cpu-probability", "1"],
    );
    let maps = r.stats["maps"].as_array().expect("maps[]");
    assert!(
        maps.len() >= 5,
        "expected events, scratch, counters, offcpu store, rodata: {maps:?}"
    );
    for m in maps {
        let name = m["name"].as_str().unwrap();
        let planned = m["planned_bytes"].as_u64().unwrap();
        let cap = m["planned_cap_bytes"].as_u64().unwrap();
        let measured = m["memlock_bytes"].as_u64().unwrap();
        assert!(planned > 0, "{name} has no plan row");
        if planned == cap {
            assert_eq!(
                measured, planned,
                "{name}: measured {measured} B, planned {planned} B"
            );
        } else {
            assert!(
                (planned..=cap).contains(&measured),
                "{name}: measured {measured} outside [{planned}, {cap}]"
            );
        }
    }
    let total = stat_u64(&r.stats, &["total_memlock_bytes"]);
    assert!(total <= 8 << 20, "total kernel memory {total} above 8 MiB");
}

#[test]
fn self_is_excluded_and_a_missing_pid_is_a_clear_error() {
    require_root();
    let out = Command::new(KESTREL)
        .args(["record", "--pid", "999999999", "--duration", "1", "-o"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("999999999") && err.contains("no such process"),
        "{err}"
    );
}

#[test]
fn unwritable_output_directory_fails_before_recording() {
    let out = Command::new(KESTREL)
        .args([
            "record",
            "--duration",
            "1",
            "-o",
            "/proc/kestrel-cannot-write-here",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--output"),
        "the error says how to fix it: {err}"
    );
}

#[test]
fn without_privileges_record_fails_clearly_and_points_at_check() {
    require_root(); // to drop to nobody
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(KESTREL)
        .args(["record", "--duration", "1", "-o"])
        .arg(dir.path())
        .output()
        .expect("setpriv (util-linux) runs");
    assert!(!out.status.success(), "record must fail without privileges");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kestrel check") && err.contains("CAP_BPF"),
        "{err}"
    );
}

#[test]
fn jit_frames_are_named_from_the_perf_map() {
    let _g = serial();
    let r = record_workload("jit", "3", &["--frequency", "199", "--duration", "4"]);
    let folded = r.folded("profile.folded");
    let jit =
        sum_with(&folded, "kestrel_jit_hot_loop_[j]") + sum_with(&folded, "kestrel_jit_hot_loop");
    let total: u64 = folded.values().sum();
    assert!(
        jit * 2 > total,
        "the generated loop burns the CPU, so most samples must name it: {jit} of {total}\n{folded:?}"
    );
    assert!(
        r.stats["symbols"]["perf_map_reloads"].as_u64().is_some(),
        "store counters in stats.json"
    );
}

#[test]
fn ctrl_c_stops_early_and_still_writes_every_file() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(KESTREL)
        .args([
            "record",
            "--duration",
            "60",
            "--no-progress",
            "--off-cpu-probability",
            "0.5",
            "-o",
        ])
        .arg(dir.path())
        .env("KESTREL_SYMBOLS__CACHE_DIR", dir.path().join("cache"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "record after Ctrl-C: {status}");
    assert!(
        started.elapsed().as_secs() < 30,
        "Ctrl-C must stop the recording early"
    );
    for f in [
        "profile.pb.gz",
        "profile.folded",
        "flamegraph.svg",
        "offcpu.folded",
        "offcpu.svg",
        "stats.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing after Ctrl-C");
    }
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["interrupted"], true);
    assert!(stats["duration_s"].as_f64().unwrap() < 30.0);
}
