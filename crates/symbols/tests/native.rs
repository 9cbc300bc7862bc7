//! Native symbolization against a real program built with gcc, compared with
//! binutils' answers for the same addresses.

mod common;

use std::path::Path;

use common::{addr2line, compile, nm, readelf_build_id, tagged_line, Program};
use kestrel_model::{Frame, FrameKind};
use kestrel_symbols::{container_id_from_cgroup, Symbols, SymbolsConfig};

/// Runtime addresses of a started `native` program.
struct Layout {
    marker_rt: u64,
    marker_static: u64,
    /// Return address into `main` seen by `kestrel_test_marker_fn`.
    ret_rt: u64,
}

impl Layout {
    fn read(program: &mut Program, exe: &Path) -> Layout {
        let marker_rt = common::parse_hex(&program.expect_line("marker"));
        let ret_rt = common::parse_hex(&program.expect_line("ret"));
        program.expect_line("result");
        let marker_static = nm(exe)["kestrel_test_marker_fn"].0;
        Layout {
            marker_rt,
            marker_static,
            ret_rt,
        }
    }

    fn runtime(&self, static_address: u64) -> u64 {
        static_address - self.marker_static + self.marker_rt
    }

    fn to_static(&self, runtime_address: u64) -> u64 {
        runtime_address - self.marker_rt + self.marker_static
    }
}

/// An address inside `kestrel_test_marker_fn` where addr2line sees the inlined
/// helper, with addr2line's frames for it.
fn inlined_address(exe: &Path) -> (u64, Vec<common::LineFrame>) {
    let (start, size) = nm(exe)["kestrel_test_marker_fn"];
    (start..start + size)
        .find_map(|a| {
            let frames = addr2line(exe, a);
            (frames.len() == 2 && frames[0].function == "kestrel_inlined_helper")
                .then_some((a, frames))
        })
        .expect("gcc did not inline kestrel_inlined_helper into kestrel_test_marker_fn")
}

fn config(dir: &Path) -> SymbolsConfig {
    SymbolsConfig {
        cache_dir: Some(dir.to_path_buf()),
        memory_bytes: 4 << 20,
        disk_bytes: 16 << 20,
        ..SymbolsConfig::default()
    }
}

