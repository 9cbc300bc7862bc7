//! Live tiers: when the ring buffer must grow or may shrink.
//!
//! A ring buffer's size is fixed at creation, so a new size means a re-plan and
//! a swap (done by the probes). This module only decides, from what each drain
//! observed: grow when a drain found the ring more than `grow_above` full or
//! records were lost; shrink by half when it stayed below `shrink_below` for
//! `shrink_after_polls` drains in a row. The gap between the two thresholds is
//! the hysteresis: after a growth the fill is at most half the grow threshold,
//! after a shrink at most twice the shrink threshold, so neither triggers the
//! other and the size does not flap.

use serde::Serialize;

use crate::{next_pow2, plan, PlanInputs, SizingError};

/// Thresholds of the live tiers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TierPolicy {
    /// Grow when a drain takes more than this fraction of the ring.
    pub grow_above: f64,
    /// Count a drain as quiet when it takes less than this fraction.
    pub shrink_below: f64,
    /// Shrink after this many quiet drains in a row.
    pub shrink_after_polls: u32,
}

impl Default for TierPolicy {
    fn default() -> Self {
        // 240 polls of 250 ms: a minute of quiet before giving memory back.
        TierPolicy {
            grow_above: 0.5,
            shrink_below: 0.125,
            shrink_after_polls: 240,
        }
    }
}

/// Why a re-plan happened; shown in logs and `stats.json` `replans[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplanReason {
    /// A drain found the ring past its high-water mark.
    RingFilling,
    /// The ring had no room for some records.
    RingLost,
    /// The ring stayed far larger than needed for a sustained period.
    RingIdle,
    /// CPUs came online.
    CpusOnline,
    /// CPUs went offline.
    CpusOffline,
}

/// The events ring's bounds for the live tiers, in bytes: where a fresh plan
/// for the same inputs starts it (the size a shrink returns to) and the most it
/// may grow to (after the memory cap is applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RingBounds {
    pub start: u32,
    pub cap: u32,
}

/// The ring's bounds for `inputs`, whatever size it was re-planned to: the one
/// place the live tiers learn them.
pub fn ring_bounds(inputs: &PlanInputs) -> Result<RingBounds, SizingError> {
    let fresh = plan(&PlanInputs {
        events_bytes: None,
        ..inputs.clone()
    })?;
    let events = fresh
        .get(EVENTS_MAP)
        .ok_or(SizingError::MissingRow(EVENTS_MAP))?;
    Ok(RingBounds {
        start: events.max_entries,
        cap: events.max_entries_cap,
    })
}

/// The ring buffer's name in the plan and in `bpf/kestrel.bpf.c`.
pub const EVENTS_MAP: &str = "events";

/// A decided change of the ring buffer's size (bytes, a power of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resize {
    pub from: u32,
    pub to: u32,
    pub reason: ReplanReason,
}

/// Tracks the ring buffer between its floor (what the on-CPU rate needs) and its
/// growth cap (what the upper-bound rates need, within the memory cap).
#[derive(Debug, Clone)]
pub struct RingTracker {
    policy: TierPolicy,
    size: u32,
    floor: u32,
    cap: u32,
    quiet_polls: u32,
}

