//! The binary's non-BPF commands: plan, config, errors.

use std::process::Command;

const KESTREL: &str = env!("CARGO_BIN_EXE_kestrel");

#[test]
fn plan_for_a_large_vm_shows_the_reference_in_gigabytes_and_kestrel_within_8_mib() {
    let out = Command::new(KESTREL)
        .args([
            "plan",
            "--online",
            "16",
            "--possible",
            "128",
            "--off-cpu-probability",
            "1",
            "--pid-max",
            "4194304",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let original = v["reference"]["original_offcpu_bytes"].as_u64().unwrap();
    let current = v["reference"]["current_offcpu_bytes"].as_u64().unwrap();
    let total = v["total_bytes"].as_u64().unwrap();
    assert!(original > 4_000_000_000, "reference original {original} B");
    assert!(current > 4_000_000 && current < original);
    assert!(total <= 8 << 20, "Kestrel's plan {total} B");
    let maps = v["maps"].as_array().unwrap();
    for m in maps {
        for key in ["name", "map_type", "max_entries", "bytes"] {
            assert!(!m[key].is_null(), "maps[] entry lacks {key}: {m}");
        }
    }
    let sum: u64 = maps.iter().map(|m| m["bytes"].as_u64().unwrap()).sum();
    assert_eq!(sum, total);
}

#[test]
fn plan_without_off_cpu_has_no_off_cpu_maps() {
    let out = Command::new(KESTREL)
        .args(["plan", "--online", "4", "--possible", "8", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["maps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("offcpu")), "{names:?}");
    assert!(names.contains(&"events") && names.contains(&"scratch"));
}

#[test]
fn config_prints_the_effective_configuration_with_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.toml");
    std::fs::write(&file, "[sampling]\nfrequency_hz = 49\n").unwrap();
    let out = Command::new(KESTREL)
        .args(["config", "--config"])
        .arg(&file)
        .env("KESTREL_OFF_CPU__PROBABILITY", "0.5")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("frequency_hz = 49") && text.contains("probability = 0.5"),
        "{text}"
    );
}

#[test]
fn bad_configuration_names_the_key_and_source_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[sampling]\nfrequency_hz = 20000\n").unwrap();
    let out = Command::new(KESTREL)
        .args(["plan", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sampling.frequency_hz")
            && err.contains("bad.toml")
            && err.contains("1..=10000"),
        "{err}"
    );
    let out = Command::new(KESTREL)
        .args(["plan", "--frequency", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sampling.frequency_hz"));
}

#[test]
fn plan_shows_tiers_virtualization_and_warns_about_many_possible_cpus() {
    let out = Command::new(KESTREL)
        .args([
            "plan",
            "--online",
            "16",
            "--possible",
            "128",
            "--off-cpu-probability",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The three tiers: floor (idle) at most 1 MiB, cap at most 8 MiB, and the
    // ring buffer starting below what it may grow to.
    let floor = v["total_bytes_floor"].as_u64().unwrap();
    let cap = v["total_bytes_cap"].as_u64().unwrap();
    assert!(floor <= 1 << 20, "idle floor {floor} B");
    assert!(cap <= 8 << 20, "cap {cap} B");
    let events = v["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "events")
        .unwrap();
    assert!(events["max_entries"].as_u64() < events["max_entries_cap"].as_u64());
    assert!(v["virtualization"]["hypervisor_bit"].is_boolean());
    let warning = v["possible_cpu_warning"]
        .as_str()
        .expect("8x possible CPUs deserve a warning");
    assert!(warning.contains("scratch"), "{warning}");
    let out = Command::new(KESTREL)
        .args(["plan", "--online", "4", "--possible", "4", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["possible_cpu_warning"].is_null());
}

#[test]
fn an_unknown_record_format_is_refused_before_anything_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(KESTREL)
        .args(["record", "--duration", "1", "--format", "svgz", "-o"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("record.formats") && err.contains("svgz") && err.contains("flamegraph"),
        "{err}"
    );
    assert!(
        !dir.path().join("stats.json").exists(),
        "nothing was recorded"
    );
}
