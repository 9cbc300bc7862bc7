//! JIT frames from a perf map written by a real process with an anonymous
//! executable mapping.

mod common;

use common::{compile, parse_hex, Program};
use kestrel_model::FrameKind;
use kestrel_symbols::{Symbols, SymbolsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_map_names_jit_code_and_growth_is_picked_up() {
    let (_dir, exe) = compile("jit");
    let cache = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(SymbolsConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..SymbolsConfig::default()
    })
    .await
    .unwrap();
    let mut program = Program::spawn(&exe);
    let base = parse_hex(&program.expect_line("base"));
    let pid = program.pid();
    symbols.observe_process(pid);

    let frames = symbols
        .symbolize_user(pid, &[base + 0x10, base + 0x40, base + 0x100])
        .await;
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].kind, FrameKind::Jit);
    assert_eq!(frames[0].function.as_deref(), Some("jit_method_one"));
    assert_eq!(frames[0].address, base + 0x10);
    // A return address at the first byte of the next method belongs to the one
    // before it (looked up at addr - 1).
    assert_eq!(frames[1].function.as_deref(), Some("jit_method_one"));
    // Not (yet) in the perf map: unknown, but still a JIT frame in its mapping.
    assert_eq!(frames[2].function, None);
    assert_eq!(frames[2].kind, FrameKind::Jit);
    let mapping = frames[2].mapping.as_ref().unwrap();
    assert!(mapping.start <= base && base + 0x100 < mapping.end);

    let frames = symbols.symbolize_user(pid, &[base + 0x50]).await;
    assert_eq!(
        frames[0].function.as_deref(),
        Some("Ljava/lang/String;::hashCode ()I")
    );
    let stats = symbols.stats();
    assert_eq!(stats.perf_map_malformed_lines, 1, "{stats:?}");
    assert_eq!(stats.perf_map_reloads, 1, "{stats:?}");
    assert_eq!(
        stats.symbolizer_calls, 0,
        "perf map names need no symbolizer"
    );

    // The runtime appends methods; each append is picked up.
    for round in 0..2u64 {
        let appended = parse_hex(&{
            program.send_line("more");
            program.expect_line("appended")
        });
        assert_eq!(appended, base + 0x80 + 0x40 * round);
        let frames = symbols.symbolize_user(pid, &[appended + 8]).await;
        let expected = format!("jit_method_appended_{:x}", appended - base);
        assert_eq!(frames[0].function.as_deref(), Some(expected.as_str()));
    }
    let stats = symbols.stats();
    assert_eq!(stats.perf_map_reloads, 3, "{stats:?}");
    assert_eq!(stats.perf_map_malformed_lines, 3, "{stats:?}");

    // After exit (the program deletes its perf map on the way out) the names
    // already read still resolve.
    program.finish();
    assert!(!std::path::Path::new(&format!("/tmp/perf-{pid}.map")).exists());
    let frames = symbols.symbolize_user(pid, &[base + 0x90]).await;
    assert_eq!(
        frames[0].function.as_deref(),
        Some("jit_method_appended_80")
    );
}
