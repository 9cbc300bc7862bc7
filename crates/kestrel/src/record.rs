//! `kestrel record`: sample for a while, then symbolize and write the files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kestrel_export::{
    encode_pprof, flamegraph_svg, folded, to_otlp_request, FoldedValue, ResourceInfo,
};
use kestrel_model::{HostInfo, Profile, SampleValues, StackSample};
use kestrel_probes::features::choose_off_cpu_hook;
use kestrel_probes::{KernelFeatures, ProbeConfig, RawSample, SampleKind, Session};
use kestrel_sizing::{plan, Topology};
use kestrel_symbols::{ProcessImage, Symbols, SymbolsConfig};
use tracing::{info, warn};

use crate::cli::RecordArgs;
use crate::config::Config;
use crate::plan_cmd;
use crate::stats::{self, RunFacts};
use crate::tiers::LiveTiers;

/// One aggregation key: a thread and its two stacks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub pid: u32,
    /// Which execve of `pid` (see `RawSample::exec_seq`): an exec's two images
    /// have different mappings and executables.
    pub exec_seq: u16,
    pub tid: u32,
    pub kernel_stack: Vec<u64>,
    pub user_stack: Vec<u64>,
}

/// Samples aggregated by (process, thread, stack) as they are drained.
///
/// Off-CPU waits are sampled with probability p, so each measured wait stands
/// for 1/p waits: values are scaled by `off_cpu_scale` to estimate the true time.
#[derive(Default)]
pub struct Aggregate {
    pub off_cpu_scale: f64,
    /// Measured (unscaled) off-CPU nanoseconds.
    pub off_cpu_measured_ns: u64,
    pub stacks: HashMap<StackKey, (String, SampleValues)>,
    pub on_cpu_received: u64,
    pub per_cpu: BTreeMap<u32, u64>,
    pub off_cpu_waits: u64,
    pub off_cpu_ns: u64,
    /// `(pid, exec_seq)` of every process image seen.
    pub images_seen: HashSet<(u32, u16)>,
}

impl StackKey {
    pub fn image(&self) -> ProcessImage {
        ProcessImage::new(self.pid, self.exec_seq)
    }
}

impl Aggregate {
    /// Every pid seen, once (a pid that exec'd has several images).
    pub fn pids_seen(&self) -> HashSet<u32> {
        self.images_seen.iter().map(|&(pid, _)| pid).collect()
    }

    /// Add one sample; returns true when its process image is seen for the
    /// first time.
    pub fn add(&mut self, s: RawSample) -> bool {
        let mut v = SampleValues::default();
        match s.kind {
            SampleKind::OnCpu => {
                v.cpu_samples = 1;
                self.on_cpu_received += 1;
                *self.per_cpu.entry(s.cpu).or_default() += 1;
            }
            SampleKind::OffCpu => {
                let scale = if self.off_cpu_scale > 0.0 {
                    self.off_cpu_scale
                } else {
                    1.0
                };
                v.off_cpu_ns = (s.value as f64 * scale).round() as u64;
                v.off_cpu_waits = 1;
                self.off_cpu_waits += 1;
                self.off_cpu_ns += v.off_cpu_ns;
                self.off_cpu_measured_ns += s.value;
            }
        }
        let first = self.images_seen.insert((s.pid, s.exec_seq));
        let key = StackKey {
            pid: s.pid,
            exec_seq: s.exec_seq,
            tid: s.tid,
            kernel_stack: s.kernel_stack,
            user_stack: s.user_stack,
        };
        let entry = self
            .stacks
            .entry(key)
            .or_insert_with(|| (s.comm.clone(), SampleValues::default()));
        entry.0 = s.comm;
        entry.1.add(&v);
        first
    }
}

/// Resolve every aggregated stack through the symbol store into a profile.
pub async fn build_profile(
    agg: &Aggregate,
    symbols: &Symbols,
    start: SystemTime,
    duration: Duration,
    frequency_hz: u32,
    off_cpu_enabled: bool,
) -> Profile {
    // One symbolizer request for every stack: misses are batched by file, so
    // each file is parsed once per report, not once per stack.
    let entries: Vec<(&StackKey, &(String, SampleValues))> = agg.stacks.iter().collect();
    let user: Vec<(ProcessImage, &[u64])> = entries
        .iter()
        .map(|(k, _)| (k.image(), k.user_stack.as_slice()))
        .collect();
    let kernel: Vec<&[u64]> = entries
        .iter()
        .map(|(k, _)| k.kernel_stack.as_slice())
        .collect();
    let (user_frames, kernel_frames) = symbols.symbolize_many(&user, &kernel).await;
    let mut samples = Vec::with_capacity(entries.len());
    for (((key, (comm, values)), user), mut frames) in
        entries.into_iter().zip(user_frames).zip(kernel_frames)
    {
        frames.extend(user);
        samples.push(StackSample {
            process: symbols.process_info(key.image()),
            tid: key.tid,
            thread_name: Arc::from(comm.as_str()),
            frames,
            values: *values,
        });
    }
    Profile {
        host: host_info(),
        start,
        duration,
        frequency_hz,
        off_cpu_enabled,
        samples,
    }
}

