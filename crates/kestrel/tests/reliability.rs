//! Kestrel's guarantees (README.md, "Guarantees"), each tested so that the test fails
//! when the promise breaks: least privilege, bad input, faults. Real BPF, real
//! processes, real files, real mounts; run as root (CI does).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{parse_folded, require_root, serial, sum_with, KESTREL};

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn gcc(args: &[&str], out: &Path, sources: &[PathBuf]) {
    let status = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer"])
        .args(args)
        .arg("-o")
        .arg(out)
        .args(sources)
        .status()
        .expect("gcc runs (install build-essential)");
    assert!(status.success(), "compiling {out:?} failed");
}

fn workload_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(name)
}

/// tests/workloads/reliability.c, compiled once.
fn workload() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kestrel-reliability-workload");
        gcc(
            &["-pthread"],
            &out,
            &[workload_source("reliability.c"), "-ldl".into()],
        );
        out
    })
}

struct Workload {
    child: Child,
    stdin: ChildStdin,
    pid: u32,
    lines: mpsc::Receiver<String>,
}

impl Workload {
    fn start(bin: &Path, args: &[&str]) -> Workload {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("workload starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("workload prints ready");
        let pid = ready
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .expect("ready PID");
        Workload {
            child,
            stdin,
            pid,
            lines,
        }
    }

    fn go(&mut self) {
        writeln!(self.stdin, "go").expect("workload reads go");
    }

    fn wait(mut self) {
        let status = self.child.wait().expect("workload exits");
        assert!(status.success(), "workload failed: {status}");
    }
}

/// A running Kestrel with its stderr collected; `started` fires on the
/// "recording" / "agent running" line.
struct Kestrel {
    child: Child,
    started: mpsc::Receiver<()>,
    stderr: std::thread::JoinHandle<String>,
}

impl Kestrel {
    fn spawn(mut command: Command) -> Kestrel {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kestrel starts");
        let pipe = child.stderr.take().expect("piped stderr");
        let (tx, started) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("recording") || line.contains("agent running") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        Kestrel {
            child,
            started,
            stderr,
        }
    }

    fn wait_started(&self) {
        self.started
            .recv_timeout(Duration::from_secs(60))
            .expect("kestrel starts sampling within a minute");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit (at most `limit`: a blocked Kestrel fails the test).
    fn finish(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "kestrel did not finish within {limit:?}; stderr:\n{}",
                    self.stderr.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, self.stderr.join().expect("stderr reader"))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal)
            .expect("signal kestrel");
    }
}

fn record_command(out: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(KESTREL);
    c.arg("record")
        .arg("-o")
        .arg(out)
        .args(["--no-progress", "--log-level", "info"])
        .args(args)
        .env("KESTREL_SYMBOLS__CACHE_DIR", out.join("cache"));
    c
}

fn stats(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("stats.json")).expect("stats.json"))
        .expect("stats.json is JSON")
}

fn u64_at(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = v;
    for key in path {
        v = &v[*key];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// Folded stacks of one process (lines start with its name, as the folded
/// format writes them) from profile.folded.
fn folded(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    parse_folded(&std::fs::read_to_string(dir.join("profile.folded")).expect("profile.folded"))
}

/// Capability sets of every thread of `pid`: (tid, CapEff, CapPrm, NoNewPrivs).
fn thread_caps(pid: u32) -> Vec<(String, u64, u64, bool)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let entry = entry.expect("task entry");
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue; // the thread exited meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let mask = |name: &str| u64::from_str_radix(&field(name), 16).expect("hex mask");
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            mask("CapEff:"),
            mask("CapPrm:"),
            field("NoNewPrivs:") == "1",
        ));
    }
    out
}

fn bit(cap: u32) -> u64 {
    1u64 << cap
}

// ---------------------------------------------------------------- least privilege

