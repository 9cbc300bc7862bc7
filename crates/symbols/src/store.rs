//! The global symbol store: ONE foyer `HybridCache<FrameKey, SymbolValue>` shared by
//! native, kernel and JIT frames.
//!
//! - The memory tier is bounded in bytes: the weighter charges each entry its real
//!   heap footprint plus foyer's per-entry bookkeeping ([`ENTRY_OVERHEAD_BYTES`]).
//! - The disk tier lives in the cache directory (see [`crate::cache_dir`]). Every
//!   new entry is handed to foyer's flusher on insertion, which writes it within
//!   milliseconds; [`SymbolStore::close`] waits (bounded) for the last writes and
//!   reads the last one back. What the next open finds is counted in the stats
//!   ([`crate::recovery`]).
//! - foyer drops entries larger than a disk block silently; values are therefore
//!   capped ([`MAX_ENCODED_VALUE_BYTES`]) far below the block size, checked at
//!   compile time.
//! - foyer writes every entry 4 KiB-aligned on disk, so the disk tier holds at most
//!   `disk_bytes / 4096` entries whatever their size.
//!
//! Why a restart used to find nothing (issue 20), and what this module does about
//! it, from foyer 0.22's source:
//! - `HybridCache` writes to disk in tasks on the tokio runtime (the flusher, and
//!   per batch an I/O task that writes the entries, then the blob index that makes
//!   them recoverable). Dropped without an awaited `close()`, its `Drop` only
//!   *spawns* a close. `kestrel record` never closed the store and dropped the
//!   runtime right after, and the runtime's shutdown cancels those tasks: queued
//!   entries are never written, and a batch whose data write (on the blocking
//!   pool, let finish) went through but whose index write did not is invisible to
//!   recovery ("Recovers 0 blocks with data"). Whether the spawned close ran
//!   before the shutdown was a race; when it ran after the flusher was dropped,
//!   its wait returned at once (the waiter's channel closed), hence "close
//!   consumes 44µs" and still nothing on disk. Symbolization happens at the end
//!   of a recording, so everything a short run inserted was in flight then.
//!   Measured with `tests/store_disk.rs`'s child process: without the close, the
//!   last batch (117 to 145 of 401 entries) is lost each time. The close is now
//!   awaited inside the runtime by both `record` and `run`.
//! - With `WriteOnInsertion` foyer's `flush_on_close` writes nothing (there is no
//!   memory-to-disk pipe in that mode; its "flush all in-memory cached entries to
//!   disk" log line only empties the memory tier), and its `close()` returns
//!   without error whether or not the writes succeeded. It is off here; instead
//!   the close writes a canary unique to this close and reads it back from the
//!   disk tier, which says whether the last writes reached the disk.
//! - The flusher drains its whole queue into one write buffer and silently drops
//!   what does not fit (`DISK_BUFFER_BYTES`, 256 entries at 4 KiB each): a burst
//!   of new symbols larger than that never reached the disk. Inserts are paced:
//!   before the pending entries would overflow the buffer, the insert waits for
//!   the flusher ([`SymbolStore::insert`]).
//! - Recovery stops reading a block at the first entry whose sequence number is
//!   lower than the one before it; foyer takes the sequence number and queues the
//!   entry in two steps, so two threads inserting at once could cost the rest of
//!   a block. Inserts are serialized by the same gate that paces them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, Event, EventListener, FsDeviceBuilder, HybridCache,
    HybridCacheBuilder, HybridCachePolicy, Load, PsyncIoEngineConfig, RecoverMode, S3FifoConfig,
};
use tracing::{info, warn};

use crate::cache_dir::{self, PreparedDir};
use crate::identity::FileId;
use crate::recovery::{self, Recovered};

/// Key of one symbolized location: a symbol source and a position in it. For ELF
/// files the position is the file offset of the looked-up address (so every
/// process mapping the file shares it); for the kernel the address; for a JIT
/// region 0 (a perf map names the whole region).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct FrameKey {
    pub file: FileId,
    pub address_or_line: u64,
}

/// One frame of a symbolized location.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct SymbolFrame {
    pub function: Option<Arc<str>>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
}

/// What the store knows about a location: its frames leaf first (the innermost
/// inlined function first, the function that contains the address last). No
/// frames means "looked up, nothing names it", which is cached as well so a
/// stripped binary is not symbolized again and again.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct SymbolValue {
    frames: Arc<[SymbolFrame]>,
}

