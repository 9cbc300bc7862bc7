//! Exporters that write each report into a directory: one file per report (and
//! per value) in a bounded, rotating directory for the agent, or one fixed set of
//! names for a single recording (`kestrel record`'s `profile.pb.gz`, ...).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kestrel_model::Profile;
use serde::{Deserialize, Serialize};

use crate::exporter::parse_config;
use crate::otlp::{to_otlp_request, ResourceInfo};
use crate::{
    encode_pprof, flamegraph_svg, folded, ExportError, Exporter, ExporterStats, FoldedValue,
};

const FILE_PREFIX: &str = "kestrel-";
const SEQUENCE_DIGITS: usize = 6;
const DEFAULT_MAX_FILES: usize = 48;
const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

fn default_max_files() -> usize {
    DEFAULT_MAX_FILES
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

fn default_folded_values() -> Vec<FoldedValue> {
    vec![FoldedValue::CpuSamples]
}

/// How a directory exporter names its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `kestrel-<UTC start time>-<seq>[.<value>]<ext>` per report, the oldest
    /// deleted beyond `max_files`/`max_bytes`: what the agent writes.
    #[default]
    Rotating,
    /// One fixed name per file (`profile.pb.gz`, `profile.folded`,
    /// `offcpu.folded`, `flamegraph.svg`, `offcpu.svg`, `profile.otlp.pb`),
    /// replaced by each report: what a single recording writes.
    Single,
}

/// `[exporters.pprof_dir]`: gzipped pprof per report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PprofDirConfig {
    /// Directory the files go to; created if missing.
    pub dir: PathBuf,
    /// Keep at most this many files; the oldest are deleted first.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    /// Keep at most this many bytes of files; the oldest are deleted first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default)]
    pub layout: Layout,
}

/// `[exporters.folded_dir]` and `[exporters.flamegraph_dir]`: folded stacks (or
/// their flamegraph SVG) per report and value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldedDirConfig {
    pub dir: PathBuf,
    /// Counts files, so a report with two values uses two.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Which values to write: `cpu_samples`, `off_cpu_nanoseconds`.
    #[serde(default = "default_folded_values")]
    pub values: Vec<FoldedValue>,
    #[serde(default)]
    pub layout: Layout,
}

/// `[exporters.otlp_dir]`: each report as an encoded OTLP
/// `ExportProfilesServiceRequest`, for a collector that reads files or a
/// receiver that is not reachable from the host.
pub type OtlpDirConfig = PprofDirConfig;

/// Write `contents` to `path` whole or not at all: a temporary name beside it,
/// flushed to the disk, then renamed over the old file; the temporary file is
/// removed on failure. The one atomic writer of Kestrel's outputs.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ExportError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_data()?;
        fs::rename(&temporary, path)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&temporary);
        ExportError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        }
    })
}

/// One file of a report: its name in each layout.
struct ReportFile {
    /// Between the rotating stem and the extension (`""`, `".cpu"`, ...).
    middle: &'static str,
    /// The whole name in the single layout.
    single_name: &'static str,
    bytes: Vec<u8>,
}

/// A directory of report files.
///
/// Rotating: names start with the report's UTC start time, so name order is age
/// order and the bound is enforced by deleting from the front of the sorted
/// listing. Every file is written under a temporary name and renamed, so readers
/// never see half a report.
#[derive(Debug)]
struct ReportDir {
    dir: PathBuf,
    extension: &'static str,
    max_files: usize,
    max_bytes: u64,
    layout: Layout,
    stats: ExporterStats,
}

impl ReportDir {
    fn new(
        kind: &str,
        dir: PathBuf,
        extension: &'static str,
        max_files: usize,
        max_bytes: u64,
        layout: Layout,
    ) -> Result<Self, ExportError> {
        if max_files == 0 || max_bytes == 0 {
            return Err(ExportError::config(
                kind,
                "max_files and max_bytes must be at least 1 (a bound of 0 would delete every report)",
            ));
        }
        fs::create_dir_all(&dir).map_err(|source| ExportError::Io {
            action: "create directory",
            path: dir.clone(),
            source,
        })?;
        Ok(ReportDir {
            dir,
            extension,
            max_files,
            max_bytes,
            layout,
            stats: ExporterStats::default(),
        })
    }

    /// Writes one report's files and, rotating, deletes the oldest files beyond
    /// the bounds. Counts the outcome in the stats.
    fn write_report(
        &mut self,
        start: SystemTime,
        files: &[ReportFile],
    ) -> Result<Vec<PathBuf>, ExportError> {
        let result = self.try_write_report(start, files);
        match &result {
            Ok(_) => self.stats.exported += 1,
            Err(ExportError::ReportTooLarge { .. }) => self.stats.dropped += 1,
            Err(_) => self.stats.failed += 1,
        }
        result
    }