impl RingTracker {
    /// `size` is the ring's current size; `floor` ≤ `size` ≤ `cap` is assumed
    /// and enforced by clamping.
    pub fn new(policy: TierPolicy, size: u32, floor: u32, cap: u32) -> Self {
        let floor = floor.min(cap);
        RingTracker {
            policy,
            size: size.clamp(floor, cap),
            floor,
            cap,
            quiet_polls: 0,
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn policy(&self) -> TierPolicy {
        self.policy
    }

    pub fn floor(&self) -> u32 {
        self.floor
    }

    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// One drain took `drained_bytes` out of the ring and the kernel counted
    /// `lost_records` it had no room for since the last drain.
    pub fn observe(&mut self, drained_bytes: u64, lost_records: u64) -> Option<Resize> {
        let size = u64::from(self.size);
        let filling = drained_bytes as f64 > size as f64 * self.policy.grow_above;
        if (lost_records > 0 || filling) && self.size < self.cap {
            // Enough that the observed traffic sits at or below half the grow
            // threshold, and at least double.
            let wanted =
                next_pow2((drained_bytes as f64 / (self.policy.grow_above / 2.0)).ceil() as u64);
            let to = u64::from(self.size)
                .saturating_mul(2)
                .max(u64::from(wanted))
                .min(u64::from(self.cap));
            let reason = if lost_records > 0 {
                ReplanReason::RingLost
            } else {
                ReplanReason::RingFilling
            };
            return self.resize_to(to as u32, reason);
        }
        if (drained_bytes as f64) < size as f64 * self.policy.shrink_below && self.size > self.floor
        {
            self.quiet_polls += 1;
            if self.quiet_polls >= self.policy.shrink_after_polls {
                return self.resize_to((self.size / 2).max(self.floor), ReplanReason::RingIdle);
            }
        } else {
            self.quiet_polls = 0;
        }
        None
    }

    /// The topology changed: new bounds from the new plan. The ring follows
    /// only when it falls outside them.
    pub fn retarget(&mut self, floor: u32, cap: u32, cpus_added: bool) -> Option<Resize> {
        self.cap = cap;
        self.floor = floor.min(cap);
        let reason = if cpus_added {
            ReplanReason::CpusOnline
        } else {
            ReplanReason::CpusOffline
        };
        if self.size < self.floor {
            self.resize_to(self.floor, reason)
        } else if self.size > self.cap {
            self.resize_to(self.cap, reason)
        } else {
            None
        }
    }

    fn resize_to(&mut self, to: u32, reason: ReplanReason) -> Option<Resize> {
        self.quiet_polls = 0;
        if to == self.size {
            return None;
        }
        let resize = Resize {
            from: self.size,
            to,
            reason,
        };
        self.size = to;
        Some(resize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u32 = 1024;

    fn tracker() -> RingTracker {
        RingTracker::new(
            TierPolicy {
                grow_above: 0.5,
                shrink_below: 0.125,
                shrink_after_polls: 3,
            },
            128 * KIB,
            128 * KIB,
            4096 * KIB,
        )
    }

    /// Feed (drained KiB, lost) events; collect the sizes after each.
    fn run(t: &mut RingTracker, events: &[(u64, u64)]) -> Vec<u32> {
        events
            .iter()
            .map(|&(kib, lost)| {
                t.observe(kib * 1024, lost);
                t.size() / KIB
            })
            .collect()
    }

    #[test]
    fn grows_when_filling_shrinks_after_sustained_quiet() {
        let mut t = tracker();
        // 40 KiB of 128 is below the mark; 100 KiB is past it: grow to hold it
        // at a quarter fill (next_pow2(400 KiB) = 512 KiB). At 512 KiB a drain
        // under 64 KiB is quiet; three quiet drains halve it, and again.
        let events = [
            (40, 0),
            (100, 0),
            (100, 0),
            (70, 0),
            (30, 0),
            (30, 0),
            (30, 0),
            (10, 0),
            (10, 0),
            (10, 0),
        ];
        let sizes = run(&mut t, &events);
        assert_eq!(
            sizes,
            vec![128, 512, 512, 512, 512, 512, 256, 256, 256, 128]
        );
        // At the floor nothing shrinks further.
        assert_eq!(run(&mut t, &[(1, 0); 9]), vec![128; 9]);
    }

    #[test]
    fn losses_double_at_least_and_the_cap_is_never_exceeded() {
        let mut t = tracker();
        assert_eq!(
            run(&mut t, &[(10, 5)]),
            vec![256],
            "a loss grows even at low fill"
        );
        let sizes = run(&mut t, &[(3000, 9), (3000, 9), (5000, 9)]);
        assert_eq!(sizes, vec![4096, 4096, 4096]);
        assert!(
            t.observe(1 << 40, 1).is_none(),
            "at the cap nothing more happens"
        );
    }

    #[test]
    fn hysteresis_does_not_flap_on_a_steady_load() {
        let mut t = tracker();
        // Steady 70 KiB per drain: one growth to 512 KiB, then nothing, ever.
        let sizes = run(&mut t, &[(70, 0); 50]);
        assert_eq!(sizes[0], 512);
        assert!(sizes.iter().skip(1).all(|&s| s == 512), "{sizes:?}");
        // Just above the shrink threshold of 512 KiB (64 KiB) is not quiet.
        assert!(run(&mut t, &[(65, 0); 20]).iter().all(|&s| s == 512));
    }

    #[test]
    fn a_quiet_streak_is_reset_by_a_busy_drain() {
        let mut t = tracker();
        run(&mut t, &[(100, 0)]); // 512 KiB
        let sizes = run(&mut t, &[(1, 0), (1, 0), (100, 0), (1, 0), (1, 0), (1, 0)]);
        assert_eq!(sizes, vec![512, 512, 512, 512, 512, 256]);
    }

    #[test]
    fn topology_changes_retarget_the_bounds() {
        let mut t = tracker();
        // More CPUs raise the floor above the current size: grow to it.
        let r = t.retarget(256 * KIB, 4096 * KIB, true).unwrap();
        assert_eq!(
            (r.from, r.to, r.reason),
            (128 * KIB, 256 * KIB, ReplanReason::CpusOnline)
        );
        // Fewer CPUs lower the cap below the size: shrink to it.
        run(&mut t, &[(1000, 0)]); // grows to 4 MiB
        let r = t.retarget(64 * KIB, 1024 * KIB, false).unwrap();
        assert_eq!((r.to, r.reason), (1024 * KIB, ReplanReason::CpusOffline));
        // Within bounds: nothing to do.
        assert!(t.retarget(64 * KIB, 2048 * KIB, true).is_none());
    }
}
