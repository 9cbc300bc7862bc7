//! Kestrel's symbols: file identities, the one global symbol store and the
//! symbolizers (ELF/DWARF through blazesym, the kernel through kallsyms, JIT code
//! through perf maps).
//!
//! Every frame, whatever its kind, is looked up in one store keyed by
//! `(FileId, address_or_line)` ([`FrameKey`]): a foyer hybrid cache whose memory
//! tier is bounded in bytes and whose disk tier survives restarts. Misses go,
//! batched by file, to a single thread that owns the blazesym `Symbolizer`.
//!
//! Processes are captured on first sight ([`Symbols::observe_process`]): their
//! executable mappings, with each mapped file opened and identified once, so
//! stacks of a process that has exited are still symbolized.

mod cache_dir;
mod debuginfo;
mod files;
mod fsutil;
pub mod identity;
mod jit;
pub mod parse;
mod process;
mod recovery;
pub mod store;
mod symbolizer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use kestrel_model::{Frame, FrameKind, Mapping, ProcessInfo};
use serde::{Deserialize, Serialize};

pub use crate::cache_dir::default_cache_dir;
pub use crate::identity::FileId;
pub use crate::parse::{
    container_id_from_cgroup, parse_maps_line, parse_perf_map_line, MapsEntry, ParseError,
    PerfMapEntry,
};
pub use crate::recovery::Recovered;
pub use crate::store::{
    CloseOutcome, CloseReport, FrameKey, StoreConfig, SymbolFrame, SymbolStore, SymbolValue,
    CLOSE_BOUND,
};

use crate::debuginfo::{DebugConfig, DebugCounters, DebugInfo, DebuginfodConfig};
use crate::files::{FileRegistry, OpenFile};
use crate::jit::PerfMapCounters;
use crate::process::{Backing, CaptureReport, ProcessState};
pub use crate::symbolizer::UNKNOWN_NO_SYMBOLS;
use crate::symbolizer::{Batch, BatchSource, SymbolizerHandle};

/// Configuration of the symbol store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SymbolsConfig {
    /// Where the disk tier lives. `None`: `/var/cache/kestrel` as root,
    /// `$XDG_CACHE_HOME/kestrel` (or `~/.cache/kestrel`) otherwise.
    pub cache_dir: Option<PathBuf>,
    /// Bound of the memory tier, in bytes (entries are weighed by their real size).
    pub memory_bytes: u64,
    /// Bound of the disk tier, in bytes; 0 disables it. Values below 8 MiB are
    /// raised to 8 MiB. Each entry takes at least 4 KiB on disk.
    pub disk_bytes: u64,
    /// ELF files larger than this are symbolized from their symbol table only
    /// (names, no DWARF lines or inlined frames): parsing the DWARF of a huge
    /// binary costs the agent hundreds of MB. Files above an eighth of it are
    /// also dropped from the symbolizer's cache after each batch, so at most one
    /// large file is held parsed at a time.
    pub dwarf_max_file_bytes: u64,
    /// Roots of separate debug files for files without symbols of their own:
    /// `<dir>/.build-id/xx/rest.debug` by build ID and `<dir>/<file's dir>/<link>`
    /// by `.gnu_debuglink`. Looked up inside a process's root first.
    pub debug_dirs: Vec<PathBuf>,
    /// debuginfod servers asked (in order) for debug files no local directory
    /// has. Empty: none (no network access).
    pub debuginfod_urls: Vec<String>,
    /// Also use the servers in `DEBUGINFOD_URLS`.
    pub debuginfod_honour_env: bool,
    /// Allow `http://` servers (HTTPS only otherwise), e.g. one on loopback.
    pub debuginfod_allow_http: bool,
    /// Bound of one download, in seconds.
    pub debuginfod_timeout_s: u64,
    /// Bound of the downloaded debug files on disk (under `cache_dir`), in
    /// bytes; the oldest are removed first. Also the largest file fetched.
    pub debuginfod_cache_bytes: u64,
    /// Downloads in flight at once.
    pub debuginfod_max_in_flight: u32,
}

