//! The profiling pipeline every mode shares: decided [`Inputs`] → [`Agent::start`]
//! (plan every map, load and attach the probes, open the symbol store) →
//! [`Agent::poll`] on every poll interval (drain the ring, follow CPU hot-plug,
//! let the live tiers re-plan, aggregate) → [`Agent::profile`] of a window →
//! [`Agent::finish`] (last drain, waits still open, counters, detach).
//!
//! `kestrel record` runs one window to files; `kestrel run` cuts a window every
//! report interval and hands each profile to the exporters; the soak harness
//! drives `kestrel run`. None of them repeats a decision made here.

mod aggregate;
mod error;
mod inputs;
mod profile;
mod tiers;

use std::path::Path;
use std::time::{Duration, SystemTime};

use kestrel_model::Profile;
use kestrel_probes::{Counters, MapMemory, OffCpuHook, RawSample, Session};
use kestrel_sizing::{plan, MapPlan};
use kestrel_symbols::{ProcessImage, Symbols};
use tracing::{info, warn};

pub use aggregate::{Aggregate, StackKey};
pub use error::AgentError;
pub use inputs::{
    off_cpu_scale, off_cpu_state, plan_inputs, probe_config, symbols_config, tier_policy, Inputs,
};
pub use profile::{build_profile, host_info, Window};
pub use tiers::{LiveTiers, ReplanRecord};

use crate::capabilities::{self, Reload};

/// A running pipeline: probes attached, symbol store open, one window being
/// aggregated.
pub struct Agent {
    inputs: Inputs,
    session: Session,
    tiers: LiveTiers,
    symbols: Symbols,
    aggregate: Aggregate,
    batch: Vec<RawSample>,
}

/// What a finished pipeline leaves: the last window and what the probes said
/// before they were detached.
pub struct Finished {
    pub inputs: Inputs,
    pub aggregate: Aggregate,
    pub symbols: Symbols,
    /// The plan the maps had at the end, and every re-plan on the way.
    pub plan: MapPlan,
    pub replans: Vec<ReplanRecord>,
    /// `None` when the counters map could not be read (logged).
    pub counters: Option<Counters>,
    pub maps: Vec<MapMemory>,
    pub off_cpu_hook: Option<OffCpuHook>,
    pub online_at_end: u32,
}

impl Agent {
    /// Plan every map, load and attach the probes, give up the capabilities only
    /// loading needed, then open the symbol store.
    pub async fn start(inputs: Inputs) -> Result<Agent, AgentError> {
        let map_plan = plan(&inputs.plan).map_err(AgentError::Plan)?;
        let session = Session::start(
            &inputs.probe,
            &map_plan,
            &inputs.features,
            &inputs.topology().online,
        )
        .map_err(AgentError::Start)?;
        let tiers = LiveTiers::new(&inputs, map_plan)?;
        capabilities::drop_after_attach(Reload::Possible);
        let symbols = Symbols::new(inputs.symbols.clone())
            .await
            .map_err(AgentError::Symbols)?;
        Ok(Agent {
            aggregate: Aggregate::new(inputs.off_cpu_scale()),
            inputs,
            session,
            tiers,
            symbols,
            batch: Vec::new(),
        })
    }

    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    pub fn symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// The window being aggregated.
    pub fn aggregate(&self) -> &Aggregate {
        &self.aggregate
    }

    pub fn counters(&self) -> Result<Counters, AgentError> {
        self.session.counters().map_err(AgentError::Counters)
    }

    pub fn map_memory(&self) -> Vec<MapMemory> {
        self.session.map_memory()
    }

    pub fn plan(&self) -> &MapPlan {
        self.tiers.plan()
    }

