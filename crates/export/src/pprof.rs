//! The pprof format (github.com/google/pprof, `proto/profile.proto`).
//!
//! The messages are written by hand with `prost` derives because there is no `protoc`
//! in the build; field numbers follow `profile.proto`. The encoder writes one pprof
//! sample per model row, so thread and process labels survive.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::UNIX_EPOCH;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use kestrel_model::{Frame, FrameKind, Profile, StackSample};
use prost::Message;

use crate::frames::{address_groups, to_i64};
use crate::ExportError;

/// `perftools.profiles.Profile`.
#[derive(Clone, PartialEq, Message)]
pub struct PprofProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Entry 0 is always the empty string.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Indices into the string table.
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// Index into the string table of the sample type shown by default.
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per `sample_type`.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// A string value (index into the string table), exclusive with `num`.
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Several lines mean inlining: the last line is the caller into which the
    /// preceding ones were inlined, so the innermost function comes first.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

impl PprofProfile {
    /// The string at `index`, or `None` when the index is outside the table.
    pub fn string(&self, index: i64) -> Option<&str> {
        let index = usize::try_from(index).ok()?;
        self.string_table.get(index).map(String::as_str)
    }

    /// Index of the sample type called `name` (e.g. `cpu`), if present.
    pub fn sample_type_index(&self, name: &str) -> Option<usize> {
        self.sample_type
            .iter()
            .position(|t| self.string(t.r#type) == Some(name))
    }

    /// Sum of one sample type's values over every sample.
    pub fn total(&self, sample_type: &str) -> Option<i64> {
        let index = self.sample_type_index(sample_type)?;
        Some(self.sample.iter().filter_map(|s| s.value.get(index)).sum())
    }
}

/// The kernel's pseudo-file in perf's convention, so pprof users recognise it.
pub const KERNEL_MAPPING_NAME: &str = "[kernel.kallsyms]";

/// Encodes `profile` as a gzip-compressed pprof protobuf (`profile.pb.gz`).
pub fn encode_pprof(profile: &Profile) -> Result<Vec<u8>, ExportError> {
    let raw = encode_pprof_raw(profile);
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        Compression::default(),
    );
    encoder
        .write_all(&raw)
        .and_then(|()| encoder.finish())
        .map_err(|source| ExportError::Gzip {
            direction: "compression",
            source,
        })
}

/// Encodes `profile` as an uncompressed pprof protobuf.
pub fn encode_pprof_raw(profile: &Profile) -> Vec<u8> {
    to_pprof(profile).encode_to_vec()
}

/// Decodes pprof bytes, gzip-compressed or not (used by tests and tooling).
pub fn decode_pprof(bytes: &[u8]) -> Result<PprofProfile, ExportError> {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut raw = Vec::new();
        GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .map_err(|source| ExportError::Gzip {
                direction: "decompression",
                source,
            })?;
        Ok(PprofProfile::decode(raw.as_slice())?)
    } else {
        Ok(PprofProfile::decode(bytes)?)
    }
}

/// Builds the pprof message for `profile`.
pub fn to_pprof(profile: &Profile) -> PprofProfile {
    let mut builder = PprofBuilder::new();
    let period_ns = profile.sample_period_ns();

    let mut sample_types = vec![
        builder.value_type("samples", "count"),
        builder.value_type("cpu", "nanoseconds"),
    ];
    if profile.off_cpu_enabled {
        sample_types.push(builder.value_type("off_cpu", "nanoseconds"));
        sample_types.push(builder.value_type("off_cpu_waits", "count"));
    }
    let period_type = builder.value_type("cpu", "nanoseconds");
    let default_sample_type = builder.string("cpu");

    let mut samples = Vec::with_capacity(profile.samples.len());
    for row in &profile.samples {
        let v = &row.values;
        if v.cpu_samples == 0 && v.off_cpu_ns == 0 && v.off_cpu_waits == 0 {
            continue;
        }
        let mut value = vec![
            to_i64(v.cpu_samples),
            to_i64(v.cpu_samples.saturating_mul(period_ns)),
        ];
        if profile.off_cpu_enabled {
            value.push(to_i64(v.off_cpu_ns));
            value.push(to_i64(v.off_cpu_waits));
        } else if v.cpu_samples == 0 {
            // Off-CPU values without the off-CPU sample types have nowhere to go.
            continue;
        }
        let location_id = address_groups(&row.frames)
            .map(|group| builder.location(group))
            .collect();
        samples.push(Sample {
            location_id,
            value,
            label: builder.labels(row),
        });
    }

    let comment = vec![builder.string(&format!(
        "kestrel host={} arch={} kernel={} frequency_hz={}",
        profile.host.hostname, profile.host.arch, profile.host.kernel_release, profile.frequency_hz
    ))];

    let start_ns = profile
        .start
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    PprofProfile {
        sample_type: sample_types,
        sample: samples,
        mapping: builder.mappings.into_iter().map(|m| m.mapping).collect(),
        location: builder.locations,
        function: builder.functions,
        string_table: builder.strings,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: i64::try_from(start_ns).unwrap_or(i64::MAX),
        duration_nanos: i64::try_from(profile.duration.as_nanos()).unwrap_or(i64::MAX),
        period_type: Some(period_type),
        period: to_i64(period_ns),
        comment,
        default_sample_type,
    }
}

