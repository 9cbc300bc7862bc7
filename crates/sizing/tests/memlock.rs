//! The cost model against the kernel: create real BPF maps, read the
//! `memlock:` the kernel reports for each in `/proc/self/fdinfo/<fd>`, and
//! compare it with `cost::map_bytes`.
//!
//! Needs root (CAP_BPF + CAP_PERFMON at least); CI runs it as root. Without
//! the privilege every test fails with an explanation instead of skipping,
//! because a skipped calibration test proves nothing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command};

use kestrel_sizing::cost::{self, KernelCostModel};
use kestrel_sizing::{
    plan, reference_cost, MapRow, MapType, OffCpuState, PlanInputs, Topology, BPF_F_MMAPABLE,
    BPF_F_NO_PREALLOC, BPF_F_RDONLY_PROG,
};
use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

/// The model must be within this fraction of what the kernel reports.
const TOLERANCE: f64 = 0.05;

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "tests/memlock.rs creates real BPF maps and must run as root (CI does); \
         run `sudo -E cargo test -p kestrel-sizing --test memlock`"
    );
}

/// The layout of the kernel these tests run on: what the agent uses.
fn kernel() -> KernelCostModel {
    KernelCostModel::for_running_kernel()
}

fn possible_cpus() -> u32 {
    Topology::detect()
        .expect("read the CPU topology from sysfs")
        .possible_count()
}

fn to_libbpf(map_type: MapType) -> libbpf_rs::MapType {
    match map_type {
        MapType::RingBuf => libbpf_rs::MapType::RingBuf,
        MapType::PerCpuArray => libbpf_rs::MapType::PercpuArray,
        MapType::Array => libbpf_rs::MapType::Array,
        MapType::Hash => libbpf_rs::MapType::Hash,
        MapType::TaskStorage => libbpf_rs::MapType::TaskStorage,
        MapType::LruPerCpuHash => libbpf_rs::MapType::LruPercpuHash,
        MapType::LruHash => libbpf_rs::MapType::LruHash,
        MapType::PerCpuHash => libbpf_rs::MapType::PercpuHash,
    }
}

/// BTF describing `int` keys and `struct { char data[value_size]; }`
/// values, loaded into the kernel: task storage refuses maps without it.
struct ValueBtf {
    btf: *mut libbpf_sys::btf,
    key_type_id: u32,
    value_type_id: u32,
}

impl ValueBtf {
    fn load(value_size: u32) -> ValueBtf {
        let id = |what: &str, id: i32| -> i32 {
            assert!(id > 0, "adding {what} to BTF failed: {id}");
            id
        };
        // SAFETY: btf__new_empty returns an owned handle or NULL (checked);
        // every later call gets that live handle and NUL-terminated names,
        // and Drop frees it exactly once.
        unsafe {
            let btf = libbpf_sys::btf__new_empty();
            assert!(!btf.is_null(), "btf__new_empty failed");
            let int_id = id(
                "int",
                libbpf_sys::btf__add_int(
                    btf,
                    c"int".as_ptr(),
                    4,
                    libbpf_sys::BTF_INT_SIGNED as i32,
                ),
            );
            let char_id = id(
                "char",
                libbpf_sys::btf__add_int(btf, c"char".as_ptr(), 1, libbpf_sys::BTF_INT_CHAR as i32),
            );
            let array_id = id(
                "char[]",
                libbpf_sys::btf__add_array(btf, int_id, char_id, value_size),
            );
            let struct_id = id(
                "struct value",
                libbpf_sys::btf__add_struct(btf, c"value".as_ptr(), value_size),
            );
            let field = libbpf_sys::btf__add_field(btf, c"data".as_ptr(), array_id, 0, 0);
            assert_eq!(field, 0, "adding the data field to BTF failed");
            let loaded = libbpf_sys::btf__load_into_kernel(btf);
            assert_eq!(loaded, 0, "loading BTF into the kernel failed: {loaded}");
            ValueBtf {
                btf,
                key_type_id: int_id as u32,
                value_type_id: struct_id as u32,
            }
        }
    }

    fn fd(&self) -> u32 {
        // SAFETY: self.btf is the live handle created in load().
        let fd = unsafe { libbpf_sys::btf__fd(self.btf) };
        assert!(fd >= 0, "loaded BTF has no fd");
        fd as u32
    }
}

impl Drop for ValueBtf {
    fn drop(&mut self) {
        // SAFETY: created by btf__new_empty in load() and freed only here.
        unsafe { libbpf_sys::btf__free(self.btf) };
    }
}