/// A non-root user holding only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and
/// CAP_SYSLOG records; once the probes are attached no thread has CAP_BPF
/// effective; sampling goes on, and a CPU that comes online later is sampled too
/// (perf_event_open + link with only CAP_PERFMON effective). The CPU coming online
/// is simulated in a private mount namespace by a bind-mounted
/// /sys/devices/system/cpu/online that says "0" at start and "0-1" later.
#[test]
fn four_capabilities_suffice_and_cap_bpf_is_not_effective_after_attach() {
    let _g = serial();
    require_root();
    assert!(
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|s| s.trim() != "0")
            .unwrap_or(false),
        "this test needs at least two online CPUs"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o777)).unwrap();
    let online = dir.path().join("online");
    std::fs::write(&online, "0\n").unwrap();
    std::fs::set_permissions(&online, PermissionsExt::from_mode(0o644)).unwrap();
    let out = dir.path().join("out");
    let caps = "+bpf,+perfmon,+sys_ptrace,+syslog";
    let script = format!(
        "mount --bind '{}' /sys/devices/system/cpu/online && exec setpriv --reuid=65534 --regid=65534 \
         --clear-groups --inh-caps=-all,{caps} --ambient-caps={caps} --bounding-set=-all,{caps} \
         '{KESTREL}' record --duration 6 -o '{}' --no-progress",
        online.display(),
        out.display()
    );
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("KESTREL_SYMBOLS__CACHE_DIR", dir.path().join("cache"))
        .env("HOME", dir.path());
    // Two spinning threads give both CPUs samples: an idle CPU yields none, and
    // the test must not depend on whatever else the machine happens to run.
    let mut spinner = Workload::start(workload(), &["spin", "5", "2"]);
    // unshare and sh exec: the child's pid is Kestrel's.
    let k = Kestrel::spawn(command);
    k.wait_started();
    spinner.go();
    let threads = thread_caps(k.pid());
    std::fs::write(&online, "0-1\n").unwrap();
    let (status, stderr) = k.finish(Duration::from_secs(60));
    spinner.wait();
    assert!(status.success(), "record as nobody failed:\n{stderr}");
    assert!(threads.len() > 1, "{threads:?}");
    for (tid, effective, permitted, no_new_privs) in &threads {
        assert_eq!(
            effective & bit(CAP_BPF),
            0,
            "thread {tid} has CAP_BPF effective"
        );
        assert_ne!(
            effective & bit(CAP_PERFMON),
            0,
            "thread {tid} lost CAP_PERFMON"
        );
        assert_eq!(
            permitted & !(bit(CAP_BPF) | bit(CAP_PERFMON) | bit(19) | bit(34)),
            0,
            "thread {tid} holds more than it was given"
        );
        assert!(no_new_privs, "thread {tid} lacks no_new_privs");
    }
    let s = stats(&out);
    assert!(
        stderr.contains("CPU came online"),
        "the hotplugged CPU is attached:\n{stderr}"
    );
    let cpu1 = u64_at(&s, &["samples", "per_cpu", "1"]);
    let cpu0 = u64_at(&s, &["samples", "per_cpu", "0"]);
    // CPU 1 is sampled for the last ~3 of 6 seconds, CPU 0 for all 6.
    assert!(
        cpu1 * 4 >= cpu0,
        "CPU 1 sampled after the drop: {cpu1} vs {cpu0} on CPU 0"
    );
    assert!(
        out.join("profile.pb.gz").exists() && out.join("flamegraph.svg").exists(),
        "outputs written as nobody"
    );
    // The symbol cache the unprivileged agent created is private to it.
    let meta = std::fs::metadata(dir.path().join("cache")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
}

/// As root, every thread keeps only CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYSLOG and
/// CAP_DAC_READ_SEARCH effective once attached; CAP_SYS_ADMIN and
/// CAP_DAC_OVERRIDE are gone from the permitted set too.
#[test]
fn root_keeps_only_what_symbolization_and_hotplug_need() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Its own load: on a quiet machine a whole-system record may see only idle
    // CPUs, which yield no samples.
    let mut spinner = Workload::start(workload(), &["spin", "3", "2"]);
    let k = Kestrel::spawn(record_command(dir.path(), &["--duration", "3"]));
    k.wait_started();
    spinner.go();
    let threads = thread_caps(k.pid());
    let (status, stderr) = k.finish(Duration::from_secs(60));
    spinner.wait();
    assert!(status.success(), "{stderr}");
    let kept = bit(2) | bit(19) | bit(34) | bit(CAP_PERFMON);
    for (tid, effective, permitted, no_new_privs) in &threads {
        assert_eq!(*effective, kept, "thread {tid}: effective {effective:x}");
        assert_eq!(permitted & (bit(CAP_SYS_ADMIN) | bit(CAP_DAC_OVERRIDE)), 0);
        assert!(no_new_privs);
    }
    assert!(u64_at(&stats(dir.path()), &["samples", "received"]) > 0);
}

