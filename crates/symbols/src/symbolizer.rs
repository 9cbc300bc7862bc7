//! The one blazesym `Symbolizer`, on its own thread.
//!
//! `blazesym::symbolize::Symbolizer` is `!Send` and caches every parsed file
//! (ELF symbol tables, DWARF line programs, kallsyms), so exactly one lives for the
//! life of the agent, on a dedicated thread fed through a channel. Requests arrive
//! batched by file; replies go back on a oneshot channel.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{CodeInfo, Input, Sym, Symbolized, Symbolizer};
use blazesym::MaybeDefault;
use tokio::sync::oneshot;
use tracing::debug;

use crate::debuginfo::{DebugInfo, FilePlan, NameSource, Origin};
use crate::files::OpenFile;
use crate::store::{SymbolFrame, SymbolValue};
use crate::FileId;

/// The name of a frame in an ELF file that no symbol covers: said, so a reader
/// never takes a neighbour's name or a bare address for a lookup bug.
pub const UNKNOWN_NO_SYMBOLS: &str = "[unknown: no symbols]";

/// What to symbolize a batch of addresses against.
pub(crate) enum BatchSource {
    /// An ELF file by file offsets. The `Arc` keeps its descriptor (and so the
    /// `/proc/self/fd/N` path handed to blazesym) alive until the batch is done.
    Elf(Arc<OpenFile>),
    /// The running kernel by absolute addresses (kallsyms).
    Kernel,
}

pub(crate) struct Batch {
    pub source: BatchSource,
    pub addresses: Vec<u64>,
}

/// One value per address of the batch, or why the whole batch failed.
pub(crate) type BatchResult = Result<BatchValues, String>;

pub(crate) struct BatchValues {
    pub values: Vec<SymbolValue>,
    /// Whether the values may be stored: not while better names may come (a
    /// debug file downloading, or, for frames no symbol covers, a debug
    /// package installed later).
    pub cacheable: Vec<bool>,
}

pub(crate) enum Job {
    Symbolize {
        batches: Vec<Batch>,
        reply: oneshot::Sender<Vec<BatchResult>>,
    },
    /// Drop blazesym's cached data (and what is known of its debug files) for a
    /// path whose descriptor is being closed.
    EvictElf(PathBuf, Option<FileId>),
}

/// Handle to the symbolizer thread; cheap to clone.
#[derive(Clone)]
pub(crate) struct SymbolizerHandle {
    tx: mpsc::Sender<Job>,
    calls: Arc<AtomicU64>,
}

impl SymbolizerHandle {
    /// Starts the thread. It ends when every handle (and every `OpenFile`, which
    /// holds one to send evictions) is gone.
    pub(crate) fn spawn(
        dwarf_max_file_bytes: u64,
        debug: DebugInfo,
        debug_dirs: Vec<PathBuf>,
    ) -> std::io::Result<(SymbolizerHandle, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let calls = Arc::new(AtomicU64::new(0));
        let thread_calls = calls.clone();
        let join = std::thread::Builder::new()
            .name("kestrel-symbolizer".into())
            .spawn(move || run(rx, thread_calls, dwarf_max_file_bytes, debug, debug_dirs))?;
        Ok((SymbolizerHandle { tx, calls }, join))
    }

    /// Symbolizes the batches; `None` when the thread is gone.
    pub(crate) async fn symbolize(&self, batches: Vec<Batch>) -> Option<Vec<BatchResult>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job::Symbolize { batches, reply }).ok()?;
        rx.await.ok()
    }

    pub(crate) fn evict(&self, path: PathBuf, id: Option<FileId>) {
        // A closed channel means the thread (and its caches) are gone already.
        let _ = self.tx.send(Job::EvictElf(path, id));
    }

    /// Number of blazesym symbolize calls made (one per file batch).
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

fn run(
    rx: mpsc::Receiver<Job>,
    calls: Arc<AtomicU64>,
    dwarf_max_file_bytes: u64,
    mut debug: DebugInfo,
    debug_dirs: Vec<PathBuf>,
) {
    let mut symbolizer = Symbolizer::builder()
        // Separate debug files are chosen by `DebugInfo`; blazesym only looks
        // here for DWARF supplementary files (dwz) of the file it is given.
        .set_debug_dirs(Some(debug_dirs))
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        // The paths we hand out are /proc/self/fd/N; a reused descriptor number
        // must never be answered from the previous file's cache.
        .enable_auto_reload(true)
        .build();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Symbolize { batches, reply } => {
                let mut results = Vec::with_capacity(batches.len());
                for batch in &batches {
                    calls.fetch_add(1, Ordering::Relaxed);
                    results.push(symbolize_batch(
                        &mut symbolizer,
                        &mut debug,
                        batch,
                        dwarf_max_file_bytes,
                    ));
                }
                // The caller may have given up (dropped its future); nothing to do.
                let _ = reply.send(results);
            }
            Job::EvictElf(path, id) => {
                if let Some(id) = id {
                    debug.forget(id);
                }
                let evict = blazesym::symbolize::evict::Evict::Elf(
                    blazesym::symbolize::evict::Elf::new(path),
                );
                if let Err(e) = symbolizer.evict(&evict) {
                    debug!(error = %e, "blazesym eviction failed");
                }
            }
        }
    }
}

