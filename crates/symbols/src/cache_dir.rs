//! The on-disk home of the store's disk tier.
//!
//! Layout under the configured cache directory:
//! - `symbols.lock`: `flock`ed by the running agent, so two agents never write the
//!   same disk tier (the second runs memory-only, with a warning);
//! - `symbols/`: owned entirely by the store (mode 0700). It holds a `FORMAT`
//!   marker naming the on-disk format and layout, and foyer's block files.
//!
//! Anything unexpected about `symbols/` (missing or different marker, not a
//! directory, a symlink, another owner, group/world access) makes it "foreign":
//! it is deleted and rebuilt with a warning. Corrupted block files are skipped by
//! foyer's recovery; a disk tier that still fails to open is rebuilt once, and if
//! that fails too the store runs memory-only. None of this is fatal.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::warn;

/// Name of the directory the store owns inside the cache directory.
pub const STORE_DIR_NAME: &str = "symbols";
const LOCK_FILE_NAME: &str = "symbols.lock";
const MARKER_FILE_NAME: &str = "FORMAT";
const CLEAN_FILE_NAME: &str = "CLEAN";
const LOCK_ATTEMPTS: u32 = 20;
const LOCK_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// The default cache directory: `/var/cache/kestrel` for root,
/// `$XDG_CACHE_HOME/kestrel` or `~/.cache/kestrel` for other users.
pub fn default_cache_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/kestrel");
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("kestrel");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("kestrel"),
        None => std::env::temp_dir().join("kestrel-cache"),
    }
}

/// Why the store's directory cannot be used; the store then runs memory-only.
#[derive(Debug, thiserror::Error)]
pub enum CacheDirError {
    #[error("cannot create cache directory {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect cache directory {}: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cache directory {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot open lock file {}: {source}", path.display())]
    OpenLock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cache directory is in use by another process ({} is locked: {source}); stop it or \
         give each agent its own cache directory",
        path.display()
    )]
    InUse {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove the unusable store directory {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the store directory {}: {source}", path.display())]
    CreateStore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A store directory ready for foyer: created, checked, marked, and locked for as
/// long as this value lives.
#[derive(Debug)]
pub struct PreparedDir {
    pub path: PathBuf,
    _lock: File,
}

/// Prepares `<cache_dir>/symbols` for a disk tier whose layout is described by
/// `layout` (written to the marker). `Err` says why the store must run
/// memory-only.
pub fn prepare(cache_dir: &Path, layout: &str) -> Result<PreparedDir, CacheDirError> {
    let path = || cache_dir.to_path_buf();
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache_dir)
        .map_err(|source| CacheDirError::Create {
            path: path(),
            source,
        })?;
    let meta = fs::metadata(cache_dir).map_err(|source| CacheDirError::Inspect {
        path: path(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(CacheDirError::NotADirectory { path: path() });
    }
    let lock = lock_file(&cache_dir.join(LOCK_FILE_NAME))?;

    let store = cache_dir.join(STORE_DIR_NAME);
    if let Some(reason) = foreign_reason(&store, layout) {
        warn!(dir = %store.display(), reason, "symbol store directory is unusable; rebuilding it");
        wipe(&store).map_err(|source| CacheDirError::Remove {
            path: store.clone(),
            source,
        })?;
    }
    if !store.exists() {
        create_store_dir(&store, layout).map_err(|source| CacheDirError::CreateStore {
            path: store.clone(),
            source,
        })?;
    }
    Ok(PreparedDir {
        path: store,
        _lock: lock,
    })
}

/// Deletes and recreates the store directory (after foyer failed to open it).
pub fn rebuild(dir: &PreparedDir, layout: &str) -> io::Result<()> {
    wipe(&dir.path)?;
    create_store_dir(&dir.path, layout)
}

fn lock_file(path: &Path) -> Result<File, CacheDirError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| CacheDirError::OpenLock {
            path: path.to_path_buf(),
            source,
        })?;
    // A child forked by any thread of this process holds a copy of a previous
    // lock descriptor until it execs; give such a transient holder a moment.
    let mut attempts = 0;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        let source = io::Error::last_os_error();
        attempts += 1;
        let busy = source.raw_os_error() == Some(libc::EWOULDBLOCK);
        if busy && attempts < LOCK_ATTEMPTS {
            std::thread::sleep(LOCK_RETRY_INTERVAL);
            continue;
        }
        let path = path.to_path_buf();
        return Err(if busy {
            CacheDirError::InUse { path, source }
        } else {
            CacheDirError::Lock { path, source }
        });
    }
}