impl Default for SymbolsConfig {
    fn default() -> Self {
        SymbolsConfig {
            cache_dir: None,
            memory_bytes: 32 * 1024 * 1024,
            disk_bytes: 256 * 1024 * 1024,
            dwarf_max_file_bytes: 64 * 1024 * 1024,
            debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
            debuginfod_urls: Vec::new(),
            debuginfod_honour_env: false,
            debuginfod_allow_http: false,
            debuginfod_timeout_s: 30,
            debuginfod_cache_bytes: 1024 * 1024 * 1024,
            debuginfod_max_in_flight: 2,
        }
    }
}

/// Why [`Symbols::new`] failed. Disk-tier problems are not errors: the store
/// rebuilds its directory or runs memory-only, with a warning.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    #[error(
        "Symbols::new needs a running tokio runtime (the store's disk tier runs its writers on it); \
         call it from inside the runtime"
    )]
    NoRuntime,
    #[error("cannot build the symbol store: {0}; check memory_bytes and disk_bytes")]
    Store(#[source] foyer::Error),
    #[error("cannot start the symbolizer thread: {0}; the host may be out of threads or memory")]
    Thread(#[source] std::io::Error),
}

/// Counters of the store and the symbolizers, for self-metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Lookups answered by the store (memory or disk).
    pub hits: u64,
    /// Lookups the store could not answer (then symbolized or named from a perf map).
    pub misses: u64,
    /// Part of `hits` answered by the disk tier.
    pub disk_hits: u64,
    /// Entries evicted from the memory tier.
    pub evictions: u64,
    /// Bytes the memory tier holds (sum of entry weights) and may hold.
    pub memory_bytes: u64,
    pub memory_capacity_bytes: u64,
    pub memory_entries: u64,
    /// Bytes the disk tier's files occupy on disk, and its bound (0 = off).
    pub disk_bytes: u64,
    pub disk_capacity_bytes: u64,
    /// Calls into blazesym (one per file batch).
    pub symbolizer_calls: u64,
    /// Frames the symbolizer looked up because the store did not know them: in
    /// ELF files (executables, libraries), and in kallsyms.
    pub symbolized_file_frames: u64,
    pub symbolized_kernel_frames: u64,
    pub processes_tracked: u64,
    /// Mapped files held open for symbolization.
    pub open_files: u64,
    /// Perf map reads that brought new lines.
    pub perf_map_reloads: u64,
    pub perf_map_malformed_lines: u64,
    /// Unreadable mappings, failed symbolizer batches, disk-tier read errors.
    pub errors: u64,
    /// What the disk tier held for this process when the store opened: distinct
    /// entries, their bytes as written (each occupies a multiple of 4 KiB on
    /// disk), and the blocks they are in.
    pub recovered_entries: u64,
    pub recovered_bytes: u64,
    pub recovered_blocks: u64,
    /// How long opening the store took, recovery included.
    pub open_ms: u64,
    /// How the close ended (`open` until then) and how long it took.
    pub close_outcome: CloseOutcome,
    pub close_ms: u64,
    /// Frames of ELF files named, by where the name came from: the file's own
    /// `.symtab`/DWARF, its `.dynsym` only, a build-id directory, a
    /// `.gnu_debuglink` file, a debuginfod download.
    pub named_symtab: u64,
    pub named_dynsym: u64,
    pub named_build_id_dir: u64,
    pub named_debuglink: u64,
    pub named_debuginfod: u64,
    /// Frames of ELF files no symbol covers (named `[unknown: no symbols]`),
    /// and frames reported by address while their debug file downloads.
    pub unnamed_frames: u64,
    pub pending_frames: u64,
    /// Candidate debug files refused (build ID or CRC differs, unreadable).
    pub debug_files_refused: u64,
    /// debuginfod: files downloaded and their bytes, build IDs no server has,
    /// failed downloads (server down, timeout, wrong file), cache evictions.
    pub debuginfod_downloads: u64,
    pub debuginfod_bytes: u64,
    pub debuginfod_not_found: u64,
    pub debuginfod_failures: u64,
    pub debuginfod_evictions: u64,
}

