//! The kernel's memory accounting for BPF maps, as a pure function.
//!
//! Since Linux 6.4 every map type implements `map_mem_usage()`, and the
//! result is what `/proc/PID/fdinfo/FD` prints as `memlock:`. This module
//! reproduces those functions (kernel/bpf/arraymap.c, hashtab.c, ringbuf.c,
//! bpf_local_storage.c) for the map types Kestrel uses. The structure sizes
//! are the only kernel-build-specific inputs; they were read from
//! `/sys/kernel/btf/vmlinux` of Linux 6.18 (x86_64) and checked against real
//! maps by `tests/memlock.rs`, which must stay within 5 % (it is exact on
//! 6.18). Older kernels (6.1) report a page-rounded estimate instead, and
//! other builds have slightly different struct sizes, so treat the figures
//! as the 6.4+ accounting, not as a universal truth.
//!
//! Everything is computed in `u64` with saturating arithmetic: the inputs can
//! describe maps far larger than any kernel would create (the reference
//! agent's 4M-entry per-CPU table on 128 CPUs), and the answer must still be
//! a number, not an overflow.

use crate::map_type::{MapType, BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC};

/// `PAGE_SIZE` on x86_64 and on most arm64 kernels.
pub const PAGE_SIZE: u64 = 4096;

/// `sizeof(struct bpf_array)`: header of ARRAY and PERCPU_ARRAY maps.
pub const ARRAY_MAP_BYTES: u64 = 312;
/// `sizeof(void *)`: a PERCPU_ARRAY keeps one per-CPU pointer per entry.
pub const POINTER_BYTES: u64 = 8;

/// `sizeof(struct bpf_htab)`: header of every hash map flavour.
pub const HTAB_MAP_BYTES: u64 = 832;
/// `sizeof(struct bucket)`: one per bucket, `roundup_pow_of_two(max_entries)`
/// buckets.
pub const HTAB_BUCKET_BYTES: u64 = 16;
/// `sizeof(struct htab_elem)`: per-element header before the key.
pub const HTAB_ELEM_HEADER_BYTES: u64 = 48;
/// `sizeof(struct llist_node)`: the `bpf_mem_alloc` header that a
/// non-preallocated element carries.
pub const LLIST_NODE_BYTES: u64 = 8;
/// Bytes per possible CPU that every hash map reports on top of its
/// structures: `sizeof(int) × HASHTAB_MAP_LOCK_COUNT (8)` per CPU, the
/// per-CPU recursion counters of 6.1–6.15. 6.18 reports exactly this
/// amount (64 B with 2 possible CPUs) although its `struct bpf_htab` no
/// longer has the counters; measured on 6.12 it grows 32 B per possible CPU
/// (66,496 B at P=2 → 70,528 B at P=128). Modelling it per CPU is therefore
/// exact here and conservative elsewhere.
pub const HTAB_BYTES_PER_POSSIBLE_CPU: u64 = 32;

/// `sizeof(struct bpf_ringbuf_map)`.
pub const RINGBUF_MAP_BYTES: u64 = 304;
/// Pages of a ring buffer before its data: the `struct bpf_ringbuf` header
/// page(s) plus the consumer and producer position pages
/// (`RINGBUF_NR_META_PAGES`); `sizeof(struct bpf_ringbuf)` is 3 pages.
pub const RINGBUF_META_PAGES: u64 = 3;

/// `sizeof(struct bpf_local_storage_map)`: header of TASK_STORAGE maps.
pub const LOCAL_STORAGE_MAP_BYTES: u64 = 448;
/// `sizeof(struct bpf_local_storage_map_bucket)`.
pub const LOCAL_STORAGE_BUCKET_BYTES: u64 = 16;
/// `sizeof(struct bpf_local_storage_elem)`: header of one task's value
/// (the value follows it).
pub const LOCAL_STORAGE_ELEM_BYTES: u64 = 128;
/// `sizeof(struct bpf_local_storage)`: the per-task anchor allocated with a
/// task's first storage element.
pub const LOCAL_STORAGE_OWNER_BYTES: u64 = 176;

