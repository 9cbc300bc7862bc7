//! Pure parsers for the process metadata Kestrel reads: `/proc/PID/maps` lines,
//! `/proc/PID/cgroup` container IDs, perf map (`/tmp/perf-PID.map`) lines and ELF
//! notes. They do no I/O and never panic on any input, so they can be fuzzed.

use std::fmt;

/// Why a line could not be parsed. Carries the field that was wrong so a log line
/// can say what to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A required field is absent (the line is too short).
    MissingField(&'static str),
    /// A field is present but is not what the format requires.
    InvalidField(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::MissingField(field) => write!(f, "missing field `{field}`"),
            ParseError::InvalidField(field) => write!(f, "invalid field `{field}`"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Access permissions of a mapping (`rwxp` / `rwxs` in `/proc/PID/maps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
    /// `s` (shared) rather than `p` (private, copy on write).
    pub shared: bool,
}

/// One line of `/proc/PID/maps`, borrowing its path from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapsEntry<'a> {
    pub start: u64,
    pub end: u64,
    pub permissions: Permissions,
    /// Offset of `start` in the mapped file.
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The pathname column without the ` (deleted)` suffix; `None` for anonymous
    /// mappings. Pseudo paths such as `[vdso]` or `[anon:name]` are kept as they are.
    pub path: Option<&'a str>,
    /// The kernel marked the file as deleted (` (deleted)` suffix).
    pub deleted: bool,
}

impl MapsEntry<'_> {
    /// A mapping of a real file (inode != 0 and an absolute path), as opposed to
    /// anonymous memory, the heap, the stack or the vDSO.
    pub fn is_file_backed(&self) -> bool {
        self.inode != 0 && self.path.is_some_and(|p| p.starts_with('/'))
    }
}

const DELETED_SUFFIX: &str = " (deleted)";

/// Parses one line of `/proc/PID/maps`:
/// `start-end perms offset major:minor inode [pathname]`, all numbers hex except
/// the inode (decimal). The pathname may contain spaces.
pub fn parse_maps_line(line: &str) -> Result<MapsEntry<'_>, ParseError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let mut rest = line;
    let range = next_field(&mut rest).ok_or(ParseError::MissingField("address range"))?;
    let perms = next_field(&mut rest).ok_or(ParseError::MissingField("permissions"))?;
    let offset = next_field(&mut rest).ok_or(ParseError::MissingField("offset"))?;
    let dev = next_field(&mut rest).ok_or(ParseError::MissingField("device"))?;
    let inode = next_field(&mut rest).ok_or(ParseError::MissingField("inode"))?;

    let (start, end) = range
        .split_once('-')
        .ok_or(ParseError::InvalidField("address range"))?;
    let start = parse_hex(start).ok_or(ParseError::InvalidField("address range"))?;
    let end = parse_hex(end).ok_or(ParseError::InvalidField("address range"))?;
    if end < start {
        return Err(ParseError::InvalidField("address range"));
    }
    let permissions = parse_permissions(perms).ok_or(ParseError::InvalidField("permissions"))?;
    let offset = parse_hex(offset).ok_or(ParseError::InvalidField("offset"))?;
    let (major, minor) = dev
        .split_once(':')
        .ok_or(ParseError::InvalidField("device"))?;
    let dev_major = parse_hex(major)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(ParseError::InvalidField("device"))?;
    let dev_minor = parse_hex(minor)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(ParseError::InvalidField("device"))?;
    if inode.is_empty() || !inode.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::InvalidField("inode"));
    }
    let inode: u64 = inode
        .parse()
        .map_err(|_| ParseError::InvalidField("inode"))?;

    // The pathname is padded with spaces to a column; everything after the padding
    // belongs to it, including inner spaces.
    let raw_path = rest.trim_start_matches(' ');
    let (path, deleted) = if raw_path.is_empty() {
        (None, false)
    } else if let Some(p) = raw_path.strip_suffix(DELETED_SUFFIX) {
        (Some(p), true)
    } else {
        (Some(raw_path), false)
    };

    Ok(MapsEntry {
        start,
        end,
        permissions,
        offset,
        dev_major,
        dev_minor,
        inode,
        path,
        deleted,
    })
}

fn next_field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let trimmed = rest.trim_start_matches(' ');
    if trimmed.is_empty() {
        return None;
    }
    let end = trimmed.find(' ').unwrap_or(trimmed.len());
    let (field, tail) = trimmed.split_at(end);
    *rest = tail;
    Some(field)
}

fn parse_permissions(perms: &str) -> Option<Permissions> {
    let b = perms.as_bytes();
    if b.len() != 4 {
        return None;
    }
    let flag = |byte: u8, set: u8| -> Option<bool> {
        match byte {
            b'-' => Some(false),
            x if x == set => Some(true),
            _ => None,
        }
    };
    Some(Permissions {
        read: flag(b[0], b'r')?,
        write: flag(b[1], b'w')?,
        execute: flag(b[2], b'x')?,
        shared: match b[3] {
            b's' => true,
            b'p' => false,
            _ => return None,
        },
    })
}

/// Hex number with an optional `0x` prefix; at most 16 digits (u64).
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// One entry of a perf map (`/tmp/perf-PID.map`): `START SIZE name`, START and SIZE
/// in hex (with or without `0x`), the name being the rest of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerfMapEntry<'a> {
    pub start: u64,
    pub size: u64,
    pub name: &'a str,
}

impl PerfMapEntry<'_> {
    /// One past the last address of the region.
    pub fn end(&self) -> u64 {
        // `parse_perf_map_line` rejects regions that overflow, so this cannot wrap
        // for parsed entries; saturate for hand-built ones.
        self.start.saturating_add(self.size)
    }
}

/// Parses one perf map line. Rejects empty names, zero sizes and regions that
/// would run past the end of the address space.
pub fn parse_perf_map_line(line: &str) -> Result<PerfMapEntry<'_>, ParseError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut rest = line;
    let start = next_field(&mut rest).ok_or(ParseError::MissingField("start"))?;
    let size = next_field(&mut rest).ok_or(ParseError::MissingField("size"))?;
    let start = parse_hex(start).ok_or(ParseError::InvalidField("start"))?;
    let size = parse_hex(size).ok_or(ParseError::InvalidField("size"))?;
    if size == 0 || start.checked_add(size).is_none() {
        return Err(ParseError::InvalidField("size"));
    }
    let name = rest.trim_start_matches(' ').trim_end();
    if name.is_empty() {
        return Err(ParseError::MissingField("name"));
    }
    Ok(PerfMapEntry { start, size, name })
}

/// Prefixes that container runtimes put before the container ID in a cgroup path
/// component (systemd scope units and cgroupfs names).
const RUNTIME_PREFIXES: &[&str] = &[
    "docker-",
    "cri-containerd-",
    "containerd-",
    "crio-",
    "libpod-",
    "cri-o-",
];

/// Components that look like containers but are the runtime's monitor process.
const MONITOR_PREFIXES: &[&str] = &["crio-conmon-", "libpod-conmon-", "conmon-"];

const CONTAINER_ID_LEN: usize = 64;

/// Extracts the container ID from the contents of `/proc/PID/cgroup`
/// (`hierarchy-ID:controllers:path` lines, cgroup v1 or v2).
///
/// Recognised forms, the ID being 64 hex digits (returned lower-case):
/// docker (`/docker/<id>`, `docker-<id>.scope`), containerd / CRI
/// (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`), podman
/// (`libpod-<id>.scope`, but not `libpod-conmon-<id>.scope`), and kubepods paths
/// with the ID as the last component (`/kubepods/burstable/pod<uid>/<id>`).
/// The innermost (last) matching component wins, so nested containers report the
/// inner one.
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_hierarchy), Some(_controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let Some(id) = path.rsplit('/').find_map(container_id_from_component) {
            return Some(id);
        }
    }
    None
}

fn container_id_from_component(component: &str) -> Option<String> {
    if MONITOR_PREFIXES.iter().any(|p| component.starts_with(p)) {
        return None;
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let name = RUNTIME_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    if name.len() == CONTAINER_ID_LEN && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(name.to_ascii_lowercase())
    } else {
        None
    }
}

/// `NT_GNU_BUILD_ID`, the note type of a GNU build ID.
const NT_GNU_BUILD_ID: u32 = 3;
/// Largest build ID accepted; real ones are 16 (MD5/UUID) or 20 (SHA-1) bytes.
const MAX_BUILD_ID_LEN: usize = 64;

/// Finds the GNU build ID in a buffer of ELF notes (a `PT_NOTE` segment, a
/// `SHT_NOTE` section or `/sys/kernel/notes`). Notes are
/// `namesz, descsz, type` (u32 each, in the file's byte order), then the name and
/// the descriptor, each padded to 4 bytes.
pub fn build_id_from_notes(notes: &[u8], little_endian: bool) -> Option<&[u8]> {
    let read_u32 = |bytes: &[u8], at: usize| -> Option<u32> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if little_endian {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        })
    };
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    let mut at = 0usize;
    while at < notes.len() {
        let name_size = read_u32(notes, at)? as usize;
        let desc_size = read_u32(notes, at + 4)? as usize;
        let note_type = read_u32(notes, at + 8)?;
        let name_at = at.checked_add(12)?;
        let desc_at = name_at.checked_add(align4(name_size)?)?;
        let next = desc_at.checked_add(align4(desc_size)?)?;
        let name = notes.get(name_at..name_at.checked_add(name_size)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(desc_size)?)?;
        if note_type == NT_GNU_BUILD_ID
            && name == b"GNU\0"
            && !desc.is_empty()
            && desc.len() <= MAX_BUILD_ID_LEN
        {
            return Some(desc);
        }
        if next <= at {
            return None;
        }
        at = next;
    }
    None
}

