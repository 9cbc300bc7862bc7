//! Kestrel's agent as a library: the pipeline every mode shares ([`agent`]), the
//! configuration ([`config`]), the capability handling ([`capabilities`]), and what
//! a run says about itself (`stats.json` in [`stats`], self-metrics in
//! [`telemetry`]). The `kestrel` binary's subcommands are thin front ends over it.

pub mod agent;
pub mod capabilities;
pub mod config;
pub mod stats;
pub mod telemetry;