/// Kernel memory of one BPF map, in bytes, as the 6.4+ `memlock:` accounting
/// reports it, plus the per-task elements of task storage that accounting
/// leaves out (see below).
///
/// * `possible_cpus`: per-CPU values exist for every possible CPU.
/// * `filled_entries`: the number of elements present. It matters only for
///   maps that allocate on demand: hashes with `BPF_F_NO_PREALLOC` and task
///   storage; pass 0 for the empty ("floor") cost and `max_entries` (or the
///   expected in-flight bound for task storage) for the full ("cap") cost.
///   Preallocated maps cost the same whatever their fill.
///
/// Task storage: the kernel's `memlock:` counts only the map header and its
/// buckets ("the dynamically allocated selems are not counted currently"),
/// yet each task with a value costs one element and, for its first storage,
/// one `bpf_local_storage`, both charged to the memory cgroup. This function
/// adds [`task_storage_bytes_per_task`] × `filled_entries` so that a plan's
/// cap covers them; with `filled_entries = 0` it equals `memlock:`.
pub fn map_bytes(
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    possible_cpus: u32,
    filled_entries: u64,
) -> u64 {
    let key = u64::from(key_size);
    let value = u64::from(value_size);
    let entries = u64::from(max_entries);
    let cpus = u64::from(possible_cpus);
    match map_type {
        MapType::Array => {
            let elem = round_up(value, 8);
            if map_flags & BPF_F_MMAPABLE != 0 {
                // An mmapable array lives in whole pages, header included.
                page_align(ARRAY_MAP_BYTES).saturating_add(page_align(entries.saturating_mul(elem)))
            } else {
                ARRAY_MAP_BYTES.saturating_add(entries.saturating_mul(elem))
            }
        }
        MapType::PerCpuArray => {
            let elem = round_up(value, 8);
            ARRAY_MAP_BYTES
                .saturating_add(entries.saturating_mul(POINTER_BYTES))
                .saturating_add(entries.saturating_mul(elem).saturating_mul(cpus))
        }
        MapType::RingBuf => {
            let data_pages = entries / PAGE_SIZE;
            let pages = RINGBUF_META_PAGES.saturating_add(data_pages);
            // The data pages are mapped twice (to make wrap-around records
            // contiguous), so the page-pointer array has 2 × data_pages slots.
            let page_pointers = RINGBUF_META_PAGES.saturating_add(data_pages.saturating_mul(2));
            RINGBUF_MAP_BYTES
                .saturating_add(pages.saturating_mul(PAGE_SIZE))
                .saturating_add(page_pointers.saturating_mul(POINTER_BYTES))
        }
        MapType::Hash | MapType::LruHash | MapType::PerCpuHash | MapType::LruPerCpuHash => {
            hash_bytes(
                map_type,
                key,
                value,
                entries,
                map_flags,
                cpus,
                filled_entries,
            )
        }
        MapType::TaskStorage => task_storage_map_bytes(possible_cpus)
            .saturating_add(filled_entries.saturating_mul(task_storage_bytes_per_task(value_size))),
    }
}

fn hash_bytes(
    map_type: MapType,
    key: u64,
    value: u64,
    entries: u64,
    map_flags: u32,
    cpus: u64,
    filled_entries: u64,
) -> u64 {
    let per_cpu = map_type.is_per_cpu();
    let lru = matches!(map_type, MapType::LruHash | MapType::LruPerCpuHash);
    // The kernel refuses BPF_F_NO_PREALLOC for LRU maps; LRU is always
    // preallocated.
    let prealloc = lru || map_flags & BPF_F_NO_PREALLOC == 0;
    let value8 = round_up(value, 8);

    let mut entries = entries;
    if lru && map_flags & BPF_F_NO_COMMON_LRU != 0 && cpus > 0 {
        // Each CPU's LRU list gets the same share: max_entries is rounded
        // up to a multiple of the possible CPUs.
        entries = entries.div_ceil(cpus).saturating_mul(cpus);
    }
    let buckets = next_pow2_u64(entries);
    // Per-CPU hashes store a pointer to the per-CPU value in the element.
    let elem =
        HTAB_ELEM_HEADER_BYTES + round_up(key, 8) + if per_cpu { POINTER_BYTES } else { value8 };

    let mut usage = HTAB_MAP_BYTES
        .saturating_add(buckets.saturating_mul(HTAB_BUCKET_BYTES))
        .saturating_add(cpus.saturating_mul(HTAB_BYTES_PER_POSSIBLE_CPU));
    if prealloc {
        // A plain preallocated hash keeps one spare element per possible CPU
        // to replace values without a free-list round trip.
        let spare = if !per_cpu && !lru { cpus } else { 0 };
        let allocated = entries.saturating_add(spare);
        usage = usage.saturating_add(allocated.saturating_mul(elem));
        if per_cpu {
            usage = usage.saturating_add(value8.saturating_mul(cpus).saturating_mul(allocated));
        } else if !lru {
            usage = usage.saturating_add(cpus.saturating_mul(POINTER_BYTES));
        }
    } else {
        let filled = filled_entries.min(entries);
        usage = usage.saturating_add(filled.saturating_mul(elem + LLIST_NODE_BYTES));
        if per_cpu {
            let per_elem = LLIST_NODE_BYTES + POINTER_BYTES + value8.saturating_mul(cpus);
            usage = usage.saturating_add(filled.saturating_mul(per_elem));
        }
    }
    usage
}