/// Creates a real map; task storage gets the BTF it requires.
fn create_map(
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> MapHandle {
    let btf = (map_type == MapType::TaskStorage).then(|| ValueBtf::load(value_size));
    let mut opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
        map_flags,
        ..Default::default()
    };
    if let Some(btf) = &btf {
        opts.btf_fd = btf.fd();
        opts.btf_key_type_id = btf.key_type_id;
        opts.btf_value_type_id = btf.value_type_id;
    }
    // The kernel holds its own reference to the BTF once the map exists, so
    // `btf` may be dropped after this call.
    MapHandle::create(
        to_libbpf(map_type),
        Some("kestrel_calib"),
        key_size,
        value_size,
        max_entries,
        &opts,
    )
    .unwrap_or_else(|err| {
        panic!(
            "creating {} key {key_size} value {value_size} max_entries {max_entries} \
             flags {map_flags:#x} failed: {err}",
            map_type.kernel_name()
        )
    })
}

fn memlock(map: &MapHandle) -> u64 {
    map.query_fdinfo()
        .expect("read /proc/self/fdinfo for the map")
        .memlock
        .expect("the kernel reports memlock: for maps (Linux 4.10+)")
}

/// One comparison of the model against the kernel.
struct Check {
    label: String,
    model: u64,
    kernel: u64,
}

impl Check {
    fn error(&self) -> f64 {
        (self.model as f64 - self.kernel as f64).abs() / self.kernel as f64
    }
}