/// One process image: a pid and which execve of it made the image (the low 16
/// bits of the kernel's `self_exec_id`, which every sample carries). An exec
/// keeps the pid but replaces every mapping, so each image is captured and
/// symbolized on its own. `exec_seq: None` is the image of a caller that knows
/// only the pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessImage {
    pub pid: u32,
    pub exec_seq: Option<u16>,
}

impl ProcessImage {
    pub fn new(pid: u32, exec_seq: u16) -> ProcessImage {
        ProcessImage {
            pid,
            exec_seq: Some(exec_seq),
        }
    }
}

impl From<u32> for ProcessImage {
    fn from(pid: u32) -> ProcessImage {
        ProcessImage {
            pid,
            exec_seq: None,
        }
    }
}

/// The images captured of one pid, oldest first.
type Images = Vec<(Option<u16>, Arc<ProcessState>)>;

/// The symbol service: process capture, the global store and the symbolizers.
/// `Send + Sync`; share it behind an `Arc`.
pub struct Symbols {
    store: SymbolStore,
    symbolizer: SymbolizerHandle,
    files: FileRegistry,
    processes: RwLock<HashMap<u32, Images>>,
    kernel_id: FileId,
    perf_maps: PerfMapCounters,
    errors: AtomicU64,
    /// Frames sent to the symbolizer: of ELF files, of the kernel.
    symbolized_file_frames: AtomicU64,
    symbolized_kernel_frames: AtomicU64,
    debug_counters: Arc<DebugCounters>,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("store", &self.store)
            .field("kernel_id", &self.kernel_id)
            .finish_non_exhaustive()
    }
}

/// What one stack slot resolves to before the store is asked.
enum Plan {
    Lookup {
        key: FrameKey,
        kind: FrameKind,
        mapping: Option<Arc<Mapping>>,
        source: Source,
    },
    Unknown {
        kind: FrameKind,
        mapping: Option<Arc<Mapping>>,
    },
}

#[derive(Clone)]
enum Source {
    Elf(Arc<OpenFile>),
    Jit(Arc<str>),
    Kernel,
}

