//! Live tiers in the agent: after each drain and on every CPU hotplug, ask the
//! sizing policy whether the ring buffer should change size; if so, re-plan and
//! swap the probes onto maps of the new plan. Every re-plan is logged and kept
//! for `stats.json` `replans[]`.

use std::time::Instant;

use kestrel_probes::{CpuChange, KernelFeatures, ProbeConfig, RawSample, Session};
use kestrel_sizing::{
    plan, ring_bounds, MapPlan, PlanInputs, ReplanReason, RingTracker, TierPolicy, Topology,
    EVENTS_MAP,
};
use serde::Serialize;
use tracing::{info, warn};

use super::{monotonic_ns, AgentError, Inputs};
use crate::capabilities;

/// One re-plan, as `stats.json` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplanRecord {
    /// Seconds since the probes started.
    pub time_s: f64,
    pub reason: ReplanReason,
    pub map: &'static str,
    pub old_entries: u32,
    pub new_entries: u32,
    pub old_bytes: u64,
    pub new_bytes: u64,
    pub online_cpus: u32,
    /// The plan's total kernel bytes before and after (as created).
    pub old_total_bytes: u64,
    pub new_total_bytes: u64,
    /// The plan's most (`total_bytes_cap`) before and after: it follows the
    /// online CPUs where the floor does not (the ring's floor covers many).
    pub old_total_bytes_cap: u64,
    pub new_total_bytes_cap: u64,
    /// The ring's growth cap (`max_entries_cap`, data bytes) before and after.
    pub old_entries_cap: u32,
    pub new_entries_cap: u32,
}

pub struct LiveTiers {
    tracker: RingTracker,
    inputs: PlanInputs,
    plan: MapPlan,
    features: KernelFeatures,
    probe_config: ProbeConfig,
    last_lost: u64,
    started: Instant,
    pub replans: Vec<ReplanRecord>,
}

impl LiveTiers {
    pub fn new(inputs: &Inputs, plan: MapPlan) -> Result<Self, AgentError> {
        let bounds = ring_bounds(&inputs.plan).map_err(AgentError::Plan)?;
        let size = plan
            .get(EVENTS_MAP)
            .map(|r| r.max_entries)
            .ok_or(AgentError::NoRingInPlan)?;
        Ok(LiveTiers {
            tracker: RingTracker::new(inputs.tier_policy, size, bounds.start, bounds.cap),
            inputs: inputs.plan.clone(),
            plan,
            features: inputs.features.clone(),
            probe_config: inputs.probe.clone(),
            last_lost: 0,
            started: Instant::now(),
            replans: Vec::new(),
        })
    }

    pub fn plan(&self) -> &MapPlan {
        &self.plan
    }

    /// After each drain: grow on fill or loss, shrink after sustained quiet.
    /// Samples drained from a replaced ring go to `out`.
    pub fn after_drain(
        &mut self,
        session: &mut Session,
        out: &mut Vec<RawSample>,
    ) -> Result<(), AgentError> {
        let drained = session.take_drained_bytes();
        let lost_total = session
            .counters()
            .map_err(AgentError::Counters)?
            .ringbuf_lost;
        let lost = lost_total.saturating_sub(self.last_lost);
        self.last_lost = lost_total;
        if let Some(resize) = self.tracker.observe(drained, lost) {
            self.swap(session, resize.reason, Some(resize.to), out);
        }
        Ok(())
    }

    /// The online CPUs changed: re-plan for the new topology; swap if the ring
    /// falls outside its new bounds. Always recorded.
    pub fn topology_changed(
        &mut self,
        session: &mut Session,
        change: &CpuChange,
        out: &mut Vec<RawSample>,
    ) -> Result<(), AgentError> {
        let topology = Topology::detect().map_err(AgentError::Topology)?;
        self.inputs.topology = topology;
        let bounds = ring_bounds(&self.inputs).map_err(AgentError::Plan)?;
        let (floor, cap) = (bounds.start, bounds.cap);
        let reason = if change.added.is_empty() {
            ReplanReason::CpusOffline
        } else {
            ReplanReason::CpusOnline
        };
        let to = self
            .tracker
            .retarget(floor, cap, !change.added.is_empty())
            .map(|r| r.to);
        self.swap(session, reason, to.or(Some(self.tracker.size())), out);
        Ok(())
    }

    fn swap(
        &mut self,
        session: &mut Session,
        reason: ReplanReason,
        events_bytes: Option<u32>,
        out: &mut Vec<RawSample>,
    ) {
        let inputs = PlanInputs {
            events_bytes,
            ..self.inputs.clone()
        };
        let new_plan = match plan(&inputs) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, ?reason, "re-plan failed; keeping the current maps");
                return;
            }
        };
        let old = self
            .plan
            .get(EVENTS_MAP)
            .map(|r| (r.max_entries, r.bytes_floor, r.max_entries_cap))
            .unwrap_or_default();
        let new = new_plan
            .get(EVENTS_MAP)
            .map(|r| (r.max_entries, r.bytes_floor, r.max_entries_cap))
            .unwrap_or_default();
        let needs_swap = new_plan.maps.iter().any(|row| {
            self.plan
                .get(&row.name)
                .is_none_or(|old| old.max_entries != row.max_entries)
        });
        if needs_swap {
            // CAP_BPF is kept permitted, not effective, after attach: raise it here.
            if let Err(e) = capabilities::while_loading(|| {
                session.replace(
                    &self.probe_config,
                    &new_plan,
                    &self.features,
                    monotonic_ns,
                    out,
                )
            }) {
                warn!(error = %e, ?reason, "swapping in the re-planned maps failed; keeping the current ones");
                // The tracker must describe what really runs.
                self.tracker = RingTracker::new(
                    self.tracker_policy(),
                    old.0,
                    self.tracker.floor(),
                    self.tracker.cap(),
                );
                return;
            }
        }
        let record = ReplanRecord {
            time_s: self.started.elapsed().as_secs_f64(),
            reason,
            map: EVENTS_MAP,
            old_entries: old.0,
            new_entries: new.0,
            old_bytes: old.1,
            new_bytes: new.1,
            online_cpus: self.inputs.topology.online.len(),
            old_total_bytes: self.plan.total_bytes_floor,
            new_total_bytes: new_plan.total_bytes_floor,
            old_total_bytes_cap: self.plan.total_bytes_cap,
            new_total_bytes_cap: new_plan.total_bytes_cap,
            old_entries_cap: old.2,
            new_entries_cap: new.2,
        };
        info!(
            ?reason,
            map = record.map,
            old_entries = record.old_entries,
            new_entries = record.new_entries,
            old_bytes = record.old_bytes,
            new_bytes = record.new_bytes,
            online_cpus = record.online_cpus,
            swapped = needs_swap,
            "re-plan"
        );
        self.replans.push(record);
        self.inputs = inputs;
        self.plan = new_plan;
    }

    fn tracker_policy(&self) -> TierPolicy {
        self.tracker.policy()
    }
}
