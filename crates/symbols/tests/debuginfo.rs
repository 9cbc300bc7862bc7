//! Names for stripped binaries: a test program built with gcc -g, split the way
//! distributions split packages (objcopy --only-keep-debug, strip,
//! objcopy --add-gnu-debuglink), named through its debug link, a build-id
//! directory and a real debuginfod server; Debian's libc6-dbg for libc.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{nm, parse_hex, Program};
use kestrel_symbols::{Symbols, SymbolsConfig, UNKNOWN_NO_SYMBOLS};
use object::{Object, ObjectSegment, ObjectSymbol};

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?} failed");
}

/// A split build of `split.c`: the unstripped original (for nm), the stripped
/// executable (without a debug link) and the debug file.
struct Split {
    _dir: tempfile::TempDir,
    original: PathBuf,
    exe: PathBuf,
    debug: PathBuf,
}

impl Split {
    fn build(variant: u32) -> Split {
        Split::build_with(variant, "-rdynamic")
    }

    /// `link` is `-rdynamic` (exported functions in .dynsym) or `-static`.
    fn build_with(variant: u32, link: &str) -> Split {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("original");
        run(Command::new("gcc")
            .args(["-g", "-O1", link, "-fno-toplevel-reorder"])
            .arg(format!("-DVARIANT={variant}"))
            .arg("-o")
            .arg(&original)
            .arg(common::programs_dir().join("split.c")));
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let exe = bin.join("split");
        let debug = dir.path().join("split.debug");
        run(Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&original)
            .arg(&debug));
        run(Command::new("strip").arg("-o").arg(&exe).arg(&original));
        Split {
            _dir: dir,
            original,
            exe,
            debug,
        }
    }

    /// Puts the debug file beside the executable as `split.debug` and links it.
    fn link_beside(&self, debug_file: &Path) {
        let beside = self.exe.with_file_name("split.debug");
        std::fs::copy(&self.debug, &beside).unwrap();
        run(Command::new("objcopy")
            .arg(format!("--add-gnu-debuglink={}", beside.display()))
            .arg(&self.exe));
        // The link records the CRC of the file linked; then the file is
        // replaced by the one the test wants found there.
        std::fs::copy(debug_file, &beside).unwrap();
    }

    fn build_id(&self) -> String {
        common::readelf_build_id(&self.exe).unwrap()
    }
}

/// A started split program and the runtime addresses of its functions.
struct Running {
    program: Program,
    main_rt: u64,
    symbols: std::collections::HashMap<String, (u64, u64)>,
}

impl Running {
    fn start(split: &Split) -> Running {
        Running::started(split, Program::spawn(&split.exe))
    }

    fn started(split: &Split, mut program: Program) -> Running {
        let main_rt = parse_hex(&program.expect_line("main"));
        program.expect_line("result");
        Running {
            program,
            main_rt,
            symbols: nm(&split.original),
        }
    }

    fn pid(&self) -> u32 {
        self.program.pid()
    }

    /// A runtime address in the middle of `function`.
    fn inside(&self, function: &str) -> u64 {
        let (start, size) = self.symbols[function];
        self.at(start + size / 2)
    }

    /// The runtime address of a static one.
    fn at(&self, address: u64) -> u64 {
        (address + self.main_rt) - self.symbols["main"].0
    }
}

fn config(cache: &Path, debug_dirs: Vec<PathBuf>) -> SymbolsConfig {
    SymbolsConfig {
        cache_dir: Some(cache.to_path_buf()),
        memory_bytes: 4 << 20,
        disk_bytes: 16 << 20,
        debug_dirs,
        ..SymbolsConfig::default()
    }
}

const STATICS: [&str; 2] = ["kestrel_split_static_alpha", "kestrel_split_static_beta"];

/// The outer (not inlined) function named for the sampled address `address`.
async fn name_of(symbols: &Symbols, pid: u32, address: u64) -> Option<String> {
    let frames = symbols.symbolize_user(pid, &[address]).await;
    frames
        .iter()
        .find(|f| !f.inlined)
        .and_then(|f| f.function.as_deref().map(str::to_string))
}

async fn assert_statics_named(symbols: &Symbols, running: &Running) {
    for f in STATICS {
        let name = name_of(symbols, running.pid(), running.inside(f)).await;
        assert_eq!(name.as_deref(), Some(f));
    }
}

