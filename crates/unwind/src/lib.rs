//! Compact unwind tables for unwinding native stacks without frame pointers
//! (x86_64), built on the host from `.eh_frame` (and `.debug_frame` when
//! present) for a BPF unwinder to follow.
//!
//! Pure: bytes of an ELF file in, [`Table`] out ([`build`]); plus the table's
//! on-disk form ([`Table::to_bytes`], [`Table::from_bytes`]), a bounded
//! [`DiskCache`], and a reference unwinder ([`unwinder`]) that takes the same
//! steps as the BPF program over the same arrays.
//!
//! # Addresses: file offsets
//!
//! A table is keyed by **file offset**, the notion the symbol store uses: for a
//! pc inside a mapping `[vm_start, vm_end)` with page offset `vm_pgoff` (both
//! from `/proc/PID/maps` or the kernel's `vm_area_struct`),
//!
//! ```text
//! offset = pc - vm_start + vm_pgoff
//! ```
//!
//! This needs nothing from the ELF file at unwind time, so every process that
//! maps the file shares one table whatever its load address. `.eh_frame` speaks
//! in ELF virtual addresses (`p_vaddr` space); the build converts through the
//! executable `PT_LOAD` segments (`offset = vaddr - p_vaddr + p_offset`), which
//! is an identity for most shared objects and not for, e.g., a non-PIE
//! executable linked at 0x400000. [`Built::segments`] with
//! [`file_offset_of_vaddr`] / [`vaddr_of_file_offset`] converts both ways (a
//! symbol table's addresses are virtual addresses).
//!
//! For every frame but the first, the pc is a return address: look up
//! `pc - 1` (a call can be a function's last instruction, so the return address
//! may already belong to the next function).
//!
//! # Format and size
//!
//! See [`Table`]: 4 B per row (`u16` offset within a 64 KiB page, `u16` rule
//! index), 4 B per page, and 8 B per distinct rule ([`RawRule`]). A lookup is a
//! binary search within one page, at most [`MAX_SEARCH_STEPS`] (17) iterations.

mod cache;
mod elf;
pub mod rule;
mod serial;
mod table;
pub mod unwinder;

use std::path::PathBuf;

pub use cache::{DiskCache, MAX_KEY_BYTES};
pub use elf::{
    build, file_offset_of_vaddr, vaddr_of_file_offset, BuildStats, Built, ExecSegment, PADDING_GAP,
};
pub use rule::{CfaBase, RawRule, RbpRule, Unsupported, UnwindRule};
pub use serial::{FORMAT_VERSION, MAGIC};
pub use table::{
    split_offset, Row, Table, MAX_PAGES, MAX_RULES, MAX_SEARCH_STEPS, NO_RULE, PAGE_SHIFT,
};

/// Why a table could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("rows must be sorted by strictly increasing start (offset {offset:#x} is not); sort and deduplicate them first")]
    RowsNotSorted { offset: u64 },
    #[error("offset {offset:#x} is past 4 GiB: unwind tables cover files up to 4 GiB")]
    OffsetTooLarge { offset: u64 },
    #[error(
        "more than {max} distinct unwind rules in one file: the table's rule index is 16 bits"
    )]
    TooManyRules { max: usize },
    #[error("not a Kestrel unwind table (bad magic or too short): rebuild it from the ELF file")]
    BadMagic,
    #[error("unwind table format version {found}, this Kestrel reads {expected}: rebuild it from the ELF file")]
    Version { found: u32, expected: u32 },
    #[error("unwind table is truncated: rebuild it from the ELF file")]
    Truncated,
    #[error("unwind table checksum mismatch (damaged bytes): rebuild it from the ELF file")]
    Checksum,
    #[error("unwind table is inconsistent ({what}): rebuild it from the ELF file")]
    Corrupt { what: &'static str },
}

/// Why an ELF file gave no table.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("not a 64-bit ELF file ({0}); unwind tables are built from ELF executables and shared objects")]
    NotElf(String),
    #[error("ELF file for {0}, not x86_64: unwind tables are built for x86_64 only")]
    Architecture(String),
    #[error("cannot read section {0}: {1}")]
    Section(&'static str, String),
    #[error(transparent)]
    Table(TableError),
}

/// Why the disk cache failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("unwind cache key of {len} bytes: keys are 1 to 64 bytes (a file identity)")]
    Key { len: usize },
    #[error("unwind cache I/O on {path}: {source}; check the cache directory's permissions and free space")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cached unwind table {path} was invalid and has been removed; rebuild and store it again: {source}")]
    Invalid { path: PathBuf, source: TableError },
}
