//! A loaded, attached set of probes and the ring buffer they write to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kestrel_sizing::{CpuSet, MapPlan};
use libbpf_rs::{MapCore, MapFlags, MapType, Object, ObjectBuilder, RingBuffer, RingBufferBuilder};
use serde::Serialize;
use tracing::{info, warn};

use crate::abi::bytes_of;
use crate::bpf::skel::types::{kestrel_config, kestrel_counter as Counter, rodata};
use crate::bpf::KESTREL_OBJECT;
use crate::features::{KernelFeatures, OffCpuHook};
use crate::record::{parse_record, RawSample, Record, SampleKind};
use crate::{Probe, ProbeConfig, ProbeError, REGISTRY};

/// Blocks waiting for their wake are kept per thread; past this many the oldest
/// half is dropped (and counted) so a storm of threads cannot grow memory without
/// bound.
const MAX_PENDING_BLOCKS: usize = 65_536;

/// Key of the off-CPU in-flight gauge in the BPF `counters` map
/// (`COUNTER_OFF_CPU_IN_FLIGHT` of `enum kestrel_counter`), for readers of the
/// map from outside the process; [`Counters::off_cpu_in_flight`] is the same
/// value read through a session.
pub const OFF_CPU_IN_FLIGHT_COUNTER: u32 = Counter::COUNTER_OFF_CPU_IN_FLIGHT.0;

/// Slots of the `counters` map.
const NUM_COUNTERS: usize = Counter::KESTREL_NUM_COUNTERS.0 as usize;

/// The BPF counters (`enum kestrel_counter` in kestrel.h) and the drain's own.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    pub on_cpu_seen: u64,
    pub on_cpu_sent: u64,
    pub idle_skipped: u64,
    pub ringbuf_lost: u64,
    pub kernel_stack_errors: u64,
    pub user_stack_errors: u64,
    pub off_cpu_switches: u64,
    pub off_cpu_sampled: u64,
    pub off_cpu_wakes: u64,
    pub off_cpu_short: u64,
    pub off_cpu_store_full: u64,
    pub off_cpu_in_flight: i64,
    pub off_cpu_exit_cleaned: u64,
    pub scratch_missing: u64,
    /// Records user space could not parse.
    pub malformed_records: u64,
    /// Wake records whose block record was not seen (e.g. blocked before start).
    pub off_cpu_unmatched_wakes: u64,
    /// Block records dropped because too many threads were pending at once.
    pub off_cpu_pending_dropped: u64,
    /// Recorded waits whose switch-in the BPF program did not see (found still
    /// open at the thread's next switch-out): lost, and counted here.
    pub off_cpu_missed_wakes: u64,
}

impl Counters {
    /// Field-wise sum, to carry counters across a swap. The in-flight gauge is
    /// not summed: the old session's in-flight waits were flushed at the swap.
    fn plus(&self, o: &Counters) -> Counters {
        Counters {
            on_cpu_seen: self.on_cpu_seen + o.on_cpu_seen,
            on_cpu_sent: self.on_cpu_sent + o.on_cpu_sent,
            idle_skipped: self.idle_skipped + o.idle_skipped,
            ringbuf_lost: self.ringbuf_lost + o.ringbuf_lost,
            kernel_stack_errors: self.kernel_stack_errors + o.kernel_stack_errors,
            user_stack_errors: self.user_stack_errors + o.user_stack_errors,
            off_cpu_switches: self.off_cpu_switches + o.off_cpu_switches,
            off_cpu_sampled: self.off_cpu_sampled + o.off_cpu_sampled,
            off_cpu_wakes: self.off_cpu_wakes + o.off_cpu_wakes,
            off_cpu_short: self.off_cpu_short + o.off_cpu_short,
            off_cpu_store_full: self.off_cpu_store_full + o.off_cpu_store_full,
            off_cpu_in_flight: self.off_cpu_in_flight,
            off_cpu_exit_cleaned: self.off_cpu_exit_cleaned + o.off_cpu_exit_cleaned,
            scratch_missing: self.scratch_missing + o.scratch_missing,
            malformed_records: self.malformed_records + o.malformed_records,
            off_cpu_unmatched_wakes: self.off_cpu_unmatched_wakes + o.off_cpu_unmatched_wakes,
            off_cpu_pending_dropped: self.off_cpu_pending_dropped + o.off_cpu_pending_dropped,
            off_cpu_missed_wakes: self.off_cpu_missed_wakes + o.off_cpu_missed_wakes,
        }
    }
}

