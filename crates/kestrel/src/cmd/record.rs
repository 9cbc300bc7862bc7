//! `kestrel record`: one window of the agent's pipeline, written to files
//! through the same exporters as `kestrel run` (fixed names), plus stats.json.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kestrel::agent::{Agent, Finished, Inputs, Window};
use kestrel::config::Config;
use kestrel::stats;
use kestrel_export::{build_record_exporter, write_atomic, Exporter, FoldedValue};
use kestrel_model::Profile;
use tracing::info;

use crate::cli::RecordArgs;
use crate::cmd::with_cli_hint;

/// Make sure we can write the output before spending the recording on it.
fn prepare_output(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the output directory {}: choose a writable one with --output DIR",
            dir.display()
        )
    })?;
    let probe = dir.join(".kestrel-write-test");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "the output directory {} is not writable: choose another with --output DIR",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// One exporter per requested format, before anything is loaded: a format that
/// does not exist costs no recording.
fn record_exporters(config: &Config, dir: &Path) -> Result<Vec<Box<dyn Exporter>>> {
    let mut values = vec![FoldedValue::CpuSamples];
    if config.off_cpu.probability > 0.0 {
        values.push(FoldedValue::OffCpuNanoseconds);
    }
    config
        .record
        .formats
        .iter()
        .map(|format| {
            build_record_exporter(format, dir, &values)
                .with_context(|| format!("--format {format} (record.formats)"))
        })
        .collect()
}

pub fn run(config: &Config, args: &RecordArgs) -> Result<ExitCode> {
    let output_dir = config.record.output_dir.clone();
    prepare_output(&output_dir)?;
    let mut exporters = record_exporters(config, &output_dir)?;
    let inputs = Inputs::from_config(config).map_err(with_cli_hint)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let mut agent = Agent::start(inputs).await.map_err(with_cli_hint)?;
        // Again without the capabilities just dropped (CAP_DAC_OVERRIDE among them).
        prepare_output(&output_dir).context(
            "Kestrel writes its files without CAP_DAC_OVERRIDE, dropped once the probes are attached",
        )?;
        let duration = Duration::from_secs_f64(config.record.duration_s);
        let started = Instant::now();
        let start_time = SystemTime::now();
        let bar = progress_bar(duration, args.no_progress);
        let mut ticker = tokio::time::interval(agent.inputs().poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut interrupted = false;
        let mut last_log = Instant::now();
        info!(
            duration_s = config.record.duration_s,
            frequency_hz = config.sampling.frequency_hz,
            online_cpus = agent.inputs().topology().online.len(),
            off_cpu = config.off_cpu.probability,
            "recording"
        );
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = &mut ctrl_c => { interrupted = true; }
            }
            agent.poll().map_err(with_cli_hint)?;
            let elapsed = started.elapsed();
            let samples = agent.aggregate().on_cpu_received;
            match &bar {
                Some(bar) => {
                    bar.set_position(elapsed.as_millis().min(duration.as_millis()) as u64);
                    bar.set_message(format!("{samples} samples"));
                }
                None if last_log.elapsed() >= Duration::from_secs(5) => {
                    last_log = Instant::now();
                    info!(
                        elapsed_s = elapsed.as_secs(),
                        remaining_s = duration.saturating_sub(elapsed).as_secs(),
                        samples,
                        off_cpu_waits = agent.aggregate().off_cpu_waits,
                        "recording"
                    );
                }
                None => {}
            }
            if interrupted || elapsed >= duration {
                break;
            }
        }
        let elapsed = started.elapsed();
        let finished = agent.finish();
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        if interrupted {
            info!("interrupted: writing what was collected");
        }
        let profile = finished
            .profile(Window {
                start: start_time,
                duration: elapsed,
            })
            .await;
        // Keep going on a failed file: stats.json and the other files still matter.
        let written = export_all(&mut exporters, &profile);
        // Awaited here, inside the runtime: dropping the store instead lets the
        // runtime's shutdown cancel its last disk writes. Before stats.json, which
        // reports it.
        finished.symbols.close().await;
        let stats_json =
            stats::render(&finished, elapsed, interrupted).context("encoding stats.json")?;
        write_atomic(&output_dir.join("stats.json"), &stats_json)
            .context("writing stats.json")?;
        let written = written?;
        info!(
            dir = %output_dir.display(),
            formats = ?written,
            samples = finished.aggregate.on_cpu_received,
            lost = finished.counters.map(|c| c.ringbuf_lost),
            "profile written"
        );
        eprintln!(
            "kestrel: {}{} in {:.1} s written to {}",
            samples_summary(&finished),
            if config.off_cpu.probability > 0.0 {
                format!(", {} off-CPU waits", finished.aggregate.off_cpu_waits)
            } else {
                String::new()
            },
            elapsed.as_secs_f64(),
            output_dir.display()
        );
        anyhow::Ok(())
    });
    // The store's close is bounded; a write stuck on a stalled disk must not
    // hold the exit either (dropping the runtime waits for it without a bound).
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// "N on-CPU samples", and when none arrived, why: how many found the CPUs idle.
fn samples_summary(finished: &Finished) -> String {
    let received = finished.aggregate.on_cpu_received;
    let idle = finished.counters.map_or(0, |c| c.idle_skipped);
    if received == 0 && idle > 0 {
        format!(
            "0 on-CPU samples ({idle} samples found the CPUs idle: nothing was running{})",
            if finished.inputs.probe.pids.is_empty() {
                ""
            } else {
                " in the selected processes"
            }
        )
    } else {
        format!("{received} on-CPU samples")
    }
}

/// Each exporter on its own: one failing neither stops nor spoils the others.
/// Returns the formats written, or every failure at once.
fn export_all(exporters: &mut [Box<dyn Exporter>], profile: &Profile) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let mut failures = Vec::new();
    for exporter in exporters.iter_mut() {
        match exporter.export(profile) {
            Ok(()) => written.push(exporter.name().to_string()),
            Err(e) => failures.push(format!("{}: {e}", exporter.name())),
        }
    }
    if failures.is_empty() {
        Ok(written)
    } else {
        bail!(
            "some output files could not be written (the others were): {}",
            failures.join("; ")
        )
    }
}

fn progress_bar(duration: Duration, disabled: bool) -> Option<ProgressBar> {
    if disabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(duration.as_millis() as u64);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} remaining {eta} · {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}