/// Bucket count of a task-storage map: `roundup_pow_of_two(possible CPUs)`,
/// at least 2 (kernel/bpf/bpf_local_storage.c, `bpf_local_storage_map_alloc`).
pub fn task_storage_buckets(possible_cpus: u32) -> u64 {
    next_pow2_u64(u64::from(possible_cpus)).max(2)
}

/// What `memlock:` reports for a task-storage map: header plus buckets.
fn task_storage_map_bytes(possible_cpus: u32) -> u64 {
    LOCAL_STORAGE_MAP_BYTES.saturating_add(
        task_storage_buckets(possible_cpus).saturating_mul(LOCAL_STORAGE_BUCKET_BYTES),
    )
}

/// Estimated kernel memory for one task holding a value in a task-storage
/// map: the storage element (header + value) and the task's
/// `bpf_local_storage` anchor, each rounded to its kmalloc size class. The
/// anchor is shared by all storage maps of a task; Kestrel has one, so it
/// is charged in full. An estimate from the structure sizes, not a
/// measurement: the kernel does not report these elements per map.
pub fn task_storage_bytes_per_task(value_size: u32) -> u64 {
    let element = LOCAL_STORAGE_ELEM_BYTES + round_up(u64::from(value_size), 8);
    kmalloc_size_class(element) + kmalloc_size_class(LOCAL_STORAGE_OWNER_BYTES)
}

/// The slab size class kmalloc serves a request of `bytes` from (SLUB on
/// x86_64: powers of two plus 96 and 192; page allocations above 8 KiB).
pub fn kmalloc_size_class(bytes: u64) -> u64 {
    if bytes <= 8 {
        8
    } else if (65..=96).contains(&bytes) {
        96
    } else if (129..=192).contains(&bytes) {
        192
    } else if bytes <= 8192 {
        next_pow2_u64(bytes)
    } else {
        // Above the largest slab, kmalloc takes a power-of-two run of pages.
        next_pow2_u64(bytes.div_ceil(PAGE_SIZE)).saturating_mul(PAGE_SIZE)
    }
}

/// `roundup_pow_of_two`, saturating at 2^63; `next_pow2_u64(0) == 1`.
pub fn next_pow2_u64(n: u64) -> u64 {
    n.checked_next_power_of_two().unwrap_or(1 << 63)
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to).saturating_mul(to)
}

