//! What Kestrel captures about a process on first sight: executable mappings (with
//! their files open and identified), name, executable, build ID and container.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kestrel_model::{Mapping, ProcessInfo};

use crate::files::{FileRegistry, OpenFile};
use crate::fsutil::read_text_capped;
use crate::identity::identify_file;
use crate::jit::PerfMap;
use crate::parse::{container_id_from_cgroup, parse_maps_line};

/// What backs an executable mapping.
#[derive(Clone)]
pub(crate) enum Backing {
    /// A regular file, open and identified.
    File(Arc<OpenFile>),
    /// Anonymous executable memory: JIT code, named by the perf map if any.
    Anonymous,
    /// Something we cannot symbolize: the vDSO, `[vsyscall]`, or a file that
    /// could not be opened.
    Opaque,
}

#[derive(Clone)]
pub(crate) struct CapturedMapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub backing: Backing,
    pub model: Arc<Mapping>,
}

/// Captured state of one process.
pub(crate) struct ProcessState {
    pub info: Arc<ProcessInfo>,
    /// The pid the process sees itself as (innermost pid namespace).
    pub ns_pid: u32,
    mappings: RwLock<Arc<[CapturedMapping]>>,
    /// When maps were last read; re-reads for unknown addresses are rate limited.
    maps_read_at: Mutex<Instant>,
    /// Whether the process was still there at the last look.
    alive: Mutex<bool>,
    pub perf_map: Mutex<PerfMap>,
}

/// Minimum time between two re-reads of a process's maps.
const MAPS_REREAD_INTERVAL: Duration = Duration::from_millis(500);

/// Counts of what a capture could not do.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CaptureReport {
    pub errors: u64,
}

