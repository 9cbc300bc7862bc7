//! Kestrel's own metrics: one snapshot the agent updates after each drain and
//! report, exported through opentelemetry-otlp when `telemetry.enabled`, and
//! logged every `agent.stats_log_interval_s`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::Resource;
use serde::Serialize;

use crate::config::Telemetry;

/// Every self-metric, as last observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub samples_received: u64,
    pub samples_lost: u64,
    pub off_cpu_waits: u64,
    /// Map name → measured kernel bytes.
    pub bpf_memory_bytes: BTreeMap<String, u64>,
    pub store_hits: u64,
    pub store_misses: u64,
    pub store_memory_bytes: u64,
    pub store_disk_bytes: u64,
    /// Part of `store_hits` answered by the disk tier.
    pub store_disk_hits: u64,
    /// Frames of ELF files the symbolizer had to look up (store misses).
    pub store_symbolized_file_frames: u64,
    /// What the store's disk tier held at start (entries, their bytes).
    pub store_recovered_entries: u64,
    pub store_recovered_bytes: u64,
    /// How the store's close at exit ended, and how long it took.
    pub store_close_outcome: kestrel_symbols::CloseOutcome,
    pub store_close_ms: u64,
    /// Name source (`symtab`, `dynsym`, `build_id_dir`, `debuglink`,
    /// `debuginfod`, and `none` for frames left unnamed) → frames named so.
    pub symbol_sources: BTreeMap<String, u64>,
    /// debuginfod: files downloaded, their bytes, build IDs the servers do not
    /// have, failed requests.
    pub debuginfod_downloads: u64,
    pub debuginfod_bytes: u64,
    pub debuginfod_not_found: u64,
    pub debuginfod_failures: u64,
    /// Exporter kind → outcomes.
    pub exports: BTreeMap<String, kestrel_export::ExporterStats>,
    pub reports: u64,
}

pub type Shared = Arc<Mutex<Snapshot>>;

pub fn read(shared: &Shared) -> Snapshot {
    match shared.lock() {
        Ok(s) => s.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

pub fn update(shared: &Shared, f: impl FnOnce(&mut Snapshot)) {
    match shared.lock() {
        Ok(mut s) => f(&mut s),
        Err(p) => f(&mut p.into_inner()),
    }
}

/// The agent's own metrics could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("building the OTLP metrics exporter for {endpoint} failed")]
pub struct TelemetryError {
    pub endpoint: String,
    #[source]
    pub source: opentelemetry_otlp::ExporterBuildError,
}

/// Start the OTLP metrics pipeline; must be called inside the tokio runtime
/// (the tonic channel needs its reactor). Dropping the provider stops it.
pub fn start(
    config: &Telemetry,
    shared: Shared,
    host: &str,
) -> Result<SdkMeterProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .build()
        .map_err(|source| TelemetryError {
            endpoint: config.endpoint.clone(),
            source,
        })?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(Duration::from_secs_f64(config.interval_s))
        .build();
    let resource = Resource::builder()
        .with_service_name("kestrel")
        .with_attribute(KeyValue::new("host.name", host.to_string()))
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let meter = provider.meter("kestrel");

    macro_rules! counter {
        ($name:expr, $desc:expr, $field:ident) => {{
            let s = Arc::clone(&shared);
            meter
                .u64_observable_counter($name)
                .with_description($desc)
                .with_callback(move |o| o.observe(read(&s).$field, &[]))
                .build();
        }};
    }
    macro_rules! gauge {
        ($name:expr, $desc:expr, $unit:expr, $field:ident) => {{
            let s = Arc::clone(&shared);
            meter
                .u64_observable_gauge($name)
                .with_description($desc)
                .with_unit($unit)
                .with_callback(move |o| o.observe(read(&s).$field, &[]))
                .build();
        }};
    }
    counter!(
        "kestrel.samples.received",
        "on-CPU samples received from the ring buffer",
        samples_received
    );
    counter!(
        "kestrel.samples.lost",
        "records the ring buffer had no room for",
        samples_lost
    );
    counter!(
        "kestrel.off_cpu.waits",
        "off-CPU waits measured",
        off_cpu_waits
    );
    counter!("kestrel.symbols.hits", "symbol store hits", store_hits);
    counter!(
        "kestrel.symbols.misses",
        "symbol store misses",
        store_misses
    );
    counter!("kestrel.reports", "reports built", reports);
    gauge!(
        "kestrel.symbols.memory",
        "symbol store memory tier",
        "By",
        store_memory_bytes
    );
    gauge!(
        "kestrel.symbols.disk",
        "symbol store disk tier",
        "By",
        store_disk_bytes
    );
    gauge!(
        "kestrel.symbols.recovered.entries",
        "symbol store entries recovered from the disk tier at start",
        "{entry}",
        store_recovered_entries
    );
    gauge!(
        "kestrel.symbols.recovered",
        "bytes of the symbol store entries recovered from the disk tier at start",
        "By",
        store_recovered_bytes
    );
    counter!(
        "kestrel.debuginfod.downloads",
        "debug files downloaded from debuginfod servers",
        debuginfod_downloads
    );
    counter!(
        "kestrel.debuginfod.failures",
        "debuginfod requests that failed (server down, timeout, bad file)",
        debuginfod_failures
    );
    {
        let s = Arc::clone(&shared);
        meter
            .u64_observable_counter("kestrel.symbols.named")
            .with_description("frames named, by where the name came from (source = none: unnamed)")
            .with_callback(move |o| {
                for (source, frames) in read(&s).symbol_sources {
                    o.observe(frames, &[KeyValue::new("source", source)]);
                }
            })
            .build();
    }
    {
        let s = Arc::clone(&shared);
        meter
            .u64_observable_gauge("kestrel.bpf.memory")
            .with_description("kernel memory of each BPF map (fdinfo memlock)")
            .with_unit("By")
            .with_callback(move |o| {
                for (map, bytes) in read(&s).bpf_memory_bytes {
                    o.observe(bytes, &[KeyValue::new("map", map)]);
                }
            })
            .build();
    }
    {
        let s = Arc::clone(&shared);
        meter
            .u64_observable_counter("kestrel.exports")
            .with_description("reports per exporter and outcome")
            .with_callback(move |o| {
                for (exporter, st) in read(&s).exports {
                    for (outcome, n) in [
                        ("exported", st.exported),
                        ("failed", st.failed),
                        ("dropped", st.dropped),
                    ] {
                        o.observe(
                            n,
                            &[
                                KeyValue::new("exporter", exporter.clone()),
                                KeyValue::new("outcome", outcome),
                            ],
                        );
                    }
                }
            })
            .build();
    }
    Ok(provider)
}

/// The store's per-source counts as the snapshot names them.
pub fn symbol_sources(store: &kestrel_symbols::StoreStats) -> BTreeMap<String, u64> {
    [
        ("symtab", store.named_symtab),
        ("dynsym", store.named_dynsym),
        ("build_id_dir", store.named_build_id_dir),
        ("debuglink", store.named_debuglink),
        ("debuginfod", store.named_debuginfod),
        ("none", store.unnamed_frames),
    ]
    .into_iter()
    .map(|(source, frames)| (source.to_string(), frames))
    .collect()
}