/// A directory only CAP_DAC_OVERRIDE lets root write into is refused before the
/// recording starts (not after it, with everything collected lost).
#[test]
fn output_directory_writable_only_through_dac_override_fails_before_recording() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("theirs");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&out, PermissionsExt::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let output = Command::new(KESTREL)
        .args(["record", "--duration", "30", "--no-progress", "-o"])
        .arg(&out)
        .env("KESTREL_SYMBOLS__CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("CAP_DAC_OVERRIDE") && err.contains("--output"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused before recording"
    );
}

// ---------------------------------------------------------------- bad input

/// Each bad value is refused before any BPF is loaded, with an error that names
/// the key, where it came from and what is allowed; the boundary values pass.
#[test]
fn bad_configuration_names_key_source_and_range_before_loading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "[sampling]\nfrequncy_hz = 49\n",
            "frequncy_hz",
            &["unknown field"],
        ),
        (
            "[sampling]\nfrequency_hz = \"fast\"\n",
            "sampling.frequency_hz",
            &["string"],
        ),
        (
            "[sampling]\nfrequency_hz = 0\n",
            "sampling.frequency_hz",
            &["1..=10000"],
        ),
        (
            "[sampling]\nfrequency_hz = 10001\n",
            "sampling.frequency_hz",
            &["1..=10000"],
        ),
        (
            "[sampling]\nfrequency_hz = -5\n",
            "sampling.frequency_hz",
            &[],
        ),
        (
            "[off_cpu]\nprobability = -0.01\n",
            "off_cpu.probability",
            &["0.0..=1.0"],
        ),
        (
            "[off_cpu]\nprobability = 1.0001\n",
            "off_cpu.probability",
            &["0.0..=1.0"],
        ),
        (
            "[off_cpu]\nprobability = nan\n",
            "off_cpu.probability",
            &["0.0..=1.0"],
        ),
        (
            "[off_cpu]\nprobability = true\n",
            "off_cpu.probability",
            &["bool"],
        ),
        ("[sampling\n", "", &["TOML"]),
        ("[unknown_section]\nx = 1\n", "unknown_section", &[]),
    ];
    for (i, (toml, key, words)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, toml).unwrap();
        let out = Command::new(KESTREL)
            .args(["record", "--duration", "1", "--no-progress", "--config"])
            .arg(&file)
            .arg("-o")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {toml:?}: {err}");
        assert!(
            err.contains(key) && err.contains(&format!("bad{i}.toml")),
            "case {toml:?} names the key and the file: {err}"
        );
        for w in *words {
            assert!(err.contains(w), "case {toml:?} says {w:?}: {err}");
        }
        assert!(
            !err.contains("probe attached"),
            "case {toml:?}: refused before loading BPF: {err}"
        );
    }
    // The environment and flags are sources too, and are named.
    let out = Command::new(KESTREL)
        .args(["plan"])
        .env("KESTREL_OFF_CPU__PROBABILITY", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("off_cpu.probability") && err.contains("KESTREL_"),
        "{err}"
    );
    for flags in [
        &["--frequency", "0"][..],
        &["--frequency", "10001"],
        &["--off-cpu-probability", "1.5"],
        &["--off-cpu-probability", "-1"],
    ] {
        let out = Command::new(KESTREL)
            .arg("plan")
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?} must be refused");
    }
    // The boundaries themselves are valid.
    for flags in [
        &["--frequency", "1", "--off-cpu-probability", "0"][..],
        &["--frequency", "10000", "--off-cpu-probability", "1"],
    ] {
        let out = Command::new(KESTREL)
            .arg("plan")
            .args(flags)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{flags:?} is valid: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A configuration file that exists but cannot be read is an error that names
/// it, never a silent fall back to the defaults.
#[test]
fn unreadable_configuration_is_an_error_not_the_defaults() {
    require_root(); // to become nobody
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let file = dir.path().join("private.toml");
    std::fs::write(&file, "[sampling]\nfrequency_hz = 49\n").unwrap();
    std::fs::set_permissions(&file, PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(KESTREL)
        .args(["config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("private.toml") && err.contains("ermission denied"),
        "{err}"
    );
    // A directory in place of the file.
    let out = Command::new(KESTREL)
        .args(["config", "--config"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the configuration file"));
}

/// `kestrel run --pid` with a pid that does not exist fails before loading BPF,
/// naming the pid.
#[test]
fn run_with_a_missing_pid_is_a_clear_error() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[exporters]]\nkind = \"folded_dir\"\ndir = \"{}\"\n",
            dir.path().join("folded").display()
        ),
    )
    .unwrap();
    let out = Command::new(KESTREL)
        .args(["run", "--pid", "999999999", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("999999999") && err.contains("no such process"),
        "{err}"
    );
    assert!(!err.contains("probe attached"), "{err}");
}

/// The cache directory on a full file system: the recording still writes every
/// output, and the cache problem is a warning.
#[test]
fn full_disk_under_the_cache_still_writes_every_output_with_a_warning() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("tiny");
    std::fs::create_dir(&mount).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "kestrel-full"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    // Fill it: the last write fails with ENOSPC.
    let mut filler = std::fs::File::create(mount.join("filler")).unwrap();
    let chunk = vec![0xa5u8; 4096];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);
    let out = dir.path().join("out");
    let w = Workload::start(workload(), &["spin", "2", "1"]);
    let mut command = record_command(&out, &["--duration", "3", "--pid", &w.pid.to_string()]);
    command.env("KESTREL_SYMBOLS__CACHE_DIR", mount.join("cache"));
    let k = Kestrel::spawn(command);
    k.wait_started();
    let mut w = w;
    w.go();
    w.wait();
    let (status, stderr) = k.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    for f in [
        "profile.pb.gz",
        "profile.folded",
        "flamegraph.svg",
        "stats.json",
    ] {
        assert!(
            out.join(f).exists(),
            "{f} written despite the full cache disk"
        );
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("WARN") && (l.contains("cache") || l.contains("symbol store"))),
        "the cache problem is a warning:\n{stderr}"
    );
    assert!(
        sum_with(&folded(&out), "kestrel_rel_spin") > 0,
        "frames still symbolized (memory tier)"
    );
    // One free page, for the store's marker: the disk tier opens, and its first
    // flush of symbols (at the latest when the store closes) fails.
    std::fs::remove_file(mount.join("filler")).unwrap();
    std::fs::write(mount.join("filler"), vec![0u8; 252 << 10]).unwrap();
    let out = dir.path().join("out2");
    // Its own workload: on an idle machine a whole-system record has no frames
    // to store, and nothing would hit the full disk.
    let mut w = Workload::start(workload(), &["spin", "2", "1"]);
    let mut command = record_command(&out, &["--duration", "3", "--pid", &w.pid.to_string()]);
    command.env("KESTREL_SYMBOLS__CACHE_DIR", mount.join("cache2"));
    let k = Kestrel::spawn(command);
    k.wait_started();
    w.go();
    w.wait();
    let (status, stderr) = k.finish(Duration::from_secs(60));
    // Whether the store's flush overruns the last free page depends on how many
    // frames it holds; what must hold either way is that nothing is lost.
    assert!(status.success(), "{stderr}");
    assert!(out.join("profile.pb.gz").exists() && out.join("stats.json").exists());
    assert!(
        sum_with(&folded(&out), "kestrel_rel_spin") > 0,
        "frames symbolized with the cache disk nearly full"
    );
}