/// Where the note segments of an ELF file are, parsed from its header and program
/// headers. `header` must hold the ELF header; `program_headers` the bytes at
/// [`ElfLayout::program_headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfLayout {
    pub little_endian: bool,
    pub is_64: bool,
    /// (file offset, total size) of the program header table.
    pub program_headers: (u64, u64),
    pub program_header_size: u16,
    pub program_header_count: u16,
}

/// Largest program header table accepted (the kernel's own limit is 64 KiB).
const MAX_PROGRAM_HEADERS_BYTES: u64 = 64 * 1024;

/// Parses an ELF header (the first 64 bytes of the file suffice).
pub fn parse_elf_header(header: &[u8]) -> Result<ElfLayout, ParseError> {
    if header.get(0..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ParseError::InvalidField("ELF magic"));
    }
    let is_64 = match header.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(ParseError::InvalidField("ELF class")),
    };
    let little_endian = match header.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err(ParseError::InvalidField("ELF data encoding")),
    };
    let u16_at = |at: usize| -> Result<u16, ParseError> {
        let raw: [u8; 2] = header
            .get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .ok_or(ParseError::MissingField("ELF header"))?;
        Ok(if little_endian {
            u16::from_le_bytes(raw)
        } else {
            u16::from_be_bytes(raw)
        })
    };
    let (phoff, phentsize, phnum) = if is_64 {
        let raw: [u8; 8] = header
            .get(32..40)
            .and_then(|b| b.try_into().ok())
            .ok_or(ParseError::MissingField("e_phoff"))?;
        let phoff = if little_endian {
            u64::from_le_bytes(raw)
        } else {
            u64::from_be_bytes(raw)
        };
        (phoff, u16_at(54)?, u16_at(56)?)
    } else {
        let raw: [u8; 4] = header
            .get(28..32)
            .and_then(|b| b.try_into().ok())
            .ok_or(ParseError::MissingField("e_phoff"))?;
        let phoff = if little_endian {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        };
        (u64::from(phoff), u16_at(42)?, u16_at(44)?)
    };
    let min_entry = if is_64 { 56 } else { 32 };
    if phnum > 0 && usize::from(phentsize) < min_entry {
        return Err(ParseError::InvalidField("e_phentsize"));
    }
    let table = u64::from(phentsize) * u64::from(phnum);
    if table > MAX_PROGRAM_HEADERS_BYTES {
        return Err(ParseError::InvalidField("e_phnum"));
    }
    Ok(ElfLayout {
        little_endian,
        is_64,
        program_headers: (phoff, table),
        program_header_size: phentsize,
        program_header_count: phnum,
    })
}

