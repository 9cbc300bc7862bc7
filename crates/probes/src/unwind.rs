//! User space of the table unwinder: builds a table (kestrel-unwind) for each
//! executable file a sampled process maps, once per file however many
//! processes map it, places it in the three shared BPF pools, and writes each
//! process's executable mappings into `proc_mappings`.
//!
//! The pools are arrays whose sizes the plan's unwind cap fixed. Tables are
//! placed one after another; when a table does not fit, the least recently
//! sampled files' tables are evicted (counted) until it does, and the
//! remaining tables are written again from the pools' start (compaction).
//! During that rewrite their `unwind_files` entries are absent, so BPF falls
//! back to frame pointers for them instead of reading half-written rows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use kestrel_unwind::Table;
use libbpf_rs::{MapCore, MapFlags, Object};
use serde::Serialize;
use tracing::{debug, warn};

use crate::abi::bytes_of;
use crate::bpf::skel::types::{kestrel_mapping, kestrel_proc_mappings, kestrel_unwind_file};
use crate::ProbeError;

/// `MAX_PROC_MAPPINGS` of kestrel.h (the generated array's length).
const MAX_PROC_MAPPINGS: usize = 64;
/// `UNWIND_CHUNK` of kestrel.h: u32s per element of unwind_rows and
/// unwind_pages; a table's rows and pages start at a multiple of it.
const CHUNK: u64 = 16;

/// `n` u32s rounded up to whole chunks.
fn chunked(n: usize) -> u64 {
    (n as u64).div_ceil(CHUNK) * CHUNK
}

/// `values` padded with zeros to whole chunks, as chunk-sized byte values.
fn chunk_bytes(values: impl Iterator<Item = u32>) -> Vec<u8> {
    let mut bytes: Vec<u8> = values.flat_map(u32::to_ne_bytes).collect();
    let chunk_len = CHUNK as usize * 4;
    bytes.resize(bytes.len().div_ceil(chunk_len) * chunk_len, 0);
    bytes
}

/// What the unwinder's user space did, for stats.json.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct UnwindStats {
    /// Tables written into the pools (a re-load after eviction counts again).
    pub tables_loaded: u64,
    /// Tables evicted to make room (least recently sampled first).
    pub tables_evicted: u64,
    /// Bytes the loaded tables occupy in the pools now.
    pub table_bytes: u64,
    /// Files mapped by sampled processes for which no table could be built
    /// (not ELF, no `.eh_frame`, unreadable): frame pointers there.
    pub files_without_table: u64,
    /// Tables larger than the whole pool (never loaded).
    pub tables_too_large: u64,
    /// Time spent building tables, in microseconds.
    pub build_us: u64,
    /// Processes whose mappings were written.
    pub processes: u64,
    /// Executable mappings left out because a process had more than 64.
    pub mappings_truncated: u64,
}

/// A file's identity: device and inode of the mapping.
type FileId = (u64, u64);
/// The identity of executable memory that is no file.
const NO_FILE: FileId = (0, 0);

struct Loaded {
    key: u64,
    table: Arc<Table>,
    last_used: u64,
}

/// One executable mapping of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecMapping {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub file: FileId,
    pub path: String,
}

/// The executable, file-backed mappings of a `/proc/PID/maps` text, by start.
pub fn parse_exec_mappings(maps: &str) -> Vec<ExecMapping> {
    let mut out: Vec<ExecMapping> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let pgoff = u64::from_str_radix(fields.next()?, 16).ok()?;
            let dev = fields.next()?;
            let inode: u64 = fields.next()?.parse().ok()?;
            let path = fields.collect::<Vec<_>>().join(" ");
            if perms.as_bytes().get(2) != Some(&b'x') {
                return None;
            }
            // Executable memory without a file ([vdso], JIT code) is kept with
            // no file: BPF then knows the pc is mapped and tableless (frame
            // pointers), and "no mapping" keeps meaning "maps changed".
            let anonymous = inode == 0 || !path.starts_with('/');
            let (start, end) = range.split_once('-')?;
            let (major, minor) = dev.split_once(':')?;
            let dev = (u64::from_str_radix(major, 16).ok()? << 32)
                | u64::from_str_radix(minor, 16).ok()?;
            Some(ExecMapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                pgoff,
                file: if anonymous { NO_FILE } else { (dev, inode) },
                path,
            })
        })
        .collect();
    out.sort_by_key(|m| m.start);
    out
}