/// Garbage in every file of the cache directory: the store rebuilds or skips
/// it, and the recording names its frames as before.
#[test]
fn corrupted_cache_is_survived_and_frames_are_still_named() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = |out: &Path| {
        let mut w = Workload::start(workload(), &["spin", "1.5", "1"]);
        let mut command = record_command(out, &["--duration", "2.5", "--pid", &w.pid.to_string()]);
        command.env("KESTREL_SYMBOLS__CACHE_DIR", &cache);
        let k = Kestrel::spawn(command);
        k.wait_started();
        w.go();
        w.wait();
        let (status, stderr) = k.finish(Duration::from_secs(60));
        assert!(status.success(), "{stderr}");
        stderr
    };
    run(&dir.path().join("first"));
    let mut corrupted = 0;
    let mut stack = vec![cache.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let len = std::fs::metadata(&p).unwrap().len().max(64);
                let garbage: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
                std::fs::write(&p, garbage).unwrap();
                corrupted += 1;
            }
        }
    }
    assert!(corrupted >= 2, "the first run left cache files to corrupt");
    let second = dir.path().join("second");
    run(&second);
    assert!(
        sum_with(&folded(&second), "kestrel_rel_spin") > 0,
        "named after the corruption: {:?}",
        folded(&second)
    );
    // And a regular file where the cache directory should be.
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::write(&cache, b"not a directory").unwrap();
    let third = dir.path().join("third");
    let stderr = run(&third);
    assert!(sum_with(&folded(&third), "kestrel_rel_spin") > 0);
    assert!(stderr.contains("WARN"), "{stderr}");
}

