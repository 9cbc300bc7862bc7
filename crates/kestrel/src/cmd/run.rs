//! `kestrel run`: the agent. Probes run until SIGTERM or SIGINT; every report
//! interval (with jitter) the aggregated profile goes to each enabled exporter.
//! A failing exporter never stops sampling or the other exporters.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use kestrel::agent::{error_chain, host_info, Agent, Aggregate, Inputs, Window};
use kestrel::config::Config;
use kestrel::telemetry::{self, Shared};
use kestrel_export::{build_exporter, write_atomic, Exporter};
use kestrel_probes::{Counters, MapMemory};
use kestrel_symbols::Symbols;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::cmd::with_cli_hint;

/// Build every `[[exporters]]` entry; any error names the entry.
pub fn build_exporters(config: &Config) -> Result<Vec<Box<dyn Exporter>>> {
    let mut out = Vec::new();
    for (i, entry) in config.exporters.iter().enumerate() {
        let mut table = entry.clone();
        let kind = match table.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            _ => bail!(
                "exporters[{i}] has no `kind`: set kind to one of {}",
                kestrel_export::exporter_kinds()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let exporter = build_exporter(&kind, &serde_json::Value::Object(table))
            .with_context(|| format!("configuring exporters[{i}] (kind = {kind:?})"))?;
        out.push(exporter);
    }
    Ok(out)
}

fn jittered(base: Duration, jitter: f64) -> Duration {
    // A cheap, good-enough spread: the sub-second nanoseconds of the clock.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let unit = f64::from(nanos) / 1e9 * 2.0 - 1.0; // [-1, 1)
    base.mul_f64((1.0 + jitter * unit).max(0.01))
}

pub fn run(config: &Config) -> Result<ExitCode> {
    if config.exporters.is_empty() {
        bail!(
            "no exporters configured: `kestrel run` sends each report to the [[exporters]] of the configuration, e.g.\n\
             \n  [[exporters]]\n  kind = \"otlp\"\n  endpoint = \"https://collector.example:4317\"\n\
             \nor kind = \"pprof_dir\" with dir = \"/var/lib/kestrel/pprof\" (see config.toml). \
             For a one-off profile to local files use `kestrel record`."
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(agent(config));
    // The store's close is bounded; a write stuck on a stalled disk must not
    // hold the exit either (dropping the runtime waits for it without a bound).
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn agent(config: &Config) -> Result<()> {
    // Exporters first: a configuration error must not cost a BPF load.
    let mut exporters = build_exporters(config)?;
    let inputs = Inputs::from_config(config).map_err(with_cli_hint)?;
    let mut agent = Agent::start(inputs).await.map_err(with_cli_hint)?;
    let shared: Shared = Default::default();
    // The first metric export must already show the BPF maps and exporters.
    refresh_snapshot(&shared, &agent, &exporters, (0, 0));
    let host = host_info();
    let _meter_provider = if config.telemetry.enabled {
        Some(telemetry::start(
            &config.telemetry,
            shared.clone(),
            &host.hostname,
        )?)
    } else {
        None
    };
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let report_every = Duration::from_secs_f64(config.agent.report_interval_s);
    let mut next_report = Instant::now() + jittered(report_every, config.agent.report_jitter);
    let mut window_start = SystemTime::now();
    let mut window_started = Instant::now();
    let mut last_stats_log = Instant::now();
    let mut ticker = tokio::time::interval(agent.inputs().poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut totals = (0u64, 0u64); // (samples, off-CPU waits) over the whole run
    info!(
        exporters = exporters.len(),
        report_interval_s = config.agent.report_interval_s,
        online_cpus = agent.inputs().topology().online.len(),
        "agent running"
    );

    let stop_reason = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        }
        if let Err(e) = agent.poll() {
            warn!(error = %error_chain(&e), "draining the ring buffer failed; retrying next poll");
        }
        if Instant::now() >= next_report {
            let done = agent.take_window();
            totals.0 += done.on_cpu_received;
            totals.1 += done.off_cpu_waits;
            let window = Window {
                start: window_start,
                duration: window_started.elapsed(),
            };
            let profile = agent.profile(&done, window).await;
            report(&profile, &done, &mut exporters);
            agent.forget_exited(&done);
            window_start = SystemTime::now();
            window_started = Instant::now();
            next_report = Instant::now() + jittered(report_every, config.agent.report_jitter);
            refresh_snapshot(&shared, &agent, &exporters, totals);
            write_stats_file(&config.agent.stats_file, &shared);
        }
        if config.agent.stats_log_interval_s > 0.0
            && last_stats_log.elapsed()
                >= Duration::from_secs_f64(config.agent.stats_log_interval_s)
        {
            last_stats_log = Instant::now();
            let current = agent.aggregate();
            let running = (
                totals.0 + current.on_cpu_received,
                totals.1 + current.off_cpu_waits,
            );
            refresh_snapshot(&shared, &agent, &exporters, running);
            let s = telemetry::read(&shared);
            info!(
                samples_received = s.samples_received,
                samples_lost = s.samples_lost,
                off_cpu_waits = s.off_cpu_waits,
                bpf_bytes = s.bpf_memory_bytes.values().sum::<u64>(),
                store_hits = s.store_hits,
                store_misses = s.store_misses,
                store_memory_bytes = s.store_memory_bytes,
                exports = ?s.exports,
                "agent stats"
            );
        }
    };

    info!(signal = stop_reason, "stopping: flushing the last report");
    let deadline = Duration::from_secs_f64(config.agent.shutdown_deadline_s);
    let flush_started = Instant::now();
    let finished = agent.finish();
    totals.0 += finished.aggregate.on_cpu_received;
    totals.1 += finished.aggregate.off_cpu_waits;
    update_snapshot(
        &shared,
        finished.counters,
        &finished.maps,
        &finished.symbols,
        &exporters,
        totals,
    );
    let profile = finished
        .profile(Window {
            start: window_start,
            duration: window_started.elapsed(),
        })
        .await;
    report(&profile, &finished.aggregate, &mut exporters);
    for exporter in &mut exporters {
        let left = deadline.saturating_sub(flush_started.elapsed());
        if let Err(e) = exporter.shutdown(left) {
            warn!(exporter = exporter.name(), error = %e, "exporter did not flush everything before the deadline");
        }
    }
    // Before the stats file, which reports how the close went.
    let closed = finished.symbols.close().await;
    telemetry::update(&shared, |s| {
        s.store_close_ms = closed.elapsed.as_millis() as u64;
        s.store_close_outcome = closed.outcome;
    });
    refresh_exports(&shared, &exporters);
    write_stats_file(&config.agent.stats_file, &shared);
    info!(
        samples = totals.0,
        off_cpu_waits = totals.1,
        "agent stopped"
    );
    Ok(())
}

fn report(profile: &kestrel_model::Profile, agg: &Aggregate, exporters: &mut [Box<dyn Exporter>]) {
    for exporter in exporters.iter_mut() {
        // Each exporter on its own: one failing must not starve the others.
        if let Err(e) = exporter.export(profile) {
            warn!(exporter = exporter.name(), error = %e, "export failed; the next report is unaffected");
        }
    }
    // Counted here only: the snapshot refreshes also happen between reports.
    REPORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    info!(
        stacks = profile.samples.len(),
        samples = agg.on_cpu_received,
        off_cpu_waits = agg.off_cpu_waits,
        "report sent to exporters"
    );
}

static REPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn refresh_exports(shared: &Shared, exporters: &[Box<dyn Exporter>]) {
    telemetry::update(shared, |s| {
        s.reports = REPORTS.load(std::sync::atomic::Ordering::Relaxed);
        s.exports = exporters
            .iter()
            .map(|e| (e.name().to_string(), e.stats()))
            .collect();
    });
}

fn refresh_snapshot(
    shared: &Shared,
    agent: &Agent,
    exporters: &[Box<dyn Exporter>],
    totals: (u64, u64),
) {
    update_snapshot(
        shared,
        agent.counters().ok(),
        &agent.map_memory(),
        agent.symbols(),
        exporters,
        totals,
    );
}

fn update_snapshot(
    shared: &Shared,
    counters: Option<Counters>,
    maps: &[MapMemory],
    symbols: &Symbols,
    exporters: &[Box<dyn Exporter>],
    totals: (u64, u64),
) {
    let store = symbols.stats();
    telemetry::update(shared, |s| {
        s.samples_received = totals.0;
        s.off_cpu_waits = totals.1;
        if let Some(c) = counters {
            s.samples_lost = c.ringbuf_lost;
        }
        s.bpf_memory_bytes = maps
            .iter()
            .map(|m| (m.name.clone(), m.memlock_bytes))
            .collect();
        s.store_hits = store.hits;
        s.store_misses = store.misses;
        s.store_memory_bytes = store.memory_bytes;
        s.store_disk_bytes = store.disk_bytes;
        s.store_disk_hits = store.disk_hits;
        s.store_symbolized_file_frames = store.symbolized_file_frames;
        s.store_recovered_entries = store.recovered_entries;
        s.store_recovered_bytes = store.recovered_bytes;
        s.symbol_sources = telemetry::symbol_sources(&store);
        s.debuginfod_downloads = store.debuginfod_downloads;
        s.debuginfod_bytes = store.debuginfod_bytes;
        s.debuginfod_not_found = store.debuginfod_not_found;
        s.debuginfod_failures = store.debuginfod_failures;
    });
    refresh_exports(shared, exporters);
}

fn write_stats_file(path: &Path, shared: &Shared) {
    if path.as_os_str().is_empty() {
        return;
    }
    let snapshot = telemetry::read(shared);
    match serde_json::to_vec_pretty(&snapshot) {
        Ok(bytes) => {
            if let Err(e) = write_atomic(path, &bytes) {
                warn!(path = %path.display(), error = %format!("{e:#}"), "writing the stats file failed");
            }
        }
        Err(e) => warn!(error = %e, "encoding the stats file failed"),
    }
}
