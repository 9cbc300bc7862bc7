//! Sets of CPU ids in the kernel's "cpulist" format (`0-3,5,7-8`).

use std::fmt;

use serde::{Serialize, Serializer};

use crate::SizingError;

/// The largest CPU id accepted by [`CpuSet::parse`].
///
/// Linux caps `CONFIG_NR_CPUS` at 8192 on every architecture today; the
/// bound is generous on purpose and exists only so that a corrupt list such
/// as `0-4294967295` cannot make the parser allocate gigabytes.
pub const MAX_CPU_ID: u32 = (1 << 16) - 1;

/// A sorted set of CPU ids without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CpuSet {
    ids: Vec<u32>,
}

impl CpuSet {
    /// Parses the kernel's cpulist format, as found in
    /// `/sys/devices/system/cpu/{possible,online,present}`: comma-separated
    /// ids and inclusive ranges, e.g. `0-3,5,7-8`. Surrounding whitespace
    /// (the trailing newline of a sysfs file) is ignored; an empty list is
    /// the empty set.
    pub fn parse(input: &str) -> Result<CpuSet, SizingError> {
        let malformed = |reason: String| SizingError::MalformedCpuList {
            input: input.to_owned(),
            reason,
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Ok(CpuSet { ids: Vec::new() });
        }
        // A bitmap over every valid id: repeated or overlapping ranges cost
        // nothing extra (expanding each range first let a 32 KiB list of
        // repeated ranges allocate over 1 GiB; found by fuzzing).
        let mut present = vec![false; MAX_CPU_ID as usize + 1];
        for part in trimmed.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(malformed("empty element between commas".to_owned()));
            }
            let (first, last) = match part.split_once('-') {
                Some((first, last)) => (parse_id(first, input)?, parse_id(last, input)?),
                None => {
                    let id = parse_id(part, input)?;
                    (id, id)
                }
            };
            if first > last {
                return Err(malformed(format!(
                    "range {part:?} runs backwards ({first} > {last})"
                )));
            }
            present[first as usize..=last as usize].fill(true);
        }
        let ids = (0..=MAX_CPU_ID)
            .filter(|&id| present[id as usize])
            .collect();
        Ok(CpuSet { ids })
    }

    /// The set `{0, 1, …, n-1}`.
    pub fn first_n(n: u32) -> CpuSet {
        CpuSet {
            ids: (0..n).collect(),
        }
    }

    /// Number of CPUs in the set.
    pub fn len(&self) -> u32 {
        // The ids are distinct u32 values no larger than MAX_CPU_ID (parse) or
        // n - 1 (first_n / FromIterator of u32), so the count fits in a u32.
        u32::try_from(self.ids.len()).unwrap_or(u32::MAX)
    }

    /// True when the set holds no CPU.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().copied()
    }

    /// True when `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.ids.binary_search(&cpu).is_ok()
    }

    /// True when every CPU of `self` is also in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.iter().all(|cpu| other.contains(cpu))
    }

    /// The highest id, if any.
    pub fn max(&self) -> Option<u32> {
        self.ids.last().copied()
    }
}

fn parse_id(text: &str, whole_input: &str) -> Result<u32, SizingError> {
    let text = text.trim();
    let id: u32 = text.parse().map_err(|_| SizingError::MalformedCpuList {
        input: whole_input.to_owned(),
        reason: format!("{text:?} is not a CPU id (a non-negative integer)"),
    })?;
    if id > MAX_CPU_ID {
        return Err(SizingError::MalformedCpuList {
            input: whole_input.to_owned(),
            reason: format!("CPU id {id} exceeds the supported maximum {MAX_CPU_ID}"),
        });
    }
    Ok(id)
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut ids: Vec<u32> = iter.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        CpuSet { ids }
    }
}

impl fmt::Display for CpuSet {
    /// Writes the set back as a cpulist, collapsing runs into ranges.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids = self.ids.iter().copied().peekable();
        let mut first_range = true;
        while let Some(start) = ids.next() {
            let mut end = start;
            while ids.peek() == Some(&(end + 1)) {
                end += 1;
                ids.next();
            }
            if !first_range {
                f.write_str(",")?;
            }
            first_range = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for CpuSet {
    /// Serialises as the cpulist string, the form every Linux tool prints.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_wide_ranges_stay_cheap() {
        let input = vec!["0-65535"; 200].join(",");
        let set = CpuSet::parse(&input).unwrap();
        assert_eq!(set.len(), 65536);
    }

    #[test]
    fn parses_ranges_singles_and_trailing_newline() {
        let set = CpuSet::parse("0-3,5,7-8\n").unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 5, 7, 8]);
        assert_eq!(set.len(), 7);
        assert!(set.contains(5));
        assert!(!set.contains(4));
        assert_eq!(set.to_string(), "0-3,5,7-8");
    }

    #[test]
    fn display_round_trips_and_normalises() {
        for text in ["0", "0-1", "0-127", "1,3,5", "0-3,8-11,16", ""] {
            assert_eq!(CpuSet::parse(text).unwrap().to_string(), text);
        }
        // Overlaps, duplicates and disorder collapse into the canonical form.
        assert_eq!(CpuSet::parse("5,0-2,1,3").unwrap().to_string(), "0-3,5");
    }

    #[test]
    fn empty_list_is_the_empty_set() {
        let set = CpuSet::parse(" \n").unwrap();
        assert!(set.is_empty());
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn malformed_lists_are_errors_that_quote_the_input() {
        for bad in [
            "a", "0-", "-3", "3-1", "0,,1", "0-1-2", "1.5", "0-3,", "0 1", "-",
        ] {
            let err = CpuSet::parse(bad).expect_err(bad);
            let message = err.to_string();
            assert!(
                matches!(err, SizingError::MalformedCpuList { .. }),
                "{bad}: {message}"
            );
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }

    #[test]
    fn absurd_ids_are_rejected_before_allocating() {
        let err = CpuSet::parse("0-4294967295").unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn first_n_and_subset() {
        let four = CpuSet::first_n(4);
        assert_eq!(four.to_string(), "0-3");
        assert!(CpuSet::first_n(2).is_subset(&four));
        assert!(!four.is_subset(&CpuSet::first_n(2)));
        assert_eq!(CpuSet::first_n(0).to_string(), "");
        assert_eq!(four.max(), Some(3));
    }

    #[test]
    fn serialises_as_the_cpulist_string() {
        let set = CpuSet::parse("0-3,5").unwrap();
        assert_eq!(serde_json::to_string(&set).unwrap(), "\"0-3,5\"");
    }
}
