//! `kestrel-soak`, a test tool (not part of the product): run the real agent (`kestrel run`, as a child process, exactly
//! as deployed) for a given time while short-lived processes and threads come and
//! go, measure it from the outside after a warm-up and at the end, and fail when
//! anything grew by more than the allowed fraction or the agent logged an error.
//!
//! Measured on the agent process: resident memory (`VmRSS`, `VmHWM`), open
//! descriptors, the kernel memory of its BPF maps (`memlock:` in its fdinfo), its
//! in-flight off-CPU entries (the `counters` map's gauge, read through the map id),
//! and the symbol store's memory and disk bytes (the agent's stats file).
//!
//! Verdicts: resident memory, open descriptors and BPF map memory must not grow
//! by more than `--max-growth` (each compared as the minimum over a window before
//! the baseline and over the settle phase at the end, so a report in flight does
//! not count as growth; `VmHWM` as its value). Two measures are bounded rather
//! than flat by design, and are judged against their bound, their growth shown:
//! the symbol store, a cache that fills with every new frame the host runs up to
//! its configured bytes, and the in-flight off-CPU entries, at most one per live
//! thread of the host (`/proc/loadavg`).
//!
//! The churn runs in this process, not in the agent: processes are `sleep`s of a
//! few milliseconds (each blocks once, so off-CPU sampling sees it and the agent
//! captures it), threads burn a little CPU and block a few times before ending.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;

/// Index of the in-flight gauge in the BPF `counters` map (`enum counter` in
/// bpf/kestrel.h; `Session::counters` reads the same slot).
const COUNTER_OFF_CPU_IN_FLIGHT: u32 = kestrel_probes::OFF_CPU_IN_FLIGHT_COUNTER;

/// The agent's symbol store bounds during the soak (the defaults of config.toml).
const STORE_MEMORY_BYTES: u64 = 32 << 20;
const STORE_DISK_BYTES: u64 = 256 << 20;

#[derive(Debug, clap::Parser)]
#[command(
    name = "kestrel-soak",
    about = "Run the real Kestrel agent under process and thread churn; fail on growth (as root)"
)]
pub struct SoakArgs {
    /// The kestrel binary to soak. Default: `kestrel` beside this program
    /// (cargo builds both into the same target directory).
    #[arg(long, value_name = "FILE")]
    pub kestrel: Option<PathBuf>,
    /// Seconds the agent runs under churn.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Seconds of warm-up before the baseline is taken. Default: 60, or a third
    /// of the duration when that is shorter than three minutes.
    #[arg(long, value_name = "SECONDS")]
    pub warmup: Option<f64>,
    /// Short-lived processes started over the run, evenly spread.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub processes: u64,
    /// Threads started (each ends after ~50 ms) over the run, evenly spread.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub threads: u64,
    /// Largest allowed growth from the baseline to the end, as a fraction.
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    pub max_growth: f64,
    /// The agent's on-CPU frequency.
    #[arg(long, default_value_t = 99, value_name = "HZ")]
    pub frequency: u32,
    /// The agent's off-CPU probability (1 = every context switch).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub off_cpu_probability: f64,
    /// Seconds between the agent's reports (each report forgets exited processes).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub report_interval: f64,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the agent's directory (log, stats, exported reports) here instead of a
    /// temporary one.
    #[arg(long, value_name = "DIR")]
    pub keep_dir: Option<PathBuf>,
}