    /// Counts a report that could not even be encoded.
    fn count_failure(&mut self) {
        self.stats.failed += 1;
    }

    fn try_write_report(
        &mut self,
        start: SystemTime,
        files: &[ReportFile],
    ) -> Result<Vec<PathBuf>, ExportError> {
        let bytes: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
        if bytes > self.max_bytes {
            return Err(ExportError::ReportTooLarge {
                bytes,
                max_bytes: self.max_bytes,
                setting: "max_bytes",
            });
        }
        let paths = match self.layout {
            Layout::Rotating => self.new_paths(start, files)?,
            Layout::Single => files.iter().map(|f| self.dir.join(f.single_name)).collect(),
        };
        // Every file is attempted: one failing neither truncates a file nor
        // stops the others; the first failure is returned.
        let mut first_error = None;
        for (path, file) in paths.iter().zip(files) {
            if let Err(e) = write_atomic(path, &file.bytes) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if self.layout == Layout::Rotating {
            self.rotate()?;
        }
        Ok(paths)
    }

    /// Paths for a new report: its start time plus a sequence number one past the
    /// highest already used with that time, so two reports that share a start time
    /// still sort in the order they were written, even after older ones were deleted.
    fn new_paths(
        &self,
        start: SystemTime,
        files: &[ReportFile],
    ) -> Result<Vec<PathBuf>, ExportError> {
        let stem = format!("{FILE_PREFIX}{}-", utc_stamp(start));
        let sequence = self
            .listing()?
            .iter()
            .filter_map(|(path, _)| {
                let name = path.file_name()?.to_str()?;
                let digits = name.strip_prefix(&stem)?.get(..SEQUENCE_DIGITS)?;
                digits.parse::<u64>().ok()
            })
            .max()
            .map_or(0, |highest| highest + 1);
        Ok(files
            .iter()
            .map(|file| {
                self.dir.join(format!(
                    "{stem}{sequence:0width$}{}{}",
                    file.middle,
                    self.extension,
                    width = SEQUENCE_DIGITS
                ))
            })
            .collect())
    }

    /// Our report files, oldest first, with their sizes.
    fn listing(&self) -> Result<Vec<(PathBuf, u64)>, ExportError> {
        let io_error = |source| ExportError::Io {
            action: "list",
            path: self.dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with(FILE_PREFIX) && name.ends_with(self.extension)) {
                continue;
            }
            let metadata = entry.metadata().map_err(io_error)?;
            if metadata.is_file() {
                files.push((entry.path(), metadata.len()));
            }
        }
        files.sort();
        Ok(files)
    }

    fn rotate(&self) -> Result<(), ExportError> {
        let files = self.listing()?;
        let mut count = files.len();
        let mut bytes: u64 = files.iter().map(|(_, size)| size).sum();
        for (path, size) in files {
            if count <= self.max_files && bytes <= self.max_bytes {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                // Someone else cleaned up first; the bound holds either way.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ExportError::Io {
                        action: "delete old report",
                        path,
                        source,
                    })
                }
            }
            count -= 1;
            bytes -= size;
        }
        Ok(())
    }
}

/// `YYYYMMDDTHHMMSS_nnnnnnnnnZ` in UTC: sorts like the time it names. Times before
/// 1970 (a badly set clock) print as the epoch.
fn utc_stamp(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let seconds = since_epoch.as_secs();
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}_{:09}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_nanos()
    )
}

/// Gregorian date of a day count since 1970-01-01 (the proleptic calendar algorithm
/// that works in 400-year eras of 146,097 days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes each report as gzipped pprof into a directory.
#[derive(Debug)]
pub struct PprofDirExporter {
    files: ReportDir,
}

impl PprofDirExporter {
    pub const KIND: &'static str = "pprof_dir";

    pub fn new(config: PprofDirConfig) -> Result<Self, ExportError> {
        Ok(PprofDirExporter {
            files: ReportDir::new(
                Self::KIND,
                config.dir,
                ".pb.gz",
                config.max_files,
                config.max_bytes,
                config.layout,
            )?,
        })
    }

