//! OTLP Profiles (proto v1.10.0, `v1development`): the request encoder and the
//! gRPC exporter.
//!
//! One report becomes one `ExportProfilesServiceRequest`: every table lives in the
//! request's shared `ProfilesDictionary` (each table's entry 0 is the zero value, so
//! index 0 means "unset"), and each sample type is its own `Profile`, as v1.10 gives a
//! profile a single sample type.

mod exporter;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use kestrel_model::{Frame, FrameKind, HostInfo, Profile, StackSample};
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::profiles::v1development as otlp;
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::frames::{address_groups, to_i64};
use crate::pprof::KERNEL_MAPPING_NAME;

pub(crate) use exporter::build_otlp;
pub use exporter::{OtlpCompression, OtlpConfig, OtlpExporter};

/// Resource attributes of the host that produced a report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceInfo {
    /// `host.name`
    pub host_name: String,
    /// `service.name`
    pub service_name: String,
    /// `host.arch`, in semantic-convention spelling (`amd64`, `arm64`, ...).
    pub host_arch: String,
    /// `os.type` (`linux`).
    pub os_type: String,
    /// `os.version` (the kernel release), when known.
    pub os_version: Option<String>,
}

impl ResourceInfo {
    /// The resource of a report taken on `host`.
    pub fn from_host(host: &HostInfo, service_name: &str) -> Self {
        ResourceInfo {
            host_name: host.hostname.clone(),
            service_name: service_name.to_string(),
            host_arch: semconv_arch(&host.arch).to_string(),
            os_type: "linux".to_string(),
            os_version: (!host.kernel_release.is_empty()).then(|| host.kernel_release.clone()),
        }
    }
}

/// Maps `uname -m` names to the `host.arch` values of the semantic conventions.
fn semconv_arch(uname_machine: &str) -> &str {
    match uname_machine {
        "x86_64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i686" => "x86",
        "armv7l" | "armv6l" | "arm" => "arm32",
        "ppc64le" => "ppc64",
        "ppc" => "ppc32",
        "s390x" => "s390x",
        other => other,
    }
}

/// Attribute keys, from the OpenTelemetry semantic conventions.
mod keys {
    pub const PROCESS_PID: &str = "process.pid";
    pub const THREAD_ID: &str = "thread.id";
    pub const THREAD_NAME: &str = "thread.name";
    pub const EXECUTABLE_NAME: &str = "process.executable.name";
    pub const EXECUTABLE_PATH: &str = "process.executable.path";
    pub const CONTAINER_ID: &str = "container.id";
    pub const BUILD_ID_GNU: &str = "process.executable.build_id.gnu";
    pub const FRAME_TYPE: &str = "profile.frame.type";
}

/// Encodes one report as an OTLP Profiles request.
///
/// Profiles: `samples/count` with period `cpu/nanoseconds` always, and
/// `off_cpu/nanoseconds` when off-CPU measurement is on. A sample is left out of a
/// profile where its value is zero (OTLP samples must carry a value).
pub fn to_otlp_request(profile: &Profile, resource: &ResourceInfo) -> ExportProfilesServiceRequest {
    let mut dictionary = DictionaryBuilder::new();
    let time_unix_nano = profile
        .start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let duration_nano = u64::try_from(profile.duration.as_nanos()).unwrap_or(u64::MAX);

    let mut cpu = OtlpProfileParts::new(
        dictionary.value_type("samples", "count"),
        Some(dictionary.value_type("cpu", "nanoseconds")),
        to_i64(profile.sample_period_ns()),
    );
    let mut off_cpu = profile
        .off_cpu_enabled
        .then(|| OtlpProfileParts::new(dictionary.value_type("off_cpu", "nanoseconds"), None, 0));

    for row in &profile.samples {
        let wanted_cpu = row.values.cpu_samples > 0;
        let wanted_off = off_cpu.is_some() && row.values.off_cpu_ns > 0;
        if !(wanted_cpu || wanted_off) {
            continue;
        }
        let stack_index = dictionary.stack(&row.frames);
        let attribute_indices = dictionary.sample_attributes(row);
        if wanted_cpu {
            cpu.push(stack_index, &attribute_indices, row.values.cpu_samples);
        }
        if let (Some(off), true) = (off_cpu.as_mut(), wanted_off) {
            off.push(stack_index, &attribute_indices, row.values.off_cpu_ns);
        }
    }

    let profiles = std::iter::once(cpu)
        .chain(off_cpu)
        .map(|parts| parts.finish(time_unix_nano, duration_nano))
        .collect();
    ExportProfilesServiceRequest {
        resource_profiles: vec![otlp::ResourceProfiles {
            resource: Some(resource_message(resource)),
            scope_profiles: vec![otlp::ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "kestrel".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..InstrumentationScope::default()
                }),
                profiles,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
        dictionary: Some(dictionary.finish()),
    }
}

fn string_value(value: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    }
}