/// The loader's state; lives in the session that owns the maps.
pub(crate) struct Unwinder {
    loaded: HashMap<FileId, Loaded>,
    /// Built tables kept across eviction and session swaps (rebuilding costs
    /// milliseconds); `None`: the file has no table.
    built: HashMap<FileId, Option<Arc<Table>>>,
    /// Each process's files, to mark them used when it is sampled.
    processes: HashMap<u32, Vec<FileId>>,
    next_key: u64,
    clock: u64,
    rows_used: u32,
    pages_used: u32,
    rules_used: u32,
    stats: UnwindStats,
}

fn map_error(map: &str) -> impl FnOnce(libbpf_rs::Error) -> ProbeError + '_ {
    move |source| ProbeError::Map {
        map: map.into(),
        source,
    }
}

fn find<'o>(object: &'o Object, name: &str) -> Result<libbpf_rs::Map<'o>, ProbeError> {
    object
        .maps()
        .find(|m| m.name() == name)
        .ok_or_else(|| ProbeError::MissingPlanRow(name.into()))
}

/// Writes `values` (each `size` bytes) at consecutive array indexes from
/// `base`: one batched update per chunk where the kernel has it (5.6+), one
/// update per element otherwise.
fn write_array(
    object: &Object,
    name: &str,
    base: u32,
    values: &[u8],
    size: usize,
) -> Result<(), ProbeError> {
    let map = find(object, name)?;
    let count = values.len() / size;
    if count == 0 {
        return Ok(());
    }
    const BATCH: usize = 4096;
    for (chunk_index, chunk) in values.chunks(BATCH * size).enumerate() {
        let n = chunk.len() / size;
        let first = base as usize + chunk_index * BATCH;
        let keys: Vec<u8> = (first..first + n)
            .flat_map(|k| (k as u32).to_ne_bytes())
            .collect();
        if map
            .update_batch(&keys, chunk, n as u32, MapFlags::ANY, MapFlags::ANY)
            .is_err()
        {
            for (i, value) in chunk.chunks(size).enumerate() {
                map.update(&keys[i * 4..i * 4 + 4], value, MapFlags::ANY)
                    .map_err(map_error(name))?;
            }
        }
    }
    Ok(())
}

fn capacity(object: &Object, name: &str) -> Result<u32, ProbeError> {
    Ok(find(object, name)?.max_entries())
}

impl Unwinder {
    pub(crate) fn new() -> Unwinder {
        Unwinder {
            loaded: HashMap::new(),
            built: HashMap::new(),
            processes: HashMap::new(),
            next_key: 1,
            clock: 0,
            rows_used: 0,
            pages_used: 0,
            rules_used: 0,
            stats: UnwindStats::default(),
        }
    }

    /// A fresh loader for a replacement object that keeps the built tables
    /// and the counts (nothing is in the new object's maps yet).
    pub(crate) fn for_new_object(&self) -> Unwinder {
        let mut next = Unwinder::new();
        next.built = self.built.clone();
        next.stats = UnwindStats {
            table_bytes: 0,
            processes: 0,
            ..self.stats
        };
        next
    }

    pub(crate) fn stats(&self) -> UnwindStats {
        self.stats
    }

