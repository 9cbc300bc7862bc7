//! Shared helpers for the end-to-end tests: build the C workload, run it under
//! `kestrel record`, parse the outputs. These tests load real BPF programs and
//! need root (CI runs as root); without root they fail and say so.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

pub const KESTREL: &str = env!("CARGO_BIN_EXE_kestrel");

/// Tests that sample CPUs must not overlap: one busy workload would steal CPU from
/// another's pinned threads.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests load real BPF programs: run them as root (CI does)"
    );
}

/// The workload binary, compiled once with frame pointers.
pub fn workload() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/workload.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kestrel-test-workload");
        let status = Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc runs (install build-essential)");
        assert!(status.success(), "compiling the workload failed");
        out
    })
}

pub struct Started {
    pub child: Child,
    pub stdin: ChildStdin,
    pub pid: u32,
    pub lines: mpsc::Receiver<String>,
}

/// Start the workload; it prints `ready PID` and waits for a line on stdin.
pub fn start_workload(mode: &str, arg: &str) -> Started {
    let mut child = Command::new(workload())
        .args([mode, arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("workload starts");
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("workload prints ready");
    let pid = ready
        .strip_prefix("ready ")
        .expect("ready line")
        .trim()
        .parse()
        .expect("pid");
    Started {
        child,
        stdin,
        pid,
        lines: rx,
    }
}

pub struct Recording {
    pub dir: tempfile::TempDir,
    pub stats: serde_json::Value,
    pub stderr: String,
    pub workload_lines: Vec<String>,
}

impl Recording {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn folded(&self, name: &str) -> BTreeMap<String, u64> {
        parse_folded(&std::fs::read_to_string(self.file(name)).expect("folded file exists"))
    }
}

pub fn parse_folded(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (stack, value) = line.rsplit_once(' ').expect("folded line has a value");
        *out.entry(stack.to_string()).or_default() += value.parse::<u64>().expect("numeric value");
    }
    out
}

/// Sum of the values of stacks that contain `frame` as a whole frame.
pub fn sum_with(folded: &BTreeMap<String, u64>, frame: &str) -> u64 {
    folded
        .iter()
        .filter(|(stack, _)| {
            stack
                .split(';')
                .any(|f| f == frame || f.starts_with(&format!("{frame} ")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Run the workload under `kestrel record --pid` with `args`; the workload starts
/// only once Kestrel reports it is recording.
pub fn record_workload(mode: &str, arg: &str, args: &[&str]) -> Recording {
    record_workload_env(mode, arg, args, &[])
}

/// [`record_workload`] with extra environment for Kestrel (e.g. `KESTREL_*` keys).
pub fn record_workload_env(
    mode: &str,
    arg: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Recording {
    require_root();
    let mut w = start_workload(mode, arg);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut kestrel = Command::new(KESTREL)
        .arg("record")
        .args(["--pid", &w.pid.to_string(), "-o"])
        .arg(dir.path())
        .args(["--no-progress", "--log-level", "info"])
        .args(args)
        .env("KESTREL_SYMBOLS__CACHE_DIR", dir.path().join("cache"))
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kestrel starts");
    let stderr = kestrel.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("recording") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("kestrel starts recording");
    writeln!(w.stdin, "go").expect("workload reads go");
    let status = w.child.wait().expect("workload exits");
    assert!(status.success(), "workload failed: {status}");
    // The workload has exited: its reader thread ends at EOF, so this returns.
    let workload_lines: Vec<String> = w.lines.iter().collect();
    let kstatus = kestrel.wait().expect("kestrel exits");
    let stderr = reader.join().expect("stderr reader");
    assert!(
        kstatus.success(),
        "kestrel record failed: {kstatus}\n{stderr}"
    );
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("stats.json")).expect("stats.json"),
    )
    .expect("json");
    Recording {
        dir,
        stats,
        stderr,
        workload_lines,
    }
}
