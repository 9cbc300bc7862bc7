//! Kernel symbolization from the running kernel's kallsyms (needs root, which
//! exposes real addresses).

use std::collections::HashMap;

use kestrel_model::FrameKind;
use kestrel_symbols::{Symbols, SymbolsConfig};

/// A text symbol whose address no other symbol shares and which is followed by a
/// higher address (so `addr + 1` is still inside it). Prefers well-known names.
fn pick_symbol() -> (String, u64) {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let mut text: Vec<(u64, String)> = Vec::new();
    let mut per_address: HashMap<u64, usize> = HashMap::new();
    for line in kallsyms.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let addr = u64::from_str_radix(f[0], 16).unwrap();
        *per_address.entry(addr).or_default() += 1;
        if matches!(f[1], "T" | "t") && f.len() == 3 {
            text.push((addr, f[2].to_string()));
        }
    }
    assert!(
        text.iter().any(|(a, _)| *a != 0),
        "/proc/kallsyms shows zero addresses: run the tests as root"
    );
    text.sort();
    let usable = |i: usize| {
        let (addr, _) = &text[i];
        per_address[addr] == 1 && text.get(i + 1).is_some_and(|(next, _)| *next > addr + 1)
    };
    for wanted in ["schedule", "vfs_read", "do_sys_poll", "ksys_write"] {
        if let Some(i) = text.iter().position(|(_, n)| n == wanted) {
            if usable(i) {
                return (text[i].1.clone(), text[i].0);
            }
        }
    }
    let i = (0..text.len()).find(|&i| usable(i)).unwrap();
    (text[i].1.clone(), text[i].0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kallsyms_addresses_resolve_to_their_names() {
    let (name, addr) = pick_symbol();
    let cache = tempfile::tempdir().unwrap();
    let symbols = Symbols::new(SymbolsConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..SymbolsConfig::default()
    })
    .await
    .unwrap();
    // Leaf at the symbol's first byte; a "return address" one past it is looked
    // up at `addr` and still reported with its own address.
    let frames = symbols.symbolize_kernel(&[addr, addr + 1, 0]).await;
    assert_eq!(frames.len(), 3);
    for (frame, address) in frames.iter().zip([addr, addr + 1]) {
        assert_eq!(frame.kind, FrameKind::Kernel);
        assert_eq!(frame.function.as_deref(), Some(name.as_str()), "{frame:?}");
        assert_eq!(frame.address, address);
        assert!(!frame.inlined);
    }
    assert_eq!(frames[2].function, None);
    let stats = symbols.stats();
    assert_eq!(
        stats.symbolizer_calls, 1,
        "both lookups share one key: {stats:?}"
    );
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.hits, 0);

    // Again: from the store.
    let again = symbols.symbolize_kernel(&[addr]).await;
    assert_eq!(again[0].function.as_deref(), Some(name.as_str()));
    assert_eq!(symbols.stats().symbolizer_calls, 1);
    assert_eq!(symbols.stats().hits, 1);
}