    pub(crate) fn knows(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Marks a sampled process's files as used now (for eviction order).
    pub(crate) fn touch(&mut self, pid: u32) {
        self.clock += 1;
        if let Some(files) = self.processes.get(&pid) {
            for f in files {
                if let Some(l) = self.loaded.get_mut(f) {
                    l.last_used = self.clock;
                }
            }
        }
    }

    /// Reads `pid`'s mappings, loads a table for each executable file not yet
    /// loaded, and writes its `proc_mappings` entry. A process that is gone is
    /// not an error (it is forgotten).
    pub(crate) fn load_process(&mut self, object: &Object, pid: u32) -> Result<(), ProbeError> {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            self.processes.remove(&pid);
            return Ok(());
        };
        self.clock += 1;
        let mut mappings = parse_exec_mappings(&text);
        if mappings.len() > MAX_PROC_MAPPINGS {
            self.stats.mappings_truncated += (mappings.len() - MAX_PROC_MAPPINGS) as u64;
            mappings.truncate(MAX_PROC_MAPPINGS);
        }
        let files: Vec<FileId> = mappings
            .iter()
            .map(|m| m.file)
            .filter(|f| *f != NO_FILE)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for m in &mappings {
            if m.file != NO_FILE && !self.built.contains_key(&m.file) {
                let table = self.build(pid, m);
                self.built.insert(m.file, table);
            }
        }
        // Mark this process's files used first, so eviction for one of them
        // never takes another.
        for f in &files {
            if let Some(l) = self.loaded.get_mut(f) {
                l.last_used = self.clock;
            }
        }
        for f in &files {
            if self.loaded.contains_key(f) {
                continue;
            }
            if let Some(Some(table)) = self.built.get(f).cloned() {
                self.place(object, *f, table)?;
            }
        }
        let mut value = kestrel_proc_mappings {
            count: mappings.len() as u32,
            ..Default::default()
        };
        for (slot, m) in value.mappings.iter_mut().zip(&mappings) {
            *slot = kestrel_mapping {
                start: m.start,
                end: m.end,
                bias: m.start.wrapping_sub(m.pgoff),
                file_key: self.loaded.get(&m.file).map_or(0, |l| l.key),
            };
        }
        find(object, "proc_mappings")?
            .update(&pid.to_ne_bytes(), bytes_of(&value), MapFlags::ANY)
            .map_err(map_error("proc_mappings"))?;
        if self.processes.insert(pid, files).is_none() {
            self.stats.processes += 1;
        }
        Ok(())
    }