/// Most frames kept per location (deeper inline chains keep their innermost
/// frames and the outer function).
pub const MAX_FRAMES_PER_VALUE: usize = 32;
/// Longest function name kept, in bytes (longer ones are cut on a char boundary).
pub const MAX_FUNCTION_BYTES: usize = 4096;
/// Longest source path kept, in bytes.
pub const MAX_FILE_BYTES: usize = 1024;
/// Upper bound of an encoded value: header, then per frame a flag byte, two
/// length-prefixed strings and a line.
pub const MAX_ENCODED_VALUE_BYTES: usize =
    2 + MAX_FRAMES_PER_VALUE * (1 + 2 + MAX_FUNCTION_BYTES + 2 + MAX_FILE_BYTES + 4);

/// Disk block size. Entries larger than a block minus its index are dropped
/// silently by foyer, hence the compile-time check below.
pub const DISK_BLOCK_BYTES: usize = 1024 * 1024;
const BLOB_INDEX_BYTES: usize = 4096;
/// foyer's entry header and the encoded key on top of the value, rounded up.
const DISK_ENTRY_HEADER_BYTES: usize = 256;
const _: () = assert!(
    MAX_ENCODED_VALUE_BYTES + DISK_ENTRY_HEADER_BYTES + 4096 < DISK_BLOCK_BYTES - BLOB_INDEX_BYTES
);
/// Smallest disk tier: foyer needs a handful of blocks to rotate through.
pub const MIN_DISK_BYTES: u64 = 8 * DISK_BLOCK_BYTES as u64;
/// Write buffer of the disk tier (foyer allocates two of these up front). The
/// flusher drops what does not fit in it, so inserts are paced to it.
const DISK_BUFFER_BYTES: usize = DISK_BLOCK_BYTES;
/// foyer's alignment of every entry on disk.
const DISK_PAGE_BYTES: usize = 4096;
/// Longest a close waits for the disk tier's last writes by default.
pub const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// Heap bytes foyer spends per in-memory entry besides key and value: its record
/// (key, value, hash, weight, properties, queue links, refcount), the index slot
/// and the S3-FIFO ghost queue entry. Measured with a counting allocator in
/// `tests/store_memory.rs` (160 undercounted the heap by ~6 B per entry), which
/// fails if this undercounts by more than 10 %.
///
/// Not per entry, hence not in the bound: with the disk tier on, foyer also holds
/// two write buffers of [`DISK_BLOCK_BYTES`] and up to twice that in its submit
/// queue (about 4 MiB in all).
pub const ENTRY_OVERHEAD_BYTES: usize = 168;

/// Bytes one `Arc<str>` costs on the heap: two counters and the bytes.
fn arc_str_bytes(s: &Option<Arc<str>>) -> usize {
    s.as_ref()
        .map_or(0, |s| 2 * std::mem::size_of::<usize>() + s.len())
}

impl SymbolValue {
    /// Builds a value from frames leaf first, applying the size caps.
    pub fn new(mut frames: Vec<SymbolFrame>) -> SymbolValue {
        if frames.len() > MAX_FRAMES_PER_VALUE {
            // Keep the innermost frames and the outermost (the real function).
            let outer = frames.pop();
            frames.truncate(MAX_FRAMES_PER_VALUE - 1);
            frames.extend(outer);
        }
        for f in &mut frames {
            truncate_arc(&mut f.function, MAX_FUNCTION_BYTES);
            truncate_arc(&mut f.file, MAX_FILE_BYTES);
        }
        SymbolValue {
            frames: frames.into(),
        }
    }

    /// A location nothing could name.
    pub fn unknown() -> SymbolValue {
        SymbolValue::default()
    }

    /// Frames leaf first; empty when unknown.
    pub fn frames(&self) -> &[SymbolFrame] {
        &self.frames
    }

    pub fn is_unknown(&self) -> bool {
        self.frames.is_empty()
    }

    /// Heap bytes owned by this value (the slice and its strings).
    pub fn heap_bytes(&self) -> usize {
        2 * std::mem::size_of::<usize>()
            + self.frames.len() * std::mem::size_of::<SymbolFrame>()
            + self
                .frames
                .iter()
                .map(|f| arc_str_bytes(&f.function) + arc_str_bytes(&f.file))
                .sum::<usize>()
    }
}

