//! The disk tier: a restart is answered from disk without the symbolizer, and a
//! corrupted or foreign disk tier is rebuilt with a warning, never a crash.
//!
//! The restart tests fill the store in a child process (this test binary run
//! again, see `child_fills_the_store`) that ends the way an agent ends: a close
//! then the runtime's shutdown, or SIGKILL. The next open is a separate open in
//! this process.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use common::{addr2line, compile, nm, Program};
use kestrel_model::Frame;
use kestrel_symbols::{CloseOutcome, Symbols, SymbolsConfig};
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
    /// Where `kestrel_test_marker_fn` is mapped.
    marker_rt: u64,
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
        marker_rt,
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
    assert_eq!(symbols.close().await.outcome, CloseOutcome::Complete);
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
    assert_eq!(symbols.close().await.outcome, CloseOutcome::Complete);
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
    // Closed, so that no warning names the directory before the one checked.
    let first = Symbols::new(config(cache.path())).await.unwrap();
    assert_eq!(first.close().await.outcome, CloseOutcome::Complete);
    drop(first);
    let store_dir = cache.path().join("symbols");
    assert!(!warned_about(&store_dir));
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

const CHILD_TEST: &str = "child_fills_the_store";
const CHILD_PREFIX: &str = "kestrel-child:";

/// Every address of the `.text` section of `exe`, relocated into the running
/// `target`: some 400 distinct frames, more than one write buffer of the disk
/// tier holds (256 entries), named or cached as unknown.
fn text_stack(exe: &Path, target: &Target) -> Vec<u64> {
    let out = std::process::Command::new("readelf")
        .args(["-W", "-S"])
        .arg(exe)
        .output()
        .unwrap();
    let sections = String::from_utf8(out.stdout).unwrap();
    // "  [15] .text  PROGBITS  0000000000001070 001070 000192 00  AX  0   0 16"
    let fields: Vec<&str> = sections
        .lines()
        .filter_map(|l| l.split_once(']').map(|(_, rest)| rest))
        .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&".text"))
        .expect("a .text section");
    let (start, size) = (common::parse_hex(fields[2]), common::parse_hex(fields[4]));
    let bias = target.marker_rt - nm(exe)["kestrel_test_marker_fn"].0;
    (start..start + size).map(|a| a + bias).collect()
}

/// How the child ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// `Symbols::close` awaited, then the runtime is dropped (`kestrel record`).
    Close,
    /// Waits for the flusher, then sleeps until the parent SIGKILLs it.
    FlushThenKill,
}

struct ChildRun {
    /// Distinct frames the child looked up (all misses: the directory was fresh).
    distinct: u64,
    stats: serde_json::Value,
}

