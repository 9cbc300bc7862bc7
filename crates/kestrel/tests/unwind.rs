//! Golden stacks of the BPF table unwinder: a C program built in the test run
//! at `-O2 -fomit-frame-pointer`, recorded with `--unwind table` (its chain
//! from the leaf to `main` must be complete in at least 95 % of the samples)
//! and with `--unwind fp` (frame pointers alone must not reach `main`, which
//! proves the first test can fail). Real BPF: run as root.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::*;

const CHAIN: [&str; 6] = ["main", "kst_a", "kst_b", "kst_c", "kst_d", "kst_e"];

fn chain_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/chain.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kestrel-test-chain");
        let status = Command::new("gcc")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc runs (install build-essential)");
        assert!(status.success(), "compiling the chain program failed");
        // The premise of the test: the chain's functions keep no frame pointer.
        let dis = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(&out)
            .output()
            .expect("objdump runs (binutils)");
        let text = String::from_utf8_lossy(&dis.stdout);
        for f in &CHAIN[1..] {
            let body = text
                .split(&format!("<{f}>:\n"))
                .nth(1)
                .and_then(|rest| rest.split("\n\n").next())
                .unwrap_or_else(|| panic!("{f} is in the binary"));
            assert!(
                !body.contains("push   %rbp"),
                "{f} saves rbp: the compiler kept frame pointers\n{body}"
            );
        }
        out
    })
}

/// Runs the chain program for `seconds` and records it with `args`; returns
/// the folded profile and stats.json.
fn record_chain(args: &[&str]) -> (Vec<(Vec<String>, u64)>, serde_json::Value) {
    record_chain_file(&[], args, "profile.folded")
}

/// [`record_chain`] with arguments for the program and the folded file to read.
fn record_chain_file(
    program_args: &[&str],
    args: &[&str],
    file: &str,
) -> (Vec<(Vec<String>, u64)>, serde_json::Value) {
    require_root();
    let mut child = Command::new(chain_binary())
        .arg("8")
        .args(program_args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("chain program starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("reads ready");
    assert_eq!(line.trim(), "ready");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(KESTREL)
        .arg("record")
        .args(["--pid", &child.id().to_string(), "-o"])
        .arg(dir.path())
        .args(["--no-progress", "--frequency", "199", "--duration", "3"])
        .args(args)
        .env("KESTREL_SYMBOLS__CACHE_DIR", dir.path().join("cache"))
        .output()
        .expect("kestrel runs");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "kestrel record failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let folded = std::fs::read_to_string(dir.path().join(file)).expect("folded");
    let stacks = parse_folded(&folded)
        .into_iter()
        .map(|(stack, n)| {
            let frames = stack
                .split(';')
                // A name may carry a suffix after a space (inline marks, ...).
                .map(|f| f.split(' ').next().unwrap_or(f).to_string())
                .collect();
            (frames, n)
        })
        .collect();
    let stats = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("stats.json")).expect("stats.json"),
    )
    .expect("json");
    (stacks, stats)
}

/// Whether a stack's user part ends with exactly main → … → kst_e, with only
/// the C runtime's start frames (and the process name) above `main`, and
/// kernel frames (`_[k]`) only below the leaf.
fn exact_chain(frames: &[String]) -> bool {
    let user: Vec<&str> = frames
        .iter()
        .map(String::as_str)
        .filter(|f| !f.ends_with("_[k]"))
        .collect();
    let Some(main) = user.iter().position(|f| *f == "main") else {
        return false;
    };
    let above_ok = user[1..main]
        .iter()
        .all(|f| f.starts_with("__libc_start") || *f == "_start");
    above_ok && user[main..] == CHAIN
}

fn share_exact(stacks: &[(Vec<String>, u64)]) -> (u64, u64) {
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let exact: u64 = stacks
        .iter()
        .filter(|(f, _)| exact_chain(f))
        .map(|(_, n)| n)
        .sum();
    (exact, total)
}