    /// One poll: drain the ring, follow CPU hot-plug, let the live tiers re-plan,
    /// and aggregate; samples drained from a replaced ring are aggregated too.
    /// Hot-plug and re-plan failures are logged: sampling goes on as it was.
    pub fn poll(&mut self) -> Result<(), AgentError> {
        self.batch.clear();
        self.session
            .drain(&mut self.batch)
            .map_err(AgentError::Drain)?;
        match self.session.sync_online_cpus() {
            Ok(change) if !change.is_empty() => {
                info!(added = ?change.added, removed = ?change.removed, "online CPUs changed");
                if let Err(e) =
                    self.tiers
                        .topology_changed(&mut self.session, &change, &mut self.batch)
                {
                    warn!(error = %error_chain(&e), "re-planning after the CPU change failed");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not follow CPU hotplug"),
        }
        if let Err(e) = self.tiers.after_drain(&mut self.session, &mut self.batch) {
            warn!(error = %error_chain(&e), "the live tiers could not check the ring buffer");
        }
        for sample in self.batch.drain(..) {
            add_sample(&mut self.aggregate, &self.symbols, sample);
        }
        Ok(())
    }

    /// End the current window: its aggregate, and a fresh one in its place.
    pub fn take_window(&mut self) -> Aggregate {
        let fresh = self.aggregate.fresh();
        std::mem::replace(&mut self.aggregate, fresh)
    }

    /// Symbolize `aggregate` into a profile of `window`.
    pub async fn profile(&self, aggregate: &Aggregate, window: Window) -> Profile {
        profile_of(&self.inputs, &self.symbols, aggregate, window).await
    }

    /// After a window was reported: processes that have exited are dropped from
    /// the symbol store's process table; of those that live on after an exec,
    /// the images the exec replaced are.
    pub fn forget_exited(&self, reported: &Aggregate) {
        for pid in reported.pids_seen() {
            if Path::new(&format!("/proc/{pid}")).exists() {
                self.symbols.forget_older_images(pid);
            } else {
                self.symbols.forget_process(pid);
            }
        }
    }

    /// Last drain, waits still open counted up to now, counters and map memory
    /// read, probes detached (they cost nothing while the caller symbolizes).
    pub fn finish(mut self) -> Finished {
        if let Err(e) = self.poll() {
            warn!(error = %error_chain(&e), "the last drain failed");
        }
        let mut in_flight = Vec::new();
        self.session.flush_in_flight(monotonic_ns(), &mut in_flight);
        for sample in in_flight {
            add_sample(&mut self.aggregate, &self.symbols, sample);
        }
        let counters = match self.session.counters() {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "reading the BPF counters at the end failed");
                None
            }
        };
        let maps = self.session.map_memory();
        let off_cpu_hook = self.session.off_cpu_hook();
        let online_at_end = u32::try_from(self.session.online_cpus().len()).unwrap_or(u32::MAX);
        drop(self.session);
        let plan = self.tiers.plan().clone();
        Finished {
            inputs: self.inputs,
            aggregate: self.aggregate,
            symbols: self.symbols,
            plan,
            replans: std::mem::take(&mut self.tiers.replans),
            counters,
            maps,
            off_cpu_hook,
            online_at_end,
        }
    }
}

impl Finished {
    /// Symbolize the last window into a profile.
    pub async fn profile(&self, window: Window) -> Profile {
        profile_of(&self.inputs, &self.symbols, &self.aggregate, window).await
    }
}

async fn profile_of(
    inputs: &Inputs,
    symbols: &Symbols,
    aggregate: &Aggregate,
    window: Window,
) -> Profile {
    build_profile(
        aggregate,
        symbols,
        window,
        inputs.frequency_hz(),
        inputs.off_cpu_enabled(),
    )
    .await
}

/// Aggregate one sample; capture the process's mappings at first sight of its
/// image, so a process that exits (or execs) before symbolization still gets
/// names.
fn add_sample(aggregate: &mut Aggregate, symbols: &Symbols, sample: RawSample) {
    let image = ProcessImage::new(sample.pid, sample.exec_seq);
    if aggregate.add(sample) {
        symbols.observe_process(image);
    }
}

/// A window that starts now.
pub fn window_from(start: SystemTime, duration: Duration) -> Window {
    Window { start, duration }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            (t.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec() as u64)
        })
        .unwrap_or(0)
}

/// An error and its sources on one line, for a log field.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
