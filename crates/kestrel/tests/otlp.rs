//! End-to-end tests of `kestrel run` (and `kestrel record --format otlp`) against a
//! real OTLP receiver: tests/otlp_receiver.py, a gRPC ProfilesService and
//! MetricsService built on the official generated classes of PyPI
//! `opentelemetry-proto`, which validates every request it receives and writes one
//! JSON line per request. Real BPF programs, so run as root.
//!
//! The receiver's Python comes from `$OTLP_RECEIVER_PYTHON` or
//! `<workspace>/target/otlp-venv/bin/python` (made by scripts/install-deps).
//! The variable is not `KESTREL_*`: every such variable is configuration to
//! the agents these tests start, and an unknown key is an error.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use common::*;

const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_receiver.py");
const INSTALL: &str = "python3 -m venv target/otlp-venv && \
     target/otlp-venv/bin/pip install 'opentelemetry-proto==1.45.*' grpcio \
     (scripts/install-deps does this), or point OTLP_RECEIVER_PYTHON at a Python that has both";

/// The interpreter that runs the receiver; a missing one fails the test, since
/// these tests are the only check of Kestrel's OTLP output against the reference.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = std::env::var_os("OTLP_RECEIVER_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/otlp-venv/bin/python")
            });
        let probe = Command::new(&python)
            .args([
                "-c",
                "import grpc, opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2_grpc",
            ])
            .output();
        match probe {
            Ok(out) if out.status.success() => python,
            Ok(out) => panic!(
                "{} lacks grpcio or opentelemetry-proto ({}); install them: {INSTALL}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "no Python for the OTLP receiver at {} ({e}); create it: {INSTALL}",
                python.display()
            ),
        }
    })
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Polls `probe` every 100 ms until it yields a value; panics after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port nothing listens on (yet): bound and released at once.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    /// Starts the receiver on `port` (0: any) and waits until it listens.
    fn start(dir: &Path, port: u16, extra: &[&str]) -> Receiver {
        let out = dir.join("received.jsonl");
        let mut child = Command::new(python())
            .arg(RECEIVER)
            .args(["serve", "--port", &port.to_string(), "--out"])
            .arg(&out)
            .args(["--max-seconds", "120", "--track-prefix", "kestrel_"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the receiver starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the receiver prints its port");
        let port = line
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!("the receiver did not start: {line:?} (see its stderr above)")
            });
        Receiver { child, port, out }
    }

    /// Every request so far, in arrival order.
    fn records(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).expect("receiver writes JSON lines"))
            .collect()
    }

    fn service(&self, name: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["service"] == name)
            .collect()
    }

    /// Profiles requests the receiver answered OK.
    fn accepted(&self) -> Vec<Value> {
        self.service("profiles")
            .into_iter()
            .filter(|r| r["answer"] == "ok")
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Agent {
    child: Child,
    log: PathBuf,
    stats_file: PathBuf,
}

struct Finished {
    status: ExitStatus,
    exited_at: SystemTime,
    stats: Value,
    log: String,
}

impl Agent {
    /// `kestrel run` with `config`; returns once it says it is running.
    fn start(dir: &Path, config: &str) -> Agent {
        let config_file = dir.join("kestrel.toml");
        fs::write(&config_file, config).expect("write the configuration");
        let log = dir.join("kestrel.log");
        let child = Command::new(KESTREL)
            .args(["run", "--log-level", "info", "--config"])
            .arg(&config_file)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("kestrel starts");
        let mut agent = Agent {
            child,
            log,
            stats_file: dir.join("stats.json"),
        };
        wait_for("kestrel run to start", Duration::from_secs(30), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("kestrel run exited ({status}) at start:\n{}", agent.log());
            }
            agent.log().contains("agent running").then_some(())
        });
        agent
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The counters written after the last report (written atomically).
    fn stats(&self) -> Option<Value> {
        let text = fs::read_to_string(&self.stats_file).ok()?;
        Some(serde_json::from_str(&text).expect("the stats file is JSON"))
    }

    fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the agent is alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// SIGTERM, then wait for the exit (the agent's shutdown deadline is far shorter).
    fn terminate(mut self) -> Finished {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM the agent");
        let status = wait_for("kestrel run to exit", Duration::from_secs(30), || {
            self.child.try_wait().expect("wait for the agent")
        });
        let exited_at = SystemTime::now();
        let log = self.log();
        let stats = self
            .stats()
            .unwrap_or_else(|| panic!("no stats file after exit:\n{log}"));
        Finished {
            status,
            exited_at,
            stats,
            log,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn stop_workload(mut w: Started) {
    let _ = w.child.kill();
    let _ = w.child.wait();
}

fn num(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {v}"))
}

/// An agent configuration sampling only `pid`, reporting to one OTLP exporter.
fn agent_config(dir: &Path, pid: u32, agent: &str, exporter: &str, extra: &str) -> String {
    format!(
        r#"
[sampling]
frequency_hz = 99
pids = [{pid}]
[agent]
report_jitter = 0.1
stats_file = "{stats}"
stats_log_interval_s = 0.0
{agent}
[symbols]
cache_dir = "{cache}"
{extra}
[[exporters]]
kind = "otlp"
insecure = true
{exporter}
"#,
        stats = dir.join("stats.json").display(),
        cache = dir.join("cache").display(),
    )
}

/// Every request parsed by the reference classes without a single finding.
fn assert_schema_valid(records: &[Value]) {
    assert!(!records.is_empty(), "no requests to check");
    for r in records {
        assert_eq!(
            r["error_count"], 0,
            "request #{} breaks the OTLP schema: {}",
            r["seq"], r["errors"]
        );
    }
}

fn cpu_samples(records: &[Value]) -> u64 {
    records
        .iter()
        .map(|r| r["totals"]["samples/count"].as_u64().unwrap_or(0))
        .sum()
}

fn tracked(records: &[Value], function: &str) -> u64 {
    records
        .iter()
        .filter_map(|r| r["tracked_functions"][function]["samples/count"].as_u64())
        .sum()
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

#[test]
fn reports_follow_the_schema_and_add_up_to_what_the_agent_counted() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), 0, &[]);
    let mut w = start_workload("ratio", "20");
    let pid = w.pid;
    let exporter = format!(
        "endpoint = \"127.0.0.1:{}\"\nservice_name = \"kestrel-e2e\"\n\
         headers = {{ \"x-kestrel-test\" = \"token-1\" }}",
        receiver.port
    );
    let agent = Agent::start(
        dir.path(),
        &agent_config(dir.path(), w.pid, "report_interval_s = 1.0", &exporter, ""),
    );
    writeln!(w.stdin, "go").unwrap();
    wait_for("three reports", Duration::from_secs(30), || {
        (receiver.accepted().len() >= 3).then_some(())
    });
    let end = agent.terminate();
    stop_workload(w);
    assert!(end.status.success(), "exit {}:\n{}", end.status, end.log);

    let accepted = receiver.accepted();
    assert_eq!(
        receiver.service("profiles").len(),
        accepted.len(),
        "a healthy receiver answers every request"
    );
    assert_schema_valid(&accepted);
    let received = num(&end.stats, "/samples_received");
    assert!(received > 100, "too few samples: {received}");
    assert_eq!(
        cpu_samples(&accepted),
        received,
        "samples/count summed over {} requests vs the agent's samples_received",
        accepted.len()
    );
    assert_eq!(
        num(&end.stats, "/exports/otlp/exported"),
        accepted.len() as u64
    );
    assert_eq!(num(&end.stats, "/exports/otlp/failed"), 0);
    assert_eq!(num(&end.stats, "/exports/otlp/dropped"), 0);
    assert_eq!(num(&end.stats, "/exports/otlp/queued_bytes"), 0);

    let three = tracked(&accepted, "kestrel_burn_three");
    let one = tracked(&accepted, "kestrel_burn_one");
    assert!(
        three > one && one > 0,
        "workload functions by name: three={three} one={one}"
    );
    let expected_period = 1e9 / 99.0;
    for r in &accepted {
        let resource = &r["resource"];
        assert_eq!(resource["service.name"], "kestrel-e2e", "{resource}");
        assert_eq!(resource["host.name"], hostname().as_str(), "{resource}");
        assert_eq!(resource["os.type"], "linux", "{resource}");
        assert!(resource["host.arch"]
            .as_str()
            .is_some_and(|a| !a.is_empty()));
        assert_eq!(
            r["pids"],
            serde_json::json!([pid]),
            "only the workload was sampled"
        );
        for key in [
            "process.pid",
            "thread.id",
            "thread.name",
            "process.executable.name",
            "process.executable.path",
        ] {
            assert!(
                r["sample_attribute_keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k == key),
                "sample attribute {key} missing: {}",
                r["sample_attribute_keys"]
            );
        }
        let period = &r["periods"]["samples/count"];
        assert_eq!(period[0], "cpu/nanoseconds", "{period}");
        let ns = period[1].as_f64().unwrap();
        assert!(
            (ns - expected_period).abs() < expected_period * 0.01,
            "period {ns} ns at 99 Hz"
        );
        assert_eq!(r["metadata"]["x-kestrel-test"], "token-1");
    }
}

#[test]
fn sigterm_delivers_the_last_report_before_the_process_exits() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), 0, &[]);
    let mut w = start_workload("ratio", "20");
    // An interval far past the run: the only report is the one SIGTERM flushes.
    let agent = Agent::start(
        dir.path(),
        &agent_config(
            dir.path(),
            w.pid,
            "report_interval_s = 600.0",
            &format!("endpoint = \"127.0.0.1:{}\"", receiver.port),
            "",
        ),
    );
    writeln!(w.stdin, "go").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        receiver.service("profiles").is_empty(),
        "a report arrived before SIGTERM"
    );
    let end = agent.terminate();
    stop_workload(w);
    assert!(end.status.success(), "exit {}:\n{}", end.status, end.log);
    let accepted = receiver.accepted();
    assert_eq!(
        accepted.len(),
        1,
        "exactly the SIGTERM report: {accepted:?}"
    );
    assert_schema_valid(&accepted);
    let received = num(&end.stats, "/samples_received");
    assert!(received > 50, "too few samples: {received}");
    assert_eq!(cpu_samples(&accepted), received);
    assert_eq!(num(&end.stats, "/exports/otlp/exported"), 1);
    let arrived = accepted[0]["received_unix"].as_f64().unwrap();
    assert!(
        arrived < unix_seconds(end.exited_at),
        "the report arrived at {arrived}, after the exit at {}",
        unix_seconds(end.exited_at)
    );
}