fn truncate_arc(s: &mut Option<Arc<str>>, max: usize) {
    if let Some(text) = s.as_deref() {
        if text.len() > max {
            let mut cut = max;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            *s = Some(Arc::from(&text[..cut]));
        }
    }
}

/// The memory-tier weight of an entry.
pub fn entry_weight(_key: &FrameKey, value: &SymbolValue) -> usize {
    ENTRY_OVERHEAD_BYTES
        + std::mem::size_of::<FrameKey>()
        + std::mem::size_of::<SymbolValue>()
        + value.heap_bytes()
}

fn code_err(msg: &'static str) -> foyer::Error {
    foyer::Error::new(foyer::ErrorKind::Parse, msg)
}

impl Code for FrameKey {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        writer
            .write_all(&self.file.0.to_le_bytes())
            .map_err(foyer::Error::io_error)?;
        writer
            .write_all(&self.address_or_line.to_le_bytes())
            .map_err(foyer::Error::io_error)
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        let mut file = [0u8; 16];
        let mut addr = [0u8; 8];
        reader
            .read_exact(&mut file)
            .map_err(foyer::Error::io_error)?;
        reader
            .read_exact(&mut addr)
            .map_err(foyer::Error::io_error)?;
        Ok(FrameKey {
            file: FileId(u128::from_le_bytes(file)),
            address_or_line: u64::from_le_bytes(addr),
        })
    }

    fn estimated_size(&self) -> usize {
        24
    }
}

const VALUE_FORMAT: u8 = 1;
const HAS_FUNCTION: u8 = 1;
const HAS_FILE: u8 = 2;
const HAS_LINE: u8 = 4;

impl Code for SymbolValue {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        let io = foyer::Error::io_error;
        // `SymbolValue::new` caps the count at MAX_FRAMES_PER_VALUE (< 256).
        let count = u8::try_from(self.frames.len()).map_err(|_| code_err("too many frames"))?;
        writer.write_all(&[VALUE_FORMAT, count]).map_err(io)?;
        for f in self.frames.iter() {
            let flags = if f.function.is_some() {
                HAS_FUNCTION
            } else {
                0
            } | if f.file.is_some() { HAS_FILE } else { 0 }
                | if f.line.is_some() { HAS_LINE } else { 0 };
            writer.write_all(&[flags]).map_err(io)?;
            for s in [&f.function, &f.file].into_iter().flatten() {
                let len = u16::try_from(s.len()).map_err(|_| code_err("string too long"))?;
                writer.write_all(&len.to_le_bytes()).map_err(io)?;
                writer.write_all(s.as_bytes()).map_err(io)?;
            }
            if let Some(line) = f.line {
                writer.write_all(&line.to_le_bytes()).map_err(io)?;
            }
        }
        Ok(())
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        let io = foyer::Error::io_error;
        let mut header = [0u8; 2];
        reader.read_exact(&mut header).map_err(io)?;
        if header[0] != VALUE_FORMAT {
            return Err(code_err("unknown symbol value format"));
        }
        let count = usize::from(header[1]);
        if count > MAX_FRAMES_PER_VALUE {
            return Err(code_err("too many frames"));
        }
        let read_str = |reader: &mut dyn Read, max: usize| -> foyer::Result<Arc<str>> {
            let mut len = [0u8; 2];
            reader.read_exact(&mut len).map_err(io)?;
            let len = usize::from(u16::from_le_bytes(len));
            if len > max {
                return Err(code_err("string too long"));
            }
            let mut bytes = vec![0u8; len];
            reader.read_exact(&mut bytes).map_err(io)?;
            String::from_utf8(bytes)
                .map(Arc::from)
                .map_err(|_| code_err("string is not UTF-8"))
        };
        let mut frames = Vec::with_capacity(count);
        for _ in 0..count {
            let mut flags = [0u8; 1];
            reader.read_exact(&mut flags).map_err(io)?;
            let flags = flags[0];
            if flags & !(HAS_FUNCTION | HAS_FILE | HAS_LINE) != 0 {
                return Err(code_err("unknown frame flags"));
            }
            let function = if flags & HAS_FUNCTION != 0 {
                Some(read_str(reader, MAX_FUNCTION_BYTES)?)
            } else {
                None
            };
            let file = if flags & HAS_FILE != 0 {
                Some(read_str(reader, MAX_FILE_BYTES)?)
            } else {
                None
            };
            let line = if flags & HAS_LINE != 0 {
                let mut line = [0u8; 4];
                reader.read_exact(&mut line).map_err(io)?;
                Some(u32::from_le_bytes(line))
            } else {
                None
            };
            frames.push(SymbolFrame {
                function,
                file,
                line,
            });
        }
        Ok(SymbolValue {
            frames: frames.into(),
        })
    }

    fn estimated_size(&self) -> usize {
        2 + self
            .frames
            .iter()
            .map(|f| {
                1 + f.function.as_ref().map_or(0, |s| 2 + s.len())
                    + f.file.as_ref().map_or(0, |s| 2 + s.len())
                    + f.line.map_or(0, |_| 4)
            })
            .sum::<usize>()
    }
}

