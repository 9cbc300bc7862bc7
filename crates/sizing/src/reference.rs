//! What the reference agent (opentelemetry-ebpf-profiler) would allocate for
//! its off-CPU start-time table on the same machine, for `kestrel plan`'s
//! comparison table.

use serde::Serialize;

use crate::cost::map_bytes;
use crate::host::LiveSystem;
use crate::{MapType, SizingError};

/// Key and value size of the reference agent's off-CPU table (a u64 thread
/// id to a u64 start time).
const REFERENCE_KEY_BYTES: u32 = 8;
const REFERENCE_VALUE_BYTES: u32 = 8;
/// The constant of the reference agent's fix: 4096 × probability entries,
/// clamped to [16, 4096].
const REFERENCE_FIXED_ENTRIES: f64 = 4096.0;
const REFERENCE_MIN_ENTRIES: u64 = 16;
const REFERENCE_MAX_ENTRIES: u64 = 4096;

/// The reference agent's off-CPU table, before and after its fix, in
/// entries and kernel bytes. Both are `LRU_PERCPU_HASH` maps, so every entry
/// holds one value per *possible* CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReferenceCost {
    pub pid_max: u64,
    /// `pid_max × probability` entries (their issue #320).
    pub original_offcpu_entries: u64,
    pub original_offcpu_bytes: u64,
    /// `4096 × probability` clamped to [16, 4096] entries (their PR #389).
    pub current_offcpu_entries: u64,
    pub current_offcpu_bytes: u64,
}

/// Cost of the reference agent's off-CPU table on a machine with
/// `possible_cpus` possible CPUs. Probability 0 means the table is not
/// created: 0 entries, 0 bytes. A probability outside [0, 1] is clamped into
/// it and NaN counts as 0, because this is a comparison figure, not a plan;
/// [`crate::plan`] rejects such inputs. Entry counts are truncated like the
/// reference agent's integer conversion.
pub fn reference_cost(possible_cpus: u32, off_cpu_probability: f64, pid_max: u64) -> ReferenceCost {
    let probability = if off_cpu_probability.is_nan() {
        0.0
    } else {
        off_cpu_probability.clamp(0.0, 1.0)
    };
    let (original_entries, current_entries) = if probability == 0.0 {
        (0, 0)
    } else {
        // `as` saturates float-to-int conversions; pid_max is at most 2^22
        // on Linux, so nothing is lost in the f64 product.
        let original = (pid_max as f64 * probability) as u64;
        let current = ((REFERENCE_FIXED_ENTRIES * probability) as u64)
            .clamp(REFERENCE_MIN_ENTRIES, REFERENCE_MAX_ENTRIES);
        (original, current)
    };
    let table_bytes = |entries: u64| {
        if entries == 0 {
            return 0;
        }
        let max_entries = u32::try_from(entries).unwrap_or(u32::MAX);
        map_bytes(
            MapType::LruPerCpuHash,
            REFERENCE_KEY_BYTES,
            REFERENCE_VALUE_BYTES,
            max_entries,
            0,
            possible_cpus,
            entries,
        )
    };
    ReferenceCost {
        pid_max,
        original_offcpu_entries: original_entries,
        original_offcpu_bytes: table_bytes(original_entries),
        current_offcpu_entries: current_entries,
        current_offcpu_bytes: table_bytes(current_entries),
    }
}

/// Reads `/proc/sys/kernel/pid_max`: a convenience for [`crate::host::pid_max`]
/// on [`LiveSystem`].
pub fn read_pid_max() -> Result<u64, SizingError> {
    crate::host::pid_max(&LiveSystem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_probability_means_no_table() {
        let cost = reference_cost(128, 0.0, 4_194_304);
        assert_eq!(cost.original_offcpu_entries, 0);
        assert_eq!(cost.original_offcpu_bytes, 0);
        assert_eq!(cost.current_offcpu_entries, 0);
        assert_eq!(cost.current_offcpu_bytes, 0);
        assert_eq!(
            reference_cost(128, f64::NAN, 32768),
            cost_with_pid_max(32768)
        );
    }

    fn cost_with_pid_max(pid_max: u64) -> ReferenceCost {
        ReferenceCost {
            pid_max,
            original_offcpu_entries: 0,
            original_offcpu_bytes: 0,
            current_offcpu_entries: 0,
            current_offcpu_bytes: 0,
        }
    }

    #[test]
    fn entries_follow_the_reference_formulas() {
        let cost = reference_cost(2, 0.5, 32768);
        assert_eq!(cost.original_offcpu_entries, 16384);
        assert_eq!(cost.current_offcpu_entries, 2048);
        // the fix's clamp
        assert_eq!(reference_cost(2, 0.001, 32768).current_offcpu_entries, 16);
        assert_eq!(reference_cost(2, 1.0, 32768).current_offcpu_entries, 4096);
    }

    #[test]
    fn bytes_grow_with_possible_cpus_not_online() {
        let few = reference_cost(2, 1.0, 4_194_304);
        let many = reference_cost(128, 1.0, 4_194_304);
        // Each entry's 8-byte value is replicated for every possible CPU.
        let per_entry_per_cpu = 8;
        assert_eq!(
            many.original_offcpu_bytes - few.original_offcpu_bytes,
            4_194_304 * per_entry_per_cpu * (128 - 2) + 32 * (128 - 2)
        );
        assert!(many.original_offcpu_bytes > 4_000_000_000);
        assert!(many.current_offcpu_bytes > 4_000_000);
    }

    #[test]
    fn reads_this_machines_pid_max() {
        let from_proc = std::fs::read_to_string(crate::PID_MAX_PATH).unwrap();
        assert_eq!(
            read_pid_max().unwrap(),
            from_proc.trim().parse::<u64>().unwrap()
        );
    }
}
