//! Kestrel's exporters: the shared [`Profile`](kestrel_model::Profile) becomes pprof,
//! folded stacks, a flamegraph SVG or an OTLP Profiles request.

mod error;
mod flamegraph;
mod folded;
mod frames;
pub mod pprof;

pub use error::ExportError;
pub use flamegraph::flamegraph_svg;
pub use folded::{folded, FoldedValue};
pub use pprof::{decode_pprof, encode_pprof, encode_pprof_raw, PprofProfile};

#[cfg(test)]
mod test_profiles;