    /// Writes `profile` and returns the file written.
    pub fn write(&mut self, profile: &Profile) -> Result<PathBuf, ExportError> {
        let bytes = match encode_pprof(profile) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.files.count_failure();
                return Err(e);
            }
        };
        let file = ReportFile {
            middle: "",
            single_name: "profile.pb.gz",
            bytes,
        };
        let mut paths = self.files.write_report(profile.start, &[file])?;
        // One file was given, so one path comes back.
        Ok(paths.remove(0))
    }
}

/// What a per-value file is called in each layout, and how its flamegraph is titled.
fn value_names(value: FoldedValue) -> (&'static str, &'static str, &'static str, &'static str) {
    // (rotating middle, single folded name, single svg name, what)
    match value {
        FoldedValue::CpuSamples => (".cpu", "profile.folded", "flamegraph.svg", "on-CPU"),
        FoldedValue::OffCpuNanoseconds => (".off_cpu", "offcpu.folded", "offcpu.svg", "off-CPU"),
    }
}

fn checked_values(
    kind: &str,
    mut values: Vec<FoldedValue>,
    max_files: usize,
) -> Result<Vec<FoldedValue>, ExportError> {
    values.dedup();
    if values.is_empty() {
        return Err(ExportError::config(
            kind,
            "values is empty; list at least one of \"cpu_samples\", \"off_cpu_nanoseconds\"",
        ));
    }
    if values.len() > max_files {
        return Err(ExportError::config(
            kind,
            format!(
                "max_files = {max_files} cannot hold one report of {} files (one per value); raise max_files",
                values.len()
            ),
        ));
    }
    Ok(values)
}

/// The directory and checked values of an exporter that writes a file per value.
fn per_value_dir(
    kind: &str,
    extension: &'static str,
    config: FoldedDirConfig,
) -> Result<(ReportDir, Vec<FoldedValue>), ExportError> {
    let values = checked_values(kind, config.values, config.max_files)?;
    let files = ReportDir::new(
        kind,
        config.dir,
        extension,
        config.max_files,
        config.max_bytes,
        config.layout,
    )?;
    Ok((files, values))
}

/// Writes each report as folded stacks into a directory.
#[derive(Debug)]
pub struct FoldedDirExporter {
    files: ReportDir,
    values: Vec<FoldedValue>,
}

impl FoldedDirExporter {
    pub const KIND: &'static str = "folded_dir";

    pub fn new(config: FoldedDirConfig) -> Result<Self, ExportError> {
        let (files, values) = per_value_dir(Self::KIND, ".folded", config)?;
        Ok(FoldedDirExporter { files, values })
    }

    /// Writes `profile` and returns the files written (one per configured value).
    pub fn write(&mut self, profile: &Profile) -> Result<Vec<PathBuf>, ExportError> {
        let files: Vec<ReportFile> = self
            .values
            .iter()
            .map(|&value| {
                let (middle, single_name, _, _) = value_names(value);
                ReportFile {
                    middle,
                    single_name,
                    bytes: folded(profile, value).into_bytes(),
                }
            })
            .collect();
        self.files.write_report(profile.start, &files)
    }
}

/// Writes each report as a flamegraph SVG per value (rendered by inferno).
#[derive(Debug)]
pub struct FlamegraphDirExporter {
    files: ReportDir,
    values: Vec<FoldedValue>,
}

impl FlamegraphDirExporter {
    pub const KIND: &'static str = "flamegraph_dir";

    pub fn new(config: FoldedDirConfig) -> Result<Self, ExportError> {
        let (files, values) = per_value_dir(Self::KIND, ".svg", config)?;
        Ok(FlamegraphDirExporter { files, values })
    }

    /// Writes `profile` and returns the files written (one per configured value).
    pub fn write(&mut self, profile: &Profile) -> Result<Vec<PathBuf>, ExportError> {
        let title_base = format!(
            "{} · {:.1} s · {} Hz",
            profile.host.hostname,
            profile.duration.as_secs_f64(),
            profile.frequency_hz
        );
        let mut files = Vec::with_capacity(self.values.len());
        for &value in &self.values {
            let (middle, _, single_name, what) = value_names(value);
            let title = format!("Kestrel {what} · {title_base}");
            match flamegraph_svg(&folded(profile, value), &title, value.count_name()) {
                Ok(bytes) => files.push(ReportFile {
                    middle,
                    single_name,
                    bytes,
                }),
                Err(e) => {
                    self.files.count_failure();
                    return Err(e);
                }
            }
        }
        self.files.write_report(profile.start, &files)
    }
}

/// Writes each report as an encoded OTLP `ExportProfilesServiceRequest`.
#[derive(Debug)]
pub struct OtlpDirExporter {
    files: ReportDir,
}