impl Symbols {
    /// Opens the store (creating or repairing its cache directory) and starts the
    /// symbolizer thread. Must run inside a tokio runtime.
    pub async fn new(config: SymbolsConfig) -> Result<Symbols, SymbolsError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SymbolsError::NoRuntime);
        }
        let store = SymbolStore::open(&StoreConfig {
            dir: Some(config.cache_dir.clone().unwrap_or_else(default_cache_dir)),
            memory_bytes: config.memory_bytes,
            disk_bytes: config.disk_bytes,
        })
        .await
        .map_err(SymbolsError::Store)?;
        let debug_counters = Arc::new(DebugCounters::default());
        let urls = debuginfo::server_urls(
            &config.debuginfod_urls,
            config.debuginfod_honour_env,
            config.debuginfod_allow_http,
        );
        let debug_config = DebugConfig {
            debug_dirs: config.debug_dirs.clone(),
            debuginfod: (!urls.is_empty()).then(|| DebuginfodConfig {
                urls,
                timeout: std::time::Duration::from_secs(config.debuginfod_timeout_s.max(1)),
                dir: config
                    .cache_dir
                    .clone()
                    .unwrap_or_else(default_cache_dir)
                    .join("debuginfod"),
                cache_bytes: config.debuginfod_cache_bytes,
                max_in_flight: config.debuginfod_max_in_flight.max(1) as usize,
                allow_http: config.debuginfod_allow_http,
            }),
        };
        let debug = DebugInfo::new(debug_config, debug_counters.clone());
        let (symbolizer, _join) = SymbolizerHandle::spawn(
            config.dwarf_max_file_bytes,
            debug,
            config.debug_dirs.clone(),
        )
        .map_err(SymbolsError::Thread)?;
        let (kernel_id, _) = identity::kernel_file_id();
        Ok(Symbols {
            store,
            files: FileRegistry::new(symbolizer.clone()),
            symbolizer,
            processes: RwLock::new(HashMap::new()),
            kernel_id,
            perf_maps: PerfMapCounters::default(),
            errors: AtomicU64::new(0),
            symbolized_file_frames: AtomicU64::new(0),
            symbolized_kernel_frames: AtomicU64::new(0),
            debug_counters,
        })
    }

    /// Captures a process image on first sight: executable mappings (each
    /// mapped file opened and identified once), executable, name, build ID,
    /// container ID. A no-op (one read-locked map lookup) when already
    /// captured. Never fails: a vanished pid is remembered as gone with
    /// whatever could be read.
    ///
    /// A sample with a new `exec_seq` for a known pid (the process called
    /// execve) gets a capture of its own, beside the earlier image's, so the
    /// samples of both are named. The captures stand until
    /// [`Symbols::forget_process`] (or [`Symbols::forget_older_images`]): a pid
    /// reused by a new process of the same `exec_seq` before that keeps the old
    /// capture (libraries loaded later are picked up when an address falls
    /// outside every captured mapping of the newest image).
    ///
    /// A process with anonymous executable memory (a JIT) gets its perf map
    /// opened now: JITs commonly delete it at exit, and the held descriptor
    /// still reads it, appends included, when the process is symbolized later.
    pub fn observe_process(&self, image: impl Into<ProcessImage>) {
        let image = image.into();
        let (process, _) = self.process(image);
        let jit = process
            .mappings()
            .iter()
            .any(|m| matches!(m.backing, Backing::Anonymous));
        if jit && process.alive() {
            let mut perf_map = process.perf_map.lock().unwrap_or_else(|p| p.into_inner());
            perf_map.refresh(image.pid, process.ns_pid, true, &self.perf_maps);
        }
    }

    /// What was captured about this process image (captured now if it was not
    /// yet).
    pub fn process_info(&self, image: impl Into<ProcessImage>) -> Arc<ProcessInfo> {
        self.process(image.into()).0.info.clone()
    }

    /// Drops everything captured about `pid`, every image; files no other
    /// process maps are closed.
    pub fn forget_process(&self, pid: u32) {
        let removed = self
            .processes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        drop(removed);
    }

    /// Drops the images of `pid` that an execve replaced, keeping the newest
    /// capture: for a process that lives on after exec, once the samples of its
    /// earlier image have been symbolized.
    pub fn forget_older_images(&self, pid: u32) {
        let mut processes = self.processes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(images) = processes.get_mut(&pid) {
            let older = images.len().saturating_sub(1);
            images.drain(..older);
        }
    }

    /// The capture of `image` (made now if there is none) and whether it is the
    /// pid's newest image: only that one may re-read `/proc/PID/maps`, which
    /// describes the image running now.
    fn process(&self, image: ProcessImage) -> (Arc<ProcessState>, bool) {
        let find = |images: &Images| {
            images
                .iter()
                .position(|(seq, _)| *seq == image.exec_seq)
                .map(|at| (images[at].1.clone(), at + 1 == images.len()))
        };
        if let Some(found) = self
            .processes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&image.pid)
            .and_then(find)
        {
            return found;
        }
        let mut report = CaptureReport::default();
        let state = Arc::new(process::capture(image.pid, &self.files, &mut report));
        self.errors.fetch_add(report.errors, Ordering::Relaxed);
        let mut processes = self.processes.write().unwrap_or_else(|p| p.into_inner());
        let images = processes.entry(image.pid).or_default();
        // Another thread may have captured it meanwhile: keep the first.
        if let Some(found) = find(images) {
            return found;
        }
        images.push((image.exec_seq, state.clone()));
        (state, true)
    }

    /// Symbolizes a user stack of a process image, leaf first (`stack[0]` is the sampled
    /// instruction pointer, the others return addresses, looked up at `addr - 1`).
    /// Returns frames leaf first with inline chains expanded (innermost first,
    /// `inlined = true`); unresolvable addresses become [`Frame::unknown`] with
    /// their mapping when known. Works after the process exited.
    pub async fn symbolize_user(
        &self,
        image: impl Into<ProcessImage>,
        stack: &[u64],
    ) -> Vec<Frame> {
        let plans = self.plan_user(image.into(), stack);
        let values = self.resolve(&plans).await;
        assemble(stack, &plans, &values)
    }

    /// Symbolizes many stacks with one symbolizer request: every miss of every
    /// stack, batched by file. `user` stacks are `(process image, stack)`; `kernel` stacks
    /// go through kallsyms. Same address rules and output as the single-stack
    /// calls, in input order.
    pub async fn symbolize_many(
        &self,
        user: &[(ProcessImage, &[u64])],
        kernel: &[&[u64]],
    ) -> (Vec<Vec<Frame>>, Vec<Vec<Frame>>) {
        let mut plans = Vec::new();
        let mut spans = Vec::with_capacity(user.len() + kernel.len());
        for (image, stack) in user {
            let p = self.plan_user(*image, stack);
            spans.push((plans.len(), p.len()));
            plans.extend(p);
        }
        for stack in kernel {
            let p = self.plan_kernel(stack);
            spans.push((plans.len(), p.len()));
            plans.extend(p);
        }
        let values = self.resolve(&plans).await;
        let stacks = user.iter().map(|(_, s)| *s).chain(kernel.iter().copied());
        let mut out: Vec<Vec<Frame>> = spans
            .iter()
            .zip(stacks)
            .map(|(&(at, len), stack)| assemble(stack, &plans[at..at + len], &values[at..at + len]))
            .collect();
        let kernel_frames = out.split_off(user.len());
        (out, kernel_frames)
    }

    fn plan_user(&self, image: ProcessImage, stack: &[u64]) -> Vec<Plan> {
        let pid = image.pid;
        let (process, newest) = self.process(image);
        let mut mappings = process.mappings();
        // An image that an exec replaced must not take the new image's maps.
        let mut maps_reread = !newest;
        let mut perf_map_refreshed = false;
        let mut plans = Vec::with_capacity(stack.len());
        for (i, &address) in stack.iter().enumerate() {
            if address == 0 {
                // A zero terminator or a lost frame: nothing to look up.
                plans.push(Plan::Unknown {
                    kind: FrameKind::Native,
                    mapping: None,
                });
                continue;
            }
            let lookup = lookup_address(i, address);
            let mut found = ProcessState::find(&mappings, lookup).cloned();
            if found.is_none() && !maps_reread {
                maps_reread = true;
                let mut report = CaptureReport::default();
                if process.reread_maps(pid, &self.files, &mut report) {
                    mappings = process.mappings();
                    found = ProcessState::find(&mappings, lookup).cloned();
                }
                self.errors.fetch_add(report.errors, Ordering::Relaxed);
            }
            let plan = match found {
                Some(m) => match &m.backing {
                    Backing::File(file) => Plan::Lookup {
                        key: FrameKey {
                            file: file.id,
                            address_or_line: lookup.wrapping_sub(m.start).wrapping_add(m.offset),
                        },
                        kind: FrameKind::Native,
                        mapping: Some(m.model.clone()),
                        source: Source::Elf(file.clone()),
                    },
                    Backing::Anonymous => self.jit_plan(
                        &process,
                        pid,
                        lookup,
                        Some(m.model.clone()),
                        &mut perf_map_refreshed,
                    ),
                    Backing::Opaque => Plan::Unknown {
                        kind: FrameKind::Native,
                        mapping: Some(m.model.clone()),
                    },
                },
                None => self.jit_plan(&process, pid, lookup, None, &mut perf_map_refreshed),
            };
            plans.push(plan);
        }
        plans
    }

    fn jit_plan(
        &self,
        process: &ProcessState,
        pid: u32,
        address: u64,
        mapping: Option<Arc<Mapping>>,
        refreshed: &mut bool,
    ) -> Plan {
        let mut perf_map = process.perf_map.lock().unwrap_or_else(|p| p.into_inner());
        if !*refreshed {
            *refreshed = true;
            perf_map.refresh(pid, process.ns_pid, process.alive(), &self.perf_maps);
        }
        let kind = if mapping.is_some() {
            FrameKind::Jit
        } else {
            FrameKind::Native
        };
        match perf_map.lookup(address) {
            Some(region) => Plan::Lookup {
                key: FrameKey {
                    file: region.id,
                    address_or_line: 0,
                },
                kind: FrameKind::Jit,
                mapping,
                source: Source::Jit(region.name.clone()),
            },
            None => Plan::Unknown { kind, mapping },
        }
    }

    /// Symbolizes a kernel stack (leaf first, same address rules as
    /// [`Symbols::symbolize_user`]) from kallsyms.
    pub async fn symbolize_kernel(&self, stack: &[u64]) -> Vec<Frame> {
        let plans = self.plan_kernel(stack);
        let values = self.resolve(&plans).await;
        assemble(stack, &plans, &values)
    }

    fn plan_kernel(&self, stack: &[u64]) -> Vec<Plan> {
        stack
            .iter()
            .enumerate()
            .map(|(i, &address)| {
                if address == 0 {
                    return Plan::Unknown {
                        kind: FrameKind::Kernel,
                        mapping: None,
                    };
                }
                Plan::Lookup {
                    key: FrameKey {
                        file: self.kernel_id,
                        address_or_line: lookup_address(i, address),
                    },
                    kind: FrameKind::Kernel,
                    mapping: None,
                    source: Source::Kernel,
                }
            })
            .collect()
    }

    /// Answers every lookup plan: memory tier, then disk tier, then perf map names
    /// or one symbolizer request with a batch per file. New values go into the
    /// store.
    async fn resolve(&self, plans: &[Plan]) -> Vec<Option<SymbolValue>> {
        let mut values: Vec<Option<SymbolValue>> = vec![None; plans.len()];
        let mut missing: Vec<(FrameKey, Source)> = Vec::new();
        let mut missing_keys: std::collections::HashSet<FrameKey> =
            std::collections::HashSet::new();
        for (i, plan) in plans.iter().enumerate() {
            if let Plan::Lookup { key, source, .. } = plan {
                values[i] = self.store.get_memory(key);
                if values[i].is_none() && missing_keys.insert(*key) {
                    missing.push((*key, source.clone()));
                }
            }
        }
        if missing.is_empty() {
            return values;
        }

        let mut found: HashMap<FrameKey, SymbolValue> = HashMap::with_capacity(missing.len());
        let mut batches: Vec<(Batch, Vec<FrameKey>)> = Vec::new();
        for (key, source) in missing {
            if let Some(v) = self.store.get(&key).await {
                found.insert(key, v);
                continue;
            }
            match source {
                Source::Jit(name) => {
                    let v = SymbolValue::new(vec![SymbolFrame {
                        function: Some(name),
                        file: None,
                        line: None,
                    }]);
                    self.store.insert(key, v.clone()).await;
                    found.insert(key, v);
                }
                Source::Elf(file) => {
                    let batch = batches.iter_mut().find(|(b, _)| match &b.source {
                        BatchSource::Elf(f) => f.id == file.id,
                        BatchSource::Kernel => false,
                    });
                    match batch {
                        Some((b, keys)) => {
                            b.addresses.push(key.address_or_line);
                            keys.push(key);
                        }
                        None => batches.push((
                            Batch {
                                source: BatchSource::Elf(file),
                                addresses: vec![key.address_or_line],
                            },
                            vec![key],
                        )),
                    }
                }
                Source::Kernel => {
                    let batch = batches
                        .iter_mut()
                        .find(|(b, _)| matches!(b.source, BatchSource::Kernel));
                    match batch {
                        Some((b, keys)) => {
                            b.addresses.push(key.address_or_line);
                            keys.push(key);
                        }
                        None => batches.push((
                            Batch {
                                source: BatchSource::Kernel,
                                addresses: vec![key.address_or_line],
                            },
                            vec![key],
                        )),
                    }
                }
            }
        }

        if !batches.is_empty() {
            for (batch, keys) in &batches {
                let counter = match batch.source {
                    BatchSource::Elf(_) => &self.symbolized_file_frames,
                    BatchSource::Kernel => &self.symbolized_kernel_frames,
                };
                counter.fetch_add(keys.len() as u64, Ordering::Relaxed);
            }
            let (jobs, keys): (Vec<Batch>, Vec<Vec<FrameKey>>) = batches.into_iter().unzip();
            match self.symbolizer.symbolize(jobs).await {
                Some(results) => {
                    for (result, keys) in results.into_iter().zip(keys) {
                        match result {
                            Ok(batch) => {
                                let values = batch.values.into_iter().zip(batch.cacheable);
                                for (key, (v, cacheable)) in keys.into_iter().zip(values) {
                                    if cacheable {
                                        self.store.insert(key, v.clone()).await;
                                    }
                                    found.insert(key, v);
                                }
                            }
                            Err(e) => {
                                // Not cached: the file may be readable next time.
                                self.errors.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(error = %e, "symbolization batch failed");
                            }
                        }
                    }
                }
                None => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("the symbolizer thread is gone; frames stay unknown");
                }
            }
        }

        for (i, plan) in plans.iter().enumerate() {
            if let (None, Plan::Lookup { key, .. }) = (&values[i], plan) {
                values[i] = found.get(key).cloned();
            }
        }
        values
    }

    /// Waits (at most [`CLOSE_BOUND`]) for the disk tier to write what was
    /// inserted and closes it. Await it inside the runtime before exiting, so a
    /// restart finds every entry: dropping the store instead leaves the last
    /// writes to tasks that the runtime's shutdown cancels. Never fails; a disk
    /// that fails or stalls is a warning and shows in the report and the stats.
    pub async fn close(&self) -> CloseReport {
        self.close_within(CLOSE_BOUND).await
    }

    /// [`Symbols::close`] with another bound.
    pub async fn close_within(&self, bound: std::time::Duration) -> CloseReport {
        self.store.close(bound).await
    }

    /// The global store (for benchmarks and self-metrics).
    pub fn store(&self) -> &SymbolStore {
        &self.store
    }

    pub fn stats(&self) -> StoreStats {
        let c = self.store.counters();
        let d = &self.debug_counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            hits: c.hits,
            misses: c.misses,
            disk_hits: c.disk_hits,
            evictions: c.evictions,
            memory_bytes: c.memory_bytes,
            memory_capacity_bytes: c.memory_capacity_bytes,
            memory_entries: c.memory_entries,
            disk_bytes: c.disk_bytes,
            disk_capacity_bytes: c.disk_capacity_bytes,
            symbolizer_calls: self.symbolizer.calls(),
            symbolized_file_frames: self.symbolized_file_frames.load(Ordering::Relaxed),
            symbolized_kernel_frames: self.symbolized_kernel_frames.load(Ordering::Relaxed),
            processes_tracked: self
                .processes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .len() as u64,
            open_files: self.files.open_files() as u64,
            perf_map_reloads: self.perf_maps.reloads.load(Ordering::Relaxed),
            perf_map_malformed_lines: self.perf_maps.malformed_lines.load(Ordering::Relaxed),
            errors: c.errors + self.errors.load(Ordering::Relaxed),
            recovered_entries: c.recovered.entries,
            recovered_bytes: c.recovered.bytes,
            recovered_blocks: c.recovered.blocks,
            open_ms: c.open_time.as_millis() as u64,
            close_outcome: c.close.outcome,
            close_ms: c.close.elapsed.as_millis() as u64,
            named_symtab: load(&d.named_symtab),
            named_dynsym: load(&d.named_dynsym),
            named_build_id_dir: load(&d.named_build_id_dir),
            named_debuglink: load(&d.named_debuglink),
            named_debuginfod: load(&d.named_debuginfod),
            unnamed_frames: load(&d.unnamed),
            pending_frames: load(&d.pending),
            debug_files_refused: load(&d.refused),
            debuginfod_downloads: load(&d.downloads),
            debuginfod_bytes: load(&d.download_bytes),
            debuginfod_not_found: load(&d.not_found),
            debuginfod_failures: load(&d.failures),
            debuginfod_evictions: load(&d.cache_evictions),
        }
    }
}