async fn assert_statics_unknown(symbols: &Symbols, running: &Running) {
    for f in STATICS {
        let name = name_of(symbols, running.pid(), running.inside(f)).await;
        assert_eq!(name.as_deref(), Some(UNKNOWN_NO_SYMBOLS), "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_link_names_static_functions_of_a_stripped_binary() {
    let split = Split::build(1);
    split.link_beside(&split.debug);
    let cache = tempfile::tempdir().unwrap();
    let no_dirs = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path(), vec![no_dirs.path().into()]))
        .await
        .unwrap();
    let running = Running::start(&split);
    symbols.observe_process(running.pid());
    assert_statics_named(&symbols, &running).await;
    let stats = symbols.stats();
    assert_eq!(stats.named_debuglink, 2, "{stats:?}");
    assert_eq!(stats.named_build_id_dir, 0, "{stats:?}");
}

/// `strip --strip-debug` keeps `.symtab` but not DWARF: the linked debug file
/// still brings the source lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_link_brings_lines_to_a_file_that_kept_its_symtab() {
    let split = Split::build(1);
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&split.exe)
        .arg(&split.original));
    split.link_beside(&split.debug);
    let cache = tempfile::tempdir().unwrap();
    let no_dirs = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path(), vec![no_dirs.path().into()]))
        .await
        .unwrap();
    let running = Running::start(&split);
    symbols.observe_process(running.pid());
    let frames = symbols
        .symbolize_user(running.pid(), &[running.inside(STATICS[0])])
        .await;
    let outer = frames.iter().find(|f| !f.inlined).unwrap();
    assert_eq!(outer.function.as_deref(), Some(STATICS[0]));
    assert!(
        outer
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("split.c"))
            && outer.line.is_some(),
        "{frames:?}"
    );
    assert_eq!(symbols.stats().named_debuglink, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_id_directory_names_static_functions_without_a_link() {
    let split = Split::build(1);
    let root = tempfile::tempdir().unwrap();
    let id = split.build_id();
    let at = root
        .path()
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::copy(&split.debug, &at).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path(), vec![root.path().into()]))
        .await
        .unwrap();
    let running = Running::start(&split);
    symbols.observe_process(running.pid());
    assert_statics_named(&symbols, &running).await;
    let stats = symbols.stats();
    assert_eq!(stats.named_build_id_dir, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_crc_and_wrong_build_id_debug_files_are_refused() {
    let split = Split::build(1);
    let other = Split::build(2);
    // Beside the binary under the linked name, but another build's file.
    split.link_beside(&other.debug);
    // And under this build ID in the build-id directory: the other file.
    let root = tempfile::tempdir().unwrap();
    let id = split.build_id();
    let at = root
        .path()
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::copy(&other.debug, &at).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path(), vec![root.path().into()]))
        .await
        .unwrap();
    let running = Running::start(&split);
    symbols.observe_process(running.pid());
    assert_statics_unknown(&symbols, &running).await;
    let stats = symbols.stats();
    assert_eq!(stats.debug_files_refused, 2, "{stats:?}");
    assert_eq!(stats.named_debuglink + stats.named_build_id_dir, 0);
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_debug_info_statics_are_unknown_and_exported_functions_named() {
    let split = Split::build(1);
    let cache = tempfile::tempdir().unwrap();
    let no_dirs = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path(), vec![no_dirs.path().into()]))
        .await
        .unwrap();
    let running = Running::start(&split);
    symbols.observe_process(running.pid());
    // alpha follows the exported function directly: it must not take its name.
    assert_statics_unknown(&symbols, &running).await;
    let exported = running.inside("kestrel_split_exported");
    assert_eq!(
        name_of(&symbols, running.pid(), exported).await.as_deref(),
        Some("kestrel_split_exported")
    );
    let stats = symbols.stats();
    assert_eq!(stats.named_dynsym, 1, "{stats:?}");
    assert_eq!(stats.unnamed_frames, 2, "{stats:?}");
    // Unnamed frames are not stored: asked again, they are looked up again.
    assert_statics_unknown(&symbols, &running).await;
    assert_eq!(symbols.stats().unnamed_frames, 4);
}

