//! File identities: the `FileId` half of every frame key.
//!
//! A `FileId` names the *contents* of a file, not its path, so the same library
//! mapped by many processes (or containers) shares its store entries, and a file
//! replaced on disk gets fresh ones.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use xxhash_rust::xxh3::Xxh3;

use crate::parse::{build_id_from_notes, note_segments, parse_elf_header};

/// Identity of a symbol source: an ELF file, the running kernel or one JIT method
/// region. See [`FileId::from_build_id`] and friends for how each is derived.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u128);

impl std::fmt::Debug for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileId({:032x})", self.0)
    }
}

/// Domain tags keep the identity kinds apart: a build ID can never hash to the
/// same id as a content sample or a JIT region.
const DOMAIN_BUILD_ID: &[u8] = b"kestrel/build-id\0";
const DOMAIN_SAMPLE: &[u8] = b"kestrel/sample\0";
const DOMAIN_KERNEL: &[u8] = b"kestrel/kernel\0";
const DOMAIN_JIT: &[u8] = b"kestrel/jit\0";

/// Bytes hashed from each end of a file without a build ID.
pub const SAMPLE_BYTES: usize = 4096;

impl FileId {
    /// Identity of a file with a GNU build ID (any length).
    pub fn from_build_id(build_id: &[u8]) -> FileId {
        let mut h = Xxh3::new();
        h.update(DOMAIN_BUILD_ID);
        h.update(build_id);
        FileId(h.digest128())
    }

    /// Identity of a file without a build ID: xxh3-128 of its size and its first
    /// and last [`SAMPLE_BYTES`] bytes. Cheap, but blind to edits in the middle of
    /// a large file that keep its size; files that matter for symbolization
    /// (compilers' output) carry build IDs.
    pub fn from_content_sample(size: u64, head: &[u8], tail: &[u8]) -> FileId {
        let mut h = Xxh3::new();
        h.update(DOMAIN_SAMPLE);
        h.update(&size.to_le_bytes());
        h.update(&(head.len() as u64).to_le_bytes());
        h.update(head);
        h.update(&(tail.len() as u64).to_le_bytes());
        h.update(tail);
        FileId(h.digest128())
    }

    /// Identity of the running kernel. Kernel frame keys use absolute addresses,
    /// which KASLR moves at every boot, so the boot ID is part of the identity: a
    /// disk-tier entry from a previous boot can never answer for this one.
    pub fn kernel(build_id_or_release: &[u8], boot_id: &[u8]) -> FileId {
        let mut h = Xxh3::new();
        h.update(DOMAIN_KERNEL);
        h.update(&(build_id_or_release.len() as u64).to_le_bytes());
        h.update(build_id_or_release);
        h.update(boot_id);
        FileId(h.digest128())
    }

    /// Identity of one JIT method region of a perf map. Two processes that
    /// publish the same name at the same place share it, which is harmless: the
    /// value is the name.
    pub fn jit_region(start: u64, size: u64, name: &str) -> FileId {
        let mut h = Xxh3::new();
        h.update(DOMAIN_JIT);
        h.update(&start.to_le_bytes());
        h.update(&size.to_le_bytes());
        h.update(name.as_bytes());
        FileId(h.digest128())
    }
}

/// Size cap of the note segments read while looking for a build ID.
const MAX_NOTES_BYTES: u64 = 64 * 1024;

/// What identifying an open file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub id: FileId,
    /// Lower-case hex GNU build ID, when the file is an ELF file that has one.
    pub build_id: Option<String>,
}

/// Identifies an open file: by its GNU build ID when it is an ELF file with one,
/// else by a content sample. Reads at most a few pages.
pub fn identify_file(file: &File) -> io::Result<FileIdentity> {
    if let Some(build_id) = read_build_id(file)? {
        return Ok(FileIdentity {
            id: FileId::from_build_id(&build_id),
            build_id: Some(hex::encode(build_id)),
        });
    }
    let size = file.metadata()?.len();
    let head = read_at_most(file, 0, SAMPLE_BYTES)?;
    let tail_start = size.saturating_sub(SAMPLE_BYTES as u64);
    let tail = read_at_most(file, tail_start, SAMPLE_BYTES)?;
    Ok(FileIdentity {
        id: FileId::from_content_sample(size, &head, &tail),
        build_id: None,
    })
}