/// Kernel memory of one map, measured from `/proc/self/fdinfo`.
#[derive(Debug, Clone, Serialize)]
pub struct MapMemory {
    /// The plan's name for the map (`rodata` for libbpf's `.rodata`).
    pub name: String,
    pub map_type: String,
    pub max_entries: u32,
    pub memlock_bytes: u64,
}

/// CPUs that came and went since the last [`Session::sync_online_cpus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuChange {
    pub added: Vec<u32>,
    pub removed: Vec<u32>,
}

impl CpuChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The `.rodata` configuration (`struct kestrel_config` of kestrel.h).
fn encode_config(config: &ProbeConfig, hook: Option<OffCpuHook>) -> kestrel_config {
    let p = config.off_cpu_probability.clamp(0.0, 1.0);
    // p × (2^32 − 1), compared with `<=` against bpf_get_prandom_u32(): p = 1 takes
    // every switch. p > 0 but tiny rounds to threshold 0, which still takes 1 in 2^32.
    let threshold = (p * f64::from(u32::MAX)).round() as u32;
    kestrel_config {
        self_tgid: std::process::id(),
        profile_self: u32::from(config.profile_self),
        filter_pids: u32::from(!config.pids.is_empty()),
        stack_depth: config.stack_depth.clamp(1, kestrel_sizing::MAX_STACK_DEPTH),
        off_cpu_enabled: u32::from(hook.is_some()),
        off_cpu_threshold: threshold,
        off_cpu_min_ns: u64::try_from(config.off_cpu_min_duration.as_nanos()).unwrap_or(u64::MAX),
        off_cpu_task_storage: u32::from(hook == Some(OffCpuHook::TpBtfTaskStorage)),
        ..kestrel_config::default()
    }
}

/// libbpf names the .rodata map `<object>.rodata`; the plan calls it `rodata`.
fn plan_name(map_name: &str) -> &str {
    if map_name.ends_with(".rodata") {
        "rodata"
    } else {
        map_name
    }
}

/// The loaded programs, their attachments and the ring buffer drain.
pub struct Session {
    // Field order matters for drop: the ring buffer and links go before the object.
    ring: RingBuffer<'static>,
    probes: Vec<Box<dyn Probe>>,
    object: Object,
    inbox: Arc<Mutex<Vec<Record>>>,
    malformed: Arc<AtomicU64>,
    /// Ring bytes (records + kernel headers) consumed since last taken.
    drained_bytes: Arc<AtomicU64>,
    pending_blocks: HashMap<u32, RawSample>,
    unmatched_wakes: u64,
    pending_dropped: u64,
    online: Vec<u32>,
    off_cpu_hook: Option<OffCpuHook>,
    /// Counters of the sessions this one replaced.
    carried: Counters,
}

