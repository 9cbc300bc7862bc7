//! Debug files for stripped binaries.
//!
//! Distribution binaries keep only `.dynsym`; their static functions are named
//! by a separate debug file. For each mapped file the symbolizer thread decides
//! once where names come from, in this order: the file's own DWARF,
//! `<debug dir>/.build-id/xx/rest.debug` (build ID checked), the
//! `.gnu_debuglink` name (CRC checked) beside the file, in its `.debug/` and
//! under `<debug dir>/<file's dir>`, the file's own `.symtab`, then (for files
//! with none of these) debuginfod servers. Local paths are
//! tried inside the process's root (`/proc/PID/root`) before the host's, so a
//! container's own debug files win.
//!
//! debuginfod downloads run on their own threads: a frame whose debug file is
//! still on its way is reported by address (and not stored), and named by a
//! later report once the file is in the cache directory.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use object::{Object, ObjectSection, ObjectSegment, SectionKind};
use tracing::{debug, warn};

/// How long a build ID that every server answered 404 for is not asked again.
const NOT_FOUND_TTL: Duration = Duration::from_secs(600);
/// How long a build ID whose download failed (server down, timeout) waits.
const FAILED_TTL: Duration = Duration::from_secs(60);
/// Build IDs waiting for a download thread; more are asked again later.
const QUEUE_LEN: usize = 256;

/// Where the names of a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameSource {
    /// The file's own `.symtab` or DWARF.
    Symtab,
    /// Only the file's dynamic symbols.
    Dynsym,
    BuildIdDir,
    DebugLink,
    Debuginfod,
}

/// Counters of name sources and downloads, for the stats.
#[derive(Debug, Default)]
pub(crate) struct DebugCounters {
    pub named_symtab: AtomicU64,
    pub named_dynsym: AtomicU64,
    pub named_build_id_dir: AtomicU64,
    pub named_debuglink: AtomicU64,
    pub named_debuginfod: AtomicU64,
    /// Frames of ELF files no symbol covers.
    pub unnamed: AtomicU64,
    /// Frames reported by address while their debug file downloads.
    pub pending: AtomicU64,
    /// Candidate debug files refused: wrong build ID or CRC, unreadable.
    pub refused: AtomicU64,
    pub downloads: AtomicU64,
    pub download_bytes: AtomicU64,
    pub not_found: AtomicU64,
    pub failures: AtomicU64,
    pub cache_evictions: AtomicU64,
}

impl DebugCounters {
    pub(crate) fn named(&self, source: NameSource) -> &AtomicU64 {
        match source {
            NameSource::Symtab => &self.named_symtab,
            NameSource::Dynsym => &self.named_dynsym,
            NameSource::BuildIdDir => &self.named_build_id_dir,
            NameSource::DebugLink => &self.named_debuglink,
            NameSource::Debuginfod => &self.named_debuginfod,
        }
    }
}

/// Where debug files are looked for.
#[derive(Debug, Clone)]
pub(crate) struct DebugConfig {
    pub debug_dirs: Vec<PathBuf>,
    pub debuginfod: Option<DebuginfodConfig>,
}

#[derive(Debug, Clone)]
pub(crate) struct DebuginfodConfig {
    /// Server base URLs, already checked for their scheme.
    pub urls: Vec<String>,
    pub timeout: Duration,
    /// Where downloads land, one `<build id>.debug` each.
    pub dir: PathBuf,
    pub cache_bytes: u64,
    pub max_in_flight: usize,
    /// Whether `http://` may be used (configured explicitly).
    pub allow_http: bool,
}

/// One `PT_LOAD` segment: file range and virtual address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    offset: u64,
    file_size: u64,
    address: u64,
}

