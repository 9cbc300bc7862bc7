//! Kestrel's exporters: the shared [`Profile`](kestrel_model::Profile) becomes pprof,
//! folded stacks, a flamegraph SVG or an OTLP Profiles request.
//!
//! The encoders ([`encode_pprof`], [`folded`], [`flamegraph_svg`], [`to_otlp_request`])
//! are pure functions of a profile. The agent composes sinks through the [`Exporter`]
//! trait; [`build_exporter`] turns an exporter's configuration table into one, and
//! adding an exporter is its module plus one line in the registry table.

mod dir;
mod error;
mod exporter;
mod flamegraph;
mod folded;
mod frames;
pub mod otlp;
pub mod pprof;
mod random;
mod registry;

pub use dir::{
    write_atomic, FlamegraphDirExporter, FoldedDirConfig, FoldedDirExporter, Layout, OtlpDirConfig,
    OtlpDirExporter, PprofDirConfig, PprofDirExporter,
};
pub use error::ExportError;
pub use exporter::{Exporter, ExporterStats};
pub use flamegraph::flamegraph_svg;
pub use folded::{folded, FoldedValue};
pub use otlp::{to_otlp_request, OtlpCompression, OtlpConfig, OtlpExporter, ResourceInfo};
pub use pprof::{decode_pprof, encode_pprof, encode_pprof_raw, PprofProfile};
pub use registry::{build_exporter, build_record_exporter, exporter_kinds, record_formats};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_profiles;
