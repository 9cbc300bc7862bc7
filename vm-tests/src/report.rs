//! The report: one row per guest, as a table for people and as JSON.

use serde::Serialize;

use crate::checks::{Accounting, Check, Figures, Growth, GROWTH_BOUND_BYTES, TOTAL_BOUND_BYTES};
use crate::guest::GuestSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// The guest cannot be built here; the reason says why.
    Skip,
}

/// One guest of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub label: String,
    pub guest: GuestSpec,
    /// `uname -r` of the guest kernel.
    pub kernel_release: Option<String>,
    pub status: Status,
    pub accounting: Option<Accounting>,
    pub accounting_label: Option<&'static str>,
    pub figures: Figures,
    pub growth: Option<Growth>,
    pub checks: Vec<Check>,
    pub elapsed_s: f64,
    pub console_log: Option<String>,
    pub skipped_because: Option<String>,
    /// The first line of a guest kernel crash (Oops, BUG, panic) on this boot.
    pub guest_kernel_crash: Option<String>,
    /// Why this row is a second boot: the first one's guest kernel crashed.
    pub retried_because: Option<String>,
}

impl Row {
    pub fn skipped(guest: GuestSpec, reason: String) -> Row {
        Row {
            label: guest.label(),
            guest,
            kernel_release: None,
            status: Status::Skip,
            accounting: None,
            accounting_label: None,
            figures: Figures::default(),
            growth: None,
            checks: Vec::new(),
            elapsed_s: 0.0,
            console_log: None,
            skipped_because: Some(reason),
            guest_kernel_crash: None,
            retried_because: None,
        }
    }

    /// Pass when every check passed (and there was at least one).
    pub fn settle(&mut self) {
        if self.status != Status::Skip {
            self.status = if !self.checks.is_empty() && self.checks.iter().all(|c| c.passed) {
                Status::Pass
            } else {
                Status::Fail
            };
        }
    }
}

/// The whole run, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub total_bound_bytes: u64,
    pub growth_bound_bytes: u64,
    pub elapsed_s: f64,
}

impl Report {
    pub fn new(rows: Vec<Row>, elapsed_s: f64) -> Report {
        let count = |status| rows.iter().filter(|r| r.status == status).count();
        Report {
            passed: count(Status::Pass),
            failed: count(Status::Fail),
            skipped: count(Status::Skip),
            rows,
            total_bound_bytes: TOTAL_BOUND_BYTES,
            growth_bound_bytes: GROWTH_BOUND_BYTES,
            elapsed_s,
        }
    }