#[test]
fn table_unwinder_gives_the_whole_chain_without_frame_pointers() {
    let _g = serial();
    let (stacks, stats) = record_chain(&["--unwind", "table"]);
    let (exact, total) = share_exact(&stacks);
    eprintln!("table unwinder: {exact} of {total} samples carry the exact chain");
    assert!(total >= 200, "too few samples: {total}\n{stacks:?}");
    assert!(
        exact as f64 >= 0.95 * total as f64,
        "{exact} of {total} samples carry exactly main→kst_a→…→kst_e\n{stacks:?}"
    );
    let c = &stats["counters"];
    assert!(c["unwind_frames_table"].as_u64().unwrap() >= 6 * exact);
    assert!(c["unwind_end_outermost"].as_u64().unwrap() >= exact);
    let u = &stats["unwind"];
    assert!(
        u["tables_loaded"].as_u64().unwrap() >= 2,
        "the program and libc: {u}"
    );
    assert!(u["table_bytes"].as_u64().unwrap() > 0);
}

/// Whether a stack's user part has exactly main → … → kst_e (then whatever
/// kst_e called: libc's sleep, the system call).
fn chain_from_main(frames: &[String]) -> bool {
    let user: Vec<&str> = frames
        .iter()
        .map(String::as_str)
        .filter(|f| !f.ends_with("_[k]"))
        .collect();
    user.iter()
        .position(|f| *f == "main")
        .is_some_and(|m| user.get(m..m + CHAIN.len()) == Some(&CHAIN[..]))
}

#[test]
fn off_cpu_stacks_are_unwound_from_the_system_call_through_libc() {
    let _g = serial();
    let (stacks, stats) = record_chain_file(
        &["nap"],
        &["--unwind", "table", "--off-cpu-probability", "1"],
        "offcpu.folded",
    );
    // Values are nanoseconds waited: count stacks' time.
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let exact: u64 = stacks
        .iter()
        .filter(|(f, _)| chain_from_main(f))
        .map(|(_, n)| n)
        .sum();
    assert!(
        stats["counters"]["off_cpu_wakes"].as_u64().unwrap() >= 50,
        "too few waits: {}",
        stats["counters"]
    );
    assert!(
        exact as f64 >= 0.95 * total as f64,
        "{exact} of {total} ns waited under exactly main→kst_a→…→kst_e\n{stacks:?}"
    );
}

#[test]
fn frame_pointers_alone_do_not_reach_main() {
    let _g = serial();
    let (stacks, _) = record_chain(&["--unwind", "fp"]);
    let (exact, total) = share_exact(&stacks);
    eprintln!("frame pointers: {exact} of {total} samples carry the exact chain");
    assert!(total >= 200, "too few samples: {total}\n{stacks:?}");
    assert!(
        (exact as f64) < 0.5 * total as f64,
        "frame pointers reached main in {exact} of {total} samples: the program kept frame pointers?\n{stacks:?}"
    );
}

#[test]
fn the_plan_holds_the_unwinder_maps_only_when_it_is_on() {
    let plan = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(KESTREL)
            .args(["plan", "--online", "2", "--possible", "2", "--json"])
            .args(args)
            .output()
            .expect("kestrel plan runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["maps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    let off = plan(&[]);
    assert!(!names(&off).iter().any(|n| n.starts_with("unwind_")));
    let on = plan(&["--unwind", "auto"]);
    for map in [
        "unwind_rows",
        "unwind_pages",
        "unwind_rules",
        "unwind_files",
        "proc_mappings",
    ] {
        assert!(names(&on).iter().any(|n| n == map), "{map} in {on}");
    }
    let rows = on["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "unwind_rows")
        .unwrap();
    assert!(
        rows["formula"]
            .as_str()
            .unwrap()
            .contains("2097152 B unwind cap"),
        "{rows}"
    );
    // The pools add the configured cap (2 MiB by default) and the index maps.
    let added = on["total_bytes"].as_u64().unwrap() - off["total_bytes"].as_u64().unwrap();
    assert!(
        (2 << 20..3 << 20).contains(&added),
        "the unwinder adds {added} B"
    );
}