impl OtlpDirExporter {
    pub const KIND: &'static str = "otlp_dir";

    pub fn new(config: OtlpDirConfig) -> Result<Self, ExportError> {
        Ok(OtlpDirExporter {
            files: ReportDir::new(
                Self::KIND,
                config.dir,
                ".otlp.pb",
                config.max_files,
                config.max_bytes,
                config.layout,
            )?,
        })
    }

    /// Writes `profile` and returns the file written.
    pub fn write(&mut self, profile: &Profile) -> Result<PathBuf, ExportError> {
        let resource = ResourceInfo::from_host(&profile.host, "kestrel");
        let file = ReportFile {
            middle: "",
            single_name: "profile.otlp.pb",
            bytes: prost::Message::encode_to_vec(&to_otlp_request(profile, &resource)),
        };
        let mut paths = self.files.write_report(profile.start, &[file])?;
        // One file was given, so one path comes back.
        Ok(paths.remove(0))
    }
}

/// The trait glue every directory exporter shares: export is `write`, there is
/// nothing queued to flush, and the stats are the directory's.
macro_rules! directory_exporter {
    ($exporter:ty) => {
        impl Exporter for $exporter {
            fn name(&self) -> &str {
                Self::KIND
            }

            fn export(&mut self, profile: &Profile) -> Result<(), ExportError> {
                self.write(profile).map(drop)
            }

            fn shutdown(&mut self, _deadline: Duration) -> Result<(), ExportError> {
                Ok(())
            }

            fn stats(&self) -> ExporterStats {
                self.files.stats
            }
        }
    };
}

directory_exporter!(PprofDirExporter);
directory_exporter!(FoldedDirExporter);
directory_exporter!(FlamegraphDirExporter);
directory_exporter!(OtlpDirExporter);

pub(crate) fn build_pprof_dir(
    config: &serde_json::Value,
) -> Result<Box<dyn Exporter>, ExportError> {
    let config = parse_config(PprofDirExporter::KIND, config)?;
    Ok(Box::new(PprofDirExporter::new(config)?))
}

pub(crate) fn build_folded_dir(
    config: &serde_json::Value,
) -> Result<Box<dyn Exporter>, ExportError> {
    let config = parse_config(FoldedDirExporter::KIND, config)?;
    Ok(Box::new(FoldedDirExporter::new(config)?))
}

pub(crate) fn build_flamegraph_dir(
    config: &serde_json::Value,
) -> Result<Box<dyn Exporter>, ExportError> {
    let config = parse_config(FlamegraphDirExporter::KIND, config)?;
    Ok(Box::new(FlamegraphDirExporter::new(config)?))
}

