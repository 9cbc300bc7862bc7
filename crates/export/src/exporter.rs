//! The exporter plugin trait, its counters, and how an exporter reads its table.

use std::time::Duration;

use kestrel_model::Profile;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ExportError;

/// A sink the agent hands every report to.
pub trait Exporter: Send {
    /// The registry kind this exporter was built from (e.g. `pprof_dir`).
    fn name(&self) -> &str;
    /// Called once per report. Must not block on the network: slow sinks queue internally.
    fn export(&mut self, profile: &Profile) -> Result<(), ExportError>;
    /// Flush what is queued, waiting at most `deadline`.
    fn shutdown(&mut self, deadline: Duration) -> Result<(), ExportError>;
    fn stats(&self) -> ExporterStats;
}

/// Counters every exporter keeps, for self-metrics and `kestrel status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ExporterStats {
    /// Reports written or acknowledged by the receiver.
    pub exported: u64,
    /// Reports that failed for good (after retries, where the sink retries).
    pub failed: u64,
    /// Reports discarded without an attempt: the queue's byte bound, a report larger
    /// than the sink's bound, or a shutdown deadline.
    pub dropped: u64,
    /// Encoded bytes waiting to be sent.
    pub queued_bytes: u64,
}

/// Deserializes an exporter's typed configuration; a missing table means defaults.
pub(crate) fn parse_config<T: DeserializeOwned>(
    kind: &str,
    config: &serde_json::Value,
) -> Result<T, ExportError> {
    let config = if config.is_null() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        config.clone()
    };
    serde_json::from_value(config).map_err(|e| ExportError::config(kind, e.to_string()))
}
