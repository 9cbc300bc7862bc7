//! Folded stacks (`proc;root;...;leaf count`), the input of flamegraph tools.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kestrel_model::{Frame, FrameKind, Profile, SampleValues};
use serde::{Deserialize, Serialize};

/// Which of a stack's values the folded output counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldedValue {
    /// On-CPU sample counts.
    CpuSamples,
    /// Nanoseconds spent blocked.
    OffCpuNanoseconds,
}

impl FoldedValue {
    pub fn of(self, values: &SampleValues) -> u64 {
        match self {
            FoldedValue::CpuSamples => values.cpu_samples,
            FoldedValue::OffCpuNanoseconds => values.off_cpu_ns,
        }
    }

    /// The unit flamegraphs print for this value.
    pub fn count_name(self) -> &'static str {
        match self {
            FoldedValue::CpuSamples => "samples",
            FoldedValue::OffCpuNanoseconds => "ns",
        }
    }
}

/// One line per distinct stack, root first, prefixed by the process name, with the
/// flamegraph annotations `_[k]` (kernel), `_[i]` (inlined) and `_[j]` (JIT) that
/// palettes such as inferno's `java` colour by. Stacks whose value is zero are left
/// out; lines are sorted, so equal profiles give byte-identical output.
pub fn folded(profile: &Profile, value: FoldedValue) -> String {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    let mut line = String::new();
    for row in &profile.samples {
        let count = value.of(&row.values);
        if count == 0 {
            continue;
        }
        line.clear();
        push_sanitized(&mut line, &row.process.name);
        for frame in row.frames.iter().rev() {
            line.push(';');
            push_sanitized(&mut line, &frame.label());
            line.push_str(annotation(frame));
        }
        match stacks.get_mut(line.as_str()) {
            Some(total) => *total = total.saturating_add(count),
            None => {
                stacks.insert(line.clone(), count);
            }
        }
    }
    let mut out = String::new();
    for (stack, count) in stacks {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{stack} {count}");
    }
    out
}

fn annotation(frame: &Frame) -> &'static str {
    match frame.kind {
        FrameKind::Kernel => "_[k]",
        _ if frame.inlined => "_[i]",
        FrameKind::Jit => "_[j]",
        FrameKind::Native => "",
    }
}

/// Appends `name` so that it cannot break the format: `;` separates frames and a
/// newline separates stacks, and a trailing space would merge with the count's.
fn push_sanitized(out: &mut String, name: &str) {
    let start = out.len();
    for c in name.chars() {
        out.push(match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        });
    }
    let trimmed = out[start..].trim_end().len();
    out.truncate(start + trimmed);
    if out.len() == start {
        out.push_str("[unknown]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_profiles::{empty_profile, mixed_profile};

    fn parse(folded: &str) -> Vec<(&str, u64)> {
        folded
            .lines()
            .map(|l| {
                let (stack, count) = l.rsplit_once(' ').expect("line has a count");
                (stack, count.parse().expect("count is an integer"))
            })
            .collect()
    }

    #[test]
    fn sums_equal_profile_totals() {
        let profile = mixed_profile();
        let totals = profile.totals();
        let cpu = folded(&profile, FoldedValue::CpuSamples);
        let off = folded(&profile, FoldedValue::OffCpuNanoseconds);
        assert_eq!(
            parse(&cpu).iter().map(|(_, c)| c).sum::<u64>(),
            totals.cpu_samples
        );
        assert_eq!(
            parse(&off).iter().map(|(_, c)| c).sum::<u64>(),
            totals.off_cpu_ns
        );
        assert!(parse(&cpu)
            .iter()
            .chain(parse(&off).iter())
            .all(|(_, c)| *c > 0));
    }

    #[test]
    fn lines_are_root_first_annotated_sorted_and_sanitized() {
        let out = folded(&mixed_profile(), FoldedValue::CpuSamples);
        let lines = parse(&out);
        let stacks: Vec<&str> = lines.iter().map(|(s, _)| *s).collect();
        let mut sorted = stacks.clone();
        sorted.sort_unstable();
        assert_eq!(stacks, sorted);

        assert!(lines.contains(&(
            "myprog;main;work;compute;inlined_middle_[i];inlined_leaf_[i]",
            30
        )));
        assert!(lines.contains(&("myprog;main;read;__x64_sys_read_[k]", 5)));
        assert!(lines.contains(&("myprog;main;work;[libc.so.6]+0x48000", 7)));
        assert!(lines.contains(&(
            "other:prog;start;0x7e0000002000_[j];LInterpreter:run_[j]",
            4
        )));
        for (stack, _) in &lines {
            assert!(!stack.ends_with(' ') && !stack.contains('\n'), "{stack:?}");
        }
    }

    #[test]
    fn threads_with_the_same_stack_merge_and_zero_stacks_vanish() {
        let mut profile = mixed_profile();
        let mut twin = profile.samples[0].clone();
        twin.tid = 7;
        twin.values.cpu_samples = 2;
        profile.samples.push(twin);
        let out = folded(&profile, FoldedValue::CpuSamples);
        assert!(out.contains("inlined_leaf_[i] 32\n"));
        assert!(!out.contains("idle"));
        assert_eq!(
            folded(&profile, FoldedValue::OffCpuNanoseconds)
                .lines()
                .count(),
            2
        );
        assert_eq!(folded(&empty_profile(), FoldedValue::CpuSamples), "");
    }
}
