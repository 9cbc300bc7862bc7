//! The compact table: three plain arrays the BPF side can hold as-is.

use std::collections::HashMap;

use crate::rule::{RawRule, UnwindRule};
use crate::TableError;

/// Rows are grouped in pages of `1 << PAGE_SHIFT` bytes of file offset; a row
/// stores only the low 16 bits of its start.
pub const PAGE_SHIFT: u32 = 16;
/// The rule index of a row that starts a range without unwind information.
pub const NO_RULE: u16 = u16::MAX;
/// Distinct rules one table can hold (every index but [`NO_RULE`]).
pub const MAX_RULES: usize = NO_RULE as usize;
/// Pages one table can have: offsets are below 2^32.
pub const MAX_PAGES: usize = 1 << (32 - PAGE_SHIFT);
/// Binary-search iterations a lookup needs at most. A page holds at most 2^16
/// rows (their low halves are distinct), and halving a range of n <= 2^16
/// elements reaches empty after floor(log2 n) + 1 <= 17 iterations.
pub const MAX_SEARCH_STEPS: u32 = 17;

/// One row before encoding: from `start` (a file offset, see the crate docs) up
/// to the next row's start, `rule` applies (`None`: no unwind information).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub start: u64,
    pub rule: Option<UnwindRule>,
}

/// An unwind table for one file, keyed by file offset.
///
/// Layout (all little-endian `u32` but the rules):
/// - `pages[p]` is the index in `rows` of page `p`'s first row; `pages` has one
///   more element than there are pages, and its last is `rows.len()`. Page `p`
///   covers offsets `[p << 16, (p + 1) << 16)`.
/// - `rows[i] = (offset & 0xffff) << 16 | rule_index`, strictly increasing within
///   a page, so a plain `u32` comparison orders them.
/// - `rules[rule_index]` is a [`RawRule`] (8 B); `NO_RULE` means none.
///
/// A rule that runs across a page boundary is repeated by a row at the next
/// page's offset 0, so a lookup never looks outside its page.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Table {
    pub(crate) pages: Vec<u32>,
    pub(crate) rows: Vec<u32>,
    pub(crate) rules: Vec<RawRule>,
}

impl Table {
    /// Builds the table from rows sorted by strictly increasing `start`; the last
    /// row's rule runs up to `end` (exclusive), past which nothing is covered.
    /// Consecutive rows with the same rule are merged.
    pub fn from_rows(rows: &[Row], end: u64) -> Result<Table, TableError> {
        if end > 1 << 32 {
            return Err(TableError::OffsetTooLarge { offset: end });
        }
        // Merge, and close the last range at `end`.
        let mut merged: Vec<(u32, Option<UnwindRule>)> = Vec::with_capacity(rows.len() + 1);
        let mut previous_start = None;
        for row in rows {
            if previous_start.is_some_and(|p| row.start <= p) {
                return Err(TableError::RowsNotSorted { offset: row.start });
            }
            previous_start = Some(row.start);
            if row.start >= end {
                break;
            }
            // `row.start < end <= 2^32`, so it fits.
            let start = row.start as u32;
            let rule = row.rule.map(UnwindRule::canonical);
            let same = match merged.last() {
                Some((_, last)) => *last == rule,
                None => rule.is_none(),
            };
            if !same {
                merged.push((start, rule));
            }
        }
        // The closing row; `end` == 2^32 needs none (nothing lies beyond).
        if merged.last().is_some_and(|(_, r)| r.is_some()) && end < 1 << 32 {
            merged.push((end as u32, None));
        }

        let mut index: HashMap<RawRule, u16> = HashMap::new();
        let mut rules: Vec<RawRule> = Vec::new();
        let mut out: Vec<(u32, u16)> = Vec::with_capacity(merged.len() + merged.len() / 64);
        for (i, (start, rule)) in merged.iter().enumerate() {
            let idx = match rule {
                None => NO_RULE,
                Some(rule) => {
                    let raw = rule.encode();
                    match index.get(&raw) {
                        Some(i) => *i,
                        None => {
                            if rules.len() >= MAX_RULES {
                                return Err(TableError::TooManyRules { max: MAX_RULES });
                            }
                            // Below MAX_RULES (checked), so it fits u16 and is not NO_RULE.
                            let i = rules.len() as u16;
                            rules.push(raw);
                            index.insert(raw, i);
                            i
                        }
                    }
                }
            };
            // A range without a rule starting a page needs no row: an empty page
            // prefix already means "none".
            if idx != NO_RULE || start & 0xffff != 0 {
                out.push((*start, idx));
            }
            if idx != NO_RULE {
                // Repeat the rule at every page boundary it crosses.
                let next = merged.get(i + 1).map(|(s, _)| u64::from(*s)).unwrap_or(end);
                let mut page = (u64::from(*start) >> PAGE_SHIFT) + 1;
                while page << PAGE_SHIFT < next {
                    // `page << 16 < next <= 2^32`.
                    out.push(((page << PAGE_SHIFT) as u32, idx));
                    page += 1;
                }
            }
        }

        let num_pages = out
            .last()
            .map(|(s, _)| (*s >> PAGE_SHIFT) as usize + 1)
            .unwrap_or(0);
        let mut pages = Vec::with_capacity(num_pages + 1);
        let mut row = 0usize;
        for p in 0..num_pages {
            while row < out.len() && ((out[row].0 >> PAGE_SHIFT) as usize) < p {
                row += 1;
            }
            pages.push(row as u32);
        }
        if num_pages > 0 {
            pages.push(out.len() as u32);
        }
        let rows = out
            .iter()
            .map(|(s, idx)| ((s & 0xffff) << 16) | u32::from(*idx))
            .collect();
        Ok(Table { pages, rows, rules })
    }