pub fn host_info() -> HostInfo {
    let uts = nix::sys::utsname::uname().ok();
    HostInfo {
        hostname: uts
            .as_ref()
            .map(|u| u.nodename().to_string_lossy().into_owned())
            .unwrap_or_default(),
        arch: uts
            .as_ref()
            .map(|u| u.machine().to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel_release: uts
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            (t.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec() as u64)
        })
        .unwrap_or(0)
}

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

pub fn symbols_config(config: &Config) -> SymbolsConfig {
    SymbolsConfig {
        cache_dir: if config.symbols.cache_dir.as_os_str().is_empty() {
            None
        } else {
            Some(config.symbols.cache_dir.clone())
        },
        memory_bytes: config.symbols.memory_bytes,
        disk_bytes: config.symbols.disk_bytes,
        dwarf_max_file_bytes: config.symbols.dwarf_max_file_bytes,
    }
}

pub fn probe_config(config: &Config) -> ProbeConfig {
    ProbeConfig {
        frequency_hz: config.sampling.frequency_hz,
        off_cpu_probability: config.off_cpu.probability,
        off_cpu_min_duration: Duration::from_micros(config.off_cpu.min_duration_us),
        pids: config.sampling.pids.clone(),
        profile_self: config.sampling.profile_self,
        stack_depth: config.sampling.stack_depth,
        off_cpu_hook: config.off_cpu.forced_hook(),
    }
}

/// Refuse early, with the fix, when sampling cannot work here.
pub fn preflight(features: &KernelFeatures, config: &Config) -> Result<()> {
    let f = features;
    let mut missing = Vec::new();
    if !f.bpf_syscall.ok {
        missing.push(format!(
            "bpf() is not permitted ({})",
            f.bpf_syscall.error.as_deref().unwrap_or("?")
        ));
    }
    if !f.perf_event_program.ok {
        missing.push(format!(
            "perf_event programs do not load ({})",
            f.perf_event_program.error.as_deref().unwrap_or("?")
        ));
    }
    if !f.cpu_clock_event.ok {
        missing.push(format!(
            "the cpu-clock perf event does not open ({})",
            f.cpu_clock_event.error.as_deref().unwrap_or("?")
        ));
    }
    if !f.ringbuf_map.ok {
        missing.push(format!(
            "ring buffers are unavailable ({})",
            f.ringbuf_map.error.as_deref().unwrap_or("?")
        ));
    }
    if config.off_cpu.probability > 0.0 && f.off_cpu_hook().is_none() {
        missing.push("off-CPU needs tp_btf or raw_tp on sched_switch and both are refused (use --off-cpu-probability 0)".into());
    }
    if !missing.is_empty() {
        bail!(
            "this machine cannot run Kestrel as configured:\n  - {}\nRun `sudo kestrel check` for the full report and how to fix each item \
             (Kestrel needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + CAP_SYSLOG).",
            missing.join("\n  - ")
        );
    }
    for pid in &config.sampling.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("--pid {pid}: no such process (it is not in /proc); check the pid with `ps -p {pid}`");
        }
    }
    Ok(())
}

/// The probes started for a configuration, with what was decided on the way.
pub struct Started {
    pub session: Session,
    pub topology: Topology,
    /// Follows the ring buffer's fill and the CPUs; owns the current plan.
    pub tiers: LiveTiers,
}