/// Key of the canary entry written at every close (a FileId no real source can
/// have: identities are 128-bit hashes).
const CANARY_KEY: FrameKey = FrameKey {
    file: FileId(0),
    address_or_line: 0x6b65_7374_7265_6c00,
};
const CANARY_FUNCTION: &str = "kestrel-symbols disk tier canary";

/// The canary of one close: the layout, and a nonce so that reading it back
/// cannot find the canary of an earlier close.
fn canary_value(layout: &str, nonce: u32) -> SymbolValue {
    SymbolValue::new(vec![SymbolFrame {
        function: Some(Arc::from(CANARY_FUNCTION)),
        file: Some(Arc::from(layout)),
        line: Some(nonce),
    }])
}

fn is_canary_of(value: &SymbolValue, layout: &str) -> bool {
    matches!(value.frames(), [f] if f.function.as_deref() == Some(CANARY_FUNCTION)
        && f.file.as_deref() == Some(layout))
}

async fn canary_intact(cache: &HybridCache<FrameKey, SymbolValue>, layout: &str) -> bool {
    matches!(cache.get(&CANARY_KEY).await, Ok(Some(entry)) if is_canary_of(entry.value(), layout))
}

/// Bytes an entry takes in the flusher's write buffer (an upper bound: foyer's
/// header is smaller than [`DISK_ENTRY_HEADER_BYTES`]).
fn disk_entry_bytes(key: &FrameKey, value: &SymbolValue) -> usize {
    (DISK_ENTRY_HEADER_BYTES + key.estimated_size() + value.estimated_size())
        .next_multiple_of(DISK_PAGE_BYTES)
}

/// How a close ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseOutcome {
    /// Not closed yet.
    #[default]
    Open,
    /// No disk tier: nothing to write.
    MemoryOnly,
    /// Every write finished and the last batch (which holds this close's
    /// canary) was read back from the disk tier. foyer writes one batch at a
    /// time and only logs a failed one, so an earlier batch that failed (a disk
    /// error that went away) shows in the log, not here.
    Complete,
    /// The writes finished, but the last one is not on disk (a failing or full
    /// disk): entries of the last moments are lost, older ones are kept.
    WriteFailed,
    /// The bound ran out first: writes still in flight may be lost.
    TimedOut,
}

/// What [`SymbolStore::close`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseReport {
    pub outcome: CloseOutcome,
    pub elapsed: Duration,
}

/// Sizes and place of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Cache directory; `None` = memory only.
    pub dir: Option<PathBuf>,
    pub memory_bytes: u64,
    /// 0 = memory only.
    pub disk_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    disk_hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    errors: AtomicU64,
}

struct EvictionCounter(Arc<Counters>);

impl EventListener for EvictionCounter {
    type Key = FrameKey;
    type Value = SymbolValue;

    fn on_leave(&self, reason: Event, _key: &FrameKey, _value: &SymbolValue) {
        if reason == Event::Evict {
            self.0.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counters and sizes of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    pub hits: u64,
    pub disk_hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub errors: u64,
    pub memory_bytes: u64,
    pub memory_capacity_bytes: u64,
    pub memory_entries: u64,
    pub disk_bytes: u64,
    pub disk_capacity_bytes: u64,
    /// What the disk tier held when the store opened.
    pub recovered: Recovered,
    /// How long opening (and recovering) the disk tier took.
    pub open_time: Duration,
    /// How the close ended and how long it took (zero while open).
    pub close: CloseReport,
}

/// The global symbol store.
pub struct SymbolStore {
    cache: HybridCache<FrameKey, SymbolValue>,
    counters: Arc<Counters>,
    /// Held for the lock and the path; `None` when memory-only.
    dir: Option<PreparedDir>,
    disk_capacity: u64,
    /// Describes the disk layout; also the canary's content.
    layout: String,
    warned_disk_error: AtomicBool,
    /// Serializes the disk tier's inserts and holds the bytes handed to foyer's
    /// flusher since it last finished writing (see [`SymbolStore::insert`]).
    write_gate: tokio::sync::Mutex<usize>,
    /// Set by the close: later inserts go to the memory tier only.
    closed: AtomicBool,
    recovered: Recovered,
    open_time: Duration,
    close_report: std::sync::Mutex<CloseReport>,
}

impl std::fmt::Debug for SymbolStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymbolStore")
            .field("dir", &self.dir.as_ref().map(|d| &d.path))
            .field("memory_capacity", &self.cache.memory().capacity())
            .field("disk_capacity", &self.disk_capacity)
            .finish()
    }
}

