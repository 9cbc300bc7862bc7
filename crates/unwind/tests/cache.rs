//! The disk cache on a real directory: hits, atomic replacement, the byte bound
//! with least-recently-used eviction, and damaged files.

use std::time::{Duration, SystemTime};

use kestrel_unwind::{CacheError, CfaBase, DiskCache, RbpRule, Row, Table, UnwindRule};

fn table(n: u64) -> Table {
    let rows: Vec<Row> = (0..n)
        .map(|i| Row {
            start: i * 16,
            rule: Some(UnwindRule::Cfa {
                base: CfaBase::Rsp,
                offset: 8 + 8 * (i % 3) as i32,
                rbp: RbpRule::Unchanged,
            }),
        })
        .collect();
    Table::from_rows(&rows, n * 16).unwrap()
}

fn age(cache: &DiskCache, key: &[u8], secs: u64) {
    let path = cache.dir().join(format!("{}.kut", hex_of(key)));
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

fn hex_of(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn stores_reads_and_evicts_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let one = table(100).to_bytes().len() as u64;
    let cache = DiskCache::open(dir.path(), 2 * one + one / 2).unwrap();
    assert_eq!(cache.get(b"a").unwrap(), None);
    assert!(cache.put(b"a", &table(100)).unwrap());
    assert!(cache.put(b"b", &table(100)).unwrap());
    age(&cache, b"a", 300);
    age(&cache, b"b", 200);
    // A hit makes "a" the most recent, so "b" goes when "c" arrives.
    assert_eq!(cache.get(b"a").unwrap(), Some(table(100)));
    assert!(cache.put(b"c", &table(100)).unwrap());
    assert_eq!(cache.get(b"b").unwrap(), None);
    assert_eq!(cache.get(b"a").unwrap(), Some(table(100)));
    assert_eq!(cache.get(b"c").unwrap(), Some(table(100)));
    assert!(cache.bytes().unwrap() <= 2 * one + one / 2);
    // A table larger than the whole bound is not stored.
    assert!(!cache.put(b"big", &table(10_000)).unwrap());
    // Replacing a key keeps one file.
    assert!(cache.put(b"a", &table(50)).unwrap());
    assert_eq!(cache.get(b"a").unwrap(), Some(table(50)));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn a_damaged_file_is_reported_and_removed_and_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
    cache.put(&[7; 20], &table(10)).unwrap();
    let path = dir.path().join(format!("{}.kut", hex_of(&[7; 20])));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        cache.get(&[7; 20]),
        Err(CacheError::Invalid { .. })
    ));
    assert!(!path.exists());
    assert_eq!(cache.get(&[7; 20]).unwrap(), None);
    assert!(matches!(cache.get(&[]), Err(CacheError::Key { .. })));
    assert!(matches!(
        cache.put(&[0; 65], &table(1)),
        Err(CacheError::Key { .. })
    ));
    // A temporary file left by a crash is removed on open.
    std::fs::write(dir.path().join(".tmp-1-00"), b"partial").unwrap();
    let _ = DiskCache::open(dir.path(), 1 << 20).unwrap();
    assert!(!dir.path().join(".tmp-1-00").exists());
}