    fn build(&mut self, pid: u32, m: &ExecMapping) -> Option<Arc<Table>> {
        let started = Instant::now();
        let bytes = std::fs::read(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))
            .or_else(|_| {
                std::fs::read(format!(
                    "/proc/{pid}/root/{}",
                    m.path.trim_start_matches('/')
                ))
            });
        let result = match bytes {
            Ok(bytes) => kestrel_unwind::build(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        self.stats.build_us += started.elapsed().as_micros() as u64;
        match result {
            Ok(built) => Some(Arc::new(built.table)),
            Err(why) => {
                debug!(path = %m.path, %why, "no unwind table: frame pointers there");
                self.stats.files_without_table += 1;
                None
            }
        }
    }

    /// Puts `table` in the pools, evicting least recently used files first
    /// when it does not fit.
    fn place(
        &mut self,
        object: &Object,
        file: FileId,
        table: Arc<Table>,
    ) -> Result<(), ProbeError> {
        // Capacities in u32s (rows, pages) and rules; a table takes whole
        // chunks of rows and pages.
        let cap_rows = u64::from(capacity(object, "unwind_rows")?) * CHUNK;
        let cap_pages = u64::from(capacity(object, "unwind_pages")?) * CHUNK;
        let cap_rules = u64::from(capacity(object, "unwind_rules")?);
        let need = |t: &Table| {
            (
                chunked(t.rows().len()),
                chunked(t.pages().len()),
                t.rules().len() as u64,
            )
        };
        let (r, p, u) = need(&table);
        if r > cap_rows || p > cap_pages || u > cap_rules {
            self.stats.tables_too_large += 1;
            warn!(
                bytes = table.bytes(),
                "an unwind table is larger than the unwind cap: frame pointers for that file; raise memory.unwind_cap_bytes"
            );
            return Ok(());
        }
        let fits = |s: &Unwinder| {
            u64::from(s.rows_used) + r <= cap_rows
                && u64::from(s.pages_used) + p <= cap_pages
                && u64::from(s.rules_used) + u <= cap_rules
        };
        if !fits(self) {
            // Evict by least recent use until the live tables plus this one fit.
            let mut live: (u64, u64, u64) = self.loaded.values().fold((0, 0, 0), |a, l| {
                let n = need(&l.table);
                (a.0 + n.0, a.1 + n.1, a.2 + n.2)
            });
            let mut order: Vec<(u64, FileId)> =
                self.loaded.iter().map(|(f, l)| (l.last_used, *f)).collect();
            order.sort_unstable();
            let map = find(object, "unwind_files")?;
            for (_, f) in order {
                if live.0 + r <= cap_rows && live.1 + p <= cap_pages && live.2 + u <= cap_rules {
                    break;
                }
                if let Some(l) = self.loaded.remove(&f) {
                    let n = need(&l.table);
                    live = (live.0 - n.0, live.1 - n.1, live.2 - n.2);
                    self.stats.tables_evicted += 1;
                    self.stats.table_bytes = self
                        .stats
                        .table_bytes
                        .saturating_sub(l.table.bytes() as u64);
                    map.delete(&l.key.to_ne_bytes())
                        .map_err(map_error("unwind_files"))?;
                }
            }
            // Compact: take every remaining table out of BPF's sight, then
            // write them again from the start.
            for l in self.loaded.values() {
                map.delete(&l.key.to_ne_bytes())
                    .map_err(map_error("unwind_files"))?;
            }
            self.rows_used = 0;
            self.pages_used = 0;
            self.rules_used = 0;
            let remaining: Vec<(FileId, Loaded)> = self.loaded.drain().collect();
            for (f, l) in remaining {
                self.write(object, f, l.key, l.table, l.last_used)?;
            }
        }
        let key = self.next_key;
        self.next_key += 1;
        self.stats.tables_loaded += 1;
        self.stats.table_bytes += table.bytes() as u64;
        let clock = self.clock;
        self.write(object, file, key, table, clock)
    }

    /// Writes a table at the pools' current ends and publishes its file entry
    /// last (BPF sees either nothing or a complete table).
    fn write(
        &mut self,
        object: &Object,
        file: FileId,
        key: u64,
        table: Arc<Table>,
        last_used: u64,
    ) -> Result<(), ProbeError> {
        let row_base = self.rows_used;
        let page_base = self.pages_used;
        let rule_base = self.rules_used;
        let rows = chunk_bytes(table.rows().iter().copied());
        let pages = chunk_bytes(table.pages().iter().map(|p| p + row_base));
        let rules: Vec<u8> = table
            .rules()
            .iter()
            .flat_map(|r| {
                let mut b = [0u8; 8];
                b[0..4].copy_from_slice(&r.cfa_offset.to_ne_bytes());
                b[4..6].copy_from_slice(&r.rbp_offset.to_ne_bytes());
                b[6] = r.kind;
                b[7] = r.rbp_kind;
                b
            })
            .collect();
        let chunk_size = CHUNK as usize * 4;
        // Bases are multiples of CHUNK: every table takes whole chunks.
        let to_chunk = |base: u32| base / CHUNK as u32;
        write_array(object, "unwind_rows", to_chunk(row_base), &rows, chunk_size)?;
        write_array(
            object,
            "unwind_pages",
            to_chunk(page_base),
            &pages,
            chunk_size,
        )?;
        write_array(object, "unwind_rules", rule_base, &rules, 8)?;
        // `place` checked each count against the pool's capacity, a u32.
        self.rows_used += chunked(table.rows().len()) as u32;
        self.pages_used += chunked(table.pages().len()) as u32;
        self.rules_used += table.rules().len() as u32;
        let entry = kestrel_unwind_file {
            page_base,
            page_count: table.pages().len().saturating_sub(1) as u32,
            rule_base,
            reserved: 0,
        };
        find(object, "unwind_files")?
            .update(&key.to_ne_bytes(), bytes_of(&entry), MapFlags::ANY)
            .map_err(map_error("unwind_files"))?;
        self.loaded.insert(
            file,
            Loaded {
                key,
                table,
                last_used,
            },
        );
        Ok(())
    }

    /// Forgets processes that are gone and removes their `proc_mappings` entries.
    pub(crate) fn forget_exited(&mut self, object: &Object) {
        let gone: Vec<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        if gone.is_empty() {
            return;
        }
        if let Ok(map) = find(object, "proc_mappings") {
            for pid in gone {
                self.processes.remove(&pid);
                let _ = map.delete(&pid.to_ne_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_file_mappings_sorted() {
        let text = "\
7f0000002000-7f0000003000 r-xp 00002000 08:01 42   /usr/lib/libc.so.6
55d000000000-55d000001000 r--p 00000000 fd:00 7 /bin/x
55d000001000-55d000002000 r-xp 00001000 fd:00 7 /bin/x
7fff00000000-7fff00001000 r-xp 00000000 00:00 0 [vdso]
7f0000010000-7f0000011000 r-xp 00000000 08:01 43 /tmp/a b (deleted)
";
        let m = parse_exec_mappings(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].start, 0x55d000001000);
        assert_eq!(m[0].pgoff, 0x1000);
        assert_eq!(m[0].file, (0xfd << 32, 7));
        assert_eq!(m[1].path, "/usr/lib/libc.so.6");
        assert_eq!(m[1].file, (8 << 32 | 1, 42));
        assert_eq!(m[2].path, "/tmp/a b (deleted)");
        assert_eq!((m[3].path.as_str(), m[3].file), ("[vdso]", NO_FILE));
    }
}