impl SymbolStore {
    /// Opens the store. Needs a tokio runtime (foyer spawns its flushers on it).
    /// Disk-tier problems never fail this: the store rebuilds the directory or
    /// runs memory-only, with a warning.
    pub async fn open(config: &StoreConfig) -> Result<SymbolStore, foyer::Error> {
        let started = Instant::now();
        let counters = Arc::new(Counters::default());
        let memory_bytes = usize::try_from(config.memory_bytes).unwrap_or(usize::MAX);
        let disk_bytes = if config.disk_bytes == 0 {
            0
        } else {
            if config.disk_bytes < MIN_DISK_BYTES {
                warn!(
                    disk_bytes = config.disk_bytes,
                    min = MIN_DISK_BYTES,
                    "symbol store disk tier is below its minimum; using the minimum"
                );
            }
            config.disk_bytes.max(MIN_DISK_BYTES)
        };
        let layout = format!(
            "kestrel-symbols store format={VALUE_FORMAT} block_bytes={DISK_BLOCK_BYTES} disk_bytes={disk_bytes}"
        );

        let dir = match (&config.dir, disk_bytes) {
            (Some(path), d) if d > 0 => match cache_dir::prepare(path, &layout) {
                Ok(dir) => Some(dir),
                Err(reason) => {
                    warn!(reason = %reason, "symbol store runs memory-only");
                    None
                }
            },
            _ => None,
        };

        if let Some(dir) = dir {
            let disk = (dir.path.as_path(), disk_bytes);
            if let Some(cache) = Self::open_disk(memory_bytes, &dir, disk, &layout, &counters).await
            {
                // Before the first insert: the block files hold what foyer recovered.
                let recovered = recovery::scan(
                    &dir.path,
                    DISK_BLOCK_BYTES,
                    BLOB_INDEX_BYTES,
                    cache.memory().hash(&CANARY_KEY),
                );
                let open_time = started.elapsed();
                info!(
                    dir = %dir.path.display(),
                    entries = recovered.entries,
                    bytes = recovered.bytes,
                    blocks = recovered.blocks,
                    open_ms = open_time.as_millis() as u64,
                    "symbol store disk tier recovered"
                );
                let mut store =
                    Self::assemble(cache, counters, Some(dir), disk_bytes, layout, open_time);
                store.recovered = recovered;
                return Ok(store);
            }
        }
        let cache = Self::build(memory_bytes, None, &counters).await?;
        Ok(Self::assemble(
            cache,
            counters,
            None,
            0,
            layout,
            started.elapsed(),
        ))
    }

    /// Opens the disk tier, checking that a tier closed cleanly still holds what
    /// it held (foyer's recovery skips unreadable blocks without a word, so the
    /// canary written at close is the only way to notice). A damaged tier is
    /// rebuilt once; `None` (with a warning) means run memory-only.
    async fn open_disk(
        memory_bytes: usize,
        dir: &PreparedDir,
        disk: (&Path, u64),
        layout: &str,
        counters: &Arc<Counters>,
    ) -> Option<HybridCache<FrameKey, SymbolValue>> {
        let closed_cleanly = cache_dir::take_clean_marker(&dir.path);
        let problem = match Self::build(memory_bytes, Some(disk), counters).await {
            Ok(cache) => {
                if !closed_cleanly || canary_intact(&cache, layout).await {
                    return Some(cache);
                }
                // Nothing to flush: the tier is being thrown away.
                let _ = cache.close().await;
                "entries written before the last clean shutdown are gone or unreadable (corrupted block files?)"
                    .to_string()
            }
            Err(e) => format!("foyer cannot open it: {e}"),
        };
        warn!(dir = %dir.path.display(), reason = problem, "symbol store disk tier is damaged; rebuilding it");
        if let Err(e) = cache_dir::rebuild(dir, layout) {
            warn!(error = %e, dir = %dir.path.display(), "cannot rebuild the symbol store directory; running memory-only");
            return None;
        }
        match Self::build(memory_bytes, Some(disk), counters).await {
            Ok(cache) => Some(cache),
            Err(e) => {
                warn!(error = %e, dir = %dir.path.display(), "symbol store disk tier failed again; running memory-only");
                None
            }
        }
    }

