//! Properties of the encoding over arbitrary rows: a lookup equals a linear
//! search over the rows as given (before merging and page splitting), and the
//! on-disk form reads back to the same table.

use kestrel_unwind::{CfaBase, RbpRule, Row, Table, Unsupported, UnwindRule};
use proptest::prelude::*;

fn rule() -> impl Strategy<Value = Option<UnwindRule>> {
    // Few distinct values, so neighbours are often equal and merging is exercised.
    prop_oneof![
        Just(None),
        (
            0i32..4,
            prop_oneof![
                Just(RbpRule::Unchanged),
                Just(RbpRule::AtCfa(-16)),
                Just(RbpRule::Unknown)
            ]
        )
            .prop_map(|(n, rbp)| Some(UnwindRule::Cfa {
                base: CfaBase::Rsp,
                offset: 8 + 8 * n,
                rbp
            })),
        Just(Some(UnwindRule::Cfa {
            base: CfaBase::Rbp,
            offset: 16,
            rbp: RbpRule::AtCfa(-16)
        })),
        Just(Some(UnwindRule::Plt {
            base_offset: 8,
            threshold: 11
        })),
        Just(Some(UnwindRule::SignalFrame)),
        Just(Some(UnwindRule::EndOfStack)),
        Just(Some(UnwindRule::Unsupported(Unsupported::CfaExpression))),
    ]
}

/// Sorted distinct starts, clustered (short gaps) with occasional jumps across
/// pages, and an end past the last start.
fn rows() -> impl Strategy<Value = (Vec<Row>, u64)> {
    (
        prop::collection::vec((prop_oneof![1u64..40, 1u64..0x3_0000], rule()), 0..200),
        0u64..0x2_0000,
        1u64..0x2_0000,
    )
        .prop_map(|(steps, first, tail)| {
            let mut at = first;
            let mut rows = Vec::new();
            for (step, rule) in steps {
                rows.push(Row { start: at, rule });
                at += step;
            }
            let end = rows.last().map(|r| r.start + tail).unwrap_or(0);
            (rows, end)
        })
}

fn naive(rows: &[Row], end: u64, addr: u64) -> Option<UnwindRule> {
    if addr >= end {
        return None;
    }
    rows.iter()
        .rev()
        .find(|r| r.start <= addr)
        .and_then(|r| r.rule)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lookup_equals_a_linear_search((rows, end) in rows(), probes in prop::collection::vec(0u64..0x60_0000, 64)) {
        let table = Table::from_rows(&rows, end).unwrap();
        // Every boundary, its neighbours, page edges, and random offsets.
        let mut addrs: Vec<u64> = rows.iter().flat_map(|r| [r.start.saturating_sub(1), r.start, r.start + 1]).collect();
        addrs.extend([end.saturating_sub(1), end, end + 1]);
        addrs.extend(probes);
        addrs.extend(rows.iter().map(|r| (r.start | 0xffff) + 1));
        for a in addrs {
            prop_assert_eq!(table.lookup(a), naive(&rows, end, a), "offset {:#x}", a);
        }
        // Never more stored rows than given rows plus page repeats plus the close.
        let pages = table.pages().len();
        prop_assert!(table.row_count() <= rows.len() + pages + 1);
    }

    #[test]
    fn serialization_roundtrips((rows, end) in rows()) {
        let table = Table::from_rows(&rows, end).unwrap();
        let bytes = table.to_bytes();
        prop_assert_eq!(Table::from_bytes(&bytes).unwrap(), table);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Table::from_bytes(&bytes);
        let _ = kestrel_unwind::build(&bytes);
    }
}