/// One look at the agent.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Measurement {
    pub at_s: f64,
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
    pub open_fds: u64,
    pub threads: u64,
    pub bpf_memlock_bytes: u64,
    pub bpf_in_flight: i64,
    pub store_memory_bytes: u64,
    pub store_disk_bytes: u64,
    pub samples_received: u64,
    pub samples_lost: u64,
    /// Threads of the whole host (the kernel's count, from /proc/loadavg).
    pub host_threads: u64,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub metric: &'static str,
    pub baseline: f64,
    pub end: f64,
    pub growth: f64,
    /// What `end` was judged against: the growth limit (`growth`) or a bound.
    pub rule: String,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub duration_s: f64,
    pub warmup_s: f64,
    pub processes_requested: u64,
    pub processes_started: u64,
    pub process_spawn_failures: u64,
    pub threads_requested: u64,
    pub threads_started: u64,
    pub baseline: Measurement,
    pub end: Measurement,
    pub peak_rss_bytes: u64,
    /// Ring buffer re-plans by the live tiers over the whole run.
    pub replans: u64,
    pub verdicts: Vec<Verdict>,
    /// Every measurement, twice a second.
    pub series: Vec<Measurement>,
    pub agent_error_lines: u64,
    pub agent_warning_lines: u64,
    pub agent_exit_ok: bool,
    pub pass: bool,
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads what the agent exposes about itself; `None` once it is gone.
fn measure(pid: u32, stats_file: &Path, started: Instant) -> Option<Measurement> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut m = Measurement {
        at_s: started.elapsed().as_secs_f64(),
        rss_bytes: status_kib(&status, "VmRSS:") * 1024,
        hwm_bytes: status_kib(&status, "VmHWM:") * 1024,
        threads: status_kib(&status, "Threads:"),
        ..Measurement::default()
    };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
    {
        m.open_fds += 1;
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let Some(map_id) = field("map_id:") else {
            continue;
        };
        m.bpf_memlock_bytes += field("memlock:").unwrap_or(0);
        if let Some(gauge) = in_flight_gauge(map_id) {
            m.bpf_in_flight = gauge;
        }
    }
    m.host_threads = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)
                .and_then(|f| f.split_once('/'))
                .and_then(|(_, total)| total.parse().ok())
        })
        .unwrap_or(0);
    if let Ok(text) = std::fs::read_to_string(stats_file) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let get = |k: &str| v[k].as_u64().unwrap_or(0);
            m.store_memory_bytes = get("store_memory_bytes");
            m.store_disk_bytes = get("store_disk_bytes");
            m.samples_received = get("samples_received");
            m.samples_lost = get("samples_lost");
        }
    }
    Some(m)
}

/// The off-CPU in-flight gauge when `map_id` is the agent's `counters` map.
fn in_flight_gauge(map_id: u64) -> Option<i64> {
    let map = MapHandle::from_map_id(u32::try_from(map_id).ok()?).ok()?;
    if map.name() != "counters" {
        return None;
    }
    let value = map
        .lookup(&COUNTER_OFF_CPU_IN_FLIGHT.to_ne_bytes(), MapFlags::ANY)
        .ok()??;
    // A gauge kept with signed adds in a u64 slot.
    Some(u64::from_ne_bytes(value.get(..8)?.try_into().ok()?) as i64)
}

