//! ELF header, program header and note parsing, through the real file path:
//! the input becomes an in-memory file (memfd) that `identify_file` reads with
//! its size caps. Never a panic; a build ID is at most 64 bytes; the pure
//! parsers agree with each other on the same bytes.
#![no_main]

use std::io::Write;
use std::os::fd::FromRawFd;

use kestrel_symbols::identity::{identify_file, read_build_id};
use kestrel_symbols::parse::{build_id_from_notes, note_segments, parse_elf_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // The pure parsers on the raw bytes.
    if let Ok(layout) = parse_elf_header(bytes) {
        assert!(layout.program_headers.1 <= 64 * 1024);
        let (offset, len) = layout.program_headers;
        let table = usize::try_from(offset)
            .ok()
            .and_then(|o| bytes.get(o..))
            .map(|t| &t[..t.len().min(len as usize)])
            .unwrap_or(&[]);
        for (_offset, _size) in note_segments(&layout, table) {}
    }
    for le in [true, false] {
        if let Some(id) = build_id_from_notes(bytes, le) {
            assert!(!id.is_empty() && id.len() <= 64);
        }
    }
    // The file path, as Kestrel reads a mapped file.
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"kestrel-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: the descriptor was just created and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes).expect("write to memfd");
    // An error is allowed (the caller counts it and leaves the mapping
    // unsymbolized); a panic or an unbounded read is not.
    let Ok(identity) = identify_file(&file) else {
        return;
    };
    if let Some(id) = &identity.build_id {
        assert!(id.len() <= 128 && id.len() % 2 == 0);
    }
    assert_eq!(
        read_build_id(&file).ok().flatten().map(hex_len),
        identity.build_id.as_ref().map(|h| h.len())
    );
});

fn hex_len(id: Vec<u8>) -> usize {
    id.len() * 2
}