/// Prints every comparison (the calibration table) and fails listing those
/// off by more than the tolerance.
fn assert_all_within_tolerance(checks: &[Check]) {
    eprintln!(
        "{:<64} {:>12} {:>12} {:>8}",
        "map", "model", "memlock", "error"
    );
    for check in checks {
        eprintln!(
            "{:<64} {:>12} {:>12} {:>7.3}%",
            check.label,
            check.model,
            check.kernel,
            check.error() * 100.0
        );
    }
    let failures: Vec<String> = checks
        .iter()
        .filter(|check| check.error() > TOLERANCE)
        .map(|check| {
            format!(
                "{}: model {} B, kernel {} B ({:.2}% off)",
                check.label,
                check.model,
                check.kernel,
                check.error() * 100.0
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "cost model off by more than {}%:\n{}",
        TOLERANCE * 100.0,
        failures.join("\n")
    );
}

fn check_created(
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> Check {
    let cpus = possible_cpus();
    let map = create_map(map_type, key_size, value_size, max_entries, map_flags);
    Check {
        label: format!(
            "{} k{key_size} v{value_size} n{max_entries} f{map_flags:#x}",
            map_type.kernel_name()
        ),
        model: kernel().map_bytes(
            map_type,
            key_size,
            value_size,
            max_entries,
            map_flags,
            cpus,
            0,
        ),
        kernel: memlock(&map),
    }
}

#[test]
fn every_map_type_at_several_sizes() {
    require_root();
    let rodata_flags = BPF_F_RDONLY_PROG | BPF_F_MMAPABLE;
    let cases: &[(MapType, u32, u32, u32, u32)] = &[
        (MapType::RingBuf, 0, 0, 4096, 0),
        (MapType::RingBuf, 0, 0, 64 << 10, 0),
        (MapType::RingBuf, 0, 0, 1 << 20, 0),
        (MapType::RingBuf, 0, 0, 4 << 20, 0),
        (MapType::PerCpuArray, 4, 2080, 1, 0),
        (MapType::PerCpuArray, 4, 8, 100, 0),
        (MapType::PerCpuArray, 4, 60, 4096, 0),
        (MapType::Array, 4, 8, 1, 0),
        (MapType::Array, 4, 8, 16, 0),
        (MapType::Array, 4, 12, 10_000, 0),
        (MapType::Array, 4, 64, 1, rodata_flags),
        (MapType::Array, 4, 64, 1, BPF_F_MMAPABLE),
        (MapType::Array, 4, 5000, 3, BPF_F_MMAPABLE),
        (MapType::Array, 4, 8, 100_000, BPF_F_MMAPABLE),
        (MapType::Hash, 4, 1, 1, 0),
        (MapType::Hash, 4, 1, 128, 0),
        (MapType::Hash, 4, 1, 1000, 0),
        (MapType::Hash, 4, 16, 4096, 0),
        (MapType::Hash, 12, 100, 3000, 0),
        (MapType::Hash, 4, 16, 1024, BPF_F_NO_PREALLOC),
        (MapType::Hash, 4, 16, 65536, BPF_F_NO_PREALLOC),
        (MapType::PerCpuHash, 8, 8, 4096, 0),
        (MapType::PerCpuHash, 8, 8, 1024, BPF_F_NO_PREALLOC),
        (MapType::LruHash, 8, 8, 4096, 0),
        (MapType::LruPerCpuHash, 8, 8, 16, 0),
        (MapType::LruPerCpuHash, 8, 8, 4096, 0),
        (MapType::LruPerCpuHash, 8, 8, 65536, 0),
        (MapType::TaskStorage, 4, 16, 0, BPF_F_NO_PREALLOC),
        (MapType::TaskStorage, 4, 2000, 0, BPF_F_NO_PREALLOC),
    ];
    let checks: Vec<Check> = cases
        .iter()
        .map(|&(map_type, key, value, entries, flags)| {
            check_created(map_type, key, value, entries, flags)
        })
        .collect();
    assert_all_within_tolerance(&checks);
}

#[test]
fn no_prealloc_hashes_grow_with_their_fill() {
    require_root();
    let cpus = possible_cpus();
    let mut checks = Vec::new();
    for (map_type, key_size, value_size, max_entries, fills) in [
        (
            MapType::Hash,
            4u32,
            16u32,
            1024u32,
            &[0u32, 1, 100, 1000, 1024][..],
        ),
        (MapType::Hash, 4, 16, 65536, &[0, 5000, 20_000][..]),
        (MapType::Hash, 8, 200, 256, &[0, 256][..]),
        (MapType::PerCpuHash, 8, 8, 1024, &[0, 10, 1024][..]),
    ] {
        let map = create_map(
            map_type,
            key_size,
            value_size,
            max_entries,
            BPF_F_NO_PREALLOC,
        );
        let value = vec![0xa5u8; value_size as usize];
        let value_per_cpu = vec![value.clone(); cpus as usize];
        let mut filled = 0u32;
        for &target in fills {
            while filled < target {
                let mut key = vec![0u8; key_size as usize];
                key[..4].copy_from_slice(&filled.to_ne_bytes());
                let inserted = if map_type.is_per_cpu() {
                    map.update_percpu(&key, &value_per_cpu, MapFlags::NO_EXIST)
                } else {
                    map.update(&key, &value, MapFlags::NO_EXIST)
                };
                inserted.unwrap_or_else(|err| panic!("insert element {filled}: {err}"));
                filled += 1;
            }
            checks.push(Check {
                label: format!(
                    "{} k{key_size} v{value_size} n{max_entries} no-prealloc, {target} filled",
                    map_type.kernel_name()
                ),
                model: kernel().map_bytes(
                    map_type,
                    key_size,
                    value_size,
                    max_entries,
                    BPF_F_NO_PREALLOC,
                    cpus,
                    u64::from(target),
                ),
                kernel: memlock(&map),
            });
        }
    }
    assert_all_within_tolerance(&checks);
    // The empty and full figures must differ, or the fill was not counted.
    assert!(checks[0].kernel < checks[4].kernel);
}

/// Processes to hang task-storage values on, killed on drop.
struct Sleepers(Vec<Child>);

impl Sleepers {
    fn spawn(count: usize) -> Sleepers {
        Sleepers(
            (0..count)
                .map(|_| {
                    Command::new("sleep")
                        .arg("30")
                        .spawn()
                        .expect("spawn sleep")
                })
                .collect(),
        )
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn pidfd_open(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}) failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the syscall just returned this fd and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The kernel's `memlock:` for task storage counts only the map and its
/// buckets, not the per-task values ("the dynamically allocated selems are
/// not counted currently"). That is why the plan adds an estimate per
/// in-flight task on top; if a kernel starts counting them, this test fails
/// and the estimate must be recalibrated against `memlock:`.
#[test]
fn task_storage_memlock_is_the_map_and_its_buckets_only() {
    require_root();
    let cpus = possible_cpus();
    let map = create_map(MapType::TaskStorage, 4, 16, 0, BPF_F_NO_PREALLOC);
    let empty = memlock(&map);
    assert_eq!(
        empty,
        kernel().map_bytes(MapType::TaskStorage, 4, 16, 0, BPF_F_NO_PREALLOC, cpus, 0)
    );
    assert_eq!(
        empty,
        kernel().local_storage_map_bytes
            + cost::task_storage_buckets(cpus) * cost::LOCAL_STORAGE_BUCKET_BYTES
    );

    let sleepers = Sleepers::spawn(8);
    let pidfds: Vec<OwnedFd> = sleepers
        .0
        .iter()
        .map(|child| pidfd_open(child.id()))
        .collect();
    for (index, pidfd) in pidfds.iter().enumerate() {
        let key = pidfd.as_raw_fd().to_ne_bytes();
        let value = [index as u8; 16];
        map.update(&key, &value, MapFlags::ANY)
            .unwrap_or_else(|err| panic!("task storage update for sleeper {index}: {err}"));
    }
    // The values are really there...
    for (index, pidfd) in pidfds.iter().enumerate() {
        let key = pidfd.as_raw_fd().to_ne_bytes();
        let stored = map.lookup(&key, MapFlags::ANY).unwrap();
        assert_eq!(stored, Some(vec![index as u8; 16]));
    }
    // ...yet memlock: did not move.
    assert_eq!(memlock(&map), empty);
}

fn check_row(row: &MapRow) -> Vec<Check> {
    let map = create_map(
        row.map_type,
        row.key_size,
        row.value_size,
        row.max_entries,
        row.map_flags,
    );
    let label = |what: &str| {
        format!(
            "plan row {} ({}) {what}",
            row.name,
            row.map_type.kernel_name()
        )
    };
    let mut checks = vec![Check {
        label: label("bytes_floor"),
        model: row.bytes_floor,
        kernel: memlock(&map),
    }];
    // A non-preallocated hash reaches its cap when full: fill it and compare.
    if row.map_type == MapType::Hash && !row.preallocated {
        let value = vec![0u8; row.value_size as usize];
        for key in 0..row.max_entries {
            map.update(&key.to_ne_bytes(), &value, MapFlags::NO_EXIST)
                .unwrap_or_else(|err| panic!("fill {} entry {key}: {err}", row.name));
        }
        checks.push(Check {
            label: label("bytes_cap (full)"),
            model: row.bytes_cap,
            kernel: memlock(&map),
        });
    }
    // A map that grows by re-plan (the ring buffer) is replaced by one of
    // max_entries_cap: create that one too and compare its cost with bytes_cap.
    if row.max_entries_cap != row.max_entries {
        let grown = create_map(
            row.map_type,
            row.key_size,
            row.value_size,
            row.max_entries_cap,
            row.map_flags,
        );
        checks.push(Check {
            label: label("bytes_cap (grown to max_entries_cap)"),
            model: row.bytes_cap,
            kernel: memlock(&grown),
        });
    } else if row.preallocated {
        assert_eq!(row.bytes_floor, row.bytes_cap, "{}", row.name);
    }
    checks
}

#[test]
fn real_maps_built_from_a_plan_match_each_rows_bytes() {
    require_root();
    let topology = Topology::detect().expect("detect topology");
    let mut checks = Vec::new();
    for off_cpu_state in [OffCpuState::TaskStorage, OffCpuState::Hash] {
        let map_plan = plan(&PlanInputs {
            topology: topology.clone(),
            frequency_hz: 997,
            off_cpu_probability: 1.0,
            sched_events_per_cpu_s: 5000,
            pid_filter_len: 100,
            off_cpu_state,
            kernel: kernel(),
            ..PlanInputs::default()
        })
        .expect("plan for this machine");
        assert!(
            map_plan.maps.len() >= 6,
            "every map of the plan is exercised"
        );
        for row in &map_plan.maps {
            checks.extend(check_row(row));
        }
    }
    assert_all_within_tolerance(&checks);
}

/// The reference agent's tables, priced by `reference_cost`, created for real
/// at this machine's pid_max.
#[test]
fn reference_tables_cost_what_the_model_says() {
    require_root();
    let cpus = possible_cpus();
    let pid_max = kestrel_sizing::read_pid_max().expect("read pid_max");
    let mut checks = Vec::new();
    for probability in [0.01, 0.5, 1.0] {
        let reference = reference_cost(cpus, probability, pid_max);
        for (what, entries, bytes) in [
            (
                "original (pid_max × p)",
                reference.original_offcpu_entries,
                reference.original_offcpu_bytes,
            ),
            (
                "current (4096 × p, [16, 4096])",
                reference.current_offcpu_entries,
                reference.current_offcpu_bytes,
            ),
        ] {
            let max_entries = u32::try_from(entries).expect("entries fit u32");
            let map = create_map(MapType::LruPerCpuHash, 8, 8, max_entries, 0);
            checks.push(Check {
                label: format!("reference {what} p={probability}: {entries} entries"),
                model: bytes,
                kernel: memlock(&map),
            });
        }
    }
    assert_all_within_tolerance(&checks);
}
