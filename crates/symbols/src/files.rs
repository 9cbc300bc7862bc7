//! Open, identified files mapped by observed processes.
//!
//! Each distinct mapped file (by device and inode) is opened once, identified
//! (`FileId`, build ID) once, and its descriptor kept open while any tracked
//! process maps it. The open descriptor is what makes symbolization work after a
//! process exited or the file was deleted or replaced: blazesym reads it through
//! `/proc/self/fd/N`. Holding it also pins the inode, so (device, inode) cannot be
//! reused by another file while the entry lives.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use crate::fsutil::open_in_process_root;
use crate::identity::{identify_file, FileId};
use crate::parse::MapsEntry;
use crate::symbolizer::SymbolizerHandle;

/// A mapped file, open and identified.
pub(crate) struct OpenFile {
    pub id: FileId,
    pub build_id: Option<Arc<str>>,
    /// The first process seen mapping it, and the file's path there: where
    /// its debug files are looked for.
    pub origin_pid: u32,
    pub origin_path: Option<PathBuf>,
    file: File,
    symbolizer: SymbolizerHandle,
}

impl OpenFile {
    /// The path blazesym opens this file by.
    pub(crate) fn symbolizer_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The file's size now (0 if it cannot be read).
    pub(crate) fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        // Sent before the descriptor closes, so it reaches the symbolizer thread
        // before any request for a new file that reuses the descriptor number.
        self.symbolizer.evict(self.symbolizer_path(), Some(self.id));
    }
}

type InodeKey = (u64, u64);

/// All open files, shared by every process that maps them. Entries are weak: a
/// file closes when the last process mapping it is forgotten.
pub(crate) struct FileRegistry {
    files: Mutex<HashMap<InodeKey, Weak<OpenFile>>>,
    symbolizer: SymbolizerHandle,
}

/// Why a mapped file could not be opened.
#[derive(Debug)]
pub(crate) struct OpenError(pub std::io::Error);

impl FileRegistry {
    pub(crate) fn new(symbolizer: SymbolizerHandle) -> FileRegistry {
        FileRegistry {
            files: Mutex::new(HashMap::new()),
            symbolizer,
        }
    }

    /// The open file behind a file-backed mapping of `pid`, opening and
    /// identifying it on first sight.
    pub(crate) fn get_or_open(
        &self,
        pid: u32,
        entry: &MapsEntry<'_>,
    ) -> Result<Arc<OpenFile>, OpenError> {
        let key = (
            (u64::from(entry.dev_major) << 32) | u64::from(entry.dev_minor),
            entry.inode,
        );
        if let Some(file) = self.lookup(&key) {
            return Ok(file);
        }
        // Opening and identifying reads a few pages; do it without the lock. Two
        // racing openers produce the same identity; the first insert wins.
        let file = open_mapped_file(pid, entry).map_err(OpenError)?;
        let identity = identify_file(&file).map_err(OpenError)?;
        let opened = Arc::new(OpenFile {
            id: identity.id,
            build_id: identity.build_id.map(Arc::from),
            origin_pid: pid,
            origin_path: entry.path.map(PathBuf::from),
            file,
            symbolizer: self.symbolizer.clone(),
        });
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = files.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        files.retain(|_, weak| weak.strong_count() > 0);
        files.insert(key, Arc::downgrade(&opened));
        Ok(opened)
    }

    fn lookup(&self, key: &InodeKey) -> Option<Arc<OpenFile>> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.get(key).and_then(Weak::upgrade)
    }

    /// Number of files currently open.
    pub(crate) fn open_files(&self) -> usize {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// Opens the file of a mapping: by its path inside the process's root when that
/// still names the mapped inode, else through `/proc/PID/map_files/` (the exact
/// mapped file, even when deleted or replaced; needs CAP_SYS_ADMIN).
fn open_mapped_file(pid: u32, entry: &MapsEntry<'_>) -> std::io::Result<File> {
    let by_path = match entry.path {
        Some(path) if !entry.deleted => open_in_process_root(pid, path),
        _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
    };
    if let Ok(file) = &by_path {
        // overlayfs reports the upper device in stat but the lower one in maps;
        // the inode check alone still catches a replaced file.
        if file
            .metadata()
            .map(|m| m.ino() == entry.inode)
            .unwrap_or(false)
        {
            return by_path;
        }
    }
    // The path is gone or names another file now (replaced on upgrade): only the
    // mapped file itself gives the right symbols for this process's offsets.
    File::open(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        entry.start, entry.end
    ))
}