fn symbolize_batch(
    symbolizer: &mut Symbolizer,
    debug: &mut DebugInfo,
    batch: &Batch,
    dwarf_max_file_bytes: u64,
) -> BatchResult {
    match &batch.source {
        BatchSource::Elf(file) => symbolize_elf(
            symbolizer,
            debug,
            file,
            &batch.addresses,
            dwarf_max_file_bytes,
        ),
        BatchSource::Kernel => {
            // vmlinux would bring DWARF lines but costs hundreds of MB; kallsyms
            // names are what a profile needs.
            let kernel = Kernel {
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Kernel::default()
            };
            let src = Source::Kernel(kernel);
            let values = symbolizer
                .symbolize(&src, Input::AbsAddr(&batch.addresses))
                .map_err(|e| e.to_string())?
                .iter()
                .map(value_from_symbolized)
                .collect::<Vec<_>>();
            Ok(BatchValues {
                cacheable: vec![true; values.len()],
                values,
            })
        }
    }
}

fn symbolize_elf(
    symbolizer: &mut Symbolizer,
    debug: &mut DebugInfo,
    file: &OpenFile,
    offsets: &[u64],
    dwarf_max_file_bytes: u64,
) -> BatchResult {
    let plan = debug.plan(
        file.id,
        file.file(),
        Origin {
            pid: file.origin_pid,
            path: file.origin_path.as_deref(),
        },
    );
    let (path, size, dwarf, source) = match &plan {
        FilePlan::Own { source, dwarf } => (file.symbolizer_path(), file.len(), *dwarf, *source),
        FilePlan::Separate { path, source, .. } => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            (path.clone(), size, true, *source)
        }
        FilePlan::Pending => (
            file.symbolizer_path(),
            file.len(),
            false,
            NameSource::Dynsym,
        ),
    };
    let mut elf = Elf::new(path.clone());
    elf.debug_syms = dwarf && size <= dwarf_max_file_bytes;
    let src = Source::Elf(elf);
    let result = match &plan {
        FilePlan::Separate { .. } => {
            // Offsets outside every loaded segment stay unnamed (address 0 is
            // never code, so it cannot name a function).
            let addresses: Vec<u64> = offsets
                .iter()
                .map(|&o| plan.translate(o).unwrap_or(0))
                .collect();
            owned(symbolizer.symbolize(&src, Input::VirtOffset(&addresses)))
        }
        _ => owned(symbolizer.symbolize(&src, Input::FileOffset(offsets))),
    };
    if size > dwarf_max_file_bytes / 8 {
        // Later misses in this file are rare (the store answers them);
        // holding its parsed form is not worth the memory.
        let evict =
            blazesym::symbolize::evict::Evict::Elf(blazesym::symbolize::evict::Elf::new(path));
        if let Err(e) = symbolizer.evict(&evict) {
            debug!(error = %e, "blazesym eviction failed");
        }
    }
    let values = result?;
    let pending = matches!(plan, FilePlan::Pending);
    let counters = &debug.counters;
    let mut out = BatchValues {
        values: Vec::with_capacity(values.len()),
        cacheable: Vec::with_capacity(values.len()),
    };
    for v in values {
        if !v.is_unknown() {
            counters.named(source).fetch_add(1, Ordering::Relaxed);
            out.values.push(v);
            out.cacheable.push(!pending);
        } else if pending {
            // Reported by address until its debug file arrives.
            counters.pending.fetch_add(1, Ordering::Relaxed);
            out.values.push(v);
            out.cacheable.push(false);
        } else {
            counters.unnamed.fetch_add(1, Ordering::Relaxed);
            out.values.push(SymbolValue::new(vec![SymbolFrame {
                function: Some(Arc::from(UNKNOWN_NO_SYMBOLS)),
                file: None,
                line: None,
            }]));
            // A file's own symbol table answers for good (its FileId names its
            // contents); without one, a debug file installed later may name it.
            out.cacheable.push(source == NameSource::Symtab);
        }
    }
    Ok(out)
}

fn owned(result: blazesym::Result<Vec<Symbolized<'_>>>) -> Result<Vec<SymbolValue>, String> {
    match result {
        Ok(symbolized) => Ok(symbolized.iter().map(value_from_symbolized).collect()),
        Err(e) => Err(e.to_string()),
    }
}

fn value_from_symbolized(s: &Symbolized<'_>) -> SymbolValue {
    match s {
        Symbolized::Sym(sym) => value_from_sym(sym),
        Symbolized::Unknown(_) => SymbolValue::unknown(),
    }
}

/// blazesym reports the outer function with the code location *in it* and the
/// inlined calls outermost first, each with its own location. We store leaf
/// first: innermost inlined function, ..., outer function.
fn value_from_sym(sym: &Sym<'_>) -> SymbolValue {
    // A symbol whose size is known names only addresses inside it: past its
    // end lies another (possibly static, unlisted) function.
    if sym.size.is_some_and(|size| sym.offset >= size) {
        return SymbolValue::unknown();
    }
    let mut frames = Vec::with_capacity(sym.inlined.len() + 1);
    for inlined in sym.inlined.iter().rev() {
        let (file, line) = location(inlined.code_info.as_ref());
        frames.push(SymbolFrame {
            function: Some(Arc::from(inlined.name.as_ref())),
            file,
            line,
        });
    }
    let (file, line) = location(sym.code_info.as_deref());
    frames.push(SymbolFrame {
        function: Some(Arc::from(sym.name.as_ref())),
        file,
        line,
    });
    SymbolValue::new(frames)
}

fn location(info: Option<&CodeInfo<'_>>) -> (Option<Arc<str>>, Option<u32>) {
    match info {
        Some(info) => (
            Some(Arc::from(info.to_path().to_string_lossy().as_ref())),
            info.line,
        ),
        None => (None, None),
    }
}
