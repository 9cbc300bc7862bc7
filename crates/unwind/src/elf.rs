//! From an ELF file's bytes to a [`Table`]: `.eh_frame` and `.debug_frame`
//! parsed with gimli, sections and segments read with `object`.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Register,
    RegisterRule, UnwindContext, UnwindSection, UnwindTable, UnwindTableRow,
};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Object, ObjectSection};

use crate::rule::{CfaBase, RbpRule, Unsupported, UnwindRule};
use crate::table::{Row, Table};
use crate::BuildError;

type Slice<'a> = EndianSlice<'a, LittleEndian>;

const RBP: Register = gimli::X86_64::RBP;
const RSP: Register = gimli::X86_64::RSP;
const RA: Register = gimli::X86_64::RA;
const PF_X: u32 = 1;
/// A gap between two described ranges shorter than this is alignment padding
/// between functions (compilers align functions to 16 bytes): no pc executes
/// there, and a return address is looked up at `pc - 1`, inside the caller. The
/// previous rule is extended over it instead of spending a "no rule" row.
pub const PADDING_GAP: u64 = 16;

/// An executable `PT_LOAD` segment: the part of the file mapped with execute
/// permission, which is where every address of an unwind table lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecSegment {
    /// `p_vaddr`: the segment's address before the load bias is added.
    pub vaddr: u64,
    /// `p_offset`: where its bytes start in the file.
    pub offset: u64,
    /// `p_filesz`: code beyond the file-backed part does not exist.
    pub size: u64,
}

impl ExecSegment {
    /// The file offset of an ELF virtual address inside this segment.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        let delta = vaddr.checked_sub(self.vaddr)?;
        (delta < self.size).then(|| self.offset + delta)
    }

    /// The ELF virtual address of a file offset inside this segment.
    pub fn vaddr(&self, file_offset: u64) -> Option<u64> {
        let delta = file_offset.checked_sub(self.offset)?;
        (delta < self.size).then(|| self.vaddr + delta)
    }
}

/// ELF virtual address → file offset through the executable segments.
pub fn file_offset_of_vaddr(segments: &[ExecSegment], vaddr: u64) -> Option<u64> {
    segments.iter().find_map(|s| s.file_offset(vaddr))
}

/// File offset → ELF virtual address through the executable segments (what a
/// symbol table or `objdump` shows for that byte).
pub fn vaddr_of_file_offset(segments: &[ExecSegment], file_offset: u64) -> Option<u64> {
    segments.iter().find_map(|s| s.vaddr(file_offset))
}

/// What a build saw: the counts behind the table's size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// FDEs read from `.eh_frame`.
    pub fdes: usize,
    /// FDEs read from `.debug_frame` and used (those overlapping `.eh_frame`
    /// coverage are not: `.eh_frame` wins).
    pub debug_frame_fdes: usize,
    /// FDEs skipped: overlapping `.eh_frame` (for `.debug_frame`), outside every
    /// executable segment, or whose instructions gimli refused.
    pub fdes_skipped: usize,
    /// Errors that stopped reading a section early (a malformed entry header:
    /// the rest of that section cannot be found).
    pub section_errors: usize,
    /// Gaps shorter than [`PADDING_GAP`] covered by the previous rule.
    pub gaps_filled: usize,
    /// Rows as gimli evaluated them, before merging.
    pub cfi_rows: usize,
    /// Rows after merging equal neighbours (including rows that start a range
    /// without information); the count the format comparisons use.
    pub rows: usize,
    /// What `rows` would be with a "no rule" row for every gap (as formats
    /// without padding filling store them): the fair base for comparisons.
    pub rows_without_gap_fill: usize,
    /// Rows of each marked kind, after merging.
    pub plt_rows: usize,
    pub signal_rows: usize,
    pub end_of_stack_rows: usize,
    pub unsupported_rows: usize,
}

/// A built table with what the caller needs around it.
#[derive(Clone, Debug)]
pub struct Built {
    pub table: Table,
    pub stats: BuildStats,
    /// To convert between the table's file offsets and ELF virtual addresses.
    pub segments: Vec<ExecSegment>,
}