/// Reads the GNU build ID from the `PT_NOTE` segments of an ELF file. `Ok(None)`
/// for non-ELF files and ELF files without one.
pub fn read_build_id(file: &File) -> io::Result<Option<Vec<u8>>> {
    let header = read_at_most(file, 0, 64)?;
    let Ok(layout) = parse_elf_header(&header) else {
        return Ok(None);
    };
    let (table_offset, table_len) = layout.program_headers;
    // `parse_elf_header` caps the table at 64 KiB.
    let table = read_at_most(file, table_offset, table_len as usize)?;
    for (offset, size) in note_segments(&layout, &table) {
        let notes = read_at_most(file, offset, size.min(MAX_NOTES_BYTES) as usize)?;
        if let Some(id) = build_id_from_notes(&notes, layout.little_endian) {
            return Ok(Some(id.to_vec()));
        }
    }
    Ok(None)
}

/// Reads up to `len` bytes at `offset` (fewer at end of file).
pub(crate) fn read_at_most(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The running kernel's identity: its build ID from `/sys/kernel/notes` (or its
/// release string when that is unreadable) combined with the boot ID.
pub fn kernel_file_id() -> (FileId, Option<String>) {
    let build_id = std::fs::read("/sys/kernel/notes").ok().and_then(|notes| {
        build_id_from_notes(&notes, cfg!(target_endian = "little")).map(<[u8]>::to_vec)
    });
    let boot_id = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    match build_id {
        Some(id) => (FileId::kernel(&id, &boot_id), Some(hex::encode(&id))),
        None => {
            let release = std::fs::read("/proc/sys/kernel/osrelease").unwrap_or_default();
            (FileId::kernel(&release, &boot_id), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The build ID we read must be the one binutils reports for the same file.
    #[test]
    fn build_id_matches_readelf() {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("readelf")
            .arg("-n")
            .arg(&exe)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .map(str::to_string);
        let file = File::open(&exe).unwrap();
        let ident = identify_file(&file).unwrap();
        assert_eq!(ident.build_id, expected);
        if let Some(hex_id) = expected {
            let raw = hex::decode(hex_id).unwrap();
            assert_eq!(ident.id, FileId::from_build_id(&raw));
        }
    }

    #[test]
    fn files_without_build_id_are_identified_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut content = vec![7u8; 3 * SAMPLE_BYTES];
        std::fs::write(&a, &content).unwrap();
        let id_a = identify_file(&File::open(&a).unwrap()).unwrap();
        assert_eq!(id_a.build_id, None);
        // Same content elsewhere: same identity.
        let b = dir.path().join("b");
        std::fs::write(&b, &content).unwrap();
        assert_eq!(identify_file(&File::open(&b).unwrap()).unwrap().id, id_a.id);
        // A change in the last page: a different identity.
        *content.last_mut().unwrap() = 8;
        std::fs::write(&b, &content).unwrap();
        assert_ne!(identify_file(&File::open(&b).unwrap()).unwrap().id, id_a.id);
    }

    #[test]
    fn kernel_identity_is_stable_within_a_boot() {
        assert_eq!(kernel_file_id().0, kernel_file_id().0);
        assert_ne!(
            FileId::kernel(b"6.1", b"boot-a"),
            FileId::kernel(b"6.1", b"boot-b")
        );
    }

    #[test]
    fn identity_domains_do_not_collide() {
        assert_ne!(FileId::from_build_id(b"x"), FileId::kernel(b"x", b""));
        assert_ne!(FileId::jit_region(1, 2, "f"), FileId::jit_region(1, 3, "f"));
    }
}
