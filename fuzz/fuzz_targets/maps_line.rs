//! `/proc/PID/maps` lines: never a panic, and a parsed entry is self-consistent.
#![no_main]

use kestrel_symbols::parse_maps_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    if let Ok(entry) = parse_maps_line(line) {
        assert!(entry.start <= entry.end);
        if entry.is_file_backed() {
            assert!(entry.path.is_some_and(|p| p.starts_with('/')));
            assert_ne!(entry.inode, 0);
        }
        if let Some(path) = entry.path {
            assert!(!path.is_empty());
        }
    }
});