fn foreign_reason(store: &Path, layout: &str) -> Option<String> {
    let meta = match fs::symlink_metadata(store) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => return Some(format!("cannot inspect it: {e}")),
    };
    if meta.file_type().is_symlink() {
        return Some("it is a symlink".into());
    }
    if !meta.is_dir() {
        return Some("it is not a directory".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Some(format!(
            "it is owned by uid {} instead of {euid}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Some(format!(
            "its mode {:o} lets other users in",
            meta.mode() & 0o777
        ));
    }
    match fs::read_to_string(store.join(MARKER_FILE_NAME)) {
        Ok(marker) if marker.trim_end() == layout => None,
        Ok(_) => Some("it was written with another format or size".into()),
        Err(_) => Some("its format marker is missing or unreadable".into()),
    }
}

fn wipe(store: &Path) -> io::Result<()> {
    match fs::symlink_metadata(store) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(store),
        Ok(_) => fs::remove_file(store),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn create_store_dir(store: &Path, layout: &str) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(store)?;
    // The mode given to mkdir is filtered by the umask; make sure it is 0700.
    fs::set_permissions(store, fs::Permissions::from_mode(0o700))?;
    let mut marker = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(store.join(MARKER_FILE_NAME))?;
    writeln!(marker, "{layout}")?;
    marker.sync_all()
}

/// Removes the "closed cleanly" marker; returns whether it was there.
pub fn take_clean_marker(store: &Path) -> bool {
    fs::remove_file(store.join(CLEAN_FILE_NAME)).is_ok()
}

/// Marks the store as closed cleanly (after its last write reached the disk).
pub fn put_clean_marker(store: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(store.join(CLEAN_FILE_NAME))?;
    file.sync_all()
}

/// Bytes the files of the store directory occupy on disk (allocated blocks, so
/// sparse block files count only what was written).
pub fn allocated_bytes(store: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(store) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_marks_and_locks() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("a/b");
        let dir = prepare(&cache, "layout-1").unwrap();
        let meta = fs::metadata(&dir.path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
        // A second user of the same directory is refused while the first lives.
        let second = prepare(&cache, "layout-1").unwrap_err();
        assert!(matches!(second, CacheDirError::InUse { .. }), "{second}");
        assert!(second.to_string().contains("in use"), "{second}");
        drop(dir);
        prepare(&cache, "layout-1").unwrap();
    }

    #[test]
    fn foreign_directories_are_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        let store = cache.join(STORE_DIR_NAME);
        // A directory without our marker, holding someone else's file.
        fs::create_dir(&store).unwrap();
        fs::write(store.join("theirs"), b"x").unwrap();
        let dir = prepare(cache, "layout-1").unwrap();
        assert!(!dir.path.join("theirs").exists());
        assert!(dir.path.join(MARKER_FILE_NAME).exists());
        drop(dir);
        // Same layout: kept.
        fs::write(store.join("block"), b"y").unwrap();
        let dir = prepare(cache, "layout-1").unwrap();
        assert!(dir.path.join("block").exists());
        drop(dir);
        // Another layout: rebuilt.
        let dir = prepare(cache, "layout-2").unwrap();
        assert!(!dir.path.join("block").exists());
        drop(dir);
        // A regular file in place of the directory, and wrong permissions.
        fs::remove_dir_all(&store).unwrap();
        fs::write(&store, b"not a dir").unwrap();
        let dir = prepare(cache, "layout-2").unwrap();
        assert!(dir.path.is_dir());
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755)).unwrap();
        drop(dir);
        let dir = prepare(cache, "layout-2").unwrap();
        assert_eq!(fs::metadata(&dir.path).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_file_as_cache_dir_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            prepare(&file, "x"),
            Err(CacheDirError::Create { .. } | CacheDirError::NotADirectory { .. })
        ));
    }
}