#[test]
fn collector_down_at_start_then_up_gets_every_report_after_retries() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut w = start_workload("ratio", "60");
    let exporter = format!(
        "endpoint = \"127.0.0.1:{port}\"\ntimeout_ms = 2000\nmax_retries = 60\n\
         initial_backoff_ms = 200\nmax_backoff_ms = 1000"
    );
    let agent = Agent::start(
        dir.path(),
        &agent_config(dir.path(), w.pid, "report_interval_s = 1.0", &exporter, ""),
    );
    let down_since = Instant::now();
    writeln!(w.stdin, "go").unwrap();

    let early = wait_for(
        "a report while the collector is down",
        Duration::from_secs(20),
        || agent.stats().filter(|s| num(s, "/reports") >= 2),
    );
    std::thread::sleep(Duration::from_secs(9).saturating_sub(down_since.elapsed()));
    let late = agent.stats().expect("stats file");
    assert!(
        num(&late, "/samples_received") > num(&early, "/samples_received"),
        "sampling stalled while the collector was down: {early} then {late}"
    );
    assert_eq!(num(&late, "/exports/otlp/exported"), 0);
    assert_eq!(
        num(&late, "/exports/otlp/failed"),
        0,
        "retries gave up early"
    );

    std::thread::sleep(Duration::from_secs(10).saturating_sub(down_since.elapsed()));
    let up_at = unix_seconds(SystemTime::now());
    // It also refuses its first two requests: UNAVAILABLE is retried like a refused connection.
    let receiver = Receiver::start(dir.path(), port, &["--fail-first", "2"]);
    let made_while_down = |records: &[Value]| {
        records
            .iter()
            .filter(|r| r["profile_start_unix_nano"].as_f64().unwrap_or(f64::MAX) / 1e9 < up_at)
            .count()
    };
    wait_for("the backlog to arrive", Duration::from_secs(30), || {
        let accepted = receiver.accepted();
        (made_while_down(&accepted) >= 5 && accepted.len() > made_while_down(&accepted))
            .then_some(())
    });
    let end = agent.terminate();
    stop_workload(w);
    assert!(end.status.success(), "exit {}:\n{}", end.status, end.log);

    let refused = receiver
        .service("profiles")
        .into_iter()
        .filter(|r| r["answer"] == "unavailable")
        .count();
    assert_eq!(
        refused, 2,
        "the receiver refuses exactly its first two requests"
    );
    let accepted = receiver.accepted();
    assert_schema_valid(&accepted);
    assert_eq!(num(&end.stats, "/exports/otlp/failed"), 0);
    assert_eq!(num(&end.stats, "/exports/otlp/dropped"), 0);
    assert_eq!(
        num(&end.stats, "/exports/otlp/exported"),
        accepted.len() as u64
    );
    assert_eq!(
        cpu_samples(&accepted),
        num(&end.stats, "/samples_received"),
        "every sample of the outage reached the collector once"
    );
}