fn page_align(n: u64) -> u64 {
    round_up(n, PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The figures in these tests are `memlock:` values printed by Linux
    // 6.18 (2 possible CPUs) for maps made with `bpftool map create`; the
    // live comparison is tests/memlock.rs.

    #[test]
    fn arrays() {
        assert_eq!(map_bytes(MapType::Array, 4, 8, 16, 0, 2, 0), 440);
        assert_eq!(map_bytes(MapType::Array, 4, 64, 1, 0, 2, 0), 376);
        assert_eq!(
            map_bytes(MapType::Array, 4, 64, 1, BPF_F_MMAPABLE | (1 << 7), 2, 0),
            8192
        );
        assert_eq!(
            map_bytes(MapType::Array, 4, 5000, 3, BPF_F_MMAPABLE, 2, 0),
            20480
        );
        assert_eq!(map_bytes(MapType::PerCpuArray, 4, 2080, 1, 0, 2, 0), 4480);
        assert_eq!(map_bytes(MapType::PerCpuArray, 4, 8, 100, 0, 2, 0), 2712);
    }

    #[test]
    fn ring_buffers() {
        assert_eq!(map_bytes(MapType::RingBuf, 0, 0, 4096, 0, 2, 0), 16728);
        assert_eq!(map_bytes(MapType::RingBuf, 0, 0, 65536, 0, 2, 0), 78408);
        assert_eq!(map_bytes(MapType::RingBuf, 0, 0, 1 << 20, 0, 2, 0), 1065288);
        assert_eq!(map_bytes(MapType::RingBuf, 0, 0, 4 << 20, 0, 2, 0), 4223304);
        // A ring buffer has no per-CPU part.
        assert_eq!(
            map_bytes(MapType::RingBuf, 0, 0, 1 << 20, 0, 128, 0),
            map_bytes(MapType::RingBuf, 0, 0, 1 << 20, 0, 2, 0)
        );
    }

    #[test]
    fn hashes() {
        assert_eq!(map_bytes(MapType::Hash, 4, 1, 1, 0, 2, 0), 1120);
        assert_eq!(map_bytes(MapType::Hash, 4, 1, 1024, 0, 2, 0), 82960);
        assert_eq!(
            map_bytes(MapType::Hash, 4, 16, 1024, BPF_F_NO_PREALLOC, 2, 0),
            17280
        );
        assert_eq!(
            map_bytes(MapType::Hash, 4, 16, 65536, BPF_F_NO_PREALLOC, 2, 0),
            1049472
        );
        assert_eq!(
            map_bytes(MapType::LruPerCpuHash, 8, 8, 4096, 0, 2, 0),
            394112
        );
        assert_eq!(map_bytes(MapType::LruHash, 8, 8, 4096, 0, 2, 0), 328576);
        assert_eq!(map_bytes(MapType::PerCpuHash, 8, 8, 4096, 0, 2, 0), 394112);
    }

    #[test]
    fn per_cpu_hash_matches_the_6_12_guest_measurements_up_to_struct_size() {
        // ENVIRONMENT.md, 6.12 guests: LRU_PERCPU_HASH 4096 × (8, 8) at
        // P = 2, 16, 128 was 394,176 / 853,376 / 4,526,976 bytes. 6.12's
        // struct bpf_htab is 64 B larger than 6.18's; the growth with P is
        // what the model must get exactly.
        let at = |cpus| map_bytes(MapType::LruPerCpuHash, 8, 8, 4096, 0, cpus, 0);
        assert_eq!(at(16) - at(2), 853_376 - 394_176);
        assert_eq!(at(128) - at(2), 4_526_976 - 394_176);
    }

    #[test]
    fn no_prealloc_hash_grows_with_fill_and_stops_at_max_entries() {
        let empty = map_bytes(MapType::Hash, 4, 16, 1024, BPF_F_NO_PREALLOC, 2, 0);
        let ten = map_bytes(MapType::Hash, 4, 16, 1024, BPF_F_NO_PREALLOC, 2, 10);
        assert_eq!(ten - empty, 10 * (48 + 8 + 16 + 8));
        let full = map_bytes(MapType::Hash, 4, 16, 1024, BPF_F_NO_PREALLOC, 2, 1024);
        let over = map_bytes(MapType::Hash, 4, 16, 1024, BPF_F_NO_PREALLOC, 2, 5000);
        assert_eq!(full, over);
        // Preallocated hashes cost the same whatever their fill.
        assert_eq!(
            map_bytes(MapType::Hash, 4, 16, 1024, 0, 2, 0),
            map_bytes(MapType::Hash, 4, 16, 1024, 0, 2, 1024)
        );
    }

    #[test]
    fn task_storage_buckets_follow_possible_cpus() {
        assert_eq!(
            map_bytes(MapType::TaskStorage, 4, 16, 0, BPF_F_NO_PREALLOC, 1, 0),
            448 + 32
        );
        assert_eq!(
            map_bytes(MapType::TaskStorage, 4, 16, 0, BPF_F_NO_PREALLOC, 2, 0),
            448 + 32
        );
        assert_eq!(
            map_bytes(MapType::TaskStorage, 4, 16, 0, BPF_F_NO_PREALLOC, 3, 0),
            448 + 64
        );
        assert_eq!(
            map_bytes(MapType::TaskStorage, 4, 16, 0, BPF_F_NO_PREALLOC, 128, 0),
            448 + 2048
        );
        let per_task = task_storage_bytes_per_task(16);
        assert_eq!(per_task, 192 + 192);
        assert_eq!(
            map_bytes(MapType::TaskStorage, 4, 16, 0, BPF_F_NO_PREALLOC, 2, 100),
            448 + 32 + 100 * per_task
        );
    }

    #[test]
    fn kmalloc_classes() {
        let cases = [
            (1, 8),
            (8, 8),
            (9, 16),
            (64, 64),
            (65, 96),
            (96, 96),
            (97, 128),
            (129, 192),
            (193, 256),
            (8192, 8192),
            (8193, 16384),
        ];
        for (request, class) in cases {
            assert_eq!(kmalloc_size_class(request), class, "{request}");
        }
    }

    #[test]
    fn huge_inputs_saturate_instead_of_overflowing() {
        let bytes = map_bytes(MapType::PerCpuArray, 4, u32::MAX, u32::MAX, 0, u32::MAX, 0);
        assert_eq!(bytes, u64::MAX);
    }
}