    /// The rule at a file offset: what the BPF program finds with the same
    /// arrays. For a return address (every frame but the first), look up
    /// `address - 1`: a call can be a function's last instruction.
    pub fn lookup(&self, offset: u64) -> Option<UnwindRule> {
        let raw = self.lookup_raw(offset)?;
        // Every rule in a table decodes: `from_rows` encodes decodable rules and
        // `from_bytes` refuses any other.
        raw.decode()
    }

    /// As [`Table::lookup`], the undecoded rule (what BPF reads).
    pub fn lookup_raw(&self, offset: u64) -> Option<RawRule> {
        if offset >> 32 != 0 {
            return None;
        }
        let page = (offset >> PAGE_SHIFT) as usize;
        if page + 1 >= self.pages.len() {
            return None;
        }
        let first = self.pages[page] as usize;
        let (mut lo, mut hi) = (first, self.pages[page + 1] as usize);
        let key = (((offset & 0xffff) as u32) << 16) | 0xffff;
        // The last row <= key; bounded exactly as the BPF loop is.
        for _ in 0..MAX_SEARCH_STEPS {
            if lo >= hi {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            if *self.rows.get(mid)? <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == first {
            return None;
        }
        let idx = (*self.rows.get(lo - 1)? & 0xffff) as u16;
        if idx == NO_RULE {
            return None;
        }
        self.rules.get(usize::from(idx)).copied()
    }

    /// The page index: `pages()[p]..pages()[p + 1]` are page `p`'s rows.
    pub fn pages(&self) -> &[u32] {
        &self.pages
    }

    /// The rows: `low 16 bits of offset << 16 | rule index`.
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// The distinct rules, indexed by a row's low 16 bits.
    pub fn rules(&self) -> &[RawRule] {
        &self.rules
    }

    /// Number of stored rows (merged, plus one per page boundary a rule crosses).
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// Bytes the three arrays take: 4 per page-index entry, 4 per row, 8 per rule.
    pub fn bytes(&self) -> usize {
        4 * self.pages.len() + 4 * self.rows.len() + RawRule::SIZE * self.rules.len()
    }

    /// [`Table::bytes`] over the stored rows (0 for an empty table).
    pub fn bytes_per_row(&self) -> f64 {
        if self.rows.is_empty() {
            0.0
        } else {
            self.bytes() as f64 / self.rows.len() as f64
        }
    }

    /// Checks every invariant `lookup` and the BPF side rely on.
    pub(crate) fn validate(&self) -> Result<(), TableError> {
        let bad = |what: &'static str| Err(TableError::Corrupt { what });
        if self.rules.len() > MAX_RULES {
            return bad("more rules than a table can index");
        }
        if self.rules.iter().any(|r| r.decode().is_none()) {
            return bad("a rule with an unknown kind or stray fields");
        }
        if self.pages.is_empty() {
            return if self.rows.is_empty() {
                Ok(())
            } else {
                bad("rows without a page index")
            };
        }
        if self.pages.len() > MAX_PAGES + 1 {
            return bad("more pages than 32-bit offsets have");
        }
        if self.pages[0] != 0 || self.pages.last().copied() != Some(self.rows.len() as u32) {
            return bad("page index does not span the rows");
        }
        for w in self.pages.windows(2) {
            if w[0] > w[1] {
                return bad("page index not monotonic");
            }
            let rows = &self.rows[w[0] as usize..w[1] as usize];
            if rows.windows(2).any(|r| r[0] >> 16 >= r[1] >> 16) {
                return bad("rows of a page not strictly increasing");
            }
            for r in rows {
                let idx = (r & 0xffff) as usize;
                if idx != usize::from(NO_RULE) && idx >= self.rules.len() {
                    return bad("a row names a rule past the rule table");
                }
            }
        }
        Ok(())
    }
}

/// A file offset's page and low half, as BPF splits it (for documentation and
/// for callers that upload pages into a shared array).
pub fn split_offset(offset: u32) -> (u32, u16) {
    (offset >> PAGE_SHIFT, (offset & 0xffff) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{CfaBase, RbpRule};

    fn rsp(n: i32) -> Option<UnwindRule> {
        Some(UnwindRule::Cfa {
            base: CfaBase::Rsp,
            offset: n,
            rbp: RbpRule::Unchanged,
        })
    }

    #[test]
    fn merges_equal_neighbours_and_closes_at_end() {
        let rows = [
            Row {
                start: 0x100,
                rule: rsp(8),
            },
            Row {
                start: 0x101,
                rule: rsp(8),
            },
            Row {
                start: 0x104,
                rule: rsp(16),
            },
        ];
        let t = Table::from_rows(&rows, 0x110).unwrap();
        assert_eq!(t.row_count(), 3);
        assert_eq!(t.rules().len(), 2);
        assert_eq!(t.lookup(0xff), None);
        assert_eq!(t.lookup(0x100), rsp(8));
        assert_eq!(t.lookup(0x103), rsp(8));
        assert_eq!(t.lookup(0x10f), rsp(16));
        assert_eq!(t.lookup(0x110), None);
        assert_eq!(t.bytes(), 4 * 2 + 4 * 3 + 8 * 2);
    }

    #[test]
    fn a_rule_spanning_pages_is_repeated_at_each_page_start() {
        let rows = [Row {
            start: 0xfff0,
            rule: rsp(8),
        }];
        let t = Table::from_rows(&rows, 0x3_0010).unwrap();
        // Rows: 0xfff0, 0x10000, 0x20000, 0x30000, and the close at 0x30010.
        assert_eq!(t.row_count(), 5);
        for a in [0xfff0, 0x1_0000, 0x2_8000, 0x3_000f] {
            assert_eq!(t.lookup(a), rsp(8), "{a:#x}");
        }
        assert_eq!(t.lookup(0x3_0010), None);
        assert_eq!(t.lookup(1 << 40), None);
    }

    #[test]
    fn unsorted_rows_and_offsets_past_32_bits_are_refused() {
        let rows = [
            Row {
                start: 2,
                rule: rsp(8),
            },
            Row {
                start: 2,
                rule: None,
            },
        ];
        assert!(matches!(
            Table::from_rows(&rows, 10),
            Err(TableError::RowsNotSorted { .. })
        ));
        assert!(matches!(
            Table::from_rows(&[], (1 << 32) + 1),
            Err(TableError::OffsetTooLarge { .. })
        ));
    }
}
