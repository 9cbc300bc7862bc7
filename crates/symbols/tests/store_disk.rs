//! The disk tier: a restart is answered from disk without the symbolizer, and a
//! corrupted or foreign disk tier is rebuilt with a warning, never a crash.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use common::{addr2line, compile, nm, Program};
use kestrel_model::Frame;
use kestrel_symbols::{Symbols, SymbolsConfig};
use rand::RngCore;

/// Records WARN and ERROR events from every thread (foyer logs from its tasks).
struct WarningLog(Arc<Mutex<Vec<String>>>);

struct MessageVisitor(String);

impl tracing::field::Visit for MessageVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for WarningLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            let mut visitor = MessageVisitor(String::new());
            event.record(&mut visitor);
            self.0.lock().unwrap().push(visitor.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn warnings() -> Arc<Mutex<Vec<String>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::set_global_default(WarningLog(log.clone())).unwrap();
        log
    })
    .clone()
}

fn warned_about(dir: &Path) -> bool {
    let needle = dir.display().to_string();
    warnings()
        .lock()
        .unwrap()
        .iter()
        .any(|w| w.contains(&needle))
}

fn config(dir: &Path) -> SymbolsConfig {
    SymbolsConfig {
        cache_dir: Some(dir.to_path_buf()),
        memory_bytes: 4 << 20,
        disk_bytes: 16 << 20,
        ..SymbolsConfig::default()
    }
}

/// A running `native` program and a stack inside it (inlined code + a return
/// address into main).
struct Target {
    program: Program,
    stack: [u64; 2],
}

fn start_target(exe: &Path) -> Target {
    let mut program = Program::spawn(exe);
    let marker_rt = common::parse_hex(&program.expect_line("marker"));
    let ret_rt = common::parse_hex(&program.expect_line("ret"));
    let (start, size) = nm(exe)["kestrel_test_marker_fn"];
    let inline_static = (start..start + size)
        .find(|&a| addr2line(exe, a).len() == 2)
        .expect("no inlined code in kestrel_test_marker_fn");
    Target {
        program,
        stack: [inline_static - start + marker_rt, ret_rt],
    }
}

/// First run: symbolize the stack, close cleanly. Returns the frames.
async fn first_run(cache: &Path, target: &Target) -> Vec<Frame> {
    let symbols = Symbols::new(config(cache)).await.unwrap();
    let frames = symbols
        .symbolize_user(target.program.pid(), &target.stack)
        .await;
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| f.function.is_some()));
    let stats = symbols.stats();
    assert!(stats.symbolizer_calls >= 1);
    assert_eq!(stats.misses, 2);
    symbols.close().await.unwrap();
    assert!(
        symbols.stats().disk_bytes > 0,
        "nothing reached the disk tier"
    );
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_is_answered_from_disk_without_the_symbolizer() {
    let (_bin, exe) = compile("native");
    let target = start_target(&exe);
    let cache = tempfile::tempdir().unwrap();
    let before = first_run(cache.path(), &target).await;

    let symbols = Symbols::new(config(cache.path())).await.unwrap();
    let after = symbols
        .symbolize_user(target.program.pid(), &target.stack)
        .await;
    assert_eq!(after, before);
    let stats = symbols.stats();
    assert_eq!(stats.symbolizer_calls, 0, "{stats:?}");
    assert_eq!(
        (stats.hits, stats.disk_hits, stats.misses),
        (2, 2, 0),
        "{stats:?}"
    );
    // Now in memory: no disk access needed.
    symbols
        .symbolize_user(target.program.pid(), &target.stack)
        .await;
    assert_eq!(symbols.stats().disk_hits, 2);
    assert_eq!(symbols.stats().hits, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_block_files_are_recovered_with_a_warning() {
    let log = warnings();
    let (_bin, exe) = compile("native");
    let target = start_target(&exe);
    let cache = tempfile::tempdir().unwrap();
    let before = first_run(cache.path(), &target).await;

    // Garbage over every block file, keeping the format marker.
    let store_dir = cache.path().join("symbols");
    let mut rng = rand::rng();
    let mut corrupted = 0;
    for entry in std::fs::read_dir(&store_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "FORMAT" {
            continue;
        }
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let mut garbage = vec![0u8; len];
        rng.fill_bytes(&mut garbage);
        std::fs::write(&path, garbage).unwrap();
        corrupted += 1;
    }
    assert!(corrupted > 0);
    let warnings_before = log.lock().unwrap().len();

    let symbols = Symbols::new(config(cache.path())).await.unwrap();
    let after = symbols
        .symbolize_user(target.program.pid(), &target.stack)
        .await;
    assert_eq!(after, before, "garbage must never be served as symbols");
    let stats = symbols.stats();
    assert!(
        stats.symbolizer_calls >= 1,
        "entries cannot have survived: {stats:?}"
    );
    assert_eq!(stats.disk_hits, 0);
    assert!(
        log.lock().unwrap()[warnings_before..]
            .iter()
            .any(|w| w.contains("damaged") && w.contains(&store_dir.display().to_string())),
        "no warning about the corrupted disk tier: {:?}",
        log.lock().unwrap()
    );
    // The rebuilt tier works: entries written now survive the next restart.
    symbols.close().await.unwrap();
    drop(symbols);
    let symbols = Symbols::new(config(cache.path())).await.unwrap();
    let again = symbols
        .symbolize_user(target.program.pid(), &target.stack)
        .await;
    assert_eq!(again, before);
    assert_eq!(symbols.stats().symbolizer_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_unusable_cache_dirs_never_crash() {
    warnings();
    // A garbage format marker: the store directory is rebuilt, with a warning.
    let cache = tempfile::tempdir().unwrap();
    drop(Symbols::new(config(cache.path())).await.unwrap());
    let store_dir = cache.path().join("symbols");
    std::fs::write(store_dir.join("FORMAT"), b"\x00\xffgarbage").unwrap();
    std::fs::write(store_dir.join("someone-elses-file"), b"x").unwrap();
    let symbols = Symbols::new(config(cache.path())).await.unwrap();
    assert!(warned_about(&store_dir));
    assert!(!store_dir.join("someone-elses-file").exists());
    assert!(symbols.stats().disk_capacity_bytes > 0);
    drop(symbols);

    // A cache "directory" that is a regular file: memory-only, with a warning.
    let file = cache.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let symbols = Symbols::new(config(&file)).await.unwrap();
    assert_eq!(symbols.stats().disk_capacity_bytes, 0);
    assert!(warned_about(&file));
    let frames = symbols.symbolize_kernel(&[0]).await;
    assert_eq!(frames.len(), 1);

    // A directory already used by another running agent: memory-only.
    let shared = tempfile::tempdir().unwrap();
    let first = Symbols::new(config(shared.path())).await.unwrap();
    let second = Symbols::new(config(shared.path())).await.unwrap();
    assert!(first.stats().disk_capacity_bytes > 0);
    assert_eq!(second.stats().disk_capacity_bytes, 0);
}
