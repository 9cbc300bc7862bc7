//! The BPF map types Kestrel (and the reference agent it is compared with) uses.

use serde::Serialize;

/// `BPF_F_NO_PREALLOC`: hash maps allocate elements on update instead of at
/// creation; required for task storage.
pub const BPF_F_NO_PREALLOC: u32 = 1 << 0;
/// `BPF_F_NO_COMMON_LRU`: one LRU list per CPU (rounds `max_entries` to a
/// multiple of the possible CPUs).
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
/// `BPF_F_RDONLY_PROG`: BPF programs may only read the map.
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;
/// `BPF_F_MMAPABLE`: an array that user space can mmap; its memory is
/// page-granular.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// A BPF map type. Serialises as the kernel's name (`bpftool` spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum MapType {
    #[serde(rename = "ringbuf")]
    RingBuf,
    #[serde(rename = "percpu_array")]
    PerCpuArray,
    #[serde(rename = "array")]
    Array,
    #[serde(rename = "hash")]
    Hash,
    #[serde(rename = "task_storage")]
    TaskStorage,
    #[serde(rename = "lru_percpu_hash")]
    LruPerCpuHash,
    #[serde(rename = "lru_hash")]
    LruHash,
    #[serde(rename = "percpu_hash")]
    PerCpuHash,
}

impl MapType {
    /// Every variant, for tables and tests.
    pub const ALL: [MapType; 8] = [
        MapType::RingBuf,
        MapType::PerCpuArray,
        MapType::Array,
        MapType::Hash,
        MapType::TaskStorage,
        MapType::LruPerCpuHash,
        MapType::LruHash,
        MapType::PerCpuHash,
    ];

    /// The name `bpftool` and `/proc/PID/fdinfo` use for the type.
    pub fn kernel_name(self) -> &'static str {
        match self {
            MapType::RingBuf => "ringbuf",
            MapType::PerCpuArray => "percpu_array",
            MapType::Array => "array",
            MapType::Hash => "hash",
            MapType::TaskStorage => "task_storage",
            MapType::LruPerCpuHash => "lru_percpu_hash",
            MapType::LruHash => "lru_hash",
            MapType::PerCpuHash => "percpu_hash",
        }
    }

    /// The `enum bpf_map_type` value from `include/uapi/linux/bpf.h`.
    pub fn kernel_id(self) -> u32 {
        match self {
            MapType::Hash => 1,
            MapType::Array => 2,
            MapType::PerCpuHash => 5,
            MapType::PerCpuArray => 6,
            MapType::LruHash => 9,
            MapType::LruPerCpuHash => 10,
            MapType::RingBuf => 27,
            MapType::TaskStorage => 29,
        }
    }

    /// True for the types whose every value exists once per possible CPU.
    pub fn is_per_cpu(self) -> bool {
        matches!(
            self,
            MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_is_the_kernel_name() {
        for map_type in MapType::ALL {
            let json = serde_json::to_string(&map_type).unwrap();
            assert_eq!(json, format!("\"{}\"", map_type.kernel_name()));
        }
    }
}
