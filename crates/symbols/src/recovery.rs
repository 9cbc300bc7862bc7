//! What the disk tier holds when the store opens: entries and bytes that foyer's
//! recovery finds, for the store's stats.
//!
//! foyer 0.22 reports no count of what it recovered (one INFO line only), so this
//! reads the same checksummed blob indexes its block engine recovery reads
//! (foyer-storage `engine/block/{buffer,scanner,recover}.rs`), applying the same
//! rules: the blobs of a block are read from its start until an index does not
//! parse, a block stops at the first entry whose sequence goes backwards, and of
//! several entries with one hash the newest counts. Read-only and bounded (one
//! index page per blob). If a foyer upgrade changed the format the count would
//! read 0, which `tests/store_disk.rs` catches (it compares with what a previous
//! process wrote).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// foyer's FsDevice names its block files `<prefix><8-digit block id>`.
const BLOCK_FILE_PREFIX: &str = "foyer-storage-direct-fs-";
const PAGE: u64 = 4096;
/// Blob index layout: checksum (u64), count (u32), then 24-byte entries (hash u64,
/// sequence u64, offset u32, length u32), all big-endian.
const INDEX_COUNT_AT: usize = 8;
const INDEX_ENTRIES_AT: usize = 12;
const INDEX_ENTRY_BYTES: usize = 24;

/// What a disk tier holds for the next open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Distinct entries (the newest version of each key).
    pub entries: u64,
    /// Their serialized bytes (foyer's entry header, key and value; each entry
    /// occupies this rounded up to 4 KiB on disk).
    pub bytes: u64,
    /// Blocks holding at least one entry.
    pub blocks: u64,
}

struct IndexEntry {
    hash: u64,
    sequence: u64,
    offset: u32,
    len: u32,
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// Parses one blob index page; `None` when its checksum does not match (never
/// written, torn, or garbage): the end of the block's data.
fn parse_index(page: &[u8]) -> Option<Vec<IndexEntry>> {
    let expected = be_u64(page);
    if xxhash_rust::xxh64::xxh64(&page[INDEX_COUNT_AT..], 0) != expected {
        return None;
    }
    let count = usize::try_from(be_u32(&page[INDEX_COUNT_AT..])).ok()?;
    let end = INDEX_ENTRIES_AT.checked_add(count.checked_mul(INDEX_ENTRY_BYTES)?)?;
    let entries = page.get(INDEX_ENTRIES_AT..end)?;
    Some(
        entries
            .chunks_exact(INDEX_ENTRY_BYTES)
            .map(|e| IndexEntry {
                hash: be_u64(e),
                sequence: be_u64(&e[8..]),
                offset: be_u32(&e[16..]),
                len: be_u32(&e[20..]),
            })
            .collect(),
    )
}

/// The entries of one block file, in the order recovery accepts them.
fn scan_block(file: &File, block_bytes: u64, index_bytes: usize) -> Vec<IndexEntry> {
    let mut out: Vec<IndexEntry> = Vec::new();
    let mut page = vec![0u8; index_bytes];
    let mut offset = 0u64;
    while offset + index_bytes as u64 <= block_bytes {
        if file.read_exact_at(&mut page, offset).is_err() {
            break;
        }
        let Some(indices) = parse_index(&page) else {
            break;
        };
        let Some(last) = indices.last() else {
            break;
        };
        let step = u64::from(last.offset) + u64::from(last.len).div_ceil(PAGE) * PAGE;
        for entry in indices {
            if out
                .last()
                .is_some_and(|prev| entry.sequence < prev.sequence)
            {
                return out;
            }
            out.push(entry);
        }
        offset += step;
    }
    out
}

/// Counts what foyer will recover from the block files in `dir`, leaving out the
/// entry whose hash is `skip_hash` (the store's canary).
pub fn scan(dir: &Path, block_bytes: usize, index_bytes: usize, skip_hash: u64) -> Recovered {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Recovered::default();
    };
    let mut newest: HashMap<u64, (u64, u32)> = HashMap::new();
    let mut blocks = 0;
    for entry in entries.filter_map(Result::ok) {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(BLOCK_FILE_PREFIX)
        {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        let found = scan_block(&file, block_bytes as u64, index_bytes);
        if !found.is_empty() {
            blocks += 1;
        }
        for e in found {
            let slot = newest.entry(e.hash).or_insert((e.sequence, e.len));
            if e.sequence >= slot.0 {
                *slot = (e.sequence, e.len);
            }
        }
    }
    newest.remove(&skip_hash);
    Recovered {
        entries: newest.len() as u64,
        bytes: newest.values().map(|&(_, len)| u64::from(len)).sum(),
        blocks,
    }
}
