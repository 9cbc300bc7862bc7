//! What this kernel allows, learnt by really trying: each program type Kestrel
//! uses is loaded alone from `bpf/feature_probe.bpf.c`, each map type is created,
//! and the cpu-clock perf event is opened.

use std::fs;

use libbpf_rs::{MapCore, MapHandle, MapType, ObjectBuilder};
use serde::Serialize;

use crate::bpf::FEATURE_PROBE_OBJECT;
use crate::perf::open_cpu_clock;

/// One capability's outcome; `error` says why it failed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    fn from<T, E: std::fmt::Display>(r: Result<T, E>) -> Self {
        match r {
            Ok(_) => Outcome {
                ok: true,
                error: None,
            },
            Err(e) => Outcome {
                ok: false,
                error: Some(e.to_string()),
            },
        }
    }
}

/// Everything `kestrel check` reports about BPF support, and what the probes use
/// to choose between hook flavours.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFeatures {
    pub btf: Outcome,
    pub bpf_syscall: Outcome,
    pub perf_event_program: Outcome,
    pub tp_btf_program: Outcome,
    pub raw_tp_program: Outcome,
    pub fentry_program: Outcome,
    pub ringbuf_map: Outcome,
    pub task_storage_map: Outcome,
    pub cpu_clock_event: Outcome,
}

/// Which sched_switch hook and in-flight store off-CPU uses on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OffCpuHook {
    /// `tp_btf/sched_switch` with in-flight state in task storage.
    TpBtfTaskStorage,
    /// `raw_tp/sched_switch` with in-flight state in a sized hash.
    RawTpHash,
}

impl OffCpuHook {
    pub fn program_name(self) -> &'static str {
        match self {
            OffCpuHook::TpBtfTaskStorage => "tp_btf/sched_switch",
            OffCpuHook::RawTpHash => "raw_tp/sched_switch",
        }
    }
}

/// The off-CPU hook a configuration gets on this kernel: none when off-CPU is
/// disabled, the forced one when it loads, else the best available.
pub fn choose_off_cpu_hook(
    config: &crate::ProbeConfig,
    features: &KernelFeatures,
) -> Result<Option<OffCpuHook>, crate::ProbeError> {
    if config.off_cpu_probability <= 0.0 {
        return Ok(None);
    }
    match config.off_cpu_hook {
        Some(OffCpuHook::TpBtfTaskStorage)
            if !(features.tp_btf_program.ok && features.task_storage_map.ok) =>
        {
            Err(crate::ProbeError::OffCpuHookRefused("tp_btf"))
        }
        Some(OffCpuHook::RawTpHash) if !features.raw_tp_program.ok => {
            Err(crate::ProbeError::OffCpuHookRefused("raw_tp"))
        }
        Some(hook) => Ok(Some(hook)),
        None => features
            .off_cpu_hook()
            .map(Some)
            .ok_or(crate::ProbeError::NoOffCpuHook),
    }
}

impl KernelFeatures {
    /// Probe the running kernel. Never fails: every failure is an [`Outcome`].
    pub fn probe() -> KernelFeatures {
        crate::route_libbpf_logs();
        crate::quietly(Self::probe_inner)
    }

    fn probe_inner() -> KernelFeatures {
        let btf = if fs::metadata("/sys/kernel/btf/vmlinux").is_ok() {
            Outcome {
                ok: true,
                error: None,
            }
        } else {
            Outcome {
                ok: false,
                error: Some(
                    "/sys/kernel/btf/vmlinux is missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y"
                        .into(),
                ),
            }
        };
        let bpf_syscall = Outcome::from(create_map(MapType::Array, 4, 8, 1, 0));
        KernelFeatures {
            btf,
            bpf_syscall,
            perf_event_program: load_alone("probe_perf_event"),
            tp_btf_program: load_alone("probe_tp_btf"),
            raw_tp_program: load_alone("probe_raw_tp"),
            fentry_program: load_alone("probe_fentry"),
            ringbuf_map: load_alone("probe_ringbuf_prog"),
            task_storage_map: load_alone("probe_task_storage_prog"),
            cpu_clock_event: Outcome::from(open_cpu_clock(0, 1)),
        }
    }

    /// The off-CPU flavour this kernel supports, preferring tp_btf + task storage;
    /// `None` when neither sched_switch flavour loads.
    pub fn off_cpu_hook(&self) -> Option<OffCpuHook> {
        if self.tp_btf_program.ok && self.task_storage_map.ok {
            Some(OffCpuHook::TpBtfTaskStorage)
        } else if self.raw_tp_program.ok {
            Some(OffCpuHook::RawTpHash)
        } else {
            None
        }
    }
}

fn create_map(
    ty: MapType,
    key: u32,
    value: u32,
    entries: u32,
    flags: u32,
) -> Result<MapHandle, libbpf_rs::Error> {
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: flags,
        ..Default::default()
    };
    let map = MapHandle::create(ty, Some("kestrel_probe"), key, value, entries, &opts)?;
    // Touch the map so an fd that the kernel handed out but cannot use shows up.
    let _ = map.max_entries();
    Ok(map)
}

/// Load `program` alone from the feature-probe object; the object is dropped at
/// once, unloading it.
fn load_alone(program: &str) -> Outcome {
    let result = (|| -> Result<(), String> {
        let mut open = ObjectBuilder::default()
            .open_memory(FEATURE_PROBE_OBJECT)
            .map_err(|e| format!("opening the probe object: {e}"))?;
        for mut prog in open.progs_mut() {
            let wanted = prog.name() == program;
            prog.set_autoload(wanted);
        }
        for mut map in open.maps_mut() {
            // Create only the map this program uses, so a refused map type does
            // not make every other probe fail too.
            let needed = match map.map_type() {
                MapType::RingBuf => program == "probe_ringbuf_prog",
                MapType::TaskStorage => program == "probe_task_storage_prog",
                _ => false,
            };
            map.set_autocreate(needed).map_err(|e| e.to_string())?;
            if map.map_type() == MapType::RingBuf {
                map.set_max_entries(4096).map_err(|e| e.to_string())?;
            }
        }
        let _object = open.load().map_err(|e| explain_load_error(&e))?;
        Ok(())
    })();
    Outcome::from(result)
}

/// libbpf's own hint for EPERM talks about RLIMIT_MEMLOCK, which is wrong on
/// memcg-accounted kernels; say what EPERM usually means instead.
pub fn explain_load_error(e: &libbpf_rs::Error) -> String {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        format!(
            "{text} (the kernel refused the load: not root / missing CAP_BPF+CAP_PERFMON, \
             or kernel lockdown forbids this program type)"
        )
    } else {
        text
    }
}

/// Kernel lockdown mode from securityfs (`none`, `integrity`, `confidentiality`),
/// or `None` when the file is absent.
pub fn lockdown_mode() -> Option<String> {
    let text = fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    // The active mode is the bracketed word: "none [integrity] confidentiality".
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_string())
}