impl Session {
    /// Open, size from `plan` and load, without attaching.
    fn load(
        config: &ProbeConfig,
        plan: &MapPlan,
        features: &KernelFeatures,
        online: &CpuSet,
    ) -> Result<Session, ProbeError> {
        crate::route_libbpf_logs();
        // The hook is decided here, once (a caller that already chose one, as
        // the agent does, has it validated); the probes read the decision.
        let off_cpu_hook = crate::features::choose_off_cpu_hook(config, features)?;
        let decided = ProbeConfig {
            off_cpu_hook,
            ..config.clone()
        };
        let config = &decided;
        let mut probes = Vec::new();
        for (name, factory) in REGISTRY {
            if let Some(probe) = factory(config, features)? {
                info!(probe = name, "probe enabled");
                probes.push(probe);
            }
        }
        let wanted_programs: Vec<&str> = probes.iter().flat_map(|p| p.programs()).collect();

        let mut open = ObjectBuilder::default()
            .name("kestrel")
            .map_err(ProbeError::Open)?
            .open_memory(KESTREL_OBJECT)
            .map_err(ProbeError::Open)?;
        for mut map in open.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if name.ends_with(".rodata") {
                let section = rodata {
                    CONFIG: encode_config(config, off_cpu_hook),
                };
                let bytes = bytes_of(&section);
                let value = map.initial_value_mut().ok_or(ProbeError::NoRodata)?;
                if value.len() != bytes.len() {
                    return Err(ProbeError::RodataSize {
                        found: value.len(),
                        expected: bytes.len(),
                    });
                }
                value.copy_from_slice(bytes);
                continue;
            }
            match plan.get(plan_name(&name)) {
                None => map
                    .set_autocreate(false)
                    .map_err(|source| ProbeError::Size {
                        map: name.clone(),
                        source,
                    })?,
                Some(row) => {
                    // Task storage must have max_entries 0; every other size comes from the plan.
                    if map.map_type() != MapType::TaskStorage {
                        map.set_max_entries(row.max_entries).map_err(|source| {
                            ProbeError::Size {
                                map: name.clone(),
                                source,
                            }
                        })?;
                    }
                }
            }
        }
        for mut prog in open.progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            prog.set_autoload(wanted_programs.contains(&name.as_str()));
        }
        for name in ["events", "scratch", "counters"] {
            if plan.get(name).is_none() {
                return Err(ProbeError::MissingPlanRow(name.into()));
            }
        }
        let object = open.load().map_err(ProbeError::Load)?;

        if !config.pids.is_empty() {
            let filter = object
                .maps()
                .find(|m| m.name() == "pid_filter")
                .ok_or_else(|| ProbeError::MissingPlanRow("pid_filter".into()))?;
            for pid in &config.pids {
                filter
                    .update(&pid.to_ne_bytes(), &[1u8], MapFlags::ANY)
                    .map_err(|source| ProbeError::Map {
                        map: "pid_filter".into(),
                        source,
                    })?;
            }
        }

        let inbox: Arc<Mutex<Vec<Record>>> = Arc::new(Mutex::new(Vec::new()));
        let malformed = Arc::new(AtomicU64::new(0));
        let drained_bytes = Arc::new(AtomicU64::new(0));
        let ring = {
            let events = object
                .maps()
                .find(|m| m.name() == "events")
                .ok_or_else(|| ProbeError::MissingPlanRow("events".into()))?;
            let mut builder = RingBufferBuilder::new();
            let sink = Arc::clone(&inbox);
            let bad = Arc::clone(&malformed);
            let drained = Arc::clone(&drained_bytes);
            builder
                .add(&events, move |bytes: &[u8]| {
                    // What the record occupied in the ring: the kernel's 8-byte
                    // header plus the data rounded up to 8.
                    drained.fetch_add(
                        8 + (bytes.len() as u64).next_multiple_of(8),
                        Ordering::Relaxed,
                    );
                    match parse_record(bytes) {
                        Ok(record) => match sink.lock() {
                            Ok(mut v) => v.push(record),
                            Err(poisoned) => poisoned.into_inner().push(record),
                        },
                        Err(_) => {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    0
                })
                .map_err(|source| ProbeError::Map {
                    map: "events".into(),
                    source,
                })?;
            builder.build().map_err(|source| ProbeError::Map {
                map: "events".into(),
                source,
            })?
        };

        let online: Vec<u32> = online.iter().collect();
        let session = Session {
            ring,
            probes,
            object,
            inbox,
            malformed,
            drained_bytes,
            pending_blocks: HashMap::new(),
            unmatched_wakes: 0,
            pending_dropped: 0,
            online,
            off_cpu_hook,
            carried: Counters::default(),
        };
        Ok(session)
    }

    /// Open, size from `plan`, load, and attach every probe the configuration
    /// enables.
    pub fn start(
        config: &ProbeConfig,
        plan: &MapPlan,
        features: &KernelFeatures,
        online: &CpuSet,
    ) -> Result<Session, ProbeError> {
        let mut session = Self::load(config, plan, features, online)?;
        session.attach()?;
        Ok(session)
    }

    fn attach(&mut self) -> Result<(), ProbeError> {
        for probe in &mut self.probes {
            probe.attach(&self.object, &self.online)?;
            info!(
                probe = probe.name(),
                attachments = probe.attachments(),
                "probe attached"
            );
        }
        Ok(())
    }

    fn detach(&mut self) {
        for probe in &mut self.probes {
            probe.detach();
        }
    }

    /// Swap in a session sized by `plan` (a re-plan): the new object is loaded
    /// first, so a failure leaves this one running; then the old programs are
    /// detached, the new ones attached, and the old ring drained into `out`
    /// so nothing collected is lost. Waits in flight at the swap are reported
    /// up to `now_ns()` (the new programs never saw them start). The gap
    /// between detach and attach is the time to open the per-CPU perf events.
    pub fn replace(
        &mut self,
        config: &ProbeConfig,
        plan: &MapPlan,
        features: &KernelFeatures,
        now_ns: impl Fn() -> u64,
        out: &mut Vec<RawSample>,
    ) -> Result<(), ProbeError> {
        let online: CpuSet = self.online.iter().copied().collect();
        let mut next = Self::load(config, plan, features, &online)?;
        self.detach();
        if let Err(e) = next.attach() {
            // Keep sampling with what we had.
            warn!(error = %e, "attaching the re-planned programs failed; keeping the old ones");
            self.attach()?;
            return Err(e);
        }
        self.drain(out)?;
        self.flush_in_flight(now_ns(), out);
        // Counters are cumulative across swaps: carry the old ones over.
        next.carried = self.counters()?;
        std::mem::swap(self, &mut next);
        Ok(())
    }

    /// Ring bytes consumed by drains since the last call.
    pub fn take_drained_bytes(&self) -> u64 {
        self.drained_bytes.swap(0, Ordering::Relaxed)
    }

    /// The off-CPU hook in use, when off-CPU is enabled.
    pub fn off_cpu_hook(&self) -> Option<OffCpuHook> {
        self.off_cpu_hook
    }

    /// The CPUs currently sampled.
    pub fn online_cpus(&self) -> &[u32] {
        &self.online
    }

    /// Names and attachment counts of the running probes.
    pub fn probes(&self) -> Vec<(&'static str, usize)> {
        self.probes
            .iter()
            .map(|p| (p.name(), p.attachments()))
            .collect()
    }

    /// Move every record the ring buffer holds into `out` as complete samples:
    /// on-CPU samples directly, off-CPU waits once their wake record arrives.
    pub fn drain(&mut self, out: &mut Vec<RawSample>) -> Result<usize, ProbeError> {
        self.ring.consume().map_err(|source| ProbeError::Map {
            map: "events".into(),
            source,
        })?;
        let records = match self.inbox.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        let before = out.len();
        for record in records {
            match record {
                Record::Stack {
                    block: false,
                    sample,
                } => out.push(sample),
                Record::Stack {
                    block: true,
                    sample,
                } => {
                    if self.pending_blocks.len() >= MAX_PENDING_BLOCKS {
                        self.shed_pending();
                    }
                    // A newer block replaces an older one of the same thread: the
                    // older wait ended below the minimum duration.
                    self.pending_blocks.insert(sample.tid, sample);
                }
                Record::Wake {
                    tid,
                    timestamp_ns,
                    delta_ns,
                    ..
                } => {
                    let start = timestamp_ns.saturating_sub(delta_ns);
                    match self.pending_blocks.remove(&tid) {
                        Some(mut block) if block.value == start => {
                            block.kind = SampleKind::OffCpu;
                            block.value = delta_ns;
                            out.push(block);
                        }
                        Some(block) => {
                            // Not this wait's block: keep it for its own wake.
                            self.unmatched_wakes += 1;
                            if block.value > start {
                                self.pending_blocks.insert(tid, block);
                            }
                        }
                        None => self.unmatched_wakes += 1,
                    }
                }
            }
        }
        Ok(out.len() - before)
    }

    /// Report the waits still in progress as ending at `now_ns` (CLOCK_MONOTONIC),
    /// so a recording that stops while threads sleep still shows where they wait.
    pub fn flush_in_flight(&mut self, now_ns: u64, out: &mut Vec<RawSample>) {
        for (_, mut block) in self.pending_blocks.drain() {
            if now_ns > block.value {
                block.value = now_ns - block.value;
                block.kind = SampleKind::OffCpu;
                out.push(block);
            }
        }
    }

    fn shed_pending(&mut self) {
        let mut starts: Vec<u64> = self.pending_blocks.values().map(|b| b.value).collect();
        starts.sort_unstable();
        let cutoff = starts[starts.len() / 2];
        let before = self.pending_blocks.len();
        self.pending_blocks.retain(|_, b| b.value > cutoff);
        let dropped = before - self.pending_blocks.len();
        self.pending_dropped += dropped as u64;
        warn!(
            dropped,
            "too many threads waiting at once; oldest off-CPU waits dropped"
        );
    }

    /// Read the BPF counters.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        let map = self
            .object
            .maps()
            .find(|m| m.name() == "counters")
            .ok_or_else(|| ProbeError::MissingPlanRow("counters".into()))?;
        let mut values = [0u64; NUM_COUNTERS];
        for (key, v) in (0u32..).zip(values.iter_mut()) {
            let bytes = map
                .lookup(&key.to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| ProbeError::Map {
                    map: "counters".into(),
                    source,
                })?;
            if let Some(b) = bytes {
                if b.len() >= 8 {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b[..8]);
                    *v = u64::from_ne_bytes(a);
                }
            }
        }
        // kestrel.h asserts every counter is below KESTREL_NUM_COUNTERS, so
        // `get` always finds its slot.
        let get = |c: Counter| values.get(c.0 as usize).copied().unwrap_or(0);
        let own = Counters {
            on_cpu_seen: get(Counter::COUNTER_ON_CPU_SEEN),
            on_cpu_sent: get(Counter::COUNTER_ON_CPU_SENT),
            idle_skipped: get(Counter::COUNTER_IDLE_SKIPPED),
            ringbuf_lost: get(Counter::COUNTER_RINGBUF_LOST),
            kernel_stack_errors: get(Counter::COUNTER_KERNEL_STACK_ERR),
            user_stack_errors: get(Counter::COUNTER_USER_STACK_ERR),
            off_cpu_switches: get(Counter::COUNTER_OFF_CPU_SWITCHES),
            off_cpu_sampled: get(Counter::COUNTER_OFF_CPU_SAMPLED),
            off_cpu_wakes: get(Counter::COUNTER_OFF_CPU_WAKES),
            off_cpu_short: get(Counter::COUNTER_OFF_CPU_SHORT),
            off_cpu_store_full: get(Counter::COUNTER_OFF_CPU_STORE_FULL),
            // A gauge updated with signed adds: reinterpret the two's complement.
            off_cpu_in_flight: get(Counter::COUNTER_OFF_CPU_IN_FLIGHT) as i64,
            off_cpu_exit_cleaned: get(Counter::COUNTER_OFF_CPU_EXIT_CLEANED),
            scratch_missing: get(Counter::COUNTER_SCRATCH_MISSING),
            off_cpu_missed_wakes: get(Counter::COUNTER_OFF_CPU_MISSED_WAKE),
            malformed_records: self.malformed.load(Ordering::Relaxed),
            off_cpu_unmatched_wakes: self.unmatched_wakes,
            off_cpu_pending_dropped: self.pending_dropped,
        };
        Ok(own.plus(&self.carried))
    }

    /// Threads with an in-flight off-CPU entry, when the store can be listed
    /// (the hash store; task storage is freed with its task by the kernel).
    pub fn in_flight_tids(&self) -> Option<Vec<u32>> {
        let map = self
            .object
            .maps()
            .find(|m| m.name() == "offcpu_hash" && m.autocreate())?;
        Some(
            map.keys()
                .filter_map(|k| {
                    k.get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_ne_bytes)
                })
                .collect(),
        )
    }

    /// Kernel memory of every map Kestrel created, from fdinfo `memlock:`.
    pub fn map_memory(&self) -> Vec<MapMemory> {
        self.object
            .maps()
            .filter(|m| m.autocreate())
            .map(|m| {
                let name = m.name().to_string_lossy().into_owned();
                let memlock_bytes = m.query_fdinfo().ok().and_then(|i| i.memlock).unwrap_or(0);
                MapMemory {
                    name: plan_name(&name).to_string(),
                    map_type: format!("{:?}", m.map_type()),
                    max_entries: m.max_entries(),
                    memlock_bytes,
                }
            })
            .collect()
    }

    /// Follow CPU hotplug: attach on CPUs that came online, detach from those that
    /// went offline. Called on every poll; one small sysfs read.
    pub fn sync_online_cpus(&mut self) -> Result<CpuChange, ProbeError> {
        let now: Vec<u32> = kestrel_sizing::host::online_cpus(&kestrel_sizing::host::LiveSystem)
            .map_err(ProbeError::Topology)?
            .iter()
            .collect();
        let change = CpuChange {
            added: now
                .iter()
                .copied()
                .filter(|c| !self.online.contains(c))
                .collect(),
            removed: self
                .online
                .iter()
                .copied()
                .filter(|c| !now.contains(c))
                .collect(),
        };
        for &cpu in &change.removed {
            for probe in &mut self.probes {
                probe.cpu_offline(cpu);
            }
            info!(cpu, "CPU went offline: sampling on it stopped");
        }
        for &cpu in &change.added {
            for probe in &mut self.probes {
                probe.cpu_online(&self.object, cpu)?;
            }
            info!(cpu, "CPU came online: sampling on it started");
        }
        self.online = now;
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_threshold_spans_probability() {
        let mut c = ProbeConfig {
            off_cpu_probability: 1.0,
            ..ProbeConfig::default()
        };
        let b = encode_config(&c, Some(OffCpuHook::TpBtfTaskStorage));
        assert_eq!(b.off_cpu_threshold, u32::MAX);
        assert_eq!(b.off_cpu_task_storage, 1);
        c.off_cpu_probability = 0.5;
        let b = encode_config(&c, Some(OffCpuHook::RawTpHash));
        let t = b.off_cpu_threshold;
        assert!((t as f64 / u32::MAX as f64 - 0.5).abs() < 1e-6);
        assert_eq!(b.off_cpu_task_storage, 0);
    }
}
