//! Perf map lines (`START SIZE name`, written by any process into
//! /tmp/perf-PID.map): never a panic; a parsed region is non-empty, does not wrap
//! and has a non-empty name without padding spaces or
//! trailing whitespace. The reader splits the file at newlines
//! before parsing, so the input here is one line (up to its first newline).
#![no_main]

use kestrel_symbols::parse_perf_map_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let line = text.split_inclusive('\n').next().unwrap_or("");
    if let Ok(entry) = parse_perf_map_line(line) {
        assert!(entry.size > 0);
        assert!(entry.start.checked_add(entry.size).is_some());
        assert_eq!(entry.end(), entry.start + entry.size);
        assert!(!entry.name.is_empty());
        assert!(!entry.name.starts_with(' '));
        assert_eq!(entry.name, entry.name.trim_end());
        assert!(!entry.name.contains('\n'));
    }
});