    pub fn all_passed(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn signed_thousands(n: i64) -> String {
    if n < 0 {
        format!("-{}", thousands(n.unsigned_abs()))
    } else {
        format!("+{}", thousands(n as u64))
    }
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

/// The table printed at the end of a run, followed by the failed checks.
pub fn render(report: &Report) -> String {
    let header = [
        "kernel",
        "guest O/P",
        "samples",
        "min/CPU",
        "measured B",
        "planned B",
        "+possible B",
        "bound",
        "result",
    ];
    let mut lines: Vec<[String; 9]> = Vec::new();
    for row in &report.rows {
        let figures = &row.figures;
        let min_per_cpu = (0..row.guest.online)
            .map(|cpu| {
                figures
                    .samples_per_cpu
                    .get(&cpu.to_string())
                    .copied()
                    .unwrap_or(0)
            })
            .min();
        let estimate = row.accounting.is_some_and(Accounting::is_estimate);
        let bound = match row.growth.as_ref().and_then(|g| g.bound_bytes) {
            Some(_) => "<=8MiB, +<=1MiB".to_owned(),
            None if row.status == Status::Skip => "-".to_owned(),
            None => "<=8MiB".to_owned(),
        };
        let mut guest = format!("{}/{}", row.guest.online, row.guest.possible);
        if row.label.ends_with("hotplug") {
            guest.push_str(" hotplug");
        }
        lines.push([
            row.guest.series.clone(),
            guest,
            or_dash(figures.samples_received.map(thousands)),
            or_dash(figures.samples_received.and(min_per_cpu).map(thousands)),
            or_dash(
                figures
                    .measured_bytes
                    .map(|b| format!("{}{}", thousands(b), if estimate { "*" } else { "" })),
            ),
            or_dash(figures.planned_bytes.map(thousands)),
            or_dash(
                row.growth
                    .as_ref()
                    .map(|g| signed_thousands(g.measured_bytes)),
            ),
            bound,
            match row.status {
                Status::Pass => "PASS".to_owned(),
                Status::Fail => "FAIL".to_owned(),
                Status::Skip => "SKIP".to_owned(),
            },
        ]);
    }
    let mut widths = header.map(str::len);
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let format_line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                // Text columns left, numbers right.
                if !(2..7).contains(&column) {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = String::new();
    out.push_str(&format_line(&header.map(str::to_owned)));
    out.push('\n');
    for line in &lines {
        out.push_str(&format_line(line));
        out.push('\n');
    }
    out.push_str(
        "\nmeasured B: sum of the maps' fdinfo memlock. *: kernel < 6.4, where memlock is a page-rounded\n\
         ESTIMATE, not real usage (5.11-6.3: bpf_map_memory_footprint; < 5.11: the RLIMIT_MEMLOCK charge);\n\
         it is checked against the rig's model of that estimate, not the plan.\n\
         planned B: the record's plan at floor. +possible B: per map, memlock minus the (O, O) guest's\n\
         (maps live tiers resized for load left out; see the JSON).\n",
    );
    for row in &report.rows {
        if let Some(reason) = &row.skipped_because {
            out.push_str(&format!("SKIP {}: {reason}\n", row.label));
        }
        if let Some(reason) = &row.retried_because {
            out.push_str(&format!("RETRIED {}: {reason}\n", row.label));
        }
        for check in row.checks.iter().filter(|c| !c.passed) {
            out.push_str(&format!(
                "FAIL {}: {}: {}\n",
                row.label, check.name, check.detail
            ));
        }
    }
    out.push_str(&format!(
        "{} passed, {} failed, {} skipped in {:.0} s\n",
        report.passed, report.failed, report.skipped, report.elapsed_s
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::Scenario;

    fn row(series: &str, online: u32, possible: u32, measured: u64, checks: Vec<Check>) -> Row {
        let guest = GuestSpec {
            series: series.into(),
            online,
            possible,
            scenario: Scenario::Matrix,
            record_s: 5,
        };
        let mut row = Row::skipped(guest, String::new());
        row.status = Status::Fail;
        row.skipped_because = None;
        row.accounting = Some(if series == "6.1" {
            Accounting::FootprintEstimate
        } else {
            Accounting::MemUsage
        });
        row.figures.samples_received = Some(174);
        row.figures.samples_per_cpu = [("0".to_owned(), 87), ("1".to_owned(), 80)].into();
        row.figures.measured_bytes = Some(measured);
        row.figures.planned_bytes = Some(565_120);
        row.checks = checks;
        row.settle();
        row
    }

    fn pass(name: &str) -> Check {
        Check {
            name: name.into(),
            passed: true,
            detail: String::new(),
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_577_824), "1,577,824");
        assert_eq!(signed_thousands(-4096), "-4,096");
    }

    #[test]
    fn the_table_shows_figures_marks_estimates_and_lists_failures() {
        let failing = Check {
            name: "samples on every online CPU".into(),
            passed: false,
            detail: "no samples from CPUs [1]".into(),
        };
        let mut grown = row("6.12", 2, 64, 690_000, vec![pass("topology as asked")]);
        grown.growth = Some(Growth {
            measured_bytes: 125_000,
            planned_bytes: 125_100,
            bound_bytes: Some(GROWTH_BOUND_BYTES),
            resized_by_load: Vec::new(),
        });
        let skipped = Row::skipped(
            GuestSpec {
                series: "6.12".into(),
                online: 2,
                possible: 1024,
                scenario: Scenario::Matrix,
                record_s: 5,
            },
            "possible_cpus= only lowers".into(),
        );
        let report = Report::new(
            vec![row("6.1", 2, 8, 20_480, vec![failing]), grown, skipped],
            312.4,
        );
        assert_eq!((report.passed, report.failed, report.skipped), (1, 1, 1));
        assert!(!report.all_passed());
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("kernel  guest O/P"), "{text}");
        assert!(
            lines[1].contains("20,480*") && lines[1].ends_with("FAIL"),
            "{text}"
        );
        assert!(
            lines[2].contains("690,000") && !lines[2].contains('*'),
            "{text}"
        );
        assert!(
            lines[2].contains("+125,000") && lines[2].contains("+<=1MiB"),
            "{text}"
        );
        assert!(lines[2].ends_with("PASS"), "{text}");
        assert!(lines[3].ends_with("SKIP"), "{text}");
        assert!(
            text.contains("FAIL 6.1 2/8: samples on every online CPU: no samples from CPUs [1]")
        );
        assert!(text.contains("SKIP 6.12 2/1024: possible_cpus= only lowers"));
        assert!(text.contains("ESTIMATE"));
        assert!(text.ends_with("1 passed, 1 failed, 1 skipped in 312 s\n"));

        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["rows"][0]["status"], "fail");
        assert_eq!(json["rows"][0]["accounting"], "footprint_estimate");
        assert_eq!(json["rows"][1]["growth"]["measured_bytes"], 125_000);
        assert_eq!(json["rows"][2]["status"], "skip");
    }

    #[test]
    fn a_row_without_checks_is_not_a_pass() {
        let mut empty = row("6.12", 1, 1, 0, vec![]);
        empty.settle();
        assert_eq!(empty.status, Status::Fail);
        let report = Report::new(vec![], 0.0);
        assert!(!report.all_passed(), "an empty run proves nothing");
    }
}