/// A process in its own root (chroot): its debug file exists only inside that
/// root, under the root's /usr/lib/debug/.build-id and beside its binary. It is
/// found through /proc/PID/root; the host's directories do not have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containerized_process_gets_debug_files_from_its_own_root() {
    for by_build_id in [true, false] {
        // Static: the root needs no libraries.
        let split = Split::build_with(1, "-static");
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("bin")).unwrap();
        let inside = root.path().join("bin/split");
        if by_build_id {
            std::fs::copy(&split.exe, &inside).unwrap();
            let id = split.build_id();
            let at = root
                .path()
                .join("usr/lib/debug/.build-id")
                .join(&id[..2])
                .join(format!("{}.debug", &id[2..]));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::copy(&split.debug, &at).unwrap();
        } else {
            split.link_beside(&split.debug);
            std::fs::copy(&split.exe, &inside).unwrap();
            std::fs::copy(&split.debug, root.path().join("bin/split.debug")).unwrap();
            // Not beside the host's copy: only the root's is to be found.
            std::fs::remove_file(split.exe.with_file_name("split.debug")).unwrap();
        }
        let program =
            Program::spawn_command(Command::new("chroot").arg(root.path()).arg("/bin/split"));
        let running = Running::started(&split, program);
        let cache = tempfile::tempdir().unwrap();
        let symbols = Symbols::new(config(cache.path(), vec!["/usr/lib/debug".into()]))
            .await
            .unwrap();
        symbols.observe_process(running.pid());
        assert_statics_named(&symbols, &running).await;
        let stats = symbols.stats();
        let named = if by_build_id {
            stats.named_build_id_dir
        } else {
            stats.named_debuglink
        };
        assert_eq!(named, 2, "{stats:?}");
    }
}

/// The runtime address of `vaddr` of the file mapped from `path` by `pid`.
fn runtime_address(pid: u32, path: &Path, vaddr: u64) -> u64 {
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let (seg_offset, seg_vaddr) = obj
        .segments()
        .find(|s| vaddr >= s.address() && vaddr < s.address() + s.size())
        .map(|s| (s.file_range().0, s.address()))
        .unwrap();
    let offset = vaddr - seg_vaddr + seg_offset;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let canonical = std::fs::canonicalize(path).unwrap();
    for line in maps.lines() {
        let e = kestrel_symbols::parse_maps_line(line).unwrap();
        let Some(p) = e.path else { continue };
        if std::fs::canonicalize(p).ok().as_deref() != Some(canonical.as_path()) {
            continue;
        }
        if offset >= e.offset && offset < e.offset + (e.end - e.start) {
            return e.start + offset - e.offset;
        }
    }
    panic!(
        "{} offset {offset:#x} is not mapped by {pid}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libc_internal_functions_are_named_from_libc6_dbg() {
    let split = Split::build(1);
    let running = Running::start(&split);
    let pid = running.pid();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let libc = maps
        .lines()
        .filter_map(|l| kestrel_symbols::parse_maps_line(l).ok()?.path)
        .find(|p| p.contains("/libc.so.6"))
        .map(PathBuf::from)
        .expect("the test program maps libc.so.6");
    let id = common::readelf_build_id(&libc).unwrap();
    let debug = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &id[..2],
        &id[2..]
    ));
    assert!(
        debug.exists(),
        "libc's debug file {} is missing: apt-get install libc6-dbg (scripts/install-deps)",
        debug.display()
    );
    // `_int_malloc` is static in glibc's malloc.c: in the debug file's .symtab,
    // never in libc's .dynsym.
    let libc_data = std::fs::read(&libc).unwrap();
    let libc_obj = object::File::parse(&*libc_data).unwrap();
    assert!(libc_obj
        .dynamic_symbols()
        .all(|s| s.name() != Ok("_int_malloc")));
    let debug_data = std::fs::read(&debug).unwrap();
    let debug_obj = object::File::parse(&*debug_data).unwrap();
    let int_malloc = debug_obj
        .symbols()
        .find(|s| s.name() == Ok("_int_malloc"))
        .expect("_int_malloc in libc's debug symbols");
    let address = runtime_address(pid, &libc, int_malloc.address() + int_malloc.size() / 2);

    let cache = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path(), vec!["/usr/lib/debug".into()]))
        .await
        .unwrap();
    symbols.observe_process(pid);
    assert_eq!(
        name_of(&symbols, pid, address).await.as_deref(),
        Some("_int_malloc")
    );
    assert_eq!(symbols.stats().named_build_id_dir, 1);
}

/// elfutils' debuginfod on a free loopback port, serving `dir`.
struct Server {
    child: Child,
    url: String,
    _db: tempfile::TempDir,
}