#[test]
fn stalled_collector_keeps_the_queue_within_its_byte_bound_and_counts_drops() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), 0, &["--stall"]);
    let mut w = start_workload("ratio", "60");
    // Reports of this workload are ~2 KB; a 16 KiB queue fills within seconds.
    let max_queue_bytes = 16 * 1024;
    let exporter = format!(
        "endpoint = \"127.0.0.1:{}\"\nmax_queue_bytes = {max_queue_bytes}\ntimeout_ms = 1000\n\
         max_retries = 2\ninitial_backoff_ms = 100\nmax_backoff_ms = 200",
        receiver.port
    );
    let agent = Agent::start(
        dir.path(),
        &agent_config(
            dir.path(),
            w.pid,
            "report_interval_s = 0.2\nshutdown_deadline_s = 2.0",
            &exporter,
            "",
        )
        .replace("[sampling]", "[sampling]\npoll_interval_ms = 100"),
    );
    writeln!(w.stdin, "go").unwrap();
    let first = wait_for("a first report", Duration::from_secs(20), || agent.stats());
    let first_rss = agent.rss_kib();
    let started = Instant::now();
    let (mut max_queued, mut max_rss, mut last) = (0, first_rss, first.clone());
    while started.elapsed() < Duration::from_secs(6) || num(&last, "/exports/otlp/dropped") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing was dropped in 30 s with a stalled collector: {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
        last = agent.stats().expect("stats file");
        let queued = num(&last, "/exports/otlp/queued_bytes");
        assert!(
            queued <= max_queue_bytes,
            "queued_bytes {queued} over max_queue_bytes {max_queue_bytes}"
        );
        max_queued = max_queued.max(queued);
        max_rss = max_rss.max(agent.rss_kib());
    }
    eprintln!("stall: RSS {first_rss} KiB at the first report, at most {max_rss} KiB; queue at most {max_queued} B");
    assert!(
        max_queued >= max_queue_bytes / 2,
        "the queue never came near its bound ({max_queued} B): the test did not stress it"
    );
    assert!(
        num(&last, "/samples_received") > num(&first, "/samples_received"),
        "sampling stopped behind the stalled collector"
    );
    // Generous: the queue is 16 KiB; this only catches memory growing with the backlog.
    assert!(
        max_rss < first_rss + 64 * 1024,
        "RSS grew from {first_rss} KiB to {max_rss} KiB"
    );
    let end = agent.terminate();
    stop_workload(w);
    assert!(end.status.success(), "exit {}:\n{}", end.status, end.log);
    assert!(num(&end.stats, "/exports/otlp/dropped") > 0);
    assert_eq!(num(&end.stats, "/exports/otlp/exported"), 0);
    assert_eq!(num(&end.stats, "/exports/otlp/queued_bytes"), 0);
    let attempts = receiver.service("profiles");
    assert!(
        attempts.iter().all(|r| r["answer"] == "stalled"),
        "{attempts:?}"
    );
    assert_schema_valid(&attempts);
}