/// Offsets inside a 64-bit little-endian ELF header.
const E_SHOFF: usize = 0x28;
const E_PHOFF: usize = 0x20;
const E_PHENTSIZE: usize = 0x36;
const E_PHNUM: usize = 0x38;
const E_SHNUM: usize = 0x3c;

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

/// Runs a copy of the workload that `mangle` changed on disk, under record; the
/// recording must succeed and keep the process's samples.
fn record_mangled(mangle: impl Fn(&Path)) -> (PathBuf, tempfile::TempDir, u32) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("mangled-workload");
    std::fs::copy(workload(), &copy).unwrap();
    mangle(&copy);
    let mut w = Workload::start(&copy, &["spin", "1.5", "1"]);
    let pid = w.pid;
    let out = dir.path().join("out");
    let k = Kestrel::spawn(record_command(
        &out,
        &["--duration", "2.5", "--pid", &pid.to_string()],
    ));
    k.wait_started();
    w.go();
    w.wait();
    let (status, stderr) = k.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    let s = stats(&out);
    assert!(
        u64_at(&s, &["samples", "received"]) > 0,
        "samples kept: {s}"
    );
    (out, dir, pid)
}

/// Malformed ELF headers, a lying build-ID note and a 4 GiB file as a process's
/// executable: symbolization yields unknown frames or names, never a crash.
#[test]
fn malformed_and_huge_executables_never_crash_symbolization() {
    let _g = serial();
    require_root();
    // Section headers point past the end of the file and claim 65535 entries;
    // every PT_NOTE announces a descriptor of 4 GiB.
    let (out, _dir, _) = record_mangled(|path| {
        let mut b = std::fs::read(path).unwrap();
        b[E_SHOFF..E_SHOFF + 8].copy_from_slice(&(u64::MAX - 4096).to_le_bytes());
        b[E_SHNUM..E_SHNUM + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        let phoff = read_u64(&b, E_PHOFF) as usize;
        let phentsize = read_u16(&b, E_PHENTSIZE) as usize;
        for i in 0..read_u16(&b, E_PHNUM) as usize {
            let ph = phoff + i * phentsize;
            if u32::from_le_bytes(b[ph..ph + 4].try_into().unwrap()) == 4 {
                let offset = read_u64(&b, ph + 8) as usize;
                b[offset + 4..offset + 8].copy_from_slice(&u32::MAX.to_le_bytes());
            }
        }
        std::fs::write(path, b).unwrap();
    });
    let f = folded(&out);
    assert!(!f.is_empty(), "stacks written");
    // A 4 GiB executable (a sparse tail after the real file): still named.
    let (out, _dir, _) = record_mangled(|path| {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(4 << 30).unwrap();
    });
    assert!(
        sum_with(&folded(&out), "kestrel_rel_spin") > 0,
        "{:?}",
        folded(&out)
    );
}

/// A shared library corrupted on disk (section headers, symbol and debug
/// tables) while a process runs in it: its frames become unknown, the rest of
/// the stack and the recording are intact.
#[test]
fn library_corrupted_while_mapped_gives_unknown_frames_not_a_crash() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libkestrel_rel.so");
    gcc(
        &["-shared", "-fPIC"],
        &lib,
        &[workload_source("reliability_lib.c")],
    );
    let mut w = Workload::start(workload(), &["lib", lib.to_str().unwrap(), "4"]);
    let out = dir.path().join("out");
    let k = Kestrel::spawn(record_command(
        &out,
        &["--duration", "5", "--pid", &w.pid.to_string()],
    ));
    k.wait_started();
    w.go();
    assert_eq!(
        w.lines.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("in_lib")
    );
    // Let Kestrel see the process (it opens its mapped files at first sight).
    std::thread::sleep(Duration::from_millis(1500));
    // Everything after the last loaded segment is not mapped, so the running code is
    // untouched: overwrite it with garbage in place (same inode Kestrel holds open).
    let mut bytes = std::fs::read(&lib).unwrap();
    let phoff = read_u64(&bytes, E_PHOFF) as usize;
    let phentsize = read_u16(&bytes, E_PHENTSIZE) as usize;
    let mut loaded_end = 0usize;
    for i in 0..read_u16(&bytes, E_PHNUM) as usize {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(bytes[ph..ph + 4].try_into().unwrap()) == 1 {
            let end = read_u64(&bytes, ph + 8) + read_u64(&bytes, ph + 32);
            loaded_end = loaded_end.max(end as usize);
        }
    }
    assert!(loaded_end < bytes.len(), "the library has unloaded tables");
    for (i, b) in bytes[loaded_end..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0x5a;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&lib)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    w.wait();
    let (status, stderr) = k.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    let f = folded(&out);
    let total: u64 = f.values().sum();
    assert!(total > 0);
    assert!(
        sum_with(&f, "main") > 0,
        "the executable's frames are still named: {f:?}"
    );
}