fn resource_message(resource: &ResourceInfo) -> Resource {
    let mut pairs = vec![
        ("host.name", resource.host_name.as_str()),
        ("service.name", resource.service_name.as_str()),
        ("host.arch", resource.host_arch.as_str()),
        ("os.type", resource.os_type.as_str()),
    ];
    if let Some(version) = &resource.os_version {
        pairs.push(("os.version", version));
    }
    Resource {
        attributes: pairs
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| KeyValue {
                key: key.to_string(),
                value: Some(string_value(value)),
                // Plain `key` is used; a key is either inline or a string-table index.
                key_strindex: 0,
            })
            .collect(),
        ..Resource::default()
    }
}

/// One `Profile` message being filled.
struct OtlpProfileParts {
    sample_type: otlp::ValueType,
    period_type: Option<otlp::ValueType>,
    period: i64,
    samples: Vec<otlp::Sample>,
}

impl OtlpProfileParts {
    fn new(
        sample_type: otlp::ValueType,
        period_type: Option<otlp::ValueType>,
        period: i64,
    ) -> Self {
        OtlpProfileParts {
            sample_type,
            period_type,
            period,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, stack_index: i32, attribute_indices: &[i32], value: u64) {
        self.samples.push(otlp::Sample {
            stack_index,
            attribute_indices: attribute_indices.to_vec(),
            link_index: 0,
            values: vec![to_i64(value)],
            timestamps_unix_nano: Vec::new(),
        });
    }

    fn finish(self, time_unix_nano: u64, duration_nano: u64) -> otlp::Profile {
        otlp::Profile {
            sample_type: Some(self.sample_type),
            samples: self.samples,
            time_unix_nano,
            duration_nano,
            period_type: self.period_type,
            period: self.period,
            profile_id: crate::random::nonzero_id_16(),
            ..otlp::Profile::default()
        }
    }
}

/// Attribute values the encoder emits (AnyValue itself is not hashable).
#[derive(PartialEq, Eq, Hash, Clone)]
enum AttributeValue {
    Text(Arc<str>),
    Int(i64),
}

#[derive(PartialEq, Eq, Hash)]
enum MappingKey {
    Kernel,
    File(Arc<kestrel_model::Mapping>),
}

#[derive(PartialEq, Eq, Hash)]
struct LocationKey {
    mapping_index: i32,
    address: u64,
    lines: Vec<(i32, i64)>,
    frame_type: i32,
}

/// Builds the shared dictionary, deduplicating every table by value.
struct DictionaryBuilder {
    strings: Vec<String>,
    string_indices: HashMap<String, i32>,
    attributes: Vec<otlp::KeyValueAndUnit>,
    attribute_indices: HashMap<(i32, AttributeValue), i32>,
    mappings: Vec<otlp::Mapping>,
    mapping_indices: HashMap<MappingKey, i32>,
    functions: Vec<otlp::Function>,
    function_indices: HashMap<(i32, i32), i32>,
    locations: Vec<otlp::Location>,
    location_indices: HashMap<LocationKey, i32>,
    stacks: Vec<otlp::Stack>,
    stack_indices: HashMap<Vec<i32>, i32>,
}

/// Index of the next entry of a table. Tables hold at most one entry per distinct
/// frame, string or stack of one report, far below 2^31; saturating keeps this total.
fn next_index<T>(table: &[T]) -> i32 {
    i32::try_from(table.len()).unwrap_or(i32::MAX)
}

impl DictionaryBuilder {
    fn new() -> Self {
        DictionaryBuilder {
            strings: vec![String::new()],
            string_indices: HashMap::from([(String::new(), 0)]),
            attributes: vec![otlp::KeyValueAndUnit::default()],
            attribute_indices: HashMap::new(),
            mappings: vec![otlp::Mapping::default()],
            mapping_indices: HashMap::new(),
            functions: vec![otlp::Function::default()],
            function_indices: HashMap::new(),
            locations: vec![otlp::Location::default()],
            location_indices: HashMap::new(),
            stacks: vec![otlp::Stack::default()],
            stack_indices: HashMap::from([(Vec::new(), 0)]),
        }
    }

