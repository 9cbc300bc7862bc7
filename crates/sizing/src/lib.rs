//! Kestrel's single map-sizing policy.
//!
//! Every BPF map Kestrel creates gets its size from [`plan`]: a pure
//! function of the CPU topology (online and *possible* CPUs), the rates
//! (sampling frequency, scheduler events, off-CPU probability) and the poll
//! interval. The result, a [`MapPlan`], lists each map with its entries, its
//! kernel memory when empty and when full (from the [`cost`] model of the
//! kernel's own accounting), the formula that produced it and the tier it
//! landed in. The plan never exceeds its memory cap: the ring buffer is
//! halved until the total fits, or planning fails with
//! [`SizingError::CapTooSmall`].
//!
//! All I/O is in [`host`]: the [`host::HostFacts`] trait hands over raw file
//! contents (`/sys/devices/system/cpu/{online,possible,present}`,
//! `/sys/class/dmi/id/{sys_vendor,product_name}`, `/proc/sys/kernel/pid_max`)
//! and CPUID's hypervisor answers, from the running machine
//! ([`host::LiveSystem`]) or a directory laid out like one ([`host::HostTree`]).
//! Everything else (parsing the masks, naming the hypervisor, the plan, the
//! tiers, the cost model) is pure. [`Topology::detect`],
//! [`Virtualization::detect`] and [`read_pid_max`] are conveniences that read
//! the live system.

pub mod cost;
mod cpuset;
mod error;
pub mod host;
mod map_type;
mod plan;
mod reference;
pub mod tiers;
mod topology;
pub mod virt;

pub use cost::KernelCostModel;
pub use cpuset::{CpuSet, MAX_CPU_ID};
pub use error::SizingError;
pub use host::{PID_MAX_PATH, SYSFS_CPU_DIR};
pub use map_type::{
    MapType, BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_F_RDONLY_PROG,
};
pub use plan::{
    next_pow2, plan, MapPlan, MapRow, OffCpuState, PlanInputs, PlanInputsSummary, Tier,
    DEFAULT_MEMORY_CAP_BYTES, EVENTS_CAP_BYTES, EVENTS_FLOOR_BYTES, OFFCPU_ENTRIES_CAP,
    OFFCPU_ENTRIES_FLOOR, OFFCPU_VALUE_BYTES, PID_FILTER_MAX_LEN, RINGBUF_RECORD_HEADER_BYTES,
};
pub use reference::{read_pid_max, reference_cost, ReferenceCost};
pub use tiers::{
    ring_bounds, ReplanReason, Resize, RingBounds, RingTracker, TierPolicy, EVENTS_MAP,
};
pub use topology::Topology;
pub use virt::Virtualization;

// The record, counter and `.rodata` sizes below are `bpf/kestrel.h`'s; this
// crate cannot see the BPF object, so kestrel-probes' unit tests compare each
// one with the type libbpf-cargo generates from it.

/// Bytes of the fixed header of every sample record:
/// `sizeof(struct kestrel_sample_header)` in `bpf/kestrel.h`.
pub const RECORD_HEADER_BYTES: u32 = 48;
/// The kernel's default `perf_event_max_stack`: the deepest stack
/// `bpf_get_stack` returns.
pub const MAX_STACK_DEPTH: u32 = 127;
/// One full record: header plus a kernel and a user stack of
/// [`MAX_STACK_DEPTH`] 8-byte frames each.
pub const RECORD_MAX_BYTES: u32 = RECORD_HEADER_BYTES + 2 * MAX_STACK_DEPTH * 8;
/// Bytes of the wake-up record emitted when an off-CPU task is woken:
/// `sizeof(struct kestrel_wake)`.
pub const WAKE_RECORD_BYTES: u32 = 32;
/// The average number of frames per stack a rate estimate assumes (records
/// are variable-length; only the scratch buffer must fit the maximum).
pub const EXPECTED_FRAMES_PER_STACK: u32 = 32;
/// Number of 8-byte self-metric counters the BPF programs keep:
/// `KESTREL_NUM_COUNTERS` of `enum kestrel_counter`.
pub const NUM_COUNTERS: u32 = 16;
/// Size of the BPF object's `.rodata` section (its configuration constants):
/// `sizeof(struct kestrel_config)`.
pub const RODATA_BYTES: u32 = 64;