const BPF_CAP: u64 = 8 * 1024 * 1024;

fn metric_points<'a>(records: &'a [Value], name: &str) -> Vec<&'a Value> {
    records
        .iter()
        .flat_map(|r| {
            r["metrics"][name]["points"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .collect()
}

#[test]
fn self_telemetry_arrives_as_otlp_metrics() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), 0, &[]);
    let mut w = start_workload("ratio", "20");
    let telemetry = format!(
        "[telemetry]\nenabled = true\nendpoint = \"http://127.0.0.1:{}\"\ninterval_s = 1.0\n\
         [memory]\nbpf_cap_bytes = {BPF_CAP}",
        receiver.port
    );
    let agent = Agent::start(
        dir.path(),
        &agent_config(
            dir.path(),
            w.pid,
            "report_interval_s = 1.0",
            &format!("endpoint = \"127.0.0.1:{}\"", receiver.port),
            &telemetry,
        ),
    );
    writeln!(w.stdin, "go").unwrap();
    wait_for(
        "samples and BPF memory metrics",
        Duration::from_secs(30),
        || {
            let metrics = receiver.service("metrics");
            let samples = metric_points(&metrics, "kestrel.samples.received");
            let positive = samples.iter().any(|p| p["value"].as_u64() > Some(0));
            (positive && !metric_points(&metrics, "kestrel.bpf.memory").is_empty()).then_some(())
        },
    );
    let end = agent.terminate();
    stop_workload(w);
    assert!(end.status.success(), "exit {}:\n{}", end.status, end.log);

    let metrics = receiver.service("metrics");
    assert_schema_valid(&metrics);
    let last = metrics.last().unwrap();
    assert_eq!(last["resource"]["service.name"], "kestrel");
    assert_eq!(last["metrics"]["kestrel.samples.received"]["kind"], "sum");
    assert_eq!(last["metrics"]["kestrel.bpf.memory"]["kind"], "gauge");
    let samples: Vec<u64> = metric_points(&metrics, "kestrel.samples.received")
        .iter()
        .map(|p| p["value"].as_u64().expect("integer counter"))
        .collect();
    assert!(
        samples.windows(2).all(|w| w[0] <= w[1]),
        "kestrel.samples.received went down: {samples:?}"
    );
    let final_count = num(&end.stats, "/samples_received");
    assert!(
        samples.last().is_some_and(|&n| n > 0 && n <= final_count),
        "last kestrel.samples.received {samples:?} vs the agent's {final_count}"
    );
    // Every map the agent measured has a series; the ring buffer may be resized
    // during a run, so each export's sum is held to the configured cap instead of
    // to one figure.
    let memory = end.stats["bpf_memory_bytes"]
        .as_object()
        .expect("bpf_memory_bytes");
    let cap = BPF_CAP;
    for r in metrics
        .iter()
        .filter(|r| r["metrics"]["kestrel.bpf.memory"].is_object())
    {
        let points = r["metrics"]["kestrel.bpf.memory"]["points"]
            .as_array()
            .unwrap();
        let maps: std::collections::BTreeSet<&str> = points
            .iter()
            .map(|p| p["attributes"]["map"].as_str().expect("map attribute"))
            .collect();
        let expected: std::collections::BTreeSet<&str> =
            memory.keys().map(String::as_str).collect();
        assert_eq!(maps, expected, "one series per map, request #{}", r["seq"]);
        let values: Vec<u64> = points
            .iter()
            .map(|p| p["value"].as_u64().unwrap())
            .collect();
        assert!(
            values.iter().all(|&v| v > 0) && values.iter().sum::<u64>() <= cap,
            "kestrel.bpf.memory {points:?} (cap {cap})"
        );
    }
}

