//! The on-disk form of a [`Table`]: versioned, checksummed, verified on read.
//!
//! ```text
//! 0   magic   b"KSTUNWND"
//! 8   version u32 (FORMAT_VERSION)
//! 12  page_shift u32 (16)
//! 16  pages u32, rows u32, rules u32, reserved u32 (0)
//! 32  pages × u32, rows × u32, rules × 8 B (RawRule, little-endian)
//! end xxh3-64 of every byte before it, u64
//! ```

use xxhash_rust::xxh3::xxh3_64;

use crate::rule::RawRule;
use crate::table::{Table, MAX_PAGES, MAX_RULES, PAGE_SHIFT};
use crate::TableError;

pub const MAGIC: [u8; 8] = *b"KSTUNWND";
/// Bumped whenever the layout or the meaning of a field changes, so a cache
/// written by another Kestrel is rebuilt instead of misread.
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 32;

impl Table {
    /// The serialized table (see the module docs for the layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.bytes() + 8);
        out.extend_from_slice(&MAGIC);
        for v in [
            FORMAT_VERSION,
            PAGE_SHIFT,
            self.pages.len() as u32,
            self.rows.len() as u32,
            self.rules.len() as u32,
            0,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in self.pages.iter().chain(self.rows.iter()) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for r in &self.rules {
            out.extend_from_slice(&r.to_le_bytes());
        }
        let sum = xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads what [`Table::to_bytes`] wrote; any other bytes are an error, never
    /// a panic, and a table returned here upholds every lookup invariant.
    pub fn from_bytes(bytes: &[u8]) -> Result<Table, TableError> {
        let u32_at = |at: usize| -> Option<u32> {
            let b = bytes.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if bytes.len() < HEADER + 8 || bytes[..8] != MAGIC {
            return Err(TableError::BadMagic);
        }
        let field = |at| u32_at(at).ok_or(TableError::Truncated);
        let version = field(8)?;
        if version != FORMAT_VERSION {
            return Err(TableError::Version {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        if field(12)? != PAGE_SHIFT || field(28)? != 0 {
            return Err(TableError::Corrupt {
                what: "header fields this version does not write",
            });
        }
        let (pages, rows, rules) = (
            field(16)? as usize,
            field(20)? as usize,
            field(24)? as usize,
        );
        if pages > MAX_PAGES + 1 || rules > MAX_RULES {
            return Err(TableError::Corrupt {
                what: "counts beyond what a table can hold",
            });
        }
        // Checked arithmetic: the counts come from the input (u32 each, so the
        // sum cannot overflow a 64-bit usize, but stay honest on any target).
        let body = pages
            .checked_add(rows)
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(rules.checked_mul(RawRule::SIZE)?))
            .ok_or(TableError::Truncated)?;
        let total = HEADER
            .checked_add(body)
            .and_then(|n| n.checked_add(8))
            .ok_or(TableError::Truncated)?;
        if bytes.len() != total {
            return Err(if bytes.len() < total {
                TableError::Truncated
            } else {
                TableError::Corrupt {
                    what: "bytes after the checksum",
                }
            });
        }
        let (data, sum) = bytes.split_at(total - 8);
        let mut s = [0u8; 8];
        s.copy_from_slice(sum);
        if xxh3_64(data) != u64::from_le_bytes(s) {
            return Err(TableError::Checksum);
        }
        let words = |from: usize, n: usize| -> Vec<u32> {
            data[from..from + 4 * n]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let rules_at = HEADER + 4 * (pages + rows);
        let table = Table {
            pages: words(HEADER, pages),
            rows: words(HEADER + 4 * pages, rows),
            rules: data[rules_at..rules_at + RawRule::SIZE * rules]
                .chunks_exact(RawRule::SIZE)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    RawRule::from_le_bytes(b)
                })
                .collect(),
        };
        table.validate()?;
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{CfaBase, RbpRule, UnwindRule};
    use crate::table::Row;

    fn sample() -> Table {
        let rows = [
            Row {
                start: 0x10,
                rule: Some(UnwindRule::Cfa {
                    base: CfaBase::Rsp,
                    offset: 8,
                    rbp: RbpRule::Unchanged,
                }),
            },
            Row {
                start: 0x2_0000,
                rule: Some(UnwindRule::EndOfStack),
            },
        ];
        Table::from_rows(&rows, 0x2_0100).unwrap()
    }

    #[test]
    fn roundtrip_and_every_single_byte_flip_is_refused() {
        let t = sample();
        let bytes = t.to_bytes();
        assert_eq!(Table::from_bytes(&bytes).unwrap(), t);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Table::from_bytes(&b).is_err(), "flip at {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(Table::from_bytes(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn a_well_checksummed_but_inconsistent_table_is_refused() {
        let mut t = sample();
        // Page 2 holds two rows (the end-of-stack rule, then the close).
        let n = t.rows.len();
        t.rows.swap(n - 2, n - 1);
        let bytes = t.to_bytes();
        assert!(matches!(
            Table::from_bytes(&bytes),
            Err(TableError::Corrupt { .. })
        ));
    }
}
