//! Built tables on disk, keyed by the caller's file identity, so a restart does
//! not parse `.eh_frame` again. Bounded in bytes; the least recently used
//! tables (by modification time, refreshed on every hit) go first.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::table::Table;
use crate::CacheError;

const SUFFIX: &str = ".kut";
const TEMP_PREFIX: &str = ".tmp-";
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);
/// Longest key accepted: a GNU build ID is at most 64 bytes in practice here.
pub const MAX_KEY_BYTES: usize = 64;

/// A directory of serialized tables, one file per key.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl DiskCache {
    /// Opens (creating) `dir`, removes temporary files a crash left behind, and
    /// trims it to `max_bytes`.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<DiskCache, CacheError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| CacheError::io(&dir, e))?;
        let cache = DiskCache { dir, max_bytes };
        for entry in fs::read_dir(&cache.dir).map_err(|e| CacheError::io(&cache.dir, e))? {
            let entry = entry.map_err(|e| CacheError::io(&cache.dir, e))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
        cache.evict()?;
        Ok(cache)
    }

    fn path(&self, key: &[u8]) -> Result<PathBuf, CacheError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(CacheError::Key { len: key.len() });
        }
        Ok(self.dir.join(format!("{}{SUFFIX}", hex::encode(key))))
    }

    /// The table stored under `key`. A file that does not verify (torn, from
    /// another format version, damaged) is removed and reported, so the caller
    /// rebuilds and stores it again.
    pub fn get(&self, key: &[u8]) -> Result<Option<Table>, CacheError> {
        let path = self.path(key)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io(&path, e)),
        };
        match Table::from_bytes(&bytes) {
            Ok(t) => {
                // Recency for eviction; a failure only makes this entry older.
                if let Ok(f) = fs::File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Ok(Some(t))
            }
            Err(source) => {
                let _ = fs::remove_file(&path);
                Err(CacheError::Invalid { path, source })
            }
        }
    }

    /// Stores `table` under `key` atomically (temporary file, fsync, rename,
    /// fsync of the directory), then evicts the oldest tables past the bound.
    /// Returns `false` when the table alone is larger than the bound.
    pub fn put(&self, key: &[u8], table: &Table) -> Result<bool, CacheError> {
        let path = self.path(key)?;
        let bytes = table.to_bytes();
        if bytes.len() as u64 > self.max_bytes {
            return Ok(false);
        }
        // Unique per process and per call, so concurrent writers of one key
        // never share a temporary file; the last rename wins whole.
        let tmp = self.dir.join(format!(
            "{TEMP_PREFIX}{}-{}-{}",
            std::process::id(),
            NEXT_TEMP.fetch_add(1, Ordering::Relaxed),
            hex::encode(key)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::io(&path, e));
        }
        self.evict()?;
        Ok(true)
    }

    /// Total bytes of the stored tables.
    pub fn bytes(&self) -> Result<u64, CacheError> {
        Ok(self.entries()?.iter().map(|e| e.1).sum())
    }

    fn entries(&self) -> Result<Vec<(SystemTime, u64, PathBuf)>, CacheError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| CacheError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| CacheError::io(&self.dir, e))?;
            let name = entry.file_name();
            if !name.to_string_lossy().ends_with(SUFFIX) {
                continue;
            }
            // A file removed meanwhile (another Kestrel evicting) is skipped.
            let Ok(meta) = entry.metadata() else { continue };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((mtime, meta.len(), entry.path()));
        }
        Ok(out)
    }

    fn evict(&self) -> Result<(), CacheError> {
        let mut entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => total -= len,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= len,
                Err(e) => return Err(CacheError::io(&path, e)),
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl CacheError {
    fn io(path: &Path, source: std::io::Error) -> CacheError {
        CacheError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
