//! Unwind tables from untrusted bytes, both ways Kestrel reads them: an ELF file
//! (`.eh_frame`/`.debug_frame` through gimli) and a cached table from disk.
//! Never a panic; a built table passes the same verification as a table read
//! from disk and reads back equal; a table accepted from disk is canonical (it
//! serializes to the same bytes) and every lookup stays inside its arrays.
#![no_main]

use kestrel_unwind::{build, Table, NO_RULE, PAGE_SHIFT};
use libfuzzer_sys::fuzz_target;

fn check_lookups(table: &Table) {
    // Every row's own offset finds that row's rule (or none for NO_RULE).
    let pages = table.pages();
    for p in 0..pages.len().saturating_sub(1) {
        for i in pages[p] as usize..pages[p + 1] as usize {
            let row = table.rows()[i];
            let offset = ((p as u64) << PAGE_SHIFT) | u64::from(row >> 16);
            let idx = (row & 0xffff) as u16;
            let found = table.lookup_raw(offset);
            if idx == NO_RULE {
                assert!(found.is_none());
            } else {
                assert_eq!(found, Some(table.rules()[usize::from(idx)]));
                assert!(table.lookup(offset).is_some());
            }
        }
    }
    let _ = table.lookup(u64::MAX);
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(built) = build(bytes) {
        let again = Table::from_bytes(&built.table.to_bytes()).expect("a built table verifies");
        assert_eq!(again, built.table);
        assert!(built.table.row_count() >= built.stats.rows.saturating_sub(1));
        check_lookups(&built.table);
    }
    if let Ok(table) = Table::from_bytes(bytes) {
        assert_eq!(table.to_bytes(), bytes);
        check_lookups(&table);
    }
});