    fn finish(self) -> otlp::ProfilesDictionary {
        otlp::ProfilesDictionary {
            mapping_table: self.mappings,
            location_table: self.locations,
            function_table: self.functions,
            link_table: vec![otlp::Link::default()],
            string_table: self.strings,
            attribute_table: self.attributes,
            stack_table: self.stacks,
        }
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&index) = self.string_indices.get(s) {
            return index;
        }
        let index = next_index(&self.strings);
        self.strings.push(s.to_string());
        self.string_indices.insert(s.to_string(), index);
        index
    }

    fn value_type(&mut self, r#type: &str, unit: &str) -> otlp::ValueType {
        otlp::ValueType {
            type_strindex: self.string(r#type),
            unit_strindex: self.string(unit),
        }
    }

    fn attribute(&mut self, key: &str, value: AttributeValue) -> i32 {
        let key_strindex = self.string(key);
        if let Some(&index) = self.attribute_indices.get(&(key_strindex, value.clone())) {
            return index;
        }
        let index = next_index(&self.attributes);
        let any = match &value {
            AttributeValue::Text(text) => string_value(text.as_ref()),
            AttributeValue::Int(number) => AnyValue {
                value: Some(any_value::Value::IntValue(*number)),
            },
        };
        self.attributes.push(otlp::KeyValueAndUnit {
            key_strindex,
            value: Some(any),
            unit_strindex: 0,
        });
        self.attribute_indices.insert((key_strindex, value), index);
        index
    }

    fn text_attribute(&mut self, key: &str, value: &Arc<str>) -> i32 {
        self.attribute(key, AttributeValue::Text(value.clone()))
    }

    fn sample_attributes(&mut self, row: &StackSample) -> Vec<i32> {
        let process = &row.process;
        let mut indices = vec![
            self.attribute(
                keys::PROCESS_PID,
                AttributeValue::Int(i64::from(process.pid)),
            ),
            self.attribute(keys::THREAD_ID, AttributeValue::Int(i64::from(row.tid))),
        ];
        if !row.thread_name.is_empty() {
            indices.push(self.text_attribute(keys::THREAD_NAME, &row.thread_name));
        }
        let executable_name = process
            .executable_path
            .as_deref()
            .and_then(|path| path.rsplit('/').next())
            .filter(|name| !name.is_empty())
            .map_or_else(|| process.name.clone(), Arc::from);
        if !executable_name.is_empty() {
            indices.push(self.text_attribute(keys::EXECUTABLE_NAME, &executable_name));
        }
        if let Some(path) = &process.executable_path {
            indices.push(self.text_attribute(keys::EXECUTABLE_PATH, path));
        }
        if let Some(container) = &process.container_id {
            indices.push(self.text_attribute(keys::CONTAINER_ID, container));
        }
        indices
    }

    /// The mapping of a frame, 0 (the null mapping) when it has none. Kernel frames
    /// without a mapping share one `[kernel.kallsyms]` mapping widened to cover them.
    fn mapping(&mut self, frame: &Frame) -> i32 {
        let key = match (&frame.mapping, frame.kind) {
            (Some(mapping), _) => MappingKey::File(mapping.clone()),
            (None, FrameKind::Kernel) => MappingKey::Kernel,
            (None, _) => return 0,
        };
        if let Some(&index) = self.mapping_indices.get(&key) {
            if key == MappingKey::Kernel {
                if let Some(m) = self.mappings.get_mut(index as usize) {
                    m.memory_start = m.memory_start.min(frame.address);
                    m.memory_limit = m.memory_limit.max(frame.address.saturating_add(1));
                }
            }
            return index;
        }
        let index = next_index(&self.mappings);
        let mapping = match &key {
            MappingKey::Kernel => otlp::Mapping {
                memory_start: frame.address,
                memory_limit: frame.address.saturating_add(1),
                file_offset: 0,
                filename_strindex: self.string(KERNEL_MAPPING_NAME),
                attribute_indices: Vec::new(),
            },
            MappingKey::File(m) => otlp::Mapping {
                memory_start: m.start,
                memory_limit: m.end,
                file_offset: m.file_offset,
                filename_strindex: self.string(&m.path),
                attribute_indices: m
                    .build_id
                    .as_ref()
                    .map(|id| self.text_attribute(keys::BUILD_ID_GNU, id))
                    .into_iter()
                    .collect(),
            },
        };
        self.mappings.push(mapping);
        self.mapping_indices.insert(key, index);
        index
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> i32 {
        let name_strindex = self.string(name);
        let filename_strindex = file.map_or(0, |f| self.string(f));
        if let Some(&index) = self
            .function_indices
            .get(&(name_strindex, filename_strindex))
        {
            return index;
        }
        let index = next_index(&self.functions);
        self.functions.push(otlp::Function {
            name_strindex,
            system_name_strindex: name_strindex,
            filename_strindex,
            start_line: 0,
        });
        self.function_indices
            .insert((name_strindex, filename_strindex), index);
        index
    }

    /// One location per sampled address; an inline chain's frames are its lines,
    /// innermost first (the last line is the caller the others were inlined into).
    fn location(&mut self, group: &[Frame]) -> i32 {
        // Groups are never empty; returning the null location keeps this total.
        let Some(outer) = group.last() else {
            return 0;
        };
        let mapping_index = self.mapping(outer);
        let lines: Vec<(i32, i64)> = group
            .iter()
            .filter_map(|frame| {
                let name = frame.function.as_deref()?;
                let function_index = self.function(name, frame.file.as_deref());
                Some((function_index, frame.line.map_or(0, i64::from)))
            })
            .collect();
        let frame_type = match outer.kind {
            FrameKind::Kernel => Some("kernel"),
            FrameKind::Native => Some("native"),
            // The runtime behind a perf map is unknown; the convention has no
            // generic JIT value, so the attribute is left out.
            FrameKind::Jit => None,
        }
        .map_or(0, |t| {
            self.attribute(keys::FRAME_TYPE, AttributeValue::Text(Arc::from(t)))
        });
        let key = LocationKey {
            mapping_index,
            address: outer.address,
            lines,
            frame_type,
        };
        if let Some(&index) = self.location_indices.get(&key) {
            return index;
        }
        let index = next_index(&self.locations);
        self.locations.push(otlp::Location {
            mapping_index,
            address: key.address,
            lines: key
                .lines
                .iter()
                .map(|&(function_index, line)| otlp::Line {
                    function_index,
                    line,
                    column: 0,
                })
                .collect(),
            attribute_indices: if frame_type == 0 {
                Vec::new()
            } else {
                vec![frame_type]
            },
        });
        self.location_indices.insert(key, index);
        index
    }

    /// The stack of a leaf-first frame list (OTLP stacks are leaf first too).
    fn stack(&mut self, frames: &[Frame]) -> i32 {
        let location_indices: Vec<i32> = address_groups(frames)
            .map(|group| self.location(group))
            .collect();
        if let Some(&index) = self.stack_indices.get(&location_indices) {
            return index;
        }
        let index = next_index(&self.stacks);
        self.stacks.push(otlp::Stack {
            location_indices: location_indices.clone(),
        });
        self.stack_indices.insert(location_indices, index);
        index
    }
}

#[cfg(test)]
mod tests;
