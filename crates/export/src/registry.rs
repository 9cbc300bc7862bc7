//! The registry the agent builds sinks from: every exporter kind, its builder and
//! the recording format it provides. Adding an exporter is its module plus one
//! line in [`REGISTRY`].

use crate::{ExportError, Exporter};

type BuildFn = fn(&serde_json::Value) -> Result<Box<dyn Exporter>, ExportError>;

/// What a directory exporter is called as a recording's output format, and
/// whether it writes one file per value (on-CPU samples, off-CPU time).
#[derive(Debug, Clone, Copy)]
struct RecordFormat {
    name: &'static str,
    per_value: bool,
}

const fn format(name: &'static str, per_value: bool) -> Option<RecordFormat> {
    Some(RecordFormat { name, per_value })
}

/// Every exporter the agent can enable, and the recording format it provides
/// (`kestrel record --format`), if any. Adding one is its module plus one line here.
const REGISTRY: &[(&str, BuildFn, Option<RecordFormat>)] = &[
    (
        "pprof_dir",
        crate::dir::build_pprof_dir,
        format("pprof", false),
    ),
    (
        "folded_dir",
        crate::dir::build_folded_dir,
        format("folded", true),
    ),
    (
        "flamegraph_dir",
        crate::dir::build_flamegraph_dir,
        format("flamegraph", true),
    ),
    (
        "otlp_dir",
        crate::dir::build_otlp_dir,
        format("otlp", false),
    ),
    ("otlp", crate::otlp::build_otlp, None),
];

/// The kinds [`build_exporter`] accepts.
pub fn exporter_kinds() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|(kind, _, _)| *kind)
}

/// The formats [`build_record_exporter`] accepts.
pub fn record_formats() -> impl Iterator<Item = &'static str> {
    REGISTRY
        .iter()
        .filter_map(|(_, _, format)| format.map(|f| f.name))
}

/// The exporter that writes one recording in `format` into `dir` under fixed
/// names ([`Layout::Single`](crate::Layout::Single)), with a file per value in
/// `values` where the format writes one per value.
pub fn build_record_exporter(
    format: &str,
    dir: &std::path::Path,
    values: &[crate::FoldedValue],
) -> Result<Box<dyn Exporter>, ExportError> {
    let Some((kind, build, format)) = REGISTRY
        .iter()
        .find_map(|(kind, build, f)| f.filter(|f| f.name == format).map(|f| (kind, build, f)))
    else {
        return Err(ExportError::UnknownFormat {
            format: format.to_string(),
            known: record_formats().collect::<Vec<_>>().join(", "),
        });
    };
    let mut config = serde_json::json!({ "dir": dir, "layout": "single" });
    if format.per_value {
        config["values"] =
            serde_json::to_value(values).map_err(|e| ExportError::config(kind, e.to_string()))?;
    }
    build(&config)
}

/// Builds the exporter `kind` from its configuration table (`[exporters.<kind>]` in
/// config.toml, converted to JSON). Unknown keys are errors that name the key.
pub fn build_exporter(
    kind: &str,
    config: &serde_json::Value,
) -> Result<Box<dyn Exporter>, ExportError> {
    match REGISTRY.iter().find(|(k, _, _)| *k == kind) {
        Some((_, build, _)) => build(config),
        None => Err(ExportError::UnknownExporter {
            kind: kind.to_string(),
            known: exporter_kinds().collect::<Vec<_>>().join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExporterStats, FoldedValue};
    use serde_json::json;

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        let err = build_exporter("kafka", &json!({}))
            .err()
            .expect("kafka is not an exporter");
        let message = err.to_string();
        assert!(message.contains("`kafka`"), "{message}");
        for kind in exporter_kinds() {
            assert!(message.contains(kind), "{message}");
        }
    }

    #[test]
    fn unknown_config_keys_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let cases = [
            (
                "pprof_dir",
                json!({ "dir": path, "max_filez": 3 }),
                "max_filez",
            ),
            (
                "folded_dir",
                json!({ "dir": path, "colour": "red" }),
                "colour",
            ),
        ];
        for (kind, config, key) in cases {
            let message = build_exporter(kind, &config)
                .err()
                .unwrap_or_else(|| panic!("{kind} accepted the unknown key {key}"))
                .to_string();
            assert!(message.contains(kind) && message.contains(key), "{message}");
        }
    }

    #[test]
    fn known_kinds_build_from_valid_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let pprof = build_exporter("pprof_dir", &json!({ "dir": path, "max_files": 2 })).unwrap();
        assert_eq!(pprof.name(), "pprof_dir");
        let folded = build_exporter("folded_dir", &json!({ "dir": path })).unwrap();
        assert_eq!(folded.name(), "folded_dir");
        assert_eq!(folded.stats(), ExporterStats::default());
    }

    #[test]
    fn every_record_format_writes_its_fixed_names_and_nothing_else() {
        let profile = crate::test_profiles::mixed_profile();
        let both = [FoldedValue::CpuSamples, FoldedValue::OffCpuNanoseconds];
        let cases: [(&str, &[&str]); 4] = [
            ("pprof", &["profile.pb.gz"]),
            ("folded", &["offcpu.folded", "profile.folded"]),
            ("flamegraph", &["flamegraph.svg", "offcpu.svg"]),
            ("otlp", &["profile.otlp.pb"]),
        ];
        assert_eq!(
            record_formats().collect::<Vec<_>>(),
            cases.iter().map(|(f, _)| *f).collect::<Vec<_>>()
        );
        for (format, names) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut exporter = build_record_exporter(format, dir.path(), &both).unwrap();
            // Twice: the single layout replaces its files instead of adding any.
            exporter.export(&profile).unwrap();
            exporter.export(&profile).unwrap();
            let mut written: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            written.sort();
            assert_eq!(written, names, "{format}");
            for name in names {
                let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
                assert!(len > 0, "{format}: {name} is empty");
            }
        }
    }

    #[test]
    fn an_unknown_record_format_names_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let message = build_record_exporter("svgz", dir.path(), &[FoldedValue::CpuSamples])
            .err()
            .expect("svgz is not a format")
            .to_string();
        assert!(message.contains("svgz"), "{message}");
        for format in record_formats() {
            assert!(message.contains(format), "{message}");
        }
    }
}
