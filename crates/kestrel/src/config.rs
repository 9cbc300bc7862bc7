//! Configuration: built-in defaults ← `config.toml` (`--config` or `KESTREL_CONFIG`)
//! ← environment `KESTREL_*` (nesting with `__`) ← CLI flags. Later wins.
//!
//! Unknown keys and wrong types are errors naming the key and where it came from;
//! values outside their range are errors naming the key, its source and the
//! allowed range.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Every key of `config.toml`; the root `config.toml` documents each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sampling: Sampling,
    pub off_cpu: OffCpu,
    pub memory: Memory,
    pub record: Record,
    pub symbols: Symbols,
    pub log: Log,
    pub agent: Agent,
    pub telemetry: Telemetry,
    /// `[[exporters]]`: each table has `kind` (`pprof_dir`, `folded_dir`, `otlp`)
    /// and that exporter's own keys, checked by the exporter.
    pub exporters: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Agent {
    /// Seconds between reports of `kestrel run`.
    pub report_interval_s: f64,
    /// Each interval is stretched or shrunk by up to this fraction at random, so a
    /// fleet does not report in lockstep.
    pub report_jitter: f64,
    /// On SIGTERM/SIGINT, the last report and exporter flushes get this long.
    pub shutdown_deadline_s: f64,
    /// Seconds between self-metric log lines; 0 turns them off.
    pub stats_log_interval_s: f64,
    /// Write the agent's counters as JSON to this file after every report; empty: off.
    pub stats_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// Export Kestrel's own metrics with OpenTelemetry (OTLP/gRPC).
    pub enabled: bool,
    /// The OTLP metrics endpoint, e.g. http://127.0.0.1:4317.
    pub endpoint: String,
    /// Seconds between metric exports.
    pub interval_s: f64,
}
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    /// On-CPU samples per second per CPU. A prime avoids lockstep with periodic work.
    pub frequency_hz: u32,
    /// Frames per stack (kernel and user each), 1..=127.
    pub stack_depth: u32,
    /// How often the ring buffer is drained, in milliseconds.
    pub poll_interval_ms: u64,
    /// Only these processes; empty means the whole system.
    pub pids: Vec<u32>,
    /// Sample Kestrel itself too.
    pub profile_self: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OffCpu {
    /// Fraction of voluntary context switches measured, 0..=1; 0 disables off-CPU.
    pub probability: f64,
    /// Waits shorter than this many microseconds are not reported.
    pub min_duration_us: u64,
    /// Upper bound on context switches per CPU per second that the in-flight
    /// table and ring buffer are sized for.
    pub sched_events_per_cpu_s: u32,
    /// `auto` (tp_btf + task storage where allowed, else raw_tp + hash), `tp_btf`
    /// or `raw_tp`.
    pub hook: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Memory {
    /// Kernel memory cap for all of Kestrel's BPF maps together, in bytes.
    pub bpf_cap_bytes: u64,
    /// Grow the ring buffer when a drain finds it more than this fraction full.
    pub ring_grow_above: f64,
    /// Shrink it when drains find it less than this fraction full ...
    pub ring_shrink_below: f64,
    /// ... for this many seconds in a row.
    pub ring_shrink_after_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Record {
    /// Seconds `kestrel record` runs before writing its files.
    pub duration_s: f64,
    /// Where `kestrel record` writes its files.
    pub output_dir: PathBuf,
    /// Which files: `pprof`, `folded`, `flamegraph`, `otlp`.
    pub formats: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Symbols {
    /// Symbol cache directory; empty means /var/cache/kestrel as root, else
    /// $XDG_CACHE_HOME/kestrel.
    pub cache_dir: PathBuf,
    /// Memory tier of the symbol store, in bytes.
    pub memory_bytes: u64,
    /// Disk tier of the symbol store, in bytes.
    pub disk_bytes: u64,
    /// ELF files larger than this are symbolized from their symbol table only
    /// (no DWARF lines or inlined frames), which bounds the symbolizer's memory.
    pub dwarf_max_file_bytes: u64,
    /// Roots of separate debug files (`.build-id/xx/rest.debug`, debug links).
    pub debug_dirs: Vec<PathBuf>,
    /// debuginfod servers; empty means no network access.
    pub debuginfod_urls: Vec<String>,
    /// Also use the servers in `DEBUGINFOD_URLS`.
    pub debuginfod_honour_env: bool,
    /// Allow `http://` servers (HTTPS only otherwise).
    pub debuginfod_allow_http: bool,
    /// Bound of one download, in seconds.
    pub debuginfod_timeout_s: u64,
    /// Bound of the downloaded debug files under the cache directory, in bytes.
    pub debuginfod_cache_bytes: u64,
    /// Downloads in flight at once.
    pub debuginfod_max_in_flight: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug` or `trace`; RUST_LOG overrides.
    pub level: String,
    /// `human` or `json`.
    pub format: String,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            report_interval_s: 5.0,
            report_jitter: 0.1,
            shutdown_deadline_s: 10.0,
            stats_log_interval_s: 60.0,
            stats_file: PathBuf::new(),
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            enabled: false,
            endpoint: "http://127.0.0.1:4317".into(),
            interval_s: 30.0,
        }
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            frequency_hz: 19,
            stack_depth: 127,
            poll_interval_ms: 250,
            pids: Vec::new(),
            profile_self: false,
        }
    }
}

impl Default for OffCpu {
    fn default() -> Self {
        OffCpu {
            probability: 0.0,
            min_duration_us: 0,
            sched_events_per_cpu_s: 1000,
            hook: "auto".into(),
        }
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            bpf_cap_bytes: 8 * 1024 * 1024,
            ring_grow_above: 0.5,
            ring_shrink_below: 0.125,
            ring_shrink_after_s: 60.0,
        }
    }
}

impl Default for Record {
    fn default() -> Self {
        Record {
            duration_s: 10.0,
            output_dir: PathBuf::from("./kestrel-out"),
            formats: vec!["pprof".into(), "folded".into(), "flamegraph".into()],
        }
    }
}

impl Default for Symbols {
    fn default() -> Self {
        Symbols {
            cache_dir: PathBuf::new(),
            memory_bytes: 32 * 1024 * 1024,
            disk_bytes: 256 * 1024 * 1024,
            dwarf_max_file_bytes: 64 * 1024 * 1024,
            debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
            debuginfod_urls: Vec::new(),
            debuginfod_honour_env: false,
            debuginfod_allow_http: false,
            debuginfod_timeout_s: 30,
            debuginfod_cache_bytes: 1024 * 1024 * 1024,
            debuginfod_max_in_flight: 2,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: "human".into(),
        }
    }
}

impl OffCpu {
    /// The forced hook, `None` for `auto` (validated before use).
    pub fn forced_hook(&self) -> Option<kestrel_probes::OffCpuHook> {
        match self.hook.as_str() {
            "tp_btf" => Some(kestrel_probes::OffCpuHook::TpBtfTaskStorage),
            "raw_tp" => Some(kestrel_probes::OffCpuHook::RawTpHash),
            _ => None,
        }
    }
}

impl Sampling {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

/// Where the configuration file comes from: `--config`, else `KESTREL_CONFIG`,
/// else none (built-in defaults; the root `config.toml` documents them).
pub fn config_path(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KESTREL_CONFIG").map(PathBuf::from))
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem at once, each naming its key and where the value came from.
    #[error("invalid configuration:{}", problem_lines(.problems))]
    Invalid { problems: Vec<Problem> },
}

/// One refused key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key, e.g. `sampling.frequency_hz`.
    pub key: String,
    /// Where the value came from: the file, the environment, a flag or defaults.
    pub source: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key `{}` from {}: {}",
            self.key, self.source, self.message
        )
    }
}

fn problem_lines(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

/// Build the figment: defaults ← file ← env ← `overrides` (CLI flags, only those given).
pub fn figment(file: Option<&Path>, overrides: &impl Serialize) -> Result<Figment, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        // Read it ourselves so an unreadable file is an error, not silently skipped.
        // Read it first so an unreadable or missing file is an error (figment
        // would skip a missing one silently); Toml::file keeps the path as the
        // source that error messages name.
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        fig = fig.merge(Toml::file(path));
    }
    fig = fig
        .merge(
            Env::prefixed("KESTREL_")
                .ignore(&["CONFIG"])
                .split("__")
                .lowercase(true),
        )
        .merge(Serialized::defaults(overrides));
    Ok(fig)
}

/// Extract and validate. Errors name the key, the source and the allowed values.
pub fn load(file: Option<&Path>, overrides: &impl Serialize) -> Result<Config, ConfigError> {
    let fig = figment(file, overrides)?;
    let config: Config = fig.extract().map_err(|e| {
        let mut problems = Vec::new();
        for err in e {
            let source = err
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(s) => format!("{} ({s})", m.name),
                    None => m.name.to_string(),
                })
                .unwrap_or_else(|| "unknown source".into());
            let key = if err.path.is_empty() {
                "(top level)".to_string()
            } else {
                err.path.join(".")
            };
            problems.push(Problem {
                key,
                source,
                message: err.kind.to_string(),
            });
        }
        ConfigError::Invalid { problems }
    })?;
    validate(&config, &fig)?;
    Ok(config)
}

fn source_of(fig: &Figment, key: &str) -> String {
    match fig.find_metadata(key) {
        Some(m) => match &m.source {
            Some(s) => format!("{} ({s})", m.name),
            None => m.name.to_string(),
        },
        None => "defaults".into(),
    }
}

fn validate(c: &Config, fig: &Figment) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, key: &str, value: String, allowed: &str| {
        if !ok {
            problems.push(Problem {
                key: key.to_string(),
                source: source_of(fig, key),
                message: format!("{value} is out of range: allowed {allowed}"),
            });
        }
    };
    let s = &c.sampling;
    check(
        (1..=10_000).contains(&s.frequency_hz),
        "sampling.frequency_hz",
        s.frequency_hz.to_string(),
        "1..=10000 Hz",
    );
    check(
        (1..=127).contains(&s.stack_depth),
        "sampling.stack_depth",
        s.stack_depth.to_string(),
        "1..=127 frames",
    );
    check(
        (10..=10_000).contains(&s.poll_interval_ms),
        "sampling.poll_interval_ms",
        s.poll_interval_ms.to_string(),
        "10..=10000 ms",
    );
    let p = c.off_cpu.probability;
    check(
        p.is_finite() && (0.0..=1.0).contains(&p),
        "off_cpu.probability",
        p.to_string(),
        "0.0..=1.0 (0 disables off-CPU)",
    );
    check(
        (1..=1_000_000).contains(&c.off_cpu.sched_events_per_cpu_s),
        "off_cpu.sched_events_per_cpu_s",
        c.off_cpu.sched_events_per_cpu_s.to_string(),
        "1..=1000000",
    );
    check(
        ["auto", "tp_btf", "raw_tp"].contains(&c.off_cpu.hook.as_str()),
        "off_cpu.hook",
        format!("{:?}", c.off_cpu.hook),
        "one of auto, tp_btf, raw_tp",
    );
    check(
        c.memory.bpf_cap_bytes >= 1 << 20,
        "memory.bpf_cap_bytes",
        c.memory.bpf_cap_bytes.to_string(),
        ">= 1048576 (1 MiB)",
    );
    let d = c.record.duration_s;
    check(
        d.is_finite() && d > 0.0 && d <= 86_400.0,
        "record.duration_s",
        d.to_string(),
        "0 < seconds <= 86400",
    );
    check(
        c.symbols.memory_bytes >= 1 << 20,
        "symbols.memory_bytes",
        c.symbols.memory_bytes.to_string(),
        ">= 1048576 (1 MiB)",
    );
    check(
        c.symbols.disk_bytes == 0 || c.symbols.disk_bytes >= 8 << 20,
        "symbols.disk_bytes",
        c.symbols.disk_bytes.to_string(),
        "0 (no disk tier) or >= 8388608 (8 MiB)",
    );
    check(
        (1..=3600).contains(&c.symbols.debuginfod_timeout_s),
        "symbols.debuginfod_timeout_s",
        c.symbols.debuginfod_timeout_s.to_string(),
        "1..=3600 seconds",
    );
    check(
        (1..=64).contains(&c.symbols.debuginfod_max_in_flight),
        "symbols.debuginfod_max_in_flight",
        c.symbols.debuginfod_max_in_flight.to_string(),
        "1..=64",
    );
    for url in &c.symbols.debuginfod_urls {
        check(
            url.starts_with("https://")
                || (c.symbols.debuginfod_allow_http && url.starts_with("http://")),
            "symbols.debuginfod_urls",
            url.clone(),
            "https:// URLs (http:// only with symbols.debuginfod_allow_http = true)",
        );
    }
    let m = &c.memory;
    check(
        m.ring_grow_above.is_finite() && m.ring_grow_above > 0.0 && m.ring_grow_above <= 1.0,
        "memory.ring_grow_above",
        m.ring_grow_above.to_string(),
        "0 < fraction <= 1",
    );
    check(
        m.ring_shrink_below.is_finite()
            && m.ring_shrink_below >= 0.0
            && m.ring_shrink_below * 2.0 < m.ring_grow_above,
        "memory.ring_shrink_below",
        m.ring_shrink_below.to_string(),
        "0 <= fraction < ring_grow_above / 2 (the gap keeps the size from flapping)",
    );
    check(
        m.ring_shrink_after_s.is_finite() && m.ring_shrink_after_s > 0.0,
        "memory.ring_shrink_after_s",
        m.ring_shrink_after_s.to_string(),
        "> 0 seconds",
    );
    let a = &c.agent;
    check(
        a.report_interval_s.is_finite() && (0.1..=3600.0).contains(&a.report_interval_s),
        "agent.report_interval_s",
        a.report_interval_s.to_string(),
        "0.1..=3600 seconds",
    );
    check(
        a.report_jitter.is_finite() && (0.0..=0.5).contains(&a.report_jitter),
        "agent.report_jitter",
        a.report_jitter.to_string(),
        "0.0..=0.5",
    );
    check(
        a.shutdown_deadline_s.is_finite() && (0.0..=300.0).contains(&a.shutdown_deadline_s),
        "agent.shutdown_deadline_s",
        a.shutdown_deadline_s.to_string(),
        "0..=300 seconds",
    );
    check(
        a.stats_log_interval_s.is_finite() && a.stats_log_interval_s >= 0.0,
        "agent.stats_log_interval_s",
        a.stats_log_interval_s.to_string(),
        ">= 0 seconds (0 = off)",
    );
    check(
        c.telemetry.interval_s.is_finite() && c.telemetry.interval_s >= 1.0,
        "telemetry.interval_s",
        c.telemetry.interval_s.to_string(),
        ">= 1 second",
    );
    for (i, e) in c.exporters.iter().enumerate() {
        let kind = e.get("kind").and_then(|k| k.as_str());
        let known: Vec<&str> = kestrel_export::exporter_kinds().collect();
        check(
            kind.is_some_and(|k| known.contains(&k)),
            &format!("exporters[{i}].kind"),
            format!("{:?}", kind.unwrap_or("(missing)")),
            &format!("one of {}", known.join(", ")),
        );
    }
    let formats: Vec<&str> = kestrel_export::record_formats().collect();
    for (i, format) in c.record.formats.iter().enumerate() {
        check(
            formats.contains(&format.as_str()),
            &format!("record.formats[{i}]"),
            format!("{format:?}"),
            &format!("one of {}", formats.join(", ")),
        );
    }
    let levels = ["error", "warn", "info", "debug", "trace"];
    check(
        levels.contains(&c.log.level.as_str()),
        "log.level",
        format!("{:?}", c.log.level),
        "one of error, warn, info, debug, trace",
    );
    check(
        ["human", "json"].contains(&c.log.format.as_str()),
        "log.format",
        format!("{:?}", c.log.format),
        "one of human, json",
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid { problems })
    }
}

#[cfg(test)]
// figment's Jail returns its large error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[derive(Serialize, Default)]
    struct NoOverrides {}

    #[test]
    fn root_config_toml_equals_the_built_in_defaults() {
        // Inside a Jail: other tests set KESTREL_* variables process-wide in
        // theirs, and figment runs one Jail at a time.
        Jail::expect_with(|_jail| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.toml");
            let c = load(Some(&path), &NoOverrides::default()).unwrap();
            assert_eq!(c, Config::default());
            Ok(())
        });
    }

    #[test]
    fn later_sources_win_and_env_nests_with_double_underscore() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "k.toml",
                "[sampling]\nfrequency_hz = 49\nstack_depth = 64\n",
            )?;
            jail.set_env("KESTREL_SAMPLING__FREQUENCY_HZ", "97");
            let c = load(Some(Path::new("k.toml")), &NoOverrides::default()).unwrap();
            assert_eq!(c.sampling.frequency_hz, 97);
            assert_eq!(c.sampling.stack_depth, 64);
            #[derive(Serialize)]
            struct Cli {
                sampling: CliSampling,
            }
            #[derive(Serialize)]
            struct CliSampling {
                frequency_hz: u32,
            }
            let c = load(
                Some(Path::new("k.toml")),
                &Cli {
                    sampling: CliSampling { frequency_hz: 7 },
                },
            )
            .unwrap();
            assert_eq!(c.sampling.frequency_hz, 7);
            assert_eq!(
                c.sampling.stack_depth, 64,
                "a flag not given must not override the file"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_source() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[sampling]\nfrequncy_hz = 49\n")?;
            let e = load(Some(Path::new("bad.toml")), &NoOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("frequncy_hz") && e.contains("bad.toml"), "{e}");
            jail.create_file("type.toml", "[off_cpu]\nprobability = \"high\"\n")?;
            let e = load(Some(Path::new("type.toml")), &NoOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("off_cpu.probability") && e.contains("type.toml"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn out_of_range_values_name_key_source_and_range() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "r.toml",
                "[sampling]\nfrequency_hz = 0\n[off_cpu]\nprobability = 1.5\n",
            )?;
            let e = load(Some(Path::new("r.toml")), &NoOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("sampling.frequency_hz") && e.contains("1..=10000"),
                "{e}"
            );
            assert!(
                e.contains("off_cpu.probability") && e.contains("0.0..=1.0"),
                "{e}"
            );
            assert!(e.contains("r.toml"), "{e}");
            jail.set_env("KESTREL_SAMPLING__FREQUENCY_HZ", "20000");
            let e = load(None, &NoOverrides::default()).unwrap_err().to_string();
            assert!(e.contains("KESTREL_"), "the env source is named: {e}");
            Ok(())
        });
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let e = load(
            Some(Path::new("/nonexistent/kestrel.toml")),
            &NoOverrides::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/kestrel.toml"));
    }
}