/// The sampled instruction pointer is looked up as is; a return address points
/// after the call, possibly into the next function or line, so `addr - 1` is
/// looked up for it.
fn lookup_address(index: usize, address: u64) -> u64 {
    if index == 0 {
        address
    } else {
        address.saturating_sub(1)
    }
}

fn assemble(stack: &[u64], plans: &[Plan], values: &[Option<SymbolValue>]) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(stack.len());
    for ((&address, plan), value) in stack.iter().zip(plans).zip(values) {
        let (kind, mapping) = match plan {
            Plan::Lookup { kind, mapping, .. } | Plan::Unknown { kind, mapping } => {
                (*kind, mapping)
            }
        };
        match value {
            Some(v) if !v.is_unknown() => {
                let n = v.frames().len();
                for (j, f) in v.frames().iter().enumerate() {
                    frames.push(Frame {
                        kind,
                        address,
                        function: f.function.clone(),
                        file: f.file.clone(),
                        line: f.line,
                        inlined: j + 1 < n,
                        mapping: mapping.clone(),
                    });
                }
            }
            _ => frames.push(Frame::unknown(kind, address, mapping.clone())),
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn symbols_is_send_and_sync() {
        assert_send_sync::<Symbols>();
    }

    /// Compile-time check: the binary spawns these futures on a multi-threaded
    /// runtime.
    #[allow(dead_code)]
    fn futures_are_send(symbols: &Symbols) {
        fn is_send<T: Send>(_: T) {}
        is_send(Symbols::new(SymbolsConfig::default()));
        is_send(symbols.symbolize_user(1, &[]));
        is_send(symbols.symbolize_kernel(&[]));
        is_send(symbols.close());
    }

    #[test]
    fn config_defaults_and_partial_toml_like_input() {
        let c: SymbolsConfig = serde_json::from_str(r#"{"memory_bytes": 1024}"#).unwrap();
        assert_eq!(c.memory_bytes, 1024);
        assert_eq!(c.disk_bytes, SymbolsConfig::default().disk_bytes);
        assert!(serde_json::from_str::<SymbolsConfig>(r#"{"memory": 1}"#).is_err());
    }

    #[test]
    fn new_outside_a_runtime_is_an_error() {
        use std::future::Future;
        let mut fut = Box::pin(Symbols::new(SymbolsConfig::default()));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let result = fut.as_mut().poll(&mut cx);
        assert!(matches!(
            result,
            std::task::Poll::Ready(Err(SymbolsError::NoRuntime))
        ));
    }
}