    fn assemble(
        cache: HybridCache<FrameKey, SymbolValue>,
        counters: Arc<Counters>,
        dir: Option<PreparedDir>,
        disk_capacity: u64,
        layout: String,
        open_time: Duration,
    ) -> SymbolStore {
        SymbolStore {
            cache,
            counters,
            dir,
            disk_capacity,
            layout,
            warned_disk_error: AtomicBool::new(false),
            write_gate: tokio::sync::Mutex::new(0),
            closed: AtomicBool::new(false),
            recovered: Recovered::default(),
            open_time,
            close_report: std::sync::Mutex::new(CloseReport::default()),
        }
    }

    async fn build(
        memory_bytes: usize,
        disk: Option<(&Path, u64)>,
        counters: &Arc<Counters>,
    ) -> Result<HybridCache<FrameKey, SymbolValue>, foyer::Error> {
        let builder = HybridCacheBuilder::new()
            .with_name("kestrel-symbols")
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            // Writes nothing with WriteOnInsertion, only empties the memory tier
            // (see the module comment); the close does its own checked flush.
            .with_flush_on_close(false)
            .with_event_listener(Arc::new(EvictionCounter(counters.clone())))
            .memory(memory_bytes)
            .with_eviction_config(S3FifoConfig::default())
            .with_weighter(entry_weight)
            .storage();
        let Some((path, disk_bytes)) = disk else {
            return builder.build().await;
        };
        let device = FsDeviceBuilder::new(path)
            .with_capacity(usize::try_from(disk_bytes).unwrap_or(usize::MAX))
            .build()?;
        builder
            .with_io_engine_config(PsyncIoEngineConfig::new())
            .with_engine_config(
                BlockEngineConfig::new(device)
                    .with_block_size(DISK_BLOCK_BYTES)
                    .with_blob_index_size(BLOB_INDEX_BYTES)
                    .with_buffer_pool_size(DISK_BUFFER_BYTES)
                    .with_submit_queue_size_threshold(2 * DISK_BUFFER_BYTES),
            )
            .with_recover_mode(RecoverMode::Quiet)
            .build()
            .await
    }

