//! The symbol store's disk tier across restarts of the real binary (issue 20):
//! what one `kestrel record` or `kestrel run` inserted, the next one finds on
//! disk, after a normal end, SIGTERM, SIGKILL (what was written before it), and
//! in a copy of the directory. The workload spins in a one-instruction loop, so
//! both runs sample the same user frames; kernel frames (interrupts) differ from
//! run to run and are left out of the checks. Real BPF; run as root (CI does).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{require_root, serial, KESTREL};

/// tests/workloads/fixed_stack.c, compiled once.
fn workload() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/fixed_stack.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kestrel-fixed-stack-workload");
        let status = Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc runs (install build-essential)");
        assert!(status.success(), "compiling the workload failed");
        out
    })
}

/// The spinning workload, killed on drop.
struct Spinner {
    child: Child,
    _stdin: ChildStdin,
    pid: u32,
}

impl Spinner {
    fn start() -> Spinner {
        let mut child = Command::new(workload())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("workload starts");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut ready)
            .expect("workload prints ready");
        let pid = ready
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .expect("ready PID");
        writeln!(stdin, "go").expect("workload reads go");
        Spinner {
            child,
            _stdin: stdin,
            pid,
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kestrel(cache: &Path) -> Command {
    let mut c = Command::new(KESTREL);
    c.env("KESTREL_SYMBOLS__CACHE_DIR", cache)
        // No off-CPU waits: only the spinning stack is sampled.
        .env("KESTREL_OFF_CPU__PROBABILITY", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Runs `kestrel record` on the spinner for 2 s at 99 Hz; returns stats.json's
/// `symbols` section.
fn record(cache: &Path, out: &Path, spinner: &Spinner) -> serde_json::Value {
    let output = kestrel(cache)
        .arg("record")
        .args(["--pid", &spinner.pid.to_string(), "--duration", "2"])
        .args([
            "--frequency",
            "99",
            "--no-progress",
            "--log-level",
            "info",
            "-o",
        ])
        .arg(out)
        .output()
        .expect("kestrel runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kestrel record failed:\n{stderr}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    let symbols = stats["symbols"].clone();
    assert!(
        symbols["close_outcome"] == "complete",
        "the store closed completely: {symbols}\n{stderr}"
    );
    assert!(
        stderr.contains("symbol store disk tier closed"),
        "the close is logged:\n{stderr}"
    );
    symbols
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// The second run found the first run's frames on disk: it recovered (nearly)
/// all of them and symbolized no frame of any ELF file.
fn check_second(
    first_file_frames: u64,
    first_inserted: u64,
    recovered: u64,
    second: &serde_json::Value,
) {
    assert!(
        first_file_frames > 0,
        "the first run symbolized the workload"
    );
    assert!(
        recovered * 10 >= first_inserted * 9,
        "recovered {recovered} of the {first_inserted} entries the first run inserted: {second}"
    );
    assert_eq!(
        n(second, "symbolized_file_frames"),
        0,
        "no frame of the workload's binary or its libraries symbolized again: {second}"
    );
    assert!(
        n(second, "disk_hits") * 10 >= first_file_frames * 9,
        "{second}"
    );
}

#[test]
fn record_then_record_again_and_in_a_copy_reads_the_symbols_from_disk() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let spinner = Spinner::start();
    let first = record(&cache, &dir.path().join("first"), &spinner);
    assert_eq!(
        n(&first, "recovered_entries"),
        0,
        "a fresh directory: {first}"
    );
    let inserted = n(&first, "misses");
    let copy = dir.path().join("copy");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&cache)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    for (name, cache) in [("second", &cache), ("from_copy", &copy)] {
        let second = record(cache, &dir.path().join(name), &spinner);
        println!("{name}: first {first}\nsecond {second}");
        check_second(
            n(&first, "symbolized_file_frames"),
            inserted,
            n(&second, "recovered_entries"),
            &second,
        );
    }
}

/// A running `kestrel run` with a stats file, its stderr collected.
struct Agent {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
    stats: PathBuf,
}

impl Agent {
    fn start(dir: &Path, cache: &Path, spinner: &Spinner, name: &str) -> Agent {
        let stats = dir.join(format!("{name}-stats.json"));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[sampling]\nfrequency_hz = 99\n\n[agent]\nreport_interval_s = 1.0\nreport_jitter = 0.0\n\
                 stats_file = \"{}\"\n\n[[exporters]]\nkind = \"folded_dir\"\ndir = \"{}\"\n",
                stats.display(),
                dir.join(format!("{name}-folded")).display()
            ),
        )
        .unwrap();
        let mut child = kestrel(cache)
            .args(["run", "--pid", &spinner.pid.to_string(), "--config"])
            .arg(&config)
            .spawn()
            .expect("kestrel starts");
        let pipe = child.stderr.take().expect("piped stderr");
        let (tx, started) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("agent running") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        started
            .recv_timeout(Duration::from_secs(60))
            .expect("kestrel starts within a minute");
        Agent {
            child,
            stderr,
            stats,
        }
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.stats).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until a report found the workload's frames.
    fn wait_for_symbols(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.stats();
            if s["store_hits"].as_u64().unwrap_or(0) + s["store_misses"].as_u64().unwrap_or(0) > 0 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no report symbolized anything: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(mut self, signal: nix::sys::signal::Signal) -> (serde_json::Value, String) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("signal kestrel");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "kestrel did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stats = self.stats();
        let stderr = self.stderr.join().expect("stderr reader");
        if signal == nix::sys::signal::Signal::SIGTERM {
            assert!(status.success(), "{stderr}");
        }
        (stats, stderr)
    }
}

#[test]
fn run_stopped_by_sigterm_then_started_again_reads_the_symbols_from_disk() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let spinner = Spinner::start();
    let agent = Agent::start(dir.path(), &cache, &spinner, "first");
    agent.wait_for_symbols();
    std::thread::sleep(Duration::from_secs(1));
    let (first, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        first["store_close_outcome"], "complete",
        "{first}\n{stderr}"
    );
    assert!(stderr.contains("symbol store disk tier closed"), "{stderr}");
    assert_eq!(n(&first, "store_recovered_entries"), 0, "{first}");
    // The agent's stats say where the names came from.
    let named: u64 = first["symbol_sources"]
        .as_object()
        .expect("symbol_sources in the agent's stats")
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert!(named > 0, "no frame counted by name source: {first}");

    let agent = Agent::start(dir.path(), &cache, &spinner, "second");
    let second = agent.wait_for_symbols();
    println!("first {first}\nsecond {second}");
    check_second(
        n(&first, "store_symbolized_file_frames"),
        n(&first, "store_misses"),
        n(&second, "store_recovered_entries"),
        &serde_json::json!({
            "symbolized_file_frames": second["store_symbolized_file_frames"],
            "disk_hits": second["store_disk_hits"],
        }),
    );
    agent.stop(nix::sys::signal::Signal::SIGTERM);
}

/// SIGKILL gives no close: what the flusher wrote before it (entries go to it as
/// they are inserted, a report's worth within milliseconds) is still found.
#[test]
fn run_killed_after_a_report_keeps_what_it_wrote() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let spinner = Spinner::start();
    let agent = Agent::start(dir.path(), &cache, &spinner, "first");
    agent.wait_for_symbols();
    // Two more reports, then a second for the flusher.
    std::thread::sleep(Duration::from_secs(3));
    let before_kill = agent.stats();
    let (_, stderr) = agent.stop(nix::sys::signal::Signal::SIGKILL);
    assert!(!stderr.contains("disk tier closed"), "killed, not closed");

    let agent = Agent::start(dir.path(), &cache, &spinner, "second");
    let second = agent.wait_for_symbols();
    println!("before the kill {before_kill}\nsecond {second}");
    check_second(
        n(&before_kill, "store_symbolized_file_frames"),
        n(&before_kill, "store_misses"),
        n(&second, "store_recovered_entries"),
        &serde_json::json!({
            "symbolized_file_frames": second["store_symbolized_file_frames"],
            "disk_hits": second["store_disk_hits"],
        }),
    );
    agent.stop(nix::sys::signal::Signal::SIGTERM);
}