impl ProcessState {
    pub(crate) fn mappings(&self) -> Arc<[CapturedMapping]> {
        self.mappings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn alive(&self) -> bool {
        *self.alive.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the maps of a live process (new libraries, new JIT memory) unless
    /// that was done very recently. Returns whether the mappings changed.
    pub(crate) fn reread_maps(
        &self,
        pid: u32,
        files: &FileRegistry,
        report: &mut CaptureReport,
    ) -> bool {
        {
            let mut at = self.maps_read_at.lock().unwrap_or_else(|p| p.into_inner());
            if !self.alive() || at.elapsed() < MAPS_REREAD_INTERVAL {
                return false;
            }
            *at = Instant::now();
        }
        match read_mappings(pid, files, report) {
            Some(fresh) => {
                *self.mappings.write().unwrap_or_else(|p| p.into_inner()) = fresh.into();
                true
            }
            None => {
                *self.alive.lock().unwrap_or_else(|p| p.into_inner()) = false;
                false
            }
        }
    }

    /// The mapping containing `address`.
    pub(crate) fn find(mappings: &[CapturedMapping], address: u64) -> Option<&CapturedMapping> {
        let idx = mappings.partition_point(|m| m.start <= address);
        let m = mappings.get(idx.checked_sub(1)?)?;
        (address < m.end).then_some(m)
    }
}

/// Captures a process. Never fails: whatever could not be read is left empty and
/// the process is marked gone when its maps were unreadable.
pub(crate) fn capture(pid: u32, files: &FileRegistry, report: &mut CaptureReport) -> ProcessState {
    let proc_dir = format!("/proc/{pid}");
    let mappings = read_mappings(pid, files, report);
    let alive = mappings.is_some();
    let mappings: Vec<CapturedMapping> = mappings.unwrap_or_default();

    let comm = std::fs::read_to_string(format!("{proc_dir}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string());
    let exe = std::fs::read_link(format!("{proc_dir}/exe")).ok().map(|p| {
        let s = p.to_string_lossy();
        s.strip_suffix(" (deleted)").unwrap_or(&s).to_string()
    });
    let name = comm
        .filter(|c| !c.is_empty())
        .or_else(|| {
            exe.as_deref()
                .and_then(|e| Path::new(e).file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();

    // The executable's build ID: from its mapping when it is mapped executable
    // (the common case), else by opening /proc/PID/exe (the exact file).
    let build_id = exe.as_deref().and_then(|exe_path| {
        let mapped = mappings.iter().find_map(|m| match &m.backing {
            Backing::File(f) if &*m.model.path == exe_path => Some(f.build_id.clone()),
            _ => None,
        });
        match mapped {
            Some(id) => id,
            None => std::fs::File::open(format!("{proc_dir}/exe"))
                .ok()
                .and_then(|f| identify_file(&f).ok())
                .and_then(|i| i.build_id.map(Arc::from)),
        }
    });

    let container_id = read_text_capped(Path::new(&format!("{proc_dir}/cgroup")))
        .ok()
        .and_then(|(text, _)| container_id_from_cgroup(&text))
        .map(Arc::from);

    let ns_pid = read_text_capped(Path::new(&format!("{proc_dir}/status")))
        .ok()
        .and_then(|(status, _)| ns_pid_from_status(&status))
        .unwrap_or(pid);

    ProcessState {
        info: Arc::new(ProcessInfo {
            pid,
            name: Arc::from(name),
            executable_path: exe.map(Arc::from),
            build_id,
            container_id,
        }),
        ns_pid,
        mappings: RwLock::new(mappings.into()),
        maps_read_at: Mutex::new(Instant::now()),
        alive: Mutex::new(alive),
        perf_map: Mutex::new(PerfMap::default()),
    }
}

/// The last (innermost namespace) value of the `NSpid:` line.
fn ns_pid_from_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Reads the executable mappings of `pid`, sorted by address. `None` when the
/// maps file is unreadable (the process is gone).
fn read_mappings(
    pid: u32,
    files: &FileRegistry,
    report: &mut CaptureReport,
) -> Option<Vec<CapturedMapping>> {
    let (maps, truncated) = read_text_capped(Path::new(&format!("/proc/{pid}/maps"))).ok()?;
    if truncated {
        report.errors += 1;
        tracing::warn!(
            pid,
            "/proc/PID/maps exceeds the read cap; later mappings are ignored"
        );
    }
    let mut out = Vec::new();
    for line in maps.lines() {
        let Ok(entry) = parse_maps_line(line) else {
            report.errors += 1;
            continue;
        };
        if !entry.permissions.execute {
            continue;
        }
        let is_memfd = entry.path.is_some_and(|p| p.starts_with("/memfd:"));
        let (backing, path, build_id) = if is_memfd {
            // JIT code in a memfd (double-mapped W^X code): named by the perf map.
            (Backing::Anonymous, entry.path.unwrap_or_default(), None)
        } else if entry.is_file_backed() {
            match files.get_or_open(pid, &entry) {
                Ok(file) => {
                    let build_id = file.build_id.clone();
                    (
                        Backing::File(file),
                        entry.path.unwrap_or_default(),
                        build_id,
                    )
                }
                Err(e) => {
                    report.errors += 1;
                    tracing::debug!(pid, path = entry.path, error = %e.0, "cannot open mapped file");
                    (Backing::Opaque, entry.path.unwrap_or_default(), None)
                }
            }
        } else {
            match entry.path {
                None => (Backing::Anonymous, "[anon]", None),
                Some(p) if p.starts_with("[anon") => (Backing::Anonymous, p, None),
                // [vdso], [vsyscall] and the like.
                Some(p) => (Backing::Opaque, p, None),
            }
        };
        let model = Arc::new(Mapping {
            start: entry.start,
            end: entry.end,
            file_offset: entry.offset,
            path: Arc::from(path),
            build_id,
        });
        out.push(CapturedMapping {
            start: entry.start,
            end: entry.end,
            offset: entry.offset,
            backing,
            model,
        });
    }
    out.sort_by_key(|m| m.start);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_pid_is_the_innermost() {
        assert_eq!(ns_pid_from_status("Name:\tx\nNSpid:\t4242\t17\n"), Some(17));
        assert_eq!(ns_pid_from_status("Name:\tx\nNSpid:\t4242\n"), Some(4242));
        assert_eq!(ns_pid_from_status("Name:\tx\n"), None);
    }
}
