use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong while detecting the topology or planning.
///
/// `Clone` so that a plan result can be cached and handed to several
/// consumers; the I/O cause is shared through an `Arc` for that reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SizingError {
    #[error(
        "malformed CPU list {input:?}: {reason}; expected the kernel's cpulist \
         format, e.g. \"0-3,5,7-8\""
    )]
    MalformedCpuList { input: String, reason: String },

    #[error(
        "cannot read {}: {source}; the CPU topology comes from sysfs, which must be \
         mounted at /sys (or plan with Topology::synthetic for another machine)",
        path.display()
    )]
    ReadSysfs {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    #[error("inconsistent CPU topology: {reason}")]
    InvalidTopology { reason: String },

    #[error("invalid {field} = {value}: allowed range is {allowed}")]
    InvalidInput {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },

    #[error(
        "the BPF maps need at least {needed_bytes} bytes even with every map at its \
         floor, but the memory cap is {cap_bytes} bytes; raise the memory cap to at \
         least {needed_bytes} bytes, or shorten the PID filter / disable off-CPU profiling"
    )]
    CapTooSmall { needed_bytes: u64, cap_bytes: u64 },

    #[error("cannot read {}: {source}", path.display())]
    ReadPidMax {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    #[error("{} holds {content:?}, not a positive integer", path.display())]
    MalformedPidMax { path: PathBuf, content: String },

    #[error("the plan has no row for map `{0}` (a kestrel-sizing bug)")]
    MissingRow(&'static str),
}