pub(crate) fn build_otlp_dir(config: &serde_json::Value) -> Result<Box<dyn Exporter>, ExportError> {
    let config = parse_config(OtlpDirExporter::KIND, config)?;
    Ok(Box::new(OtlpDirExporter::new(config)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_pprof;
    use crate::test_profiles::mixed_profile;

    fn report_files(dir: &Path, extension: &str) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .filter(|(name, _)| name.ends_with(extension))
            .collect();
        files.sort();
        files
    }

    fn profile_at(seconds: u64) -> Profile {
        Profile {
            start: UNIX_EPOCH + Duration::from_secs(seconds),
            ..mixed_profile()
        }
    }

    #[test]
    fn utc_stamps_name_the_calendar_time() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000_000000000Z");
        // 2024-02-29 23:59:59.5 UTC, a leap day.
        let leap = UNIX_EPOCH + Duration::new(1_709_251_199, 500_000_000);
        assert_eq!(utc_stamp(leap), "20240229T235959_500000000Z");
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "20231114T221320_000000000Z"
        );
    }

    #[test]
    fn pprof_rotation_keeps_the_newest_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut exporter = PprofDirExporter::new(PprofDirConfig {
            dir: dir.path().join("nested"),
            max_files: 3,
            max_bytes: DEFAULT_MAX_BYTES,
            layout: Layout::Rotating,
        })
        .unwrap();
        let mut written = Vec::new();
        for i in 0..7 {
            written.push(exporter.write(&profile_at(1_700_000_000 + i)).unwrap());
        }
        let kept = report_files(&dir.path().join("nested"), ".pb.gz");
        let newest: Vec<String> = written[4..]
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            kept.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            newest
        );
        // What is kept is a readable profile of the right report.
        let decoded = decode_pprof(&fs::read(&written[6]).unwrap()).unwrap();
        assert_eq!(decoded.time_nanos, 1_700_000_006 * 1_000_000_000);
        assert_eq!(exporter.stats().exported, 7);
    }

    #[test]
    fn rotation_keeps_the_byte_bound_and_same_start_reports_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let report_size = encode_pprof(&mixed_profile()).unwrap().len() as u64;
        let max_bytes = report_size * 5 / 2;
        let mut exporter = PprofDirExporter::new(PprofDirConfig {
            dir: dir.path().to_path_buf(),
            max_files: 100,
            max_bytes,
            layout: Layout::Rotating,
        })
        .unwrap();
        for _ in 0..6 {
            exporter.export(&mixed_profile()).unwrap();
            let files = report_files(dir.path(), ".pb.gz");
            assert!(files.iter().map(|(_, s)| s).sum::<u64>() <= max_bytes);
        }
        let files = report_files(dir.path(), ".pb.gz");
        assert_eq!(files.len(), 2);
        assert!(
            files[0].0.ends_with("-000004.pb.gz") && files[1].0.ends_with("-000005.pb.gz"),
            "{files:?}"
        );
    }

    #[test]
    fn report_larger_than_the_bound_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut exporter = PprofDirExporter::new(PprofDirConfig {
            dir: dir.path().to_path_buf(),
            max_files: 10,
            max_bytes: 16,
            layout: Layout::Rotating,
        })
        .unwrap();
        let err = exporter.export(&mixed_profile()).unwrap_err();
        assert!(
            matches!(err, ExportError::ReportTooLarge { max_bytes: 16, .. }),
            "{err}"
        );
        assert_eq!(exporter.stats().dropped, 1);
        assert!(report_files(dir.path(), "").is_empty());
    }

    #[test]
    fn folded_dir_writes_one_file_per_value_and_rotates_by_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut exporter = FoldedDirExporter::new(FoldedDirConfig {
            dir: dir.path().to_path_buf(),
            max_files: 4,
            max_bytes: DEFAULT_MAX_BYTES,
            values: vec![FoldedValue::CpuSamples, FoldedValue::OffCpuNanoseconds],
            layout: Layout::Rotating,
        })
        .unwrap();
        let profile = mixed_profile();
        let mut last = Vec::new();
        for i in 0..5 {
            last = exporter.write(&profile_at(1_000 + i)).unwrap();
        }
        let files = report_files(dir.path(), ".folded");
        assert_eq!(files.len(), 4);
        assert!(
            files[0].0.starts_with("kestrel-19700101T001643_"),
            "{files:?}"
        );
        assert_eq!(
            fs::read_to_string(&last[0]).unwrap(),
            folded(&profile, FoldedValue::CpuSamples)
        );
        assert_eq!(
            fs::read_to_string(&last[1]).unwrap(),
            folded(&profile, FoldedValue::OffCpuNanoseconds)
        );
        assert!(last[1].to_str().unwrap().ends_with(".off_cpu.folded"));
    }

    #[test]
    fn other_files_in_the_directory_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();
        fs::write(dir.path().join("other.pb.gz"), b"not ours").unwrap();
        let mut exporter = PprofDirExporter::new(PprofDirConfig {
            dir: dir.path().to_path_buf(),
            max_files: 1,
            max_bytes: DEFAULT_MAX_BYTES,
            layout: Layout::Rotating,
        })
        .unwrap();
        for i in 0..3 {
            exporter.export(&profile_at(i)).unwrap();
        }
        assert!(dir.path().join("notes.txt").exists() && dir.path().join("other.pb.gz").exists());
        assert_eq!(report_files(dir.path(), ".pb.gz").len(), 2);
    }

    #[test]
    fn zero_bounds_and_empty_values_are_configuration_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = PprofDirExporter::new(PprofDirConfig {
            dir: dir.path().to_path_buf(),
            max_files: 0,
            max_bytes: 1,
            layout: Layout::Rotating,
        })
        .unwrap_err();
        assert!(err.to_string().contains("max_files"), "{err}");
        let err = FoldedDirExporter::new(FoldedDirConfig {
            dir: dir.path().to_path_buf(),
            max_files: 4,
            max_bytes: 1,
            values: vec![],
            layout: Layout::Rotating,
        })
        .unwrap_err();
        assert!(err.to_string().contains("values"), "{err}");
    }

    #[test]
    fn unwritable_directory_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let err = PprofDirExporter::new(PprofDirConfig {
            dir: file.join("sub"),
            max_files: 1,
            max_bytes: 1,
            layout: Layout::Rotating,
        })
        .unwrap_err();
        assert!(err.to_string().contains("a-file/sub"), "{err}");
    }
}