/// A perf map full of malformed lines: each is counted and skipped, and the one
/// valid line still names the JIT code.
#[test]
fn malformed_perf_map_lines_are_counted_and_skipped() {
    let _g = serial();
    require_root();
    let mut w = Workload::start(workload(), &["jit", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let k = Kestrel::spawn(record_command(
        &out,
        &[
            "--duration",
            "3",
            "--frequency",
            "199",
            "--pid",
            &w.pid.to_string(),
        ],
    ));
    k.wait_started();
    w.go();
    w.wait();
    let (status, stderr) = k.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let s = stats(&out);
    let malformed = u64_at(&s, &["symbols", "perf_map_malformed_lines"]);
    // Garbage, bad start, zero size, no name, wrapping range, invalid UTF-8, too
    // many digits, the 100 kB line.
    assert!(
        malformed >= 8,
        "every malformed line is counted: {malformed}"
    );
    let f = folded(&out);
    assert!(
        sum_with(&f, "kestrel_rel_jit_code") + sum_with(&f, "kestrel_rel_jit_code_[j]") > 0,
        "the valid line names the code: {f:?}"
    );
}

/// A process that exits before the recording ends keeps its names: its mappings
/// and files were captured at first sight.
#[test]
fn process_that_exits_before_symbolization_keeps_its_names() {
    let _g = serial();
    require_root();
    let mut w = Workload::start(workload(), &["exit_early", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let k = Kestrel::spawn(record_command(
        &out,
        &["--duration", "3", "--pid", &w.pid.to_string()],
    ));
    k.wait_started();
    w.go();
    w.wait();
    let (status, stderr) = k.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(
        sum_with(&folded(&out), "kestrel_rel_short_lived") > 0,
        "{:?}",
        folded(&out)
    );
}

/// Records a process that execs itself mid-recording: `kestrel_rel_before_exec`
/// burns 1.5 s in the first image, `kestrel_rel_after_exec` 1.5 s in the second.
fn record_exec() -> std::collections::BTreeMap<String, u64> {
    let mut w = Workload::start(workload(), &["exec", "1.5"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let k = Kestrel::spawn(record_command(
        &out,
        &["--duration", "4", "--pid", &w.pid.to_string()],
    ));
    k.wait_started();
    w.go();
    w.wait();
    let (status, stderr) = k.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    folded(&out)
}

/// A process that execs mid-recording: the samples of both images are kept and
/// named, each with its own image's mappings (samples carry the task's exec
/// sequence, and a new one is captured at first sight), although the process
/// has exited before symbolization.
#[test]
fn process_that_execs_keeps_and_names_the_samples_of_both_images() {
    let _g = serial();
    require_root();
    let f = record_exec();
    let before = sum_with(&f, "kestrel_rel_before_exec");
    let after = sum_with(&f, "kestrel_rel_after_exec");
    let neither: u64 = f
        .iter()
        .filter(|(stack, _)| {
            !stack.contains("kestrel_rel_before_exec") && !stack.contains("kestrel_rel_after_exec")
        })
        .map(|(_, v)| v)
        .sum();
    assert!(before > 0, "{f:?}");
    // 1.5 s at 19 Hz is ~28 samples of the second image.
    assert!(
        after >= 10,
        "the second image's samples are kept and named: {f:?}"
    );
    assert!(
        neither * 4 <= before + after,
        "most samples of the two images are named ({neither} are not): {f:?}"
    );
}

// ---------------------------------------------------------------- faults

/// A ring buffer far too small for the sample rate: lost samples are counted,
/// the rest arrive, and the recording ends on time (the kernel side never waits
/// for user space).
#[test]
fn ring_buffer_overflow_is_counted_and_never_blocks() {
    let _g = serial();
    require_root();
    let mut w = Workload::start(workload(), &["spin", "4", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let k = Kestrel::spawn(record_command(
        &out,
        &[
            "--duration",
            "4",
            "--frequency",
            "10000",
            "--poll-interval-ms",
            "2000",
            "--memory-cap",
            "1048576",
            "--pid",
            &w.pid.to_string(),
        ],
    ));
    k.wait_started();
    w.go();
    w.wait();
    let (status, stderr) = k.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let s = stats(&out);
    let lost = u64_at(&s, &["samples", "lost"]);
    let received = u64_at(&s, &["samples", "received"]);
    assert!(lost > 0, "overflow is counted: {s}");
    assert!(received > 0, "what fit arrived: {s}");
}

fn agent_config(dir: &Path, exporters: &str, extra: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nreport_interval_s = 1.0\nreport_jitter = 0.0\nstats_file = \"{}\"\n{extra}\n{exporters}",
            dir.join("agent-stats.json").display()
        ),
    )
    .unwrap();
    path
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// One exporter failing on every report (its directory replaced by a file) does
/// not stop sampling or the other exporter, and its failures are counted.
#[test]
fn failing_exporter_does_not_stop_sampling_or_the_other_exporter() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pprof = dir.path().join("pprof");
    let folded_dir = dir.path().join("folded");
    let config = agent_config(
        dir.path(),
        &format!(
            "[[exporters]]\nkind = \"pprof_dir\"\ndir = \"{}\"\n\n[[exporters]]\nkind = \"folded_dir\"\ndir = \"{}\"\n",
            pprof.display(),
            folded_dir.display()
        ),
        "",
    );
    let mut command = Command::new(KESTREL);
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("KESTREL_SYMBOLS__CACHE_DIR", dir.path().join("cache"));
    // Its own load, so that "sampling went on" never depends on what else the
    // machine runs (an idle CPU yields no samples).
    let mut spinner = Workload::start(workload(), &["spin", "7", "1"]);
    let k = Kestrel::spawn(command);
    k.wait_started();
    spinner.go();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::remove_dir_all(&pprof).unwrap();
    std::fs::write(&pprof, b"a file where the directory was").unwrap();
    let folded_before = files_in(&folded_dir).len();
    let stats_path = dir.path().join("agent-stats.json");
    let read_stats = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null)
    };
    let samples_before = read_stats()["samples_received"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(4));
    k.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, stderr) = k.finish(Duration::from_secs(60));
    spinner.wait();
    assert!(status.success(), "{stderr}");
    let s = read_stats();
    assert!(
        s["exports"]["pprof_dir"]["failed"].as_u64().unwrap_or(0) >= 2,
        "pprof_dir failures counted: {s}"
    );
    assert!(
        files_in(&folded_dir).len() >= folded_before + 2,
        "folded_dir kept exporting"
    );
    assert!(
        s["samples_received"].as_u64().unwrap_or(0) > samples_before,
        "sampling went on: {s}"
    );
}

/// SIGTERM before the first report interval: the final flush writes the one
/// report with the samples collected so far.
#[test]
fn sigterm_flushes_the_last_report() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pprof = dir.path().join("pprof");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nreport_interval_s = 3600.0\n\n[[exporters]]\nkind = \"pprof_dir\"\ndir = \"{}\"\n",
            pprof.display()
        ),
    )
    .unwrap();
    let mut w = Workload::start(workload(), &["spin", "2", "1"]);
    let mut command = Command::new(KESTREL);
    command
        .args(["run", "--pid", &w.pid.to_string(), "--config"])
        .arg(&config)
        .env("KESTREL_SYMBOLS__CACHE_DIR", dir.path().join("cache"));
    let k = Kestrel::spawn(command);
    k.wait_started();
    w.go();
    w.wait();
    assert!(files_in(&pprof).is_empty(), "no report before the interval");
    k.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, stderr) = k.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let files: Vec<String> = files_in(&pprof)
        .into_iter()
        .filter(|f| f.ends_with(".pb.gz"))
        .collect();
    assert_eq!(files.len(), 1, "exactly the flushed report: {files:?}");
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(pprof.join(&files[0])).unwrap()),
        &mut decoded,
    )
    .unwrap();
    assert!(
        decoded
            .windows(b"kestrel_rel_spin".len())
            .any(|w| w == b"kestrel_rel_spin"),
        "the flushed report holds the workload's samples"
    );
}