/// Builds the unwind table of an x86_64 ELF file (executable or shared object).
/// A file without `.eh_frame` and `.debug_frame` gives an empty table (every
/// lookup: no rule).
pub fn build(elf: &[u8]) -> Result<Built, BuildError> {
    let file = ElfFile64::<object::Endianness>::parse(elf)
        .map_err(|e| BuildError::NotElf(e.to_string()))?;
    if file.architecture() != object::Architecture::X86_64 || !file.is_little_endian() {
        return Err(BuildError::Architecture(format!(
            "{:?}",
            file.architecture()
        )));
    }
    let endian = file.endian();
    let mut segments = Vec::new();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) == object::elf::PT_LOAD && ph.p_flags(endian) & PF_X != 0 {
            segments.push(ExecSegment {
                vaddr: ph.p_vaddr(endian),
                offset: ph.p_offset(endian),
                size: ph.p_filesz(endian),
            });
        }
    }

    let address_of = |name: &str| file.section_by_name(name).map(|s| s.address());
    let mut bases = BaseAddresses::default();
    if let Some(a) = address_of(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(a);
    }
    if let Some(a) = address_of(".text") {
        bases = bases.set_text(a);
    }
    if let Some(a) = address_of(".got") {
        bases = bases.set_got(a);
    }

    let mut stats = BuildStats::default();
    let mut intervals: Vec<Interval> = Vec::new();
    if let Some(section) = file.section_by_name(".eh_frame") {
        let data = section
            .data()
            .map_err(|e| BuildError::Section(".eh_frame", e.to_string()))?;
        let mut eh = EhFrame::new(data, LittleEndian);
        eh.set_address_size(8);
        let bases = bases.clone().set_eh_frame(section.address());
        read_section(&eh, &bases, &segments, &mut intervals, &mut stats, None);
    }
    if let Some(section) = file.section_by_name(".debug_frame") {
        match section.uncompressed_data() {
            Ok(data) => {
                let mut debug = DebugFrame::new(&data, LittleEndian);
                debug.set_address_size(8);
                let mut covered: Vec<(u64, u64)> =
                    intervals.iter().map(|i| (i.fde_start, i.fde_end)).collect();
                covered.sort_unstable();
                covered.dedup();
                read_section(
                    &debug,
                    &bases,
                    &segments,
                    &mut intervals,
                    &mut stats,
                    Some(&covered),
                );
            }
            // Compressed debug sections are not decoded (no decompressor is
            // built in); `.eh_frame` alone still describes all unwindable code.
            Err(_) => stats.section_errors += 1,
        }
    }

    intervals.sort_by_key(|i| i.start);
    let (rows, end, gaps_filled) = sweep(&intervals, true);
    stats.gaps_filled = gaps_filled;
    stats.rows_without_gap_fill = sweep(&intervals, false).0.len() + usize::from(!rows.is_empty());
    for r in &rows {
        match r.rule {
            Some(UnwindRule::Plt { .. }) => stats.plt_rows += 1,
            Some(UnwindRule::SignalFrame) => stats.signal_rows += 1,
            Some(UnwindRule::EndOfStack) => stats.end_of_stack_rows += 1,
            Some(UnwindRule::Unsupported(_)) => stats.unsupported_rows += 1,
            _ => {}
        }
    }
    stats.rows = rows.len() + usize::from(!rows.is_empty());
    let table = Table::from_rows(&rows, end).map_err(BuildError::Table)?;
    Ok(Built {
        table,
        stats,
        segments,
    })
}

/// Sweeps sorted ranges into rows: a gap starts a "no rule" row (unless `fill`
/// and it is padding), and on overlap (bad input only) the later-starting range
/// takes over. Returns the rows, the end of the last range, and the gaps filled.
fn sweep(intervals: &[Interval], fill: bool) -> (Vec<Row>, u64, usize) {
    let mut rows: Vec<Row> = Vec::with_capacity(intervals.len());
    let mut end = 0u64;
    let mut filled = 0;
    for iv in intervals {
        if !rows.is_empty() && iv.start > end {
            if fill && iv.start - end < PADDING_GAP {
                filled += 1;
            } else {
                push_merged(&mut rows, end, None);
            }
        }
        push_merged(&mut rows, iv.start, Some(iv.rule.canonical()));
        end = iv.end;
    }
    (rows, end, filled)
}

/// One gimli row's range, already in file offsets, with its FDE's range in
/// virtual addresses (to find `.debug_frame` FDEs that `.eh_frame` covers).
struct Interval {
    start: u64,
    end: u64,
    rule: UnwindRule,
    fde_start: u64,
    fde_end: u64,
}

fn push_merged(rows: &mut Vec<Row>, start: u64, rule: Option<UnwindRule>) {
    // A row starting where the previous one starts replaces it (that one was
    // empty); then a row equal to its predecessor adds nothing.
    while rows.last().is_some_and(|r| r.start == start) {
        rows.pop();
    }
    match rows.last() {
        Some(last) if last.rule == rule => {}
        None if rule.is_none() => {}
        _ => rows.push(Row { start, rule }),
    }
}