/// Identity of a mapping: the kernel, or a model mapping compared by value.
#[derive(PartialEq, Eq, Hash)]
enum MappingKey {
    Kernel,
    File {
        start: u64,
        end: u64,
        file_offset: u64,
        path: std::sync::Arc<str>,
        build_id: Option<std::sync::Arc<str>>,
    },
}

struct MappingEntry {
    mapping: Mapping,
    /// The kernel mapping's range grows to cover every kernel address seen.
    is_kernel: bool,
}

#[derive(PartialEq, Eq, Hash)]
struct LocationKey {
    mapping_id: u64,
    address: u64,
    lines: Vec<Line>,
}

struct PprofBuilder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    mappings: Vec<MappingEntry>,
    mapping_ids: HashMap<MappingKey, u64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<LocationKey, u64>,
}

impl PprofBuilder {
    fn new() -> Self {
        PprofBuilder {
            strings: vec![String::new()],
            string_ids: HashMap::from([(String::new(), 0)]),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
        }
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = to_i64(self.strings.len() as u64);
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn value_type(&mut self, r#type: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(r#type),
            unit: self.string(unit),
        }
    }

    /// The mapping a frame belongs to (0 when it has none), widening the kernel's.
    fn mapping(&mut self, frame: &Frame) -> u64 {
        let key = match (&frame.mapping, frame.kind) {
            (Some(m), _) => MappingKey::File {
                start: m.start,
                end: m.end,
                file_offset: m.file_offset,
                path: m.path.clone(),
                build_id: m.build_id.clone(),
            },
            (None, FrameKind::Kernel) => MappingKey::Kernel,
            (None, _) => return 0,
        };
        if let Some(&id) = self.mapping_ids.get(&key) {
            if matches!(key, MappingKey::Kernel) {
                self.widen_kernel_mapping(id, frame.address);
            }
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let mapping = match &key {
            MappingKey::Kernel => Mapping {
                id,
                memory_start: frame.address,
                memory_limit: frame.address.saturating_add(1),
                filename: self.string(KERNEL_MAPPING_NAME),
                ..Mapping::default()
            },
            MappingKey::File {
                start,
                end,
                file_offset,
                path,
                build_id,
            } => Mapping {
                id,
                memory_start: *start,
                memory_limit: *end,
                file_offset: *file_offset,
                filename: self.string(path),
                build_id: build_id.as_deref().map_or(0, |b| self.string(b)),
                ..Mapping::default()
            },
        };
        self.mappings.push(MappingEntry {
            mapping,
            is_kernel: matches!(key, MappingKey::Kernel),
        });
        self.mapping_ids.insert(key, id);
        id
    }

    fn widen_kernel_mapping(&mut self, id: u64, address: u64) {
        let Some(entry) = self.mappings.get_mut(id as usize - 1) else {
            return;
        };
        if entry.is_kernel {
            let m = &mut entry.mapping;
            m.memory_start = m.memory_start.min(address);
            m.memory_limit = m.memory_limit.max(address.saturating_add(1));
        }
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = self.string(name);
        let filename = file.map_or(0, |f| self.string(f));
        if let Some(&id) = self.function_ids.get(&(name, filename)) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.function_ids.insert((name, filename), id);
        id
    }

    /// The location of one sampled address: its frames become lines, innermost first,
    /// exactly the order of the model's inline expansion.
    fn location(&mut self, group: &[Frame]) -> u64 {
        // A group is never empty (it holds at least the frame that started it); the
        // fallback keeps this total anyway.
        let Some(outer) = group.last() else {
            return 0;
        };
        let mapping_id = self.mapping(outer);
        let mut lines = Vec::with_capacity(group.len());
        for frame in group {
            if let Some(name) = frame.function.as_deref() {
                let function_id = self.function(name, frame.file.as_deref());
                lines.push(Line {
                    function_id,
                    line: frame.line.map_or(0, i64::from),
                    column: 0,
                });
            }
        }
        let key = LocationKey {
            mapping_id,
            address: outer.address,
            lines,
        };
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        if let Some(entry) = mapping_id
            .checked_sub(1)
            .and_then(|i| self.mappings.get_mut(i as usize))
        {
            let m = &mut entry.mapping;
            m.has_functions |= !key.lines.is_empty();
            m.has_filenames |= group.iter().any(|f| f.file.is_some());
            m.has_line_numbers |= key.lines.iter().any(|l| l.line != 0);
            m.has_inline_frames |= key.lines.len() > 1;
        }
        self.locations.push(Location {
            id,
            mapping_id,
            address: key.address,
            line: key.lines.clone(),
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        id
    }

    fn labels(&mut self, row: &StackSample) -> Vec<Label> {
        let mut labels = vec![
            Label {
                key: self.string("pid"),
                num: i64::from(row.process.pid),
                ..Label::default()
            },
            Label {
                key: self.string("tid"),
                num: i64::from(row.tid),
                ..Label::default()
            },
        ];
        let process = &row.process;
        let text_labels = [
            ("thread_name", Some(&row.thread_name)),
            ("process_name", Some(&process.name)),
            ("executable", process.executable_path.as_ref()),
            ("container_id", process.container_id.as_ref()),
        ];
        for (key, value) in text_labels {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                labels.push(Label {
                    key: self.string(key),
                    str: self.string(value),
                    ..Label::default()
                });
            }
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_profiles::{mixed_profile, names_of_location};

    #[test]
    fn round_trip_keeps_totals_types_and_invariants() {
        let profile = mixed_profile();
        let decoded = decode_pprof(&encode_pprof(&profile).unwrap()).unwrap();
        assert_eq!(decoded, to_pprof(&profile));
        assert_eq!(decoded.string_table[0], "");

        let types: Vec<(&str, &str)> = decoded
            .sample_type
            .iter()
            .map(|t| {
                (
                    decoded.string(t.r#type).unwrap(),
                    decoded.string(t.unit).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            types,
            [
                ("samples", "count"),
                ("cpu", "nanoseconds"),
                ("off_cpu", "nanoseconds"),
                ("off_cpu_waits", "count")
            ]
        );
        let totals = profile.totals();
        let period = profile.sample_period_ns();
        assert_eq!(decoded.period, period as i64);
        assert_eq!(decoded.total("samples"), Some(totals.cpu_samples as i64));
        assert_eq!(
            decoded.total("cpu"),
            Some((totals.cpu_samples * period) as i64)
        );
        assert_eq!(decoded.total("off_cpu"), Some(totals.off_cpu_ns as i64));
        assert_eq!(
            decoded.total("off_cpu_waits"),
            Some(totals.off_cpu_waits as i64)
        );

        // Every id referenced exists and ids are 1-based positions.
        for (i, m) in decoded.mapping.iter().enumerate() {
            assert_eq!(m.id, i as u64 + 1);
        }
        for (i, l) in decoded.location.iter().enumerate() {
            assert_eq!(l.id, i as u64 + 1);
            assert!(l.mapping_id as usize <= decoded.mapping.len());
            for line in &l.line {
                assert!(
                    line.function_id >= 1 && line.function_id as usize <= decoded.function.len()
                );
            }
        }
        for s in &decoded.sample {
            assert_eq!(s.value.len(), 4);
            for id in &s.location_id {
                assert!(*id >= 1 && *id as usize <= decoded.location.len());
            }
        }
    }

    #[test]
    fn inline_chain_is_one_location_innermost_first_and_functions_dedupe() {
        let profile = mixed_profile();
        let decoded = to_pprof(&profile);
        let inline_location = decoded
            .location
            .iter()
            .find(|l| l.line.len() > 1)
            .expect("the fixture has an inlined address");
        assert_eq!(
            names_of_location(&decoded, inline_location),
            ["inlined_leaf", "inlined_middle", "compute"]
        );
        let mapping = &decoded.mapping[inline_location.mapping_id as usize - 1];
        assert!(mapping.has_inline_frames && mapping.has_functions && mapping.has_line_numbers);
        assert_eq!(decoded.string(mapping.build_id), Some("abcdef0123456789"));

        // `main` appears in several stacks and two threads but is one function.
        let mains = decoded
            .function
            .iter()
            .filter(|f| decoded.string(f.name) == Some("main"))
            .count();
        assert_eq!(mains, 1);
    }

    #[test]
    fn kernel_frames_share_a_kallsyms_mapping_covering_their_addresses() {
        let decoded = to_pprof(&mixed_profile());
        let kernel: Vec<&Mapping> = decoded
            .mapping
            .iter()
            .filter(|m| decoded.string(m.filename) == Some(KERNEL_MAPPING_NAME))
            .collect();
        assert_eq!(kernel.len(), 1);
        let kernel_locations: Vec<&Location> = decoded
            .location
            .iter()
            .filter(|l| l.mapping_id == kernel[0].id)
            .collect();
        assert!(kernel_locations.len() >= 2);
        for l in kernel_locations {
            assert!(kernel[0].memory_start <= l.address && l.address < kernel[0].memory_limit);
        }
    }

    #[test]
    fn labels_carry_process_and_thread_identity() {
        let decoded = to_pprof(&mixed_profile());
        let first = &decoded.sample[0];
        let text: HashMap<&str, &str> = first
            .label
            .iter()
            .filter(|l| l.str != 0)
            .map(|l| {
                (
                    decoded.string(l.key).unwrap(),
                    decoded.string(l.str).unwrap(),
                )
            })
            .collect();
        let nums: HashMap<&str, i64> = first
            .label
            .iter()
            .filter(|l| l.str == 0)
            .map(|l| (decoded.string(l.key).unwrap(), l.num))
            .collect();
        assert_eq!(nums["pid"], 4242);
        assert_eq!(nums["tid"], 4243);
        assert_eq!(text["thread_name"], "worker-1");
        assert_eq!(text["process_name"], "myprog");
        assert_eq!(text["executable"], "/usr/bin/myprog");
        assert_eq!(text["container_id"], "c0ffee");
    }

    #[test]
    fn without_off_cpu_only_cpu_types_and_off_cpu_only_rows_are_left_out() {
        let mut profile = mixed_profile();
        profile.off_cpu_enabled = false;
        let decoded = to_pprof(&profile);
        assert_eq!(decoded.sample_type.len(), 2);
        assert!(decoded
            .sample
            .iter()
            .all(|s| s.value.len() == 2 && s.value[0] > 0));
        assert_eq!(
            decoded.total("samples"),
            Some(profile.totals().cpu_samples as i64)
        );
    }

    /// Runs the real `go tool pprof` (the reference reader) on a file we wrote.
    fn go_pprof(args: &[&str], file: &std::path::Path) -> String {
        let output = std::process::Command::new("go")
            .args(["tool", "pprof"])
            .args(args)
            .arg(file)
            .env("PPROF_TMPDIR", file.parent().unwrap())
            .output()
            .expect(
                "`go` must be installed for this test (apt-get install golang-go; CI installs it)",
            );
        assert!(
            output.status.success(),
            "go tool pprof {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn go_tool_pprof_reads_names_labels_and_totals() {
        let profile = mixed_profile();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("profile.pb.gz");
        std::fs::write(&file, encode_pprof(&profile).unwrap()).unwrap();

        let raw = go_pprof(&["-raw"], &file);
        let header = "samples/count cpu/nanoseconds[dflt] off_cpu/nanoseconds off_cpu_waits/count";
        assert!(raw.contains(header), "{raw}");
        // Sample lines look like `   30  303030300  0  0: 1 2 3`: sum each column.
        let mut sums = [0u64; 4];
        let mut rows = 0;
        for line in raw.lines() {
            let Some((values, _locations)) = line.split_once(": ") else {
                continue;
            };
            let columns: Vec<u64> = values
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if columns.len() == 4 && values.split_whitespace().count() == 4 {
                rows += 1;
                for (sum, value) in sums.iter_mut().zip(columns) {
                    *sum += value;
                }
            }
        }
        let totals = profile.totals();
        assert_eq!(rows, 5, "one sample per non-zero row:\n{raw}");
        assert_eq!(
            sums,
            [
                totals.cpu_samples,
                totals.cpu_samples * profile.sample_period_ns(),
                totals.off_cpu_ns,
                totals.off_cpu_waits
            ]
        );
        for expected in [
            "PeriodType: cpu nanoseconds",
            &format!("Period: {}", profile.sample_period_ns()),
            "Duration: 10s",
            "pid:[4242] tid:[4243]",
            "thread_name:[worker-1]",
            "container_id:[c0ffee]",
            "[kernel.kallsyms]",
            "/usr/bin/myprog abcdef0123456789 [FN][FL][LN][IN]",
        ] {
            assert!(raw.contains(expected), "{expected:?} missing:\n{raw}");
        }

        let top = go_pprof(&["-top"], &file);
        assert!(top.contains("Type: cpu"), "{top}");
        for name in [
            "inlined_leaf (inline)",
            "compute",
            "work",
            "main",
            "__x64_sys_read",
            "read",
        ] {
            assert!(top.contains(name), "{name} missing:\n{top}");
        }
        let off_cpu = go_pprof(&["-top", "-sample_index=off_cpu"], &file);
        for name in [
            "finish_task_switch",
            "schedule",
            "do_nanosleep",
            "clock_nanosleep",
        ] {
            assert!(off_cpu.contains(name), "{name} missing:\n{off_cpu}");
        }
    }
}