/// What the symbolizer does for one mapped file.
#[derive(Debug, Clone)]
pub(crate) enum FilePlan {
    /// The file itself by file offsets; `dwarf` when it carries DWARF.
    Own { source: NameSource, dwarf: bool },
    /// A separate debug file, by virtual addresses translated from the file's
    /// offsets.
    Separate {
        path: PathBuf,
        source: NameSource,
        translate: Arc<[Segment]>,
    },
    /// The file's dynamic symbols for now; a download may bring the rest.
    Pending,
}

impl FilePlan {
    /// File offsets to the addresses the plan's file is asked for (`None`:
    /// outside every loaded segment).
    pub(crate) fn translate(&self, offset: u64) -> Option<u64> {
        match self {
            FilePlan::Separate { translate, .. } => translate
                .iter()
                .find(|s| offset >= s.offset && offset - s.offset < s.file_size)
                .map(|s| s.address + (offset - s.offset)),
            _ => Some(offset),
        }
    }
}

/// What a mapped file offers, read once.
struct Facts {
    symtab: bool,
    dwarf: bool,
    segments: Arc<[Segment]>,
    build_id: Option<Vec<u8>>,
    /// The local debug file found, if any.
    local: Option<(PathBuf, NameSource)>,
}

/// The symbolizer thread's view of debug files: per file facts and the
/// debuginfod client. Lives on that one thread.
pub(crate) struct DebugInfo {
    config: DebugConfig,
    facts: HashMap<crate::FileId, Facts>,
    debuginfod: Option<Debuginfod>,
    pub counters: Arc<DebugCounters>,
}

/// Where a mapped file came from: which process and the path it has there.
pub(crate) struct Origin<'a> {
    pub pid: u32,
    pub path: Option<&'a Path>,
}