#[test]
fn record_format_otlp_writes_a_request_the_reference_classes_accept() {
    let _g = serial();
    python(); // before BPF: a missing receiver fails at once, saying how to install it
    let r = record_workload(
        "ratio",
        "2",
        &[
            "--frequency",
            "199",
            "--duration",
            "3",
            "--format",
            "otlp",
            "--format",
            "folded",
        ],
    );
    let out = Command::new(python())
        .arg(RECEIVER)
        .arg("check")
        .arg(r.file("profile.otlp.pb"))
        .args(["--track-prefix", "kestrel_"])
        .output()
        .expect("run the checker");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checker output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{report}");
    assert_schema_valid(std::slice::from_ref(&report));
    let received = num(&r.stats, "/samples/received");
    assert!(received > 100, "too few samples: {received}");
    assert_eq!(cpu_samples(std::slice::from_ref(&report)), received);
    assert_eq!(
        r.folded("profile.folded").values().sum::<u64>(),
        received,
        "profile.folded vs stats.json"
    );
    let three = tracked(std::slice::from_ref(&report), "kestrel_burn_three");
    let one = tracked(std::slice::from_ref(&report), "kestrel_burn_one");
    assert!(three > one && one > 0, "three={three} one={one}");
    assert_eq!(report["resource"]["os.type"], "linux");
}