fn read_section<'a, S>(
    section: &S,
    bases: &BaseAddresses,
    segments: &[ExecSegment],
    out: &mut Vec<Interval>,
    stats: &mut BuildStats,
    skip_covered: Option<&[(u64, u64)]>,
) where
    S: UnwindSection<Slice<'a>>,
{
    let mut ctx = UnwindContext::new();
    let mut entries = section.entries(bases);
    loop {
        let partial = match entries.next() {
            Ok(None) => break,
            Ok(Some(CieOrFde::Cie(_))) => continue,
            Ok(Some(CieOrFde::Fde(p))) => p,
            Err(_) => {
                stats.section_errors += 1;
                break;
            }
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            stats.fdes_skipped += 1;
            continue;
        };
        let (fde_start, fde_end) = (
            fde.initial_address(),
            fde.initial_address().saturating_add(fde.len()),
        );
        if let Some(covered) = skip_covered {
            // Sorted by start: the last range starting before this FDE's end is
            // the only one that can overlap it, unless ranges overlap each other.
            let i = covered.partition_point(|(s, _)| *s < fde_end);
            if i > 0 && covered[i - 1].1 > fde_start {
                stats.fdes_skipped += 1;
                continue;
            }
        }
        let Some(segment) = segments.iter().find(|s| s.file_offset(fde_start).is_some()) else {
            stats.fdes_skipped += 1;
            continue;
        };
        let signal = fde.is_signal_trampoline();
        let before = out.len();
        let rows_before = stats.cfi_rows;
        let result = (|| -> gimli::Result<()> {
            let mut table = UnwindTable::new(section, bases, &mut ctx, &fde)?;
            while let Some(row) = table.next_row()? {
                stats.cfi_rows += 1;
                // Clip to the segment's file-backed part; offsets are below
                // 2^32 for the table (a larger file has no table there).
                let seg_end = segment.vaddr.saturating_add(segment.size);
                let (s, e) = (row.start_address(), row.end_address().min(seg_end));
                if s >= e {
                    continue;
                }
                let (Some(start), Some(end)) = (
                    segment.file_offset(s),
                    segment.file_offset(e - 1).map(|o| o + 1),
                ) else {
                    continue;
                };
                if end > 1 << 32 {
                    continue;
                }
                out.push(Interval {
                    start,
                    end,
                    rule: rule_of(section, row, signal),
                    fde_start,
                    fde_end,
                });
            }
            Ok(())
        })();
        if result.is_err() {
            // A half-evaluated FDE is dropped whole: its later rows are unknown.
            out.truncate(before);
            stats.cfi_rows = rows_before;
            stats.fdes_skipped += 1;
        } else if skip_covered.is_some() {
            stats.debug_frame_fdes += 1;
        } else {
            stats.fdes += 1;
        }
    }
}

fn rule_of<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    row: &UnwindTableRow<usize>,
    signal: bool,
) -> UnwindRule {
    if signal {
        return UnwindRule::SignalFrame;
    }
    match row.register(RA) {
        Some(RegisterRule::Undefined) => return UnwindRule::EndOfStack,
        Some(RegisterRule::Offset(-8)) => {}
        _ => return UnwindRule::Unsupported(Unsupported::ReturnAddress),
    }
    let rbp = match row.register(RBP) {
        None | Some(RegisterRule::SameValue) => RbpRule::Unchanged,
        Some(RegisterRule::Offset(n)) => i16::try_from(n).map_or(RbpRule::Unknown, RbpRule::AtCfa),
        Some(_) => RbpRule::Unknown,
    };
    match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let base = match *register {
                RSP => CfaBase::Rsp,
                RBP => CfaBase::Rbp,
                _ => return UnwindRule::Unsupported(Unsupported::CfaRegister),
            };
            match i32::try_from(*offset) {
                Ok(offset) => UnwindRule::Cfa { base, offset, rbp },
                Err(_) => UnwindRule::Unsupported(Unsupported::OffsetRange),
            }
        }
        CfaRule::Expression(expr) => expr
            .get(section)
            .ok()
            .and_then(|e| plt_rule(e.0.slice()))
            .unwrap_or(UnwindRule::Unsupported(Unsupported::CfaExpression)),
    }
}

/// Recognizes the linker's PLT expression:
/// `DW_OP_breg7 (rsp) N; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and;
/// DW_OP_litK; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`,
/// i.e. CFA = rsp + N + (((rip & 15) >= K) << 3).
pub(crate) fn plt_rule(expr: &[u8]) -> Option<UnwindRule> {
    const BREG7: u8 = 0x77;
    const BREG16: u8 = 0x80;
    const LIT0: u8 = 0x30;
    const LIT3: u8 = 0x33;
    const LIT15: u8 = 0x3f;
    const AND: u8 = 0x1a;
    const GE: u8 = 0x2a;
    const SHL: u8 = 0x24;
    const PLUS: u8 = 0x22;
    // N as a one-byte SLEB128 (0..=63): what linkers emit (8).
    match *expr {
        [BREG7, n, BREG16, 0, LIT15, AND, k, GE, LIT3, SHL, PLUS]
            if n < 0x40 && (LIT0..LIT0 + 16).contains(&k) =>
        {
            Some(UnwindRule::Plt {
                base_offset: i32::from(n),
                threshold: k - LIT0,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linkers_plt_expression_is_recognized_and_near_misses_are_not() {
        let classic = [0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22];
        assert_eq!(
            plt_rule(&classic),
            Some(UnwindRule::Plt {
                base_offset: 8,
                threshold: 11
            })
        );
        let mut other_reg = classic;
        other_reg[0] = 0x76;
        assert_eq!(plt_rule(&other_reg), None);
        assert_eq!(plt_rule(&classic[..10]), None);
    }
}