impl Server {
    fn start(dir: &Path, ready_build_id: &str) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let db = tempfile::tempdir().unwrap();
        let child = Command::new("debuginfod")
            .arg("-F")
            .arg(dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-d")
            .arg(db.path().join("db.sqlite"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("debuginfod must be installed (scripts/install-deps)");
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _db: db,
        };
        // Ready once its first scan indexed the debug file.
        let probe = format!("{}/buildid/{ready_build_id}/debuginfo", server.url);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &probe])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "debuginfod did not serve {probe}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Symbolizes until the statics are named (a download in flight reports them
/// by address meanwhile), bounded.
async fn wait_named(symbols: &Symbols, running: &Running) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reports = 0;
    loop {
        reports += 1;
        let name = name_of(symbols, running.pid(), running.inside(STATICS[0])).await;
        if name.as_deref() == Some(STATICS[0]) {
            return reports;
        }
        // While downloading: an address, never a guess.
        assert_eq!(name, None, "a frame waiting for its debug file");
        assert!(Instant::now() < deadline, "never named from debuginfod");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debuginfod_downloads_once_and_failures_do_not_stop_symbolization() {
    let split = Split::build(1);
    let other = Split::build(3);
    let served = tempfile::tempdir().unwrap();
    std::fs::copy(&split.debug, served.path().join("split.debug")).unwrap();
    let mut server = Server::start(served.path(), &split.build_id());

    let cache = tempfile::tempdir().unwrap();
    let no_dirs = tempfile::tempdir().unwrap();
    let with_server = SymbolsConfig {
        debuginfod_urls: vec![server.url.clone()],
        debuginfod_allow_http: true,
        debuginfod_timeout_s: 5,
        ..config(cache.path(), vec![no_dirs.path().into()])
    };
    let symbols = Symbols::new(with_server.clone()).await.unwrap();
    let running = Running::start(&split);
    symbols.observe_process(running.pid());
    wait_named(&symbols, &running).await;
    assert_statics_named(&symbols, &running).await;
    let stats = symbols.stats();
    assert_eq!(stats.debuginfod_downloads, 1, "{stats:?}");
    assert_eq!(
        stats.debuginfod_bytes,
        std::fs::metadata(&split.debug).unwrap().len()
    );
    assert!(stats.named_debuginfod >= 2, "{stats:?}");

    // A build ID the server does not have: one 404, remembered (not asked
    // again within its TTL), and the frames say they have no symbols.
    let unserved = Split::build(4);
    let running_unserved = Running::start(&unserved);
    symbols.observe_process(running_unserved.pid());
    let deadline = Instant::now() + Duration::from_secs(20);
    while symbols.stats().debuginfod_not_found == 0 {
        let pid = running_unserved.pid();
        let name = name_of(&symbols, pid, running_unserved.inside(STATICS[0])).await;
        assert_eq!(name, None);
        assert!(Instant::now() < deadline, "the 404 was never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        assert_statics_unknown(&symbols, &running_unserved).await;
    }
    assert_eq!(symbols.stats().debuginfod_not_found, 1);

    // The server goes away: another binary's download fails, is counted, and
    // its frames stay addresses while symbolization goes on.
    server.stop();
    let running_other = Running::start(&other);
    symbols.observe_process(running_other.pid());
    let deadline = Instant::now() + Duration::from_secs(20);
    while symbols.stats().debuginfod_failures == 0 {
        let name = name_of(
            &symbols,
            running_other.pid(),
            running_other.inside(STATICS[0]),
        )
        .await;
        assert_eq!(name, None);
        assert!(Instant::now() < deadline, "the failure was never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once failed (and remembered), the frame says why it has no name.
    assert_statics_unknown(&symbols, &running_other).await;
    assert_statics_named(&symbols, &running).await;
    symbols.close().await;
    drop(symbols);

    // A restart on the same cache directory: the downloaded file is used, not
    // fetched again (the server is gone anyway).
    let again = Symbols::new(with_server).await.unwrap();
    again.observe_process(running.pid());
    assert_statics_named(&again, &running).await;
    // An address the store has not seen: looked up in the cached download.
    let entry = running.at(running.symbols[STATICS[1]].0 + 1);
    assert_eq!(
        name_of(&again, running.pid(), entry).await.as_deref(),
        Some(STATICS[1])
    );
    let stats = again.stats();
    assert_eq!(stats.debuginfod_downloads, 0, "{stats:?}");
    assert_eq!(stats.debuginfod_failures, 0, "{stats:?}");
    assert!(stats.named_debuginfod >= 1, "{stats:?}");
    drop(split);
}