/// Probe the kernel, plan every map, load and attach: shared by `record` and `run`.
pub fn start_probes(config: &Config) -> Result<Started> {
    let features = KernelFeatures::probe();
    preflight(&features, config)?;
    let topology =
        Topology::detect().context("detecting the CPU topology from /sys/devices/system/cpu")?;
    let probe_config = probe_config(config);
    let hook =
        choose_off_cpu_hook(&probe_config, &features).context("choosing the off-CPU hook")?;
    let inputs = plan_cmd::inputs(config, topology.clone(), plan_cmd::off_cpu_state(hook));
    let map_plan = plan(&inputs).context("computing the BPF map plan")?;
    let session = Session::start(&probe_config, &map_plan, &features, &topology.online)
        .context("starting the BPF probes")?;
    let tiers = LiveTiers::new(config, inputs, map_plan, features, probe_config)?;
    crate::privileges::drop_after_attach(crate::privileges::Reload::Possible);
    Ok(Started {
        session,
        topology,
        tiers,
    })
}

pub fn run(config: &Config, args: &RecordArgs) -> Result<ExitCode> {
    let output_dir: PathBuf = config.record.output_dir.clone();
    prepare_output(&output_dir)?;
    let Started {
        mut session,
        topology,
        mut tiers,
    } = start_probes(config)?;
    // Again without the capabilities just dropped (CAP_DAC_OVERRIDE among them).
    prepare_output(&output_dir).context(
        "Kestrel writes its files without CAP_DAC_OVERRIDE, dropped once the probes are attached",
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let symbols = Symbols::new(symbols_config(config))
            .await
            .context("opening the symbol store")?;
        let duration = Duration::from_secs_f64(config.record.duration_s);
        let started = Instant::now();
        let start_time = SystemTime::now();
        let mut agg = Aggregate {
            off_cpu_scale: if config.off_cpu.probability > 0.0 {
                1.0 / config.off_cpu.probability
            } else {
                1.0
            },
            ..Aggregate::default()
        };
        let mut batch = Vec::new();
        let bar = progress_bar(duration, args.no_progress);
        let poll = config.sampling.poll_interval();
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut interrupted = false;
        let mut last_log = Instant::now();
        info!(
            duration_s = config.record.duration_s,
            frequency_hz = config.sampling.frequency_hz,
            online_cpus = topology.online.len(),
            off_cpu = config.off_cpu.probability,
            "recording"
        );
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = &mut ctrl_c => { interrupted = true; }
            }
            poll_once(&mut session, &mut tiers, &mut batch, &mut agg, &symbols)?;
            let elapsed = started.elapsed();
            match &bar {
                Some(bar) => {
                    bar.set_position(elapsed.as_millis().min(duration.as_millis()) as u64);
                    bar.set_message(format!("{} samples", agg.on_cpu_received));
                }
                None if last_log.elapsed() >= Duration::from_secs(5) => {
                    last_log = Instant::now();
                    info!(
                        elapsed_s = elapsed.as_secs(),
                        remaining_s = duration.saturating_sub(elapsed).as_secs(),
                        samples = agg.on_cpu_received,
                        off_cpu_waits = agg.off_cpu_waits,
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
        poll_once(&mut session, &mut tiers, &mut batch, &mut agg, &symbols)?;
        let mut in_flight = Vec::new();
        session.flush_in_flight(monotonic_ns(), &mut in_flight);
        for s in in_flight {
            let image = ProcessImage::new(s.pid, s.exec_seq);
            if agg.add(s) {
                symbols.observe_process(image);
            }
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        if interrupted {
            info!("interrupted: writing what was collected");
        }
        let counters = session.counters().context("reading the BPF counters")?;
        let maps = session.map_memory();
        let off_cpu_hook = session.off_cpu_hook();
        let cpus_at_end = session.online_cpus().to_vec();
        // Detach before symbolizing: the programs cost nothing while we work.
        drop(session);

        let profile = build_profile(
            &agg,
            &symbols,
            start_time,
            elapsed,
            config.sampling.frequency_hz,
            config.off_cpu.probability > 0.0,
        )
        .await;
        // Keep going on a failed file: stats.json and the other files still matter.
        let written = write_outputs(&output_dir, &profile, &config.record.formats);
        // Awaited here, inside the runtime: dropping the store instead lets the
        // runtime's shutdown cancel its last disk writes. Before stats.json, which
        // reports it.
        symbols.close().await;
        let facts = RunFacts {
            duration: elapsed,
            frequency_hz: config.sampling.frequency_hz,
            topology: &topology,
            online_at_end: cpus_at_end.len() as u32,
            plan: tiers.plan(),
            replans: &tiers.replans,
            maps: &maps,
            counters: &counters,
            agg: &agg,
            off_cpu_probability: config.off_cpu.probability,
            off_cpu_hook,
            symbols: symbols.stats(),
            interrupted,
        };
        stats::write(&output_dir.join("stats.json"), &facts)?;
        let written = written?;
        info!(
            dir = %output_dir.display(),
            files = ?written,
            samples = agg.on_cpu_received,
            lost = counters.ringbuf_lost,
            "profile written"
        );
        eprintln!(
            "kestrel: {} on-CPU samples{} in {:.1} s written to {}",
            agg.on_cpu_received,
            if config.off_cpu.probability > 0.0 {
                format!(", {} off-CPU waits", agg.off_cpu_waits)
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

/// One poll: drain the ring, aggregate, follow CPU hotplug, and let the live
/// tiers re-plan; samples drained from a replaced ring are aggregated too.
pub fn poll_once(
    session: &mut Session,
    tiers: &mut LiveTiers,
    batch: &mut Vec<RawSample>,
    agg: &mut Aggregate,
    symbols: &Symbols,
) -> Result<()> {
    batch.clear();
    session.drain(batch).context("draining the ring buffer")?;
    match session.sync_online_cpus() {
        Ok(change) if !change.is_empty() => {
            info!(added = ?change.added, removed = ?change.removed, "online CPUs changed");
            if let Err(e) = tiers.topology_changed(session, &change, batch) {
                warn!(error = %format!("{e:#}"), "re-planning after the CPU change failed");
            }
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not follow CPU hotplug"),
    }
    if let Err(e) = tiers.after_drain(session, batch) {
        warn!(error = %format!("{e:#}"), "the live tiers could not check the ring buffer");
    }
    for s in batch.drain(..) {
        let image = ProcessImage::new(s.pid, s.exec_seq);
        if agg.add(s) {
            // Capture mappings at first sight so a process that exits (or
            // execs) before symbolization still gets names.
            symbols.observe_process(image);
        }
    }
    Ok(())
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

/// Write the profile files in `formats`. Each file is produced and written on its
/// own, whole to a temporary name first: one failing neither truncates a file
/// nor stops the others. Returns the names written, or every failure at once.
pub fn write_outputs(dir: &Path, profile: &Profile, formats: &[String]) -> Result<Vec<String>> {
    let title_base = format!(
        "{} · {:.1} s · {} Hz",
        profile.host.hostname,
        profile.duration.as_secs_f64(),
        profile.frequency_hz
    );
    let wants = |f: &str| formats.iter().any(|x| x == f);
    type Produce<'a> = Box<dyn FnOnce() -> Result<Vec<u8>> + 'a>;
    let mut jobs: Vec<(&str, Produce<'_>)> = Vec::new();
    if wants("pprof") {
        jobs.push((
            "profile.pb.gz",
            Box::new(|| encode_pprof(profile).context("encoding pprof")),
        ));
    }
    let values: &[(FoldedValue, &str, &str, &str, &str)] = if profile.off_cpu_enabled {
        &[
            (
                FoldedValue::CpuSamples,
                "profile.folded",
                "flamegraph.svg",
                "on-CPU",
                "samples",
            ),
            (
                FoldedValue::OffCpuNanoseconds,
                "offcpu.folded",
                "offcpu.svg",
                "off-CPU",
                "ns",
            ),
        ]
    } else {
        &[(
            FoldedValue::CpuSamples,
            "profile.folded",
            "flamegraph.svg",
            "on-CPU",
            "samples",
        )]
    };
    for &(value, folded_name, svg_name, what, unit) in values {
        if wants("folded") {
            jobs.push((
                folded_name,
                Box::new(move || Ok(folded(profile, value).into_bytes())),
            ));
        }
        if wants("flamegraph") {
            let title = format!("Kestrel {what} · {title_base}");
            jobs.push((
                svg_name,
                Box::new(move || {
                    flamegraph_svg(&folded(profile, value), &title, unit)
                        .with_context(|| format!("rendering {svg_name}"))
                }),
            ));
        }
    }
    if wants("otlp") {
        jobs.push((
            "profile.otlp.pb",
            Box::new(|| {
                let resource = ResourceInfo::from_host(&profile.host, "kestrel");
                Ok(prost::Message::encode_to_vec(&to_otlp_request(
                    profile, &resource,
                )))
            }),
        ));
    }
    let mut written = Vec::new();
    let mut failures = Vec::new();
    for (name, produce) in jobs {
        match produce().and_then(|bytes| write_atomic(&dir.join(name), &bytes)) {
            Ok(()) => written.push(name.to_string()),
            Err(e) => failures.push(format!("{name}: {e:#}")),
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

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-kestrel");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