fn check_frame(frame: &Frame, function: &str, line: u32, inlined: bool, address: u64) {
    assert_eq!(frame.kind, FrameKind::Native, "{frame:?}");
    assert_eq!(frame.function.as_deref(), Some(function), "{frame:?}");
    assert!(
        frame
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("tests/programs/native.c")),
        "{frame:?}"
    );
    assert_eq!(frame.line, Some(line), "{frame:?}");
    assert_eq!(frame.inlined, inlined, "{frame:?}");
    assert_eq!(frame.address, address, "{frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbolizes_inline_chains_and_return_addresses_even_after_exit() {
    let (_bin_dir, exe) = compile("native");
    let cache = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path())).await.unwrap();
    let mut program = Program::spawn(&exe);
    let layout = Layout::read(&mut program, &exe);
    let pid = program.pid();
    symbols.observe_process(pid);

    let (inline_static, a2l) = inlined_address(&exe);
    assert_eq!(a2l[0].line, tagged_line("native", "helper_body"));
    assert_eq!(a2l[1].line, tagged_line("native", "marker_call"));
    let ret_a2l = addr2line(&exe, layout.to_static(layout.ret_rt) - 1);
    assert_eq!(ret_a2l.last().unwrap().function, "main");
    assert_eq!(
        ret_a2l.last().unwrap().line,
        tagged_line("native", "main_call")
    );

    let inline_rt = layout.runtime(inline_static);
    let stack = [inline_rt, layout.ret_rt];
    let frames = symbols.symbolize_user(pid, &stack).await;
    assert_eq!(frames.len(), 3, "{frames:#?}");
    check_frame(
        &frames[0],
        "kestrel_inlined_helper",
        a2l[0].line,
        true,
        inline_rt,
    );
    check_frame(
        &frames[1],
        "kestrel_test_marker_fn",
        a2l[1].line,
        false,
        inline_rt,
    );
    check_frame(
        &frames[2],
        "main",
        tagged_line("native", "main_call"),
        false,
        layout.ret_rt,
    );

    // The mapping is the executable, with the build ID binutils reports.
    let build_id = readelf_build_id(&exe).expect("gcc on Debian emits build IDs");
    let mapping = frames[0].mapping.as_ref().unwrap();
    assert_eq!(&*mapping.path, exe.to_str().unwrap());
    assert_eq!(mapping.build_id.as_deref(), Some(build_id.as_str()));
    assert!(mapping.start <= inline_rt && inline_rt < mapping.end);

    let info = symbols.process_info(pid);
    assert_eq!(info.pid, pid);
    assert_eq!(&*info.name, "native");
    assert_eq!(info.executable_path.as_deref(), exe.to_str());
    assert_eq!(info.build_id.as_deref(), Some(build_id.as_str()));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(
        info.container_id.as_deref(),
        container_id_from_cgroup(&cgroup).as_deref()
    );

    let first = symbols.stats();
    assert!(first.symbolizer_calls >= 1);
    assert_eq!(first.misses, 2, "one key per stack slot: {first:?}");

    // The process exits and its binary is deleted: the captured mappings and the
    // file held open still symbolize an address never looked up before.
    let main_static = nm(&exe)["main"].0;
    program.finish();
    std::fs::remove_file(&exe).unwrap();
    let main_rt = layout.runtime(main_static);
    let frames = symbols.symbolize_user(pid, &[main_rt]).await;
    assert_eq!(frames[0].function.as_deref(), Some("main"));
    assert!(symbols.stats().symbolizer_calls > first.symbolizer_calls);

    // The first stack again: answered by the store.
    let calls = symbols.stats().symbolizer_calls;
    let again = symbols.symbolize_user(pid, &stack).await;
    assert_eq!(again, symbols.symbolize_user(pid, &stack).await);
    assert_eq!(again[0].function.as_deref(), Some("kestrel_inlined_helper"));
    assert_eq!(symbols.stats().symbolizer_calls, calls);

    // Forgetting the process closes the file it kept open.
    let before = symbols.stats();
    symbols.forget_process(pid);
    let after = symbols.stats();
    assert_eq!(after.processes_tracked, before.processes_tracked - 1);
    assert!(
        after.open_files < before.open_files,
        "{before:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_mapping_the_same_file_share_store_entries() {
    let (_bin_dir, exe) = compile("native");
    let cache = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path())).await.unwrap();
    let (inline_static, _) = inlined_address(&exe);

    let mut first = Program::spawn(&exe);
    let first_layout = Layout::read(&mut first, &exe);
    let mut second = Program::spawn(&exe);
    let second_layout = Layout::read(&mut second, &exe);
    // ASLR puts the two PIE executables at different addresses.
    assert_ne!(first_layout.marker_rt, second_layout.marker_rt);

    let stack = |l: &Layout| [l.runtime(inline_static), l.ret_rt];
    let a = symbols
        .symbolize_user(first.pid(), &stack(&first_layout))
        .await;
    let calls = symbols.stats().symbolizer_calls;
    let hits = symbols.stats().hits;
    let b = symbols
        .symbolize_user(second.pid(), &stack(&second_layout))
        .await;
    assert_eq!(
        symbols.stats().symbolizer_calls,
        calls,
        "second process re-symbolized"
    );
    assert_eq!(symbols.stats().hits, hits + 2);
    let names = |f: &[Frame]| f.iter().map(|f| f.function.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    assert_eq!(a.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_and_unknown_processes_do_not_fail() {
    let cache = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(config(cache.path())).await.unwrap();
    // A pid above pid_max cannot exist.
    let pid = 4_194_305;
    symbols.observe_process(pid);
    let info = symbols.process_info(pid);
    assert_eq!(info.pid, pid);
    assert_eq!(&*info.name, "");
    let frames = symbols.symbolize_user(pid, &[0x1000, 0x2000]).await;
    assert_eq!(frames.len(), 2);
    assert!(frames
        .iter()
        .all(|f| f.function.is_none() && f.mapping.is_none()));
    assert_eq!(symbols.stats().processes_tracked, 1);
}