/// Runs `child_fills_the_store` in a new process on `cache`, symbolizing every
/// `.text` address of the target.
fn fill_in_child(cache: &Path, exe: &Path, target: &Target, end: End) -> ChildRun {
    use std::io::BufRead;
    let stack = text_stack(exe, target);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            CHILD_TEST,
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KESTREL_TEST_CHILD_CACHE", cache)
        .env("KESTREL_TEST_CHILD_PID", target.program.pid().to_string())
        .env(
            "KESTREL_TEST_CHILD_STACK",
            stack
                .iter()
                .map(|a| format!("{a:x}"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .env("KESTREL_TEST_CHILD_END", format!("{end:?}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut stats = None;
    let mut lines = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        lines.push(line.clone());
        // libtest may have printed the test's name on the same line.
        let Some(rest) = line.split_once(CHILD_PREFIX).map(|(_, rest)| rest) else {
            continue;
        };
        if let Some(json) = rest.strip_prefix(" stats ") {
            stats = Some(serde_json::from_str::<serde_json::Value>(json).unwrap());
        }
        if rest.trim() == "flushed" {
            assert_eq!(end, End::FlushThenKill);
            child.kill().unwrap();
        }
    }
    let status = child.wait().unwrap();
    match end {
        End::Close => assert!(status.success(), "child failed: {lines:#?}"),
        End::FlushThenKill => assert!(!status.success(), "child was not killed: {lines:#?}"),
    }
    let stats = stats.unwrap_or_else(|| panic!("no stats from the child: {lines:#?}"));
    let distinct = stats["misses"].as_u64().unwrap();
    assert!(distinct >= 300, "{stats}");
    assert_eq!(
        stats["hits"].as_u64(),
        Some(0),
        "a fresh directory: {stats}"
    );
    assert_eq!(stats["symbolized_file_frames"].as_u64(), Some(distinct));
    ChildRun { distinct, stats }
}

/// A separate open of `cache`: the same frames come from the disk tier.
async fn reopen_and_check(cache: &Path, target: &Target, exe: &Path, first: &ChildRun) {
    let symbols = Symbols::new(config(cache)).await.unwrap();
    let opened = symbols.stats();
    let frames = symbols
        .symbolize_user(target.program.pid(), &text_stack(exe, target))
        .await;
    assert!(frames.iter().any(|f| f.function.as_deref() == Some("main")));
    let stats = symbols.stats();
    println!(
        "first run: {} distinct frames, {}; second open: {stats:?}",
        first.distinct, first.stats
    );
    assert_eq!(
        opened.recovered_entries, first.distinct,
        "the recovery count is what the first run wrote: {opened:?}"
    );
    assert!(opened.recovered_bytes > 0 && opened.recovered_blocks >= 1);
    assert_eq!(
        (stats.disk_hits, stats.misses),
        (first.distinct, 0),
        "every frame of the first run comes back from disk: {stats:?}"
    );
    assert_eq!(
        (stats.symbolizer_calls, stats.symbolized_file_frames),
        (0, 0),
        "{stats:?}"
    );
    symbols.close().await;
}

/// Not a test of its own: the first process of the restart tests (run by
/// `fill_in_child`, skipped otherwise).
#[test]
#[ignore = "the child process of the restart tests"]
fn child_fills_the_store() {
    let Some(cache) = std::env::var_os("KESTREL_TEST_CHILD_CACHE") else {
        return;
    };
    let pid: u32 = std::env::var("KESTREL_TEST_CHILD_PID")
        .unwrap()
        .parse()
        .unwrap();
    let stack: Vec<u64> = std::env::var("KESTREL_TEST_CHILD_STACK")
        .unwrap()
        .split(',')
        .map(|a| u64::from_str_radix(a, 16).unwrap())
        .collect();
    let end = std::env::var("KESTREL_TEST_CHILD_END").unwrap();
    // Like the agent: its own multi-threaded runtime, dropped at the end.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let symbols = Symbols::new(config(Path::new(&cache))).await.unwrap();
        let frames = symbols.symbolize_user(pid, &stack).await;
        assert!(frames.iter().any(|f| f.function.is_some()));
        match end.as_str() {
            "Close" => {
                let report = symbols.close().await;
                assert_eq!(report.outcome, CloseOutcome::Complete, "{report:?}");
                println!(
                    "{CHILD_PREFIX} stats {}",
                    serde_json::to_string(&symbols.stats()).unwrap()
                );
            }
            "FlushThenKill" => {
                symbols.store().flush().await;
                println!(
                    "{CHILD_PREFIX} stats {}",
                    serde_json::to_string(&symbols.stats()).unwrap()
                );
                println!("{CHILD_PREFIX} flushed");
                std::future::pending::<()>().await;
            }
            other => panic!("unknown end {other}"),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_is_recovered_whole_by_the_next_process() {
    let (_bin, exe) = compile("native");
    let target = start_target(&exe);
    let cache = tempfile::tempdir().unwrap();
    let first = fill_in_child(cache.path(), &exe, &target, End::Close);
    assert_eq!(first.stats["close_outcome"], "complete", "{}", first.stats);
    reopen_and_check(cache.path(), &target, &exe, &first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_flushed_before_sigkill_is_recovered() {
    let (_bin, exe) = compile("native");
    let target = start_target(&exe);
    let cache = tempfile::tempdir().unwrap();
    let first = fill_in_child(cache.path(), &exe, &target, End::FlushThenKill);
    assert_eq!(first.stats["close_outcome"], "open", "{}", first.stats);
    reopen_and_check(cache.path(), &target, &exe, &first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_directory_copied_between_runs_is_recovered() {
    let (_bin, exe) = compile("native");
    let target = start_target(&exe);
    let cache = tempfile::tempdir().unwrap();
    let first = fill_in_child(cache.path(), &exe, &target, End::Close);
    let copy = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(cache.path().join("."))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    // The original is gone: only the copy can answer.
    drop(cache);
    reopen_and_check(copy.path(), &target, &exe, &first).await;
}

/// A tmpfs of `size`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "kestrel-store-test",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs (needs root)");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The disk fills up under the open store (its block files are sparse, so the
/// writes fail with ENOSPC): symbolization goes on, and the close ends within
/// its bound with a warning and `WriteFailed`, never a hang or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fails_under_the_store_makes_the_close_a_warning() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let log = warnings();
    let (_bin, exe) = compile("native");
    let target = start_target(&exe);
    let tmp = tempfile::tempdir().unwrap();
    let _mount = Tmpfs::mount(&tmp.path().join("small"), "512k");
    let cache = tmp.path().join("small/cache");
    let symbols = Symbols::new(config(&cache)).await.unwrap();
    assert!(
        symbols.stats().disk_capacity_bytes > 0,
        "the disk tier opened"
    );
    let mut filler = std::fs::File::create(tmp.path().join("small/filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[0xa5; 4096]).is_ok() {}
    drop(filler);

    let frames = symbols
        .symbolize_user(target.program.pid(), &text_stack(&exe, &target))
        .await;
    assert!(frames.iter().any(|f| f.function.as_deref() == Some("main")));
    let report = symbols.close().await;
    println!("{report:?} {:?}", symbols.stats());
    assert_eq!(report.outcome, CloseOutcome::WriteFailed);
    assert!(report.elapsed < kestrel_symbols::CLOSE_BOUND);
    assert_eq!(symbols.stats().close_outcome, CloseOutcome::WriteFailed);
    let store_dir = cache.join("symbols").display().to_string();
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|w| w.contains("did not reach the disk") && w.contains(&store_dir)),
        "no warning about the failed writes: {:?}",
        log.lock().unwrap()
    );
    // Inserts after the close stay in memory, without foyer's warnings.
    let again = symbols.symbolize_kernel(&[1]).await;
    assert_eq!(again.len(), 1);
}

/// Four tasks insert at once, 2,000 entries in all (8 MiB on disk, eight times
/// the disk tier's write buffer): the inserts are serialized and paced, so a
/// reopened store recovers every one (foyer drops what overflows its buffer,
/// and its recovery drops the rest of a block after an entry queued out of
/// sequence order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_are_all_recovered() {
    use kestrel_symbols::{FileId, FrameKey, StoreConfig, SymbolFrame, SymbolStore, SymbolValue};
    const TASKS: u64 = 4;
    const PER_TASK: u64 = 500;
    let cache = tempfile::tempdir().unwrap();
    let store_config = StoreConfig {
        dir: Some(cache.path().to_path_buf()),
        memory_bytes: 4 << 20,
        disk_bytes: 32 << 20,
    };
    let key = |task: u64, i: u64| FrameKey {
        file: FileId(u128::from(task + 1)),
        address_or_line: i,
    };
    let value = |task: u64, i: u64| {
        SymbolValue::new(vec![SymbolFrame {
            function: Some(format!("task{task}_fn{i}").into()),
            file: Some("/src/concurrent.c".into()),
            line: Some(i as u32),
        }])
    };
    let store = std::sync::Arc::new(SymbolStore::open(&store_config).await.unwrap());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    store.insert(key(task, i), value(task, i)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        store.close(kestrel_symbols::CLOSE_BOUND).await.outcome,
        CloseOutcome::Complete
    );
    drop(store);

    let store = SymbolStore::open(&store_config).await.unwrap();
    assert_eq!(store.counters().recovered.entries, TASKS * PER_TASK);
    for task in 0..TASKS {
        for i in 0..PER_TASK {
            assert_eq!(store.get(&key(task, i)).await, Some(value(task, i)));
        }
    }
    let c = store.counters();
    assert_eq!((c.disk_hits, c.misses), (TASKS * PER_TASK, 0), "{c:?}");
    store.close(kestrel_symbols::CLOSE_BOUND).await;
}

/// A close whose bound runs out (here: none at all, so it cannot finish) is
/// reported as timed out with a warning, leaves no "closed cleanly" marker, and
/// what the writer finished afterwards is still recovered by the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_out_of_time_is_a_warning_and_loses_nothing_written() {
    let log = warnings();
    let (_bin, exe) = compile("native");
    let target = start_target(&exe);
    let cache = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path())).await.unwrap();
    let stack = text_stack(&exe, &target);
    symbols.symbolize_user(target.program.pid(), &stack).await;
    let inserted = symbols.stats().misses;
    let report = symbols.close_within(std::time::Duration::ZERO).await;
    assert_eq!(report.outcome, CloseOutcome::TimedOut);
    // A second close reports the first.
    assert_eq!(symbols.close().await, report);
    assert_eq!(symbols.stats().close_outcome, CloseOutcome::TimedOut);
    let store_dir = cache.path().join("symbols");
    assert!(!store_dir.join("CLEAN").exists());
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|w| w.contains("within the bound") && w.contains(&store_dir.display().to_string())));
    // foyer's writer goes on in the background; give it its time, then reopen.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(symbols);
    let symbols = Symbols::new(config(cache.path())).await.unwrap();
    assert_eq!(symbols.stats().recovered_entries, inserted);
    symbols.symbolize_user(target.program.pid(), &stack).await;
    let stats = symbols.stats();
    assert_eq!(
        (stats.disk_hits, stats.symbolized_file_frames),
        (inserted, 0)
    );
    symbols.close().await;
}