/// The checker must not be vacuous: the same real file with two faults appended
/// (protobuf merges a repeated embedded message, so bytes at the end land inside
/// the request) fails with both named.
#[test]
fn checker_rejects_a_real_request_with_an_unknown_field_and_a_dangling_index() {
    let _g = serial();
    python(); // before BPF: a missing receiver fails at once, saying how to install it
    let r = record_workload("ratio", "1", &["--duration", "1.5", "--format", "otlp"]);
    let mut bytes = fs::read(r.file("profile.otlp.pb")).expect("profile.otlp.pb");
    // Field 15 (varint 1): no such field in ExportProfilesServiceRequest.
    bytes.extend([0x78, 0x01]);
    // dictionary (2) { stack_table (7) { location_indices (1, packed) [1000000] } }
    bytes.extend([0x12, 0x07, 0x3a, 0x05, 0x0a, 0x03, 0xc0, 0x84, 0x3d]);
    let broken = r.file("broken.otlp.pb");
    fs::write(&broken, bytes).unwrap();
    let out = Command::new(python())
        .arg(RECEIVER)
        .arg("check")
        .arg(&broken)
        .output()
        .expect("run the checker");
    let report: Value = serde_json::from_slice(&out.stdout).expect("checker prints JSON");
    assert_eq!(out.status.code(), Some(1), "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("unknown field numbers [15]"), "{errors}");
    assert!(
        errors.contains("location_indices[0] = 1000000 is out of range"),
        "{errors}"
    );
    assert_eq!(report["error_count"], 2, "{errors}");
}
