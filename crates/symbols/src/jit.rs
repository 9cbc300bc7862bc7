//! JIT method names from perf maps (`/tmp/perf-PID.map`).
//!
//! Runtimes (JVM with `-XX:+DumpPerfMapAtExit`/perf-map-agent, V8 `--perf-basic-prof`,
//! CPython 3.12 `-X perf`, .NET) append `START SIZE name` lines as they compile
//! code. The file is read incrementally: only bytes past what was read before, only
//! whole lines, up to [`MAX_READ_BYTES`] in total per process. The descriptor is
//! kept open, so names stay available after the process exits.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::fsutil::{open_in_process_root, MAX_READ_BYTES};
use crate::identity::{read_at_most, FileId};
use crate::parse::parse_perf_map_line;

/// One JIT-compiled method.
#[derive(Debug, Clone)]
pub(crate) struct JitRegion {
    pub end: u64,
    pub id: FileId,
    pub name: Arc<str>,
}

/// How long to wait before looking again for a perf map that was not there.
const RETRY_OPEN_AFTER: Duration = Duration::from_secs(1);

/// Counters shared by every process's perf map.
#[derive(Debug, Default)]
pub(crate) struct PerfMapCounters {
    pub reloads: AtomicU64,
    pub malformed_lines: AtomicU64,
}

#[derive(Default)]
pub(crate) struct PerfMap {
    file: Option<File>,
    last_open_attempt: Option<Instant>,
    /// Bytes of the file consumed so far (whole lines only).
    read_offset: u64,
    warned_cap: bool,
    /// Regions by start address; a later line for the same start replaces the
    /// earlier one (code was recompiled in place).
    regions: BTreeMap<u64, JitRegion>,
}

impl PerfMap {
    /// Opens the perf map if needed and reads whatever was appended since the last
    /// call. `ns_pid` is the pid the process sees itself as (the number in its
    /// perf map's name); `alive` tells whether opening is still possible.
    pub(crate) fn refresh(
        &mut self,
        pid: u32,
        ns_pid: u32,
        alive: bool,
        counters: &PerfMapCounters,
    ) {
        if self.file.is_none() {
            if !alive {
                return;
            }
            if self
                .last_open_attempt
                .is_some_and(|t| t.elapsed() < RETRY_OPEN_AFTER)
            {
                return;
            }
            self.last_open_attempt = Some(Instant::now());
            match open_in_process_root(pid, &format!("/tmp/perf-{ns_pid}.map")) {
                Ok(file) => self.file = Some(file),
                Err(_) => return,
            }
        }
        let Some(file) = &self.file else { return };
        let Ok(size) = file.metadata().map(|m| m.len()) else {
            return;
        };
        if size < self.read_offset {
            // Rewritten from scratch (a runtime restarted its map): start over.
            self.read_offset = 0;
            self.regions.clear();
        }
        let limit = size.min(MAX_READ_BYTES);
        if limit < size && !self.warned_cap {
            self.warned_cap = true;
            warn!(
                pid,
                size,
                cap = MAX_READ_BYTES,
                "perf map exceeds the read cap; later entries are ignored"
            );
        }
        if limit <= self.read_offset {
            return;
        }
        let want = (limit - self.read_offset) as usize;
        let Ok(bytes) = read_at_most(file, self.read_offset, want) else {
            return;
        };
        // Only whole lines; a line being written stays for the next refresh.
        let Some(last_newline) = bytes.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete = &bytes[..=last_newline];
        self.read_offset += complete.len() as u64;
        counters.reloads.fetch_add(1, Ordering::Relaxed);
        for raw in complete.split(|&b| b == b'\n') {
            if raw.is_empty() {
                continue;
            }
            let parsed = std::str::from_utf8(raw)
                .ok()
                .and_then(|line| parse_perf_map_line(line).ok());
            match parsed {
                Some(entry) => {
                    self.regions.insert(
                        entry.start,
                        JitRegion {
                            end: entry.end(),
                            id: FileId::jit_region(entry.start, entry.size, entry.name),
                            name: Arc::from(entry.name),
                        },
                    );
                }
                None => {
                    counters.malformed_lines.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The region containing `address`, if any.
    pub(crate) fn lookup(&self, address: u64) -> Option<&JitRegion> {
        let (_, region) = self.regions.range(..=address).next_back()?;
        (address < region.end).then_some(region)
    }
}