    /// The sync fast path: a memory-tier lookup. Counts a hit, never a miss (the
    /// caller decides whether to go on to [`SymbolStore::get`]).
    #[inline]
    pub fn get_memory(&self, key: &FrameKey) -> Option<SymbolValue> {
        let entry = self.cache.memory().get(key)?;
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.value().clone())
    }

    /// Memory, then disk. Counts a hit or a miss; disk errors count as errors and
    /// misses.
    pub async fn get(&self, key: &FrameKey) -> Option<SymbolValue> {
        if let Some(v) = self.get_memory(key) {
            return Some(v);
        }
        match self.cache.get(key).await {
            Ok(Some(entry)) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
                Some(entry.value().clone())
            }
            Ok(None) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                if !self.warned_disk_error.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, dir = ?self.dir(), "symbol store disk tier read failed (corrupted block?); the entry is symbolized again");
                }
                None
            }
        }
    }

    /// Counts a miss that did not go through [`SymbolStore::get`] (the sync path).
    pub fn record_miss(&self) {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_error(&self) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Inserts into the memory tier and hands the entry to the disk tier's
    /// flusher. With a disk tier, inserts are serialized (foyer's recovery drops
    /// the rest of a block after an entry that was queued out of sequence order)
    /// and paced: before the entries handed over since the flusher last finished
    /// would overflow its write buffer (which drops the overflow silently), this
    /// waits for the flusher, about one write of at most 1 MiB. After the close,
    /// entries go to the memory tier only.
    pub async fn insert(&self, key: FrameKey, value: SymbolValue) {
        if self.dir.is_none() {
            self.cache.insert(key, value);
            return;
        }
        let mut pending = self.write_gate.lock().await;
        if self.closed.load(Ordering::Acquire) {
            self.cache.memory().insert(key, value);
            return;
        }
        self.write_paced(&mut pending, key, value).await;
    }

    async fn write_paced(&self, pending: &mut usize, key: FrameKey, value: SymbolValue) {
        let bytes = disk_entry_bytes(&key, &value);
        if *pending + bytes > DISK_BUFFER_BYTES {
            self.cache.storage().wait().await;
            *pending = 0;
        }
        self.cache.insert(key, value);
        *pending += bytes;
    }

    /// Waits until everything inserted so far is on disk (no-op memory-only).
    pub async fn flush(&self) {
        let mut pending = self.write_gate.lock().await;
        self.cache.storage().wait().await;
        *pending = 0;
    }

    /// Closes the disk tier: writes a canary, waits for every write to finish
    /// and reads the canary back from the disk tier, all within `bound`. Only a
    /// complete close marks the directory closed cleanly (the next open then
    /// checks that the canary is still there). Never fails: a disk that fails or
    /// hangs is a warning, the entries written before stay recoverable. Later
    /// calls return the first close's report.
    pub async fn close(&self, bound: Duration) -> CloseReport {
        let started = Instant::now();
        // A zero bound allows no wait at all: timed out, even when the close
        // could have finished on its first poll (which `timeout` would allow).
        let outcome = if bound.is_zero() {
            if self.closed.load(Ordering::Acquire) {
                return self.close_report();
            }
            CloseOutcome::TimedOut
        } else {
            match tokio::time::timeout(bound, self.close_disk()).await {
                Ok(Some(outcome)) => outcome,
                Ok(None) => return self.close_report(),
                Err(_) => CloseOutcome::TimedOut,
            }
        };
        self.closed.store(true, Ordering::Release);
        let report = CloseReport {
            outcome,
            elapsed: started.elapsed(),
        };
        let dir = self.dir().map(|d| d.display().to_string());
        let ms = report.elapsed.as_millis() as u64;
        match outcome {
            CloseOutcome::Open | CloseOutcome::MemoryOnly => {}
            CloseOutcome::Complete => {
                info!(dir, close_ms = ms, "symbol store disk tier closed; its last writes are on disk")
            }
            CloseOutcome::WriteFailed => warn!(
                dir,
                close_ms = ms,
                "symbol store disk tier: the last writes did not reach the disk (disk failing or \
                 full?); entries written earlier are kept, the newest are symbolized again next time"
            ),
            CloseOutcome::TimedOut => warn!(
                dir,
                close_ms = ms,
                bound_ms = bound.as_millis() as u64,
                "symbol store disk tier: the last writes did not finish within the bound (disk \
                 stalled?); entries written earlier are kept, the newest may be symbolized again"
            ),
        }
        if let Ok(mut r) = self.close_report.lock() {
            *r = report;
        }
        report
    }

    /// The close without its bound; `None` when already closed.
    async fn close_disk(&self) -> Option<CloseOutcome> {
        let mut pending = self.write_gate.lock().await;
        if self.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let Some(dir) = &self.dir else {
            // Stops foyer's (no-op) engine so that its Drop has nothing to do.
            let _ = self.cache.close().await;
            return Some(CloseOutcome::MemoryOnly);
        };
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        let canary = canary_value(&self.layout, nonce);
        self.write_paced(&mut pending, CANARY_KEY, canary.clone())
            .await;
        // Stops new writes and waits for the flusher's last batch (foyer's close
        // returns Ok whether or not the writes succeeded).
        if let Err(e) = self.cache.close().await {
            warn!(error = %e, dir = %dir.path.display(), "closing the symbol store disk tier failed");
            return Some(CloseOutcome::WriteFailed);
        }
        *pending = 0;
        // From the disk (the memory tier holds it too): the canary went last, so
        // finding this close's one means the last batch reached the disk.
        let on_disk = matches!(
            self.cache.storage().load(&CANARY_KEY).await,
            Ok(Load::Entry { value, .. }) if value == canary
        );
        if !on_disk {
            return Some(CloseOutcome::WriteFailed);
        }
        if let Err(e) = cache_dir::put_clean_marker(&dir.path) {
            warn!(error = %e, dir = %dir.path.display(), "cannot mark the symbol store as closed cleanly");
        }
        Some(CloseOutcome::Complete)
    }

    fn close_report(&self) -> CloseReport {
        match self.close_report.lock() {
            Ok(r) => *r,
            Err(p) => *p.into_inner(),
        }
    }

    /// The store directory, when the disk tier is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path.as_path())
    }

    pub fn counters(&self) -> StoreCounters {
        let c = &self.counters;
        let memory = self.cache.memory();
        StoreCounters {
            hits: c.hits.load(Ordering::Relaxed),
            disk_hits: c.disk_hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            memory_bytes: memory.usage() as u64,
            memory_capacity_bytes: memory.capacity() as u64,
            memory_entries: memory.entries() as u64,
            disk_bytes: self.dir().map_or(0, cache_dir::allocated_bytes),
            disk_capacity_bytes: self.disk_capacity,
            recovered: self.recovered,
            open_time: self.open_time,
            close: self.close_report(),
        }
    }
}

