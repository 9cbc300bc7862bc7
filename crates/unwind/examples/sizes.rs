//! Prints, per file, the table's size in Kestrel's format and what the same rows
//! would take in lightswitch's and the reference agent's formats, and the build
//! time. Usage: `cargo run --release -p kestrel-unwind --example sizes [FILE...]`
//! (default: libc and python3.11).
use std::time::Instant;

/// lightswitch: one 8-byte row per unwind row.
const LIGHTSWITCH_ROW: usize = 8;
/// The reference agent: a 4-byte stack delta per row; per 64 KiB page an 8-byte
/// page record (first delta u32, count u16, map id u16) under a 16-byte key
/// (file ID, page) in a hash map; and its share of the global table of distinct
/// unwind infos, 12 bytes each (u8 opcode, u8 fp opcode, u8 merge opcode,
/// padding, s32 param, s32 fp param), one per rule this file needs.
const REF_ROW: usize = 4;
const REF_PAGE: usize = 8 + 16;
const REF_RULE: usize = 12;

fn main() {
    let mut files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        files = vec![
            "/lib/x86_64-linux-gnu/libc.so.6".into(),
            "/usr/bin/python3.11".into(),
        ];
    }
    println!(
        "| file | FDEs | rows (no gap fill) | Kestrel stored rows | rules | Kestrel B (B/row; B/stored row) | lightswitch B | reference agent B (B/row) | build ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for path in files {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let mut best = f64::MAX;
        let mut built = None;
        for _ in 0..5 {
            let t = Instant::now();
            let b = kestrel_unwind::build(&bytes);
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
            built = Some(b);
        }
        let b = match built {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                eprintln!("{path}: {e}");
                continue;
            }
            None => continue,
        };
        // Peers are charged on the rows they would store: one per gap, padding
        // included (Kestrel fills padding gaps and stores fewer).
        let rows = b.stats.rows_without_gap_fill;
        let pages = b.table.pages().len().saturating_sub(1);
        let rules = b.table.rules().len();
        let ours = b.table.bytes();
        let ls = rows * LIGHTSWITCH_ROW;
        let reference = rows * REF_ROW + pages * REF_PAGE + rules * REF_RULE;
        let per = |n: usize| n as f64 / rows.max(1) as f64;
        println!(
            "| {} | {} | {} | {} | {} | {} ({:.2}; {:.2}) | {} | {} ({:.2}) | {:.1} |",
            path.rsplit('/').next().unwrap_or(&path),
            b.stats.fdes + b.stats.debug_frame_fdes,
            rows,
            b.table.row_count(),
            rules,
            ours,
            per(ours),
            b.table.bytes_per_row(),
            ls,
            reference,
            per(reference),
            best
        );
    }
}