const PT_NOTE: u32 = 4;

/// (file offset, size) of every `PT_NOTE` segment in a program header table.
pub fn note_segments(layout: &ElfLayout, table: &[u8]) -> Vec<(u64, u64)> {
    let le = layout.little_endian;
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        let raw: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        })
    };
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        let raw: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(if le {
            u64::from_le_bytes(raw)
        } else {
            u64::from_be_bytes(raw)
        })
    };
    let entry_size = usize::from(layout.program_header_size);
    if entry_size == 0 {
        return Vec::new();
    }
    table
        .chunks_exact(entry_size)
        .take(usize::from(layout.program_header_count))
        .filter_map(|ph| {
            if u32_at(ph, 0)? != PT_NOTE {
                return None;
            }
            if layout.is_64 {
                Some((u64_at(ph, 8)?, u64_at(ph, 32)?))
            } else {
                Some((u64::from(u32_at(ph, 4)?), u64::from(u32_at(ph, 16)?)))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_line_with_path_spaces_and_deleted() {
        let e = parse_maps_line(
            "7f1c2a000000-7f1c2a1c8000 r-xp 00028000 fd:01 1835023    /usr/lib/my lib.so (deleted)\n",
        )
        .unwrap();
        assert_eq!(e.start, 0x7f1c2a000000);
        assert_eq!(e.end, 0x7f1c2a1c8000);
        assert!(e.permissions.read && e.permissions.execute && !e.permissions.write);
        assert!(!e.permissions.shared);
        assert_eq!(e.offset, 0x28000);
        assert_eq!((e.dev_major, e.dev_minor), (0xfd, 1));
        assert_eq!(e.inode, 1835023);
        assert_eq!(e.path, Some("/usr/lib/my lib.so"));
        assert!(e.deleted);
        assert!(e.is_file_backed());
    }

    #[test]
    fn maps_line_anonymous_and_pseudo() {
        let anon = parse_maps_line("7f00-8000 rwxp 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, None);
        assert!(!anon.is_file_backed());
        let vdso = parse_maps_line("7ffd1000-7ffd3000 r-xp 00000000 00:00 0      [vdso]").unwrap();
        assert_eq!(vdso.path, Some("[vdso]"));
        assert!(!vdso.is_file_backed());
        let shared = parse_maps_line("1000-2000 r--s 00000000 00:05 77 /dev/shm/x").unwrap();
        assert!(shared.permissions.shared);
    }

    #[test]
    fn maps_line_malformed() {
        let bad = [
            "",
            "1000-2000",
            "1000 r-xp 0 00:00 0",
            "2000-1000 r-xp 0 00:00 0",
            "1000-2000 r-xq 0 00:00 0",
            "1000-2000 rwx 0 00:00 0",
            "1000-2000 r-xp zz 00:00 0",
            "1000-2000 r-xp 0 0000 0",
            "1000-2000 r-xp 0 00:00 -1",
            "1000-2000 r-xp 0 00:00 12a",
            "1000-11112222333344445 r-xp 0 00:00 1",
            "1000-2000 r-xp 0 100000000:00 1",
        ];
        for line in bad {
            assert!(parse_maps_line(line).is_err(), "accepted {line:?}");
        }
    }

    #[test]
    fn perf_map_lines() {
        let e = parse_perf_map_line("7f3a2c001000 1a0 LambdaForm$MH/0x123::invoke (I)V\n").unwrap();
        assert_eq!(e.start, 0x7f3a2c001000);
        assert_eq!(e.size, 0x1a0);
        assert_eq!(e.name, "LambdaForm$MH/0x123::invoke (I)V");
        assert_eq!(e.end(), 0x7f3a2c0011a0);
        let e = parse_perf_map_line("0x10 0x20 py::f:/a.py\r\n").unwrap();
        assert_eq!((e.start, e.size, e.name), (0x10, 0x20, "py::f:/a.py"));
        for bad in [
            "",
            "10",
            "10 20",
            "10 20   ",
            "zz 20 f",
            "10 zz f",
            "10 0 f",
            "ffffffffffffffff 2 f",
            "10 20f",
        ] {
            assert!(parse_perf_map_line(bad).is_err(), "accepted {bad:?}");
        }
    }

    const ID: &str = "3f2a9c1b7e8d4f5a6b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";

    #[test]
    fn container_ids_from_common_runtimes() {
        let cases = [
            format!("12:pids:/docker/{ID}\n0::/docker/{ID}\n"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{ID}.scope\n"
            ),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            format!("11:memory:/kubepods/burstable/pod0f1e2d3c-aaaa-bbbb-cccc-1234567890ab/{ID}\n"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{}.scope\n", ID.to_uppercase()),
        ];
        for cgroup in &cases {
            assert_eq!(
                container_id_from_cgroup(cgroup).as_deref(),
                Some(ID),
                "cgroup {cgroup:?}"
            );
        }
    }

    #[test]
    fn no_container_id_for_hosts_and_monitors() {
        for cgroup in [
            "0::/user.slice/user-0.slice/session-3.scope\n".to_string(),
            "0::/\n".to_string(),
            format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"),
            format!("0::/docker/{}\n", &ID[..63]),
            format!("0::/docker/{ID}0\n"),
            "garbage without colons".to_string(),
            String::new(),
        ] {
            assert_eq!(container_id_from_cgroup(&cgroup), None, "cgroup {cgroup:?}");
        }
    }

    fn note(name: &[u8], note_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&note_type.to_le_bytes());
        v.extend_from_slice(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend_from_slice(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    #[test]
    fn build_id_is_found_after_other_notes() {
        let mut notes = note(b"Xen\0", 1, &[1, 2, 3]);
        notes.extend(note(b"GNU\0", 1, &[0; 16])); // ABI tag, not a build ID
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0xab; 20]));
        assert_eq!(build_id_from_notes(&notes, true), Some(&[0xab; 20][..]));
        assert_eq!(build_id_from_notes(&notes[..notes.len() - 4], true), None);
        assert_eq!(build_id_from_notes(&[], true), None);
        assert_eq!(build_id_from_notes(&[0xff; 12], true), None);
    }

    #[test]
    fn elf_header_rejects_non_elf() {
        assert!(parse_elf_header(b"#!/bin/sh\n").is_err());
        assert!(parse_elf_header(b"\x7fELF\x03\x01").is_err());
        assert!(parse_elf_header(b"\x7fELF\x02\x01").is_err());
    }

    mod never_panic {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn maps(line in ".{0,200}") {
                let _ = parse_maps_line(&line);
            }

            #[test]
            fn maps_shaped(start in any::<u64>(), end in any::<u64>(), perms in "[rwxps-]{0,5}",
                           tail in "[ -~]{0,60}") {
                let line = format!("{start:x}-{end:x} {perms} {tail}");
                if let Ok(e) = parse_maps_line(&line) {
                    prop_assert!(e.start <= e.end);
                }
            }

            #[test]
            fn perf_map(line in ".{0,200}") {
                if let Ok(e) = parse_perf_map_line(&line) {
                    prop_assert!(e.start.checked_add(e.size).is_some());
                    prop_assert!(!e.name.is_empty());
                }
            }

            #[test]
            fn cgroup(text in "([0-9]{1,2}:[a-z,]{0,10}:[/a-z0-9.-]{0,120}\n){0,4}") {
                if let Some(id) = container_id_from_cgroup(&text) {
                    prop_assert_eq!(id.len(), 64);
                }
            }

            #[test]
            fn cgroup_any(text in ".{0,300}") {
                let _ = container_id_from_cgroup(&text);
            }

            #[test]
            fn notes(bytes in proptest::collection::vec(any::<u8>(), 0..256), le in any::<bool>()) {
                if let Some(id) = build_id_from_notes(&bytes, le) {
                    prop_assert!(!id.is_empty() && id.len() <= 64);
                }
            }

            #[test]
            fn elf_header(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
                let mut with_magic = b"\x7fELF".to_vec();
                with_magic.extend_from_slice(&bytes);
                for input in [&bytes[..], &with_magic[..]] {
                    if let Ok(layout) = parse_elf_header(input) {
                        let table = vec![0u8; layout.program_headers.1 as usize];
                        let _ = note_segments(&layout, &table);
                    }
                }
            }
        }
    }
}