impl Drop for SymbolStore {
    fn drop(&mut self) {
        if self.dir.is_some() && !self.closed.load(Ordering::Acquire) {
            // foyer's own Drop only spawns a close, which a runtime shutting down
            // cancels with the writes in flight.
            warn!(
                dir = ?self.dir(),
                "symbol store dropped without close(): entries still being written may be lost"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: &str, file: Option<&str>, line: Option<u32>) -> SymbolFrame {
        SymbolFrame {
            function: Some(Arc::from(f)),
            file: file.map(Arc::from),
            line,
        }
    }

    #[test]
    fn value_round_trips_and_respects_caps() {
        let long = "é".repeat(MAX_FUNCTION_BYTES); // 2 bytes per char
        let mut frames: Vec<_> = (0..40)
            .map(|i| frame(&format!("inl{i}"), Some("/src/a.c"), Some(i)))
            .collect();
        frames.push(frame(&long, None, None));
        let v = SymbolValue::new(frames);
        assert_eq!(v.frames().len(), MAX_FRAMES_PER_VALUE);
        let outer = v.frames().last().unwrap().function.as_deref().unwrap();
        assert!(outer.len() <= MAX_FUNCTION_BYTES && outer.starts_with('é'));
        let mut buf = Vec::new();
        v.encode(&mut buf).unwrap();
        assert_eq!(buf.len(), v.estimated_size());
        assert!(buf.len() <= MAX_ENCODED_VALUE_BYTES);
        assert_eq!(SymbolValue::decode(&mut &buf[..]).unwrap(), v);

        let unknown = SymbolValue::unknown();
        let mut buf = Vec::new();
        unknown.encode(&mut buf).unwrap();
        assert!(SymbolValue::decode(&mut &buf[..]).unwrap().is_unknown());
    }

    #[test]
    fn corrupted_values_are_rejected() {
        let v = SymbolValue::new(vec![frame("main", Some("/a.c"), Some(3))]);
        let mut buf = Vec::new();
        v.encode(&mut buf).unwrap();
        for cut in 0..buf.len() {
            assert!(SymbolValue::decode(&mut &buf[..cut]).is_err());
        }
        let mut bad = buf.clone();
        bad[0] = 99;
        assert!(SymbolValue::decode(&mut &bad[..]).is_err());
        let mut bad = buf.clone();
        bad[1] = 200;
        assert!(SymbolValue::decode(&mut &bad[..]).is_err());
    }

    #[test]
    fn key_round_trips() {
        let k = FrameKey {
            file: FileId(u128::MAX - 5),
            address_or_line: 0x1234,
        };
        let mut buf = Vec::new();
        k.encode(&mut buf).unwrap();
        assert_eq!(buf.len(), k.estimated_size());
        assert_eq!(FrameKey::decode(&mut &buf[..]).unwrap(), k);
    }

    #[tokio::test]
    async fn memory_only_store_hits_and_misses() {
        let store = SymbolStore::open(&StoreConfig {
            dir: None,
            memory_bytes: 1 << 20,
            disk_bytes: 0,
        })
        .await
        .unwrap();
        let k = FrameKey {
            file: FileId(1),
            address_or_line: 2,
        };
        assert!(store.get(&k).await.is_none());
        store
            .insert(k, SymbolValue::new(vec![frame("f", None, None)]))
            .await;
        assert_eq!(
            store.get_memory(&k).unwrap().frames()[0]
                .function
                .as_deref(),
            Some("f")
        );
        let c = store.counters();
        assert_eq!((c.hits, c.misses, c.disk_capacity_bytes), (1, 1, 0));
        assert!(c.memory_bytes >= entry_weight(&k, &store.get_memory(&k).unwrap()) as u64);
    }
}