/// Starts `total` processes evenly over `duration`, each a `sleep` of a few
/// milliseconds; returns (started, failed).
fn churn_processes(
    total: u64,
    duration: Duration,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    const SPAWNERS: u64 = 4;
    (0..SPAWNERS)
        .map(|k| {
            let (stop, started, failed) = (stop.clone(), started.clone(), failed.clone());
            std::thread::spawn(move || {
                let mine = total / SPAWNERS + u64::from(k < total % SPAWNERS);
                let t0 = Instant::now();
                for i in 0..mine {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let due = duration.mul_f64(i as f64 / mine.max(1) as f64);
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let spawned = Command::new("sleep")
                        .arg("0.003")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    match spawned {
                        Ok(s) if s.success() => started.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect()
}

#[inline(never)]
fn soak_thread_body() {
    let mut x = 0u64;
    for _ in 0..5 {
        let until = Instant::now() + Duration::from_millis(2);
        while Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        std::thread::sleep(Duration::from_millis(8));
    }
    std::hint::black_box(x);
}

fn churn_threads(
    total: u64,
    duration: Duration,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut running = Vec::new();
        for i in 0..total {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let due = duration.mul_f64(i as f64 / total.max(1) as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
            if let Ok(h) = std::thread::Builder::new()
                .name("soak-churn".into())
                .spawn(soak_thread_body)
            {
                started.fetch_add(1, Ordering::Relaxed);
                running.push(h);
            }
            running.retain(|h| !h.is_finished());
        }
        for h in running {
            let _ = h.join();
        }
    })
}

fn write_agent_config(dir: &Path, args: &SoakArgs) -> Result<PathBuf> {
    let path = dir.join("soak-agent.toml");
    let toml = format!(
        "[sampling]\nfrequency_hz = {}\n\n[off_cpu]\nprobability = {}\n\n\
         [agent]\nreport_interval_s = {}\nreport_jitter = 0.0\nstats_log_interval_s = 0.0\nstats_file = {:?}\n\n\
         [symbols]\ncache_dir = {:?}\nmemory_bytes = {STORE_MEMORY_BYTES}\ndisk_bytes = {STORE_DISK_BYTES}\n\n\
         [[exporters]]\nkind = \"folded_dir\"\ndir = {:?}\nmax_files = 16\n",
        args.frequency,
        args.off_cpu_probability,
        args.report_interval,
        dir.join("agent-stats.json"),
        dir.join("cache"),
        dir.join("reports"),
    );
    std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn wait_for_agent(child: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if std::fs::read_to_string(log)
            .map(|l| l.contains("agent running"))
            .unwrap_or(false)
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the agent exited ({status}) before running; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the agent did not start within two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn growth_of(baseline: f64, end: f64) -> f64 {
    if baseline > 0.0 {
        (end - baseline) / baseline
    } else if end > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// `end` may exceed `baseline` by at most `max_growth`.
fn flat(metric: &'static str, baseline: f64, end: f64, max_growth: f64) -> Verdict {
    let growth = growth_of(baseline, end);
    Verdict {
        metric,
        baseline,
        end,
        growth,
        rule: format!("growth <= {:.1} %", max_growth * 100.0),
        ok: growth <= max_growth,
    }
}

/// `end` may be anything up to `bound`; its growth is shown, not judged.
fn bounded(metric: &'static str, baseline: f64, end: f64, bound: f64, what: &str) -> Verdict {
    Verdict {
        metric,
        baseline,
        end,
        growth: growth_of(baseline, end),
        rule: format!("<= {bound:.0} ({what})"),
        ok: end <= bound,
    }
}

/// The smallest value of `field` among `samples` taken within `[from, to]` seconds.
fn window_min(
    samples: &[Measurement],
    from: f64,
    to: f64,
    field: impl Fn(&Measurement) -> f64,
) -> Option<f64> {
    samples
        .iter()
        .filter(|m| m.at_s >= from && m.at_s <= to)
        .map(field)
        .reduce(f64::min)
}

fn main() -> ExitCode {
    let args = <SoakArgs as clap::Parser>::parse();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kestrel-soak: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The agent binary: `--kestrel`, else `kestrel` beside this program.
fn kestrel_binary(args: &SoakArgs) -> Result<PathBuf> {
    if let Some(path) = &args.kestrel {
        return Ok(path.clone());
    }
    let me = std::env::current_exe().context("locating kestrel-soak")?;
    let beside = me.with_file_name("kestrel");
    if !beside.is_file() {
        bail!(
            "{} does not exist: build it (cargo build --release -p kestrel) or pass --kestrel FILE",
            beside.display()
        );
    }
    Ok(beside)
}

pub fn run(args: &SoakArgs) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("kestrel-soak runs the agent and reads its BPF maps by id: run it as root");
    }
    if !(args.duration.is_finite() && args.duration >= 10.0) {
        bail!("--duration must be at least 10 seconds");
    }
    let warmup = args.warmup.unwrap_or(if args.duration >= 180.0 {
        60.0
    } else {
        args.duration / 3.0
    });
    if !(warmup > 0.0 && warmup < args.duration) {
        bail!("--warmup must be between 0 and --duration");
    }
    let temp;
    let dir = match &args.keep_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempdir()?;
            temp.0.clone()
        }
    };
    let config = write_agent_config(&dir, args)?;
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let exe = kestrel_binary(args)?;
    let mut agent = Command::new(exe)
        .args([
            "--log-level",
            "info",
            "--log-format",
            "json",
            "run",
            "--config",
        ])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the agent")?;
    let pid = agent.id();
    wait_for_agent(&mut agent, &log_path)?;
    eprintln!(
        "kestrel-soak: agent pid {pid} runs for {:.0} s under churn ({} processes, {} threads); \
         baseline after {warmup:.0} s; files in {}",
        args.duration,
        args.processes,
        args.threads,
        dir.display()
    );

    let stats_file = dir.join("agent-stats.json");
    let duration = Duration::from_secs_f64(args.duration);
    let stop = Arc::new(AtomicBool::new(false));
    let processes_started = Arc::new(AtomicU64::new(0));
    let process_failures = Arc::new(AtomicU64::new(0));
    let threads_started = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = churn_processes(
        args.processes,
        duration,
        stop.clone(),
        processes_started.clone(),
        process_failures.clone(),
    );
    workers.push(churn_threads(
        args.threads,
        duration,
        stop.clone(),
        threads_started.clone(),
    ));

    let mut samples: Vec<Measurement> = Vec::new();
    let mut baseline_announced = false;
    let mut next_print = Duration::ZERO;
    let sample_once = |samples: &mut Vec<Measurement>| -> Result<Measurement> {
        let Some(m) = measure(pid, &stats_file, started) else {
            stop.store(true, Ordering::Relaxed);
            bail!(
                "the agent died during the soak; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        samples.push(m);
        Ok(m)
    };
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(500));
        let m = sample_once(&mut samples)?;
        if !baseline_announced && m.at_s >= warmup {
            baseline_announced = true;
            eprintln!("kestrel-soak: baseline taken at {:.0} s", m.at_s);
        }
        if started.elapsed() >= next_print {
            next_print += Duration::from_secs(10);
            eprintln!(
                "  {:>5.0} s  rss {:>7.1} MiB  fds {:>4}  bpf {:>7.1} KiB  in-flight {:>5}  store {:>7.1} KiB  samples {:>8}  processes {:>6}  threads {:>5}",
                m.at_s,
                m.rss_bytes as f64 / 1048576.0,
                m.open_fds,
                m.bpf_memlock_bytes as f64 / 1024.0,
                m.bpf_in_flight,
                m.store_memory_bytes as f64 / 1024.0,
                m.samples_received,
                processes_started.load(Ordering::Relaxed),
                threads_started.load(Ordering::Relaxed),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    // Settle: the last churn drains out of the agent (two reports and the
    // forgetting of exited processes), sampled like the rest.
    let churn_end = started.elapsed().as_secs_f64();
    let settle = Duration::from_secs_f64(2.0 * args.report_interval + 1.0);
    let settle_started = Instant::now();
    while settle_started.elapsed() < settle {
        std::thread::sleep(Duration::from_millis(500));
        sample_once(&mut samples)?;
    }
    let end_s = started.elapsed().as_secs_f64();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let agent_exit_ok = agent.wait().map(|s| s.success()).unwrap_or(false);
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let count = |level: &str| {
        let needle = format!("\"level\":\"{level}\"");
        log_text.lines().filter(|l| l.contains(&needle)).count() as u64
    };

    let window = (warmup / 2.0).min(10.0);
    let at_or_before = |t: f64| -> Measurement {
        samples
            .iter()
            .rev()
            .find(|m| m.at_s <= t)
            .or(samples.first())
            .copied()
            .unwrap_or_default()
    };
    let baseline = at_or_before(warmup);
    let end = samples.last().copied().unwrap_or_default();
    let min_of = |from: f64, to: f64, f: &dyn Fn(&Measurement) -> f64| {
        window_min(&samples, from, to, f).unwrap_or(0.0)
    };
    let g = args.max_growth;
    let (b0, b1) = (warmup - window, warmup);
    let (e0, e1) = (churn_end, end_s);
    let rss = |m: &Measurement| m.rss_bytes as f64;
    let fds = |m: &Measurement| m.open_fds as f64;
    let bpf = |m: &Measurement| m.bpf_memlock_bytes as f64;
    let verdicts = vec![
        flat(
            "resident memory (VmRSS, window min)",
            min_of(b0, b1, &rss),
            min_of(e0, e1, &rss),
            g,
        ),
        flat(
            "peak resident memory (VmHWM)",
            baseline.hwm_bytes as f64,
            end.hwm_bytes as f64,
            g,
        ),
        flat(
            "open descriptors (window min)",
            min_of(b0, b1, &fds),
            min_of(e0, e1, &fds),
            g,
        ),
        flat(
            "BPF map kernel memory",
            min_of(b0, b1, &bpf),
            min_of(e0, e1, &bpf),
            g,
        ),
        bounded(
            "BPF in-flight off-CPU entries",
            baseline.bpf_in_flight as f64,
            end.bpf_in_flight as f64,
            end.host_threads as f64,
            "threads on the host",
        ),
        bounded(
            "symbol store memory",
            baseline.store_memory_bytes as f64,
            end.store_memory_bytes as f64,
            STORE_MEMORY_BYTES as f64,
            "symbols.memory_bytes",
        ),
        bounded(
            "symbol store disk",
            baseline.store_disk_bytes as f64,
            end.store_disk_bytes as f64,
            STORE_DISK_BYTES as f64,
            "symbols.disk_bytes",
        ),
    ];
    let processes = processes_started.load(Ordering::Relaxed);
    let threads = threads_started.load(Ordering::Relaxed);
    let errors = count("ERROR");
    let churn_complete = processes >= args.processes && threads >= args.threads;
    let pass = verdicts.iter().all(|v| v.ok) && errors == 0 && agent_exit_ok && churn_complete;
    let report = SoakReport {
        duration_s: args.duration,
        warmup_s: warmup,
        processes_requested: args.processes,
        processes_started: processes,
        process_spawn_failures: process_failures.load(Ordering::Relaxed),
        threads_requested: args.threads,
        threads_started: threads,
        baseline,
        end,
        peak_rss_bytes: samples.iter().map(|m| m.rss_bytes).max().unwrap_or(0),
        replans: log_text.matches("\"message\":\"re-plan\"").count() as u64,
        verdicts,
        series: samples.clone(),
        agent_error_lines: errors,
        agent_warning_lines: count("WARN"),
        agent_exit_ok,
        pass,
    };
    print!("{}", render(&report, g));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn render(r: &SoakReport, max_growth: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kestrel-soak: {:.0} s, baseline at {:.0} s; {} of {} processes ({} failed to start), {} of {} threads",
        r.duration_s,
        r.warmup_s,
        r.processes_started,
        r.processes_requested,
        r.process_spawn_failures,
        r.threads_started,
        r.threads_requested
    );
    let _ = writeln!(
        out,
        "{:<37} {:>12} {:>12} {:>9}  rule",
        "metric", "baseline", "end", "growth"
    );
    for v in &r.verdicts {
        let _ = writeln!(
            out,
            "{:<37} {:>12.0} {:>12.0} {:>8.2}%  {} {}",
            v.metric,
            v.baseline,
            v.end,
            v.growth * 100.0,
            v.rule,
            if v.ok { "ok" } else { "FAIL" }
        );
    }
    let _ = writeln!(
        out,
        "samples received {} lost {} (baseline {} / {}); peak VmRSS {} B; {} ring re-plans; limit {:.1} %",
        r.end.samples_received,
        r.end.samples_lost,
        r.baseline.samples_received,
        r.baseline.samples_lost,
        r.peak_rss_bytes,
        r.replans,
        max_growth * 100.0
    );
    let _ = writeln!(
        out,
        "agent: {} error lines, {} warning lines, exit {}",
        r.agent_error_lines,
        r.agent_warning_lines,
        if r.agent_exit_ok { "ok" } else { "FAILED" }
    );
    let _ = writeln!(out, "{}", if r.pass { "PASS" } else { "FAIL" });
    out
}

/// A private temporary directory removed on drop (tempfile is only a dev
/// dependency of this crate).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!("kestrel-soak-{}-{nanos}", std::process::id()));
    // `create`, not `create_dir_all`: a name planted in /tmp by someone else fails.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(TempDir(path))
}