impl DebugInfo {
    pub(crate) fn new(config: DebugConfig, counters: Arc<DebugCounters>) -> DebugInfo {
        let debuginfod = config
            .debuginfod
            .clone()
            .filter(|c| !c.urls.is_empty())
            .and_then(|c| match Debuginfod::start(c, counters.clone()) {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!(error = %e, "debuginfod downloads are off: cannot start their threads or cache directory");
                    None
                }
            });
        DebugInfo {
            config,
            facts: HashMap::new(),
            debuginfod,
            counters,
        }
    }

    pub(crate) fn forget(&mut self, id: crate::FileId) {
        self.facts.remove(&id);
    }

    /// How to symbolize `file` (open descriptor) now.
    pub(crate) fn plan(&mut self, id: crate::FileId, file: &File, origin: Origin<'_>) -> FilePlan {
        if !self.facts.contains_key(&id) {
            let facts = self.read_facts(file, &origin);
            self.facts.insert(id, facts);
        }
        let Some(facts) = self.facts.get(&id) else {
            return FilePlan::Own {
                source: NameSource::Dynsym,
                dwarf: false,
            };
        };
        if facts.dwarf {
            return FilePlan::Own {
                source: NameSource::Symtab,
                dwarf: true,
            };
        }
        // A local debug file brings DWARF (lines, inlined frames) even to a
        // file that kept its .symtab.
        if let Some((path, source)) = &facts.local {
            return FilePlan::Separate {
                path: path.clone(),
                source: *source,
                translate: facts.segments.clone(),
            };
        }
        if facts.symtab {
            return FilePlan::Own {
                source: NameSource::Symtab,
                dwarf: false,
            };
        }
        if let (Some(d), Some(build_id)) = (&self.debuginfod, &facts.build_id) {
            match d.available(&hex::encode(build_id)) {
                Availability::Ready(path) => {
                    return FilePlan::Separate {
                        path,
                        source: NameSource::Debuginfod,
                        translate: facts.segments.clone(),
                    }
                }
                Availability::Pending => return FilePlan::Pending,
                Availability::Unavailable => {}
            }
        }
        FilePlan::Own {
            source: NameSource::Dynsym,
            dwarf: false,
        }
    }

    fn read_facts(&self, file: &File, origin: &Origin<'_>) -> Facts {
        let mut facts = Facts {
            symtab: false,
            dwarf: false,
            segments: Arc::from(Vec::new()),
            build_id: None,
            local: None,
        };
        let cache = object::ReadCache::new(file);
        let Ok(obj) = object::File::parse(&cache) else {
            return facts;
        };
        facts.symtab = has_section(&obj, ".symtab");
        facts.dwarf = has_section(&obj, ".debug_info");
        facts.segments = obj
            .segments()
            .map(|s| {
                let (offset, file_size) = s.file_range();
                Segment {
                    offset,
                    file_size,
                    address: s.address(),
                }
            })
            .collect::<Vec<_>>()
            .into();
        facts.build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        if facts.dwarf {
            return facts;
        }
        let link = obj
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc));
        facts.local = self.find_local(origin, facts.build_id.as_deref(), link);
        facts
    }

    /// Roots to look in: the process's own root first (a container's files),
    /// then the host's.
    fn roots(pid: u32) -> Vec<PathBuf> {
        let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
        let mut roots = Vec::with_capacity(2);
        // A host process's root is ours: no need to look twice. (readlink says
        // "/" for a container's root too, so compare the directories.)
        let same = std::fs::metadata(&proc_root)
            .ok()
            .zip(std::fs::metadata("/").ok())
            .is_some_and(|(a, b)| {
                use std::os::unix::fs::MetadataExt;
                a.dev() == b.dev() && a.ino() == b.ino()
            });
        if !same && proc_root.exists() {
            roots.push(proc_root);
        }
        roots.push(PathBuf::from("/"));
        roots
    }

    fn find_local(
        &self,
        origin: &Origin<'_>,
        build_id: Option<&[u8]>,
        link: Option<(String, u32)>,
    ) -> Option<(PathBuf, NameSource)> {
        let roots = Self::roots(origin.pid);
        if let Some(id) = build_id.filter(|id| id.len() >= 2) {
            let hex_id = hex::encode(id);
            let rel = format!(".build-id/{}/{}.debug", &hex_id[..2], &hex_id[2..]);
            for root in &roots {
                for dir in &self.config.debug_dirs {
                    let candidate = under(root, &dir.join(&rel));
                    if !candidate.exists() {
                        continue;
                    }
                    if debug_file_build_id(&candidate).as_deref() == Some(id) {
                        return Some((candidate, NameSource::BuildIdDir));
                    }
                    debug!(path = %candidate.display(), "debug file refused: build ID differs");
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let (name, crc) = link?;
        // A link name is a file name; anything else would escape the directories.
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let file_dir = origin.path.and_then(Path::parent)?;
        for root in &roots {
            let mut candidates = vec![
                under(root, &file_dir.join(&name)),
                under(root, &file_dir.join(".debug").join(&name)),
            ];
            for dir in &self.config.debug_dirs {
                candidates.push(under(root, &under(dir, file_dir).join(&name)));
            }
            for candidate in candidates {
                if !candidate.is_file() {
                    continue;
                }
                match file_crc32(&candidate) {
                    Ok(c) if c == crc => return Some((candidate, NameSource::DebugLink)),
                    Ok(c) => {
                        debug!(path = %candidate.display(), expected = crc, actual = c,
                            "debug file refused: its CRC is not the debug link's");
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        debug!(path = %candidate.display(), error = %e, "debug file unreadable");
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        None
    }
}

/// `path` (absolute or not) below `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn has_section<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, name: &str) -> bool {
    obj.section_by_name(name)
        .is_some_and(|s| s.kind() != SectionKind::UninitializedData && s.size() > 0)
}

/// The GNU build ID of an ELF file (from its note section or segment).
pub(crate) fn debug_file_build_id(path: &Path) -> Option<Vec<u8>> {
    let file = File::open(path).ok()?;
    let cache = object::ReadCache::new(&file);
    let obj = object::File::parse(&cache).ok()?;
    obj.build_id().ok().flatten().map(<[u8]>::to_vec)
}

/// The CRC-32 `.gnu_debuglink` records: of the whole debug file.
fn file_crc32(path: &Path) -> io::Result<u32> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finalize())
}

enum Availability {
    Ready(PathBuf),
    Pending,
    Unavailable,
}

#[derive(Default)]
struct DownloadState {
    in_flight: HashSet<String>,
    /// Build IDs not to ask for again before the instant.
    negative: HashMap<String, Instant>,
}

/// The debuginfod client: a queue of build IDs and `max_in_flight` threads
/// that download them into the cache directory.
struct Debuginfod {
    dir: PathBuf,
    queue: mpsc::SyncSender<String>,
    state: Arc<Mutex<DownloadState>>,
}

impl Debuginfod {
    fn start(config: DebuginfodConfig, counters: Arc<DebugCounters>) -> io::Result<Debuginfod> {
        std::fs::create_dir_all(&config.dir)?;
        let (queue, rx) = mpsc::sync_channel::<String>(QUEUE_LEN);
        let rx = Arc::new(Mutex::new(rx));
        let state = Arc::new(Mutex::new(DownloadState::default()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            // No redirect may take an https:// server's download to http://.
            .https_only(!config.allow_http)
            .build()
            .into();
        let config = Arc::new(config);
        for i in 0..config.max_in_flight.max(1) {
            let (rx, state, counters, config, agent) = (
                rx.clone(),
                state.clone(),
                counters.clone(),
                config.clone(),
                agent.clone(),
            );
            std::thread::Builder::new()
                .name(format!("kestrel-debuginfod-{i}"))
                .spawn(move || loop {
                    // The sender lives in `Debuginfod`: when it is dropped the
                    // queue ends and so does the thread.
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(build_id) = next else { return };
                    let outcome = download(&agent, &config, &build_id, &counters);
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    s.in_flight.remove(&build_id);
                    let (ttl, counter) = match outcome {
                        Outcome::Stored => continue,
                        Outcome::NotFound => (NOT_FOUND_TTL, &counters.not_found),
                        Outcome::Failed => (FAILED_TTL, &counters.failures),
                    };
                    s.negative.insert(build_id, Instant::now() + ttl);
                    // Counted once remembered: whoever sees the count sees the
                    // frame's final state.
                    counter.fetch_add(1, Ordering::Relaxed);
                })?;
        }
        Ok(Debuginfod {
            dir: config.dir.clone(),
            queue,
            state,
        })
    }

    fn available(&self, build_id: &str) -> Availability {
        let path = self.dir.join(format!("{build_id}.debug"));
        if path.is_file() {
            return Availability::Ready(path);
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.in_flight.contains(build_id) {
            return Availability::Pending;
        }
        let now = Instant::now();
        s.negative.retain(|_, until| *until > now);
        if s.negative.contains_key(build_id) {
            return Availability::Unavailable;
        }
        if self.queue.try_send(build_id.to_string()).is_ok() {
            s.in_flight.insert(build_id.to_string());
        }
        // A full queue: asked again at the next miss.
        Availability::Pending
    }
}

enum Outcome {
    Stored,
    NotFound,
    Failed,
}

fn download(
    agent: &ureq::Agent,
    config: &DebuginfodConfig,
    build_id: &str,
    counters: &DebugCounters,
) -> Outcome {
    let mut failed = false;
    for base in &config.urls {
        let url = format!(
            "{}/buildid/{build_id}/debuginfo",
            base.trim_end_matches('/')
        );
        match fetch_one(agent, config, &url, build_id) {
            Ok(Some(bytes)) => {
                counters.downloads.fetch_add(1, Ordering::Relaxed);
                counters.download_bytes.fetch_add(bytes, Ordering::Relaxed);
                let evicted = evict(&config.dir, config.cache_bytes, build_id);
                counters
                    .cache_evictions
                    .fetch_add(evicted, Ordering::Relaxed);
                return Outcome::Stored;
            }
            Ok(None) => {}
            Err(e) => {
                warn!(url = %url, error = %e, "debuginfod download failed");
                failed = true;
            }
        }
    }
    if failed {
        Outcome::Failed
    } else {
        Outcome::NotFound
    }
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Http(#[from] ureq::Error),
    #[error("server answered HTTP {0}")]
    Status(u16),
    #[error("cannot write the cache directory: {0}")]
    Io(#[from] io::Error),
    #[error("the file served is not the debug file of this build ID (build ID {0})")]
    WrongBuildId(String),
}

/// Downloads one debug file into the cache: `Ok(None)` on 404.
fn fetch_one(
    agent: &ureq::Agent,
    config: &DebuginfodConfig,
    url: &str,
    build_id: &str,
) -> Result<Option<u64>, FetchError> {
    let response = agent.get(url).call()?;
    let status = response.status().as_u16();
    if status == 404 {
        return Ok(None);
    }
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    let tmp = config.dir.join(format!(".{build_id}.part"));
    let result = (|| {
        let mut reader = response
            .into_body()
            .into_with_config()
            .limit(config.cache_bytes)
            .reader();
        let mut out = File::create(&tmp)?;
        let bytes = io::copy(&mut reader, &mut out)?;
        out.flush()?;
        out.sync_all()?;
        let served = debug_file_build_id(&tmp).map(hex::encode);
        if served.as_deref() != Some(build_id) {
            return Err(FetchError::WrongBuildId(
                served.unwrap_or_else(|| "none".into()),
            ));
        }
        std::fs::rename(&tmp, config.dir.join(format!("{build_id}.debug")))?;
        Ok(Some(bytes))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the oldest downloads until the directory holds at most `bound`
/// bytes, never `keep`. Returns the number removed.
fn evict(dir: &Path, bound: u64, keep: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let keep = format!("{keep}.debug");
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".debug"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    let mut removed = 0;
    for (_, len, path) in files {
        if total <= bound {
            break;
        }
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy() == keep)
        {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
            removed += 1;
        }
    }
    removed
}

/// The server URLs to use: the configuration's, then `DEBUGINFOD_URLS` when
/// honoured. `http://` only when allowed; anything else is dropped with a warning.
pub(crate) fn server_urls(
    configured: &[String],
    honour_env: bool,
    allow_http: bool,
) -> Vec<String> {
    let env = if honour_env {
        std::env::var("DEBUGINFOD_URLS").unwrap_or_default()
    } else {
        String::new()
    };
    let mut urls = Vec::new();
    for url in configured
        .iter()
        .map(String::as_str)
        .chain(env.split_whitespace())
    {
        let ok = url.starts_with("https://") || (allow_http && url.starts_with("http://"));
        if !ok {
            warn!(url, "debuginfod server ignored: only https:// URLs are used unless symbols.debuginfod_allow_http is true");
            continue;
        }
        if !urls.iter().any(|u| u == url) {
            urls.push(url.to_string());
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_unless_http_is_allowed() {
        let configured = vec![
            "https://a.example".to_string(),
            "http://127.0.0.1:1".to_string(),
            "ftp://x".to_string(),
        ];
        assert_eq!(
            server_urls(&configured, false, false),
            vec!["https://a.example"]
        );
        assert_eq!(
            server_urls(&configured, false, true),
            vec!["https://a.example", "http://127.0.0.1:1"]
        );
    }

    #[test]
    fn eviction_keeps_the_bound_and_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            std::fs::write(dir.path().join(format!("{name}.debug")), vec![0u8; 100]).unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i as u64);
            File::options()
                .write(true)
                .open(dir.path().join(format!("{name}.debug")))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        // "a" is the oldest but was just downloaded: "b" goes first.
        assert_eq!(evict(dir.path(), 200, "a"), 1);
        assert!(dir.path().join("a.debug").exists());
        assert!(!dir.path().join("b.debug").exists());
        assert!(dir.path().join("c.debug").exists());
    }
}