/// Ids of the BPF programs, maps and links a process holds, from its fdinfo.
fn bpf_ids(pid: u32) -> BTreeSet<(&'static str, u64)> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let Ok(info) = std::fs::read_to_string(entry.expect("fdinfo entry").path()) else {
            continue;
        };
        for (key, kind) in [
            ("prog_id:", "prog"),
            ("map_id:", "map"),
            ("link_id:", "link"),
        ] {
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
            {
                ids.insert((kind, id));
            }
        }
    }
    ids
}

fn bpf_object_exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .expect("bpftool runs (apt-get install bpftool)")
        .status
        .success()
}

/// After SIGKILL, every program, link and map the killed Kestrel held is gone:
/// nothing stays attached (the kernel frees them with the last descriptor,
/// possibly a little later, hence the retries).
#[test]
fn after_sigkill_nothing_kestrel_loaded_remains() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let k = Kestrel::spawn(record_command(
        dir.path(),
        &["--duration", "60", "--off-cpu-probability", "0.5"],
    ));
    k.wait_started();
    let ids = bpf_ids(k.pid());
    for kind in ["prog", "map", "link"] {
        assert!(
            ids.iter().any(|(k, _)| *k == kind),
            "kestrel holds a {kind}: {ids:?}"
        );
    }
    for (kind, id) in &ids {
        assert!(bpf_object_exists(kind, *id), "{kind} {id} visible");
    }
    k.signal(nix::sys::signal::Signal::SIGKILL);
    let (status, _) = k.finish(Duration::from_secs(10));
    assert!(!status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut remaining: Vec<_> = ids.iter().collect();
    while !remaining.is_empty() && Instant::now() < deadline {
        remaining.retain(|(kind, id)| bpf_object_exists(kind, *id));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        remaining.is_empty(),
        "still loaded after SIGKILL: {remaining:?}"
    );
    // And no program of Kestrel's is attached to anything: its links are gone.
    let links = Command::new("bpftool")
        .args(["link", "show", "-j"])
        .output()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&links.stdout).unwrap_or_default();
    let progs: BTreeSet<u64> = ids
        .iter()
        .filter(|(k, _)| *k == "prog")
        .map(|(_, id)| *id)
        .collect();
    for link in links.as_array().into_iter().flatten() {
        let prog = link["prog_id"].as_u64().unwrap_or(0);
        assert!(
            !progs.contains(&prog),
            "a link still points at Kestrel's program {prog}"
        );
    }
}
