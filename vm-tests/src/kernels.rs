//! Guest kernels: Debian's cloud kernels, fetched with `apt-get download` and
//! unpacked with `dpkg-deb -x` into the cache directory. 6.1 and 6.12 come
//! from the machine's own (bookworm) apt lists; 5.10 from Debian 11
//! (bullseye), through apt lists of the rig's own in the cache directory so
//! the machine's apt sources stay as they are.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};

use crate::host::run_checked;

/// A kernel series such as 6.1 or 6.12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub major: u32,
    pub minor: u32,
}

impl FromStr for Series {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Series> {
        let (major, minor) = text
            .trim()
            .split_once('.')
            .ok_or_else(|| anyhow!("kernel series {text:?}: write MAJOR.MINOR, e.g. 6.12"))?;
        Ok(Series {
            major: major
                .parse()
                .with_context(|| format!("kernel series {text:?}: major is not a number"))?,
            minor: minor
                .parse()
                .with_context(|| format!("kernel series {text:?}: minor is not a number"))?,
        })
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Series {
    /// Whether `memlock:` in fdinfo is the map's real usage (`map_mem_usage`,
    /// Linux 6.4+) rather than the older page-rounded footprint estimate.
    pub fn reports_real_map_memory(self) -> bool {
        (self.major, self.minor) >= (6, 4)
    }

    /// Whether the kernel has task storage for tasks
    /// (`BPF_MAP_TYPE_TASK_STORAGE`, Linux 5.11).
    pub fn has_task_storage(self) -> bool {
        (self.major, self.minor) >= (5, 11)
    }

    /// Whether BPF maps are charged to `RLIMIT_MEMLOCK` (before Linux 5.11's
    /// move to memory-cgroup accounting); `memlock:` in fdinfo is then the
    /// charge each map type computed at creation.
    pub fn charges_memlock_rlimit(self) -> bool {
        (self.major, self.minor) < (5, 11)
    }

    /// Whether `possible_cpus=N` can raise the possible CPUs above what the
    /// firmware lists. Linux 6.9 reworked x86 CPU enumeration: since then the
    /// parameter only lowers the count (`max_possible_cpus`).
    pub fn possible_cpus_param_can_raise(self) -> bool {
        (self.major, self.minor) < (6, 9)
    }

    /// Whether the kernel needs to see a hypervisor to honour QEMU's vCPU
    /// hot-plug slots under TCG (seen on 6.12: without it possible = online).
    pub fn needs_hypervisor_hint(self) -> bool {
        (self.major, self.minor) >= (6, 12)
    }

    /// The Debian suite whose cloud kernel this series is, when the machine's
    /// own apt lists (Debian 12's carry 6.1 and 6.12) do not have it: 5.10 is
    /// Debian 11's kernel.
    pub fn foreign_suite(self) -> Option<&'static str> {
        match (self.major, self.minor) {
            (5, 10) => Some("bullseye"),
            _ => None,
        }
    }
}

/// The package that provides the series' cloud kernel image.
fn package_matches(package: &str, series: Series) -> Option<&str> {
    let version = package
        .strip_prefix("linux-image-")?
        .strip_suffix("-cloud-amd64")?;
    let prefix = series.to_string();
    let rest = version.strip_prefix(&prefix)?;
    // "6.1" must not match "6.12": the series is followed by . or -.
    if rest.starts_with('.') || rest.starts_with('-') {
        Some(version)
    } else {
        None
    }
}

/// The numbers in a version, in order, for comparing package versions
/// (`6.1.0-56` → [6, 1, 0, 56]; `6.12.117+deb12` → [6, 12, 117, 12]).
pub fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// The newest signed cloud kernel image of `series` in `apt-cache search
/// linux-image` output (one `name - description` per line); debug-symbol,
/// unsigned and meta packages are skipped.
pub fn newest_package(apt_search: &str, series: Series) -> Option<String> {
    apt_search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            package_matches(name, series).map(|version| (version_key(version), name))
        })
        .max()
        .map(|(_, name)| name.to_owned())
}

/// A guest kernel ready to boot.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub series: Series,
    /// The Debian package it came from.
    pub package: String,
    /// `uname -r` in the guest.
    pub release: String,
    pub vmlinuz: PathBuf,
}

/// How apt-get and apt-cache are run for one series: plainly (the machine's
/// lists), or with the rig's own sources file, lists and package caches for
/// a foreign suite, so neither the machine's sources nor its lists or
/// `pkgcache.bin` change.
#[derive(Debug, Clone, PartialEq)]
pub struct AptScope {
    options: Vec<String>,
    suite: Option<&'static str>,
}

impl AptScope {
    fn machine() -> AptScope {
        AptScope {
            options: Vec::new(),
            suite: None,
        }
    }

    /// A scope for `suite` at `uri`, with its files under `dir`.
    fn foreign(
        suite: &'static str,
        uri: &str,
        signed_by: Option<&str>,
        dir: &Path,
    ) -> Result<AptScope> {
        let lists = dir.join("lists");
        std::fs::create_dir_all(lists.join("partial"))
            .with_context(|| format!("creating {}", lists.join("partial").display()))?;
        let sources = dir.join("sources.list");
        std::fs::write(&sources, one_line_source(uri, suite, signed_by))
            .with_context(|| format!("writing {}", sources.display()))?;
        let option = |name: &str, value: &Path| format!("{name}={}", value.display());
        let options = [
            option("Dir::Etc::sourcelist", &sources),
            "Dir::Etc::sourceparts=-".to_owned(),
            option("Dir::State::Lists", &lists),
            option("Dir::Cache::pkgcache", &dir.join("pkgcache.bin")),
            option("Dir::Cache::srcpkgcache", &dir.join("srcpkgcache.bin")),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        Ok(AptScope {
            options,
            suite: Some(suite),
        })
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        command.args(&self.options);
        command
    }

    fn search(&self) -> Result<String> {
        run_checked(self.command("apt-cache").args([
            "search",
            "--names-only",
            "^linux-image-.*-cloud-amd64$",
        ]))
    }
}

/// The one-line sources entry of a foreign suite.
pub fn one_line_source(uri: &str, suite: &str, signed_by: Option<&str>) -> String {
    match signed_by {
        Some(key) => format!("deb [signed-by={key}] {uri} {suite} main\n"),
        None => format!("deb {uri} {suite} main\n"),
    }
}

/// The URI (and `Signed-By`) of the machine's entry for `suite` (its
/// release, e.g. `bookworm`, not `-security` or `-updates`), from deb822
/// `.sources` files or one-line `.list` files.
pub fn machine_debian_uri(
    sources: &[(PathBuf, String)],
    suite: &str,
) -> Option<(String, Option<String>)> {
    for (path, text) in sources {
        let deb822 = path.extension().is_some_and(|e| e == "sources");
        if deb822 {
            for paragraph in text.split("\n\n") {
                let field = |name: &str| {
                    paragraph.lines().find_map(|line| {
                        let (key, value) = line.split_once(':')?;
                        key.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| value.trim().to_owned())
                    })
                };
                let enabled = field("Enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
                let is_deb =
                    field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
                let has_suite =
                    field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
                if let (true, true, true, Some(uris)) = (enabled, is_deb, has_suite, field("URIs"))
                {
                    if let Some(uri) = uris.split_whitespace().next() {
                        return Some((uri.to_owned(), field("Signed-By")));
                    }
                }
            }
        } else {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                let mut words = line.split_whitespace();
                if words.next() != Some("deb") {
                    continue;
                }
                let mut rest: Vec<&str> = words.collect();
                let mut signed_by = None;
                if rest.first().is_some_and(|w| w.starts_with('[')) {
                    // Options run up to the word that ends with ']'.
                    let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
                    for option in &rest[..=end] {
                        let option = option.trim_start_matches('[').trim_end_matches(']');
                        if let Some(key) = option.strip_prefix("signed-by=") {
                            signed_by = Some(key.to_owned());
                        }
                    }
                    rest.drain(..=end);
                }
                if let [uri, line_suite, ..] = rest.as_slice() {
                    if *line_suite == suite {
                        return Some(((*uri).to_owned(), signed_by));
                    }
                }
            }
        }
    }
    None
}

/// The machine's apt source files: `/etc/apt/sources.list` and
/// `/etc/apt/sources.list.d/*.{list,sources}`.
fn machine_sources() -> Vec<(PathBuf, String)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        parts.sort();
        files.extend(parts);
    }
    files
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            Some((path, text))
        })
        .collect()
}

/// The machine's Debian release codename (`VERSION_CODENAME` of os-release).
fn machine_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

fn apt_scope(series: Series, cache: &Path) -> Result<AptScope> {
    let Some(suite) = series.foreign_suite() else {
        return Ok(AptScope::machine());
    };
    let codename = machine_codename().unwrap_or_else(|| "bookworm".to_owned());
    let (uri, signed_by) = machine_debian_uri(&machine_sources(), &codename).ok_or_else(|| {
        anyhow!(
            "the {series} kernel comes from Debian {suite}, fetched from the same mirror as the machine's \
             {codename} entry, but no apt source of this machine lists suite {codename}"
        )
    })?;
    AptScope::foreign(
        suite,
        &uri,
        signed_by.as_deref(),
        &cache.join("apt").join(suite),
    )
}

/// Finds, downloads (once) and unpacks the newest cloud kernel of `series`.
pub fn ensure(series: Series, cache: &Path) -> Result<GuestKernel> {
    let apt = apt_scope(series, cache)?;
    // A foreign suite's lists start empty: search them only after an update.
    let mut listing = if apt.suite.is_some() && !has_lists(cache, apt.suite) {
        String::new()
    } else {
        apt.search()?
    };
    if newest_package(&listing, series).is_none() {
        eprintln!(
            "vm-tests: no {series} cloud kernel in the {} apt lists; running apt-get update",
            apt.suite.unwrap_or("machine's")
        );
        run_checked(apt.command("apt-get").arg("update"))?;
        listing = apt.search()?;
    }
    let package = newest_package(&listing, series).ok_or_else(|| {
        anyhow!(
            "apt knows no linux-image-{series}*-cloud-amd64 package ({})",
            match apt.suite {
                Some(suite) => format!("looked in Debian {suite}"),
                None => "Debian bookworm or later has 6.1 and 6.12".to_owned(),
            }
        )
    })?;
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let unpacked = cache.join("kernels").join(&package);
    let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        eprintln!("vm-tests: downloading {package}");
        run_checked(
            apt.command("apt-get")
                .current_dir(&debs)
                .args(["download", &package]),
        )?;
        let deb = find_deb(&debs, &package)?;
        std::fs::create_dir_all(&unpacked)
            .with_context(|| format!("creating {}", unpacked.display()))?;
        run_checked(
            std::process::Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&unpacked),
        )?;
        if !vmlinuz.is_file() {
            bail!(
                "{} holds no {}: the package layout changed",
                deb.display(),
                vmlinuz.display()
            );
        }
    }
    Ok(GuestKernel {
        series,
        package,
        release,
        vmlinuz,
    })
}

/// Whether the rig's lists of `suite` hold a package index yet.
fn has_lists(cache: &Path, suite: Option<&str>) -> bool {
    let Some(suite) = suite else { return true };
    std::fs::read_dir(cache.join("apt").join(suite).join("lists"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                // apt keeps them compressed as it got them (`…_Packages.lz4`).
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false)
}

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    // apt-get download names the file PACKAGE_VERSION_ARCH.deb, with ':' of an
    // epoch written as %3a; the package name is all we know in advance.
    let prefix = format!("{package}_");
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(path);
        }
    }
    bail!(
        "apt-get download left no {prefix}*.deb in {}",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-47-cloud-amd64-dbg - Debug symbols for linux-image-6.1.0-47-cloud-amd64
linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-50-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-cloud-amd64 - Linux for x86-64 cloud (meta-package)
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.12-cloud-amd64 - Linux for x86-64 cloud (meta-package)
linux-image-6.12.9+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.111+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.1.0-55-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
";

    #[test]
    fn picks_the_newest_signed_image_of_each_series_numerically() {
        let series = |s: &str| s.parse::<Series>().unwrap();
        assert_eq!(
            newest_package(SEARCH, series("6.1")).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            newest_package(SEARCH, series("6.12")).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(newest_package(SEARCH, series("6.6")), None);
    }

    #[test]
    fn series_parse_and_kernel_quirks() {
        let s61: Series = "6.1".parse().unwrap();
        let s612: Series = " 6.12".parse().unwrap();
        assert!(s61 < s612);
        assert!(!s61.reports_real_map_memory() && s612.reports_real_map_memory());
        assert!(s61.possible_cpus_param_can_raise() && !s612.possible_cpus_param_can_raise());
        assert!(!s61.needs_hypervisor_hint() && s612.needs_hypervisor_hint());
        assert!("6".parse::<Series>().is_err());
        assert!("6.x".parse::<Series>().is_err());
    }

    #[test]
    fn the_bullseye_source_reuses_the_machines_bookworm_mirror() {
        let deb822 = "Types: deb\n\
# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
URIs: http://deb.debian.org/debian\n\
Suites: bookworm bookworm-updates\n\
Components: main\n\
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
\n\
Types: deb\n\
URIs: http://deb.debian.org/debian-security\n\
Suites: bookworm-security\n\
Components: main\n";
        let security_first = "Types: deb\nURIs: http://security.example/debian-security\n\
Suites: bookworm-security\nComponents: main\n";
        let files = vec![
            (
                PathBuf::from("/etc/apt/sources.list.d/a.sources"),
                security_first.to_owned(),
            ),
            (
                PathBuf::from("/etc/apt/sources.list.d/debian.sources"),
                deb822.to_owned(),
            ),
        ];
        let (uri, key) = machine_debian_uri(&files, "bookworm").unwrap();
        assert_eq!(uri, "http://deb.debian.org/debian");
        assert_eq!(
            key.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert_eq!(
            one_line_source(&uri, "bullseye", key.as_deref()),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main\n"
        );

        let list = "# deb http://old.example/debian bookworm main\n\
deb-src http://src.example/debian bookworm main\n\
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n";
        let files = vec![(PathBuf::from("/etc/apt/sources.list"), list.to_owned())];
        assert_eq!(
            machine_debian_uri(&files, "bookworm"),
            Some((
                "http://mirror.example/debian".to_owned(),
                Some("/k.gpg".to_owned())
            ))
        );
        assert_eq!(machine_debian_uri(&files, "trixie"), None);
    }

    #[test]
    fn only_5_10_comes_from_a_foreign_suite() {
        let series = |s: &str| s.parse::<Series>().unwrap();
        assert_eq!(series("5.10").foreign_suite(), Some("bullseye"));
        assert_eq!(series("6.1").foreign_suite(), None);
        assert_eq!(series("6.12").foreign_suite(), None);
        let s510 = series("5.10");
        assert!(!s510.reports_real_map_memory() && s510.possible_cpus_param_can_raise());
        let search = "linux-image-5.10.0-30-cloud-amd64 - Linux 5.10 for x86-64 cloud (signed)\n\
linux-image-5.10.0-32-cloud-amd64 - Linux 5.10 for x86-64 cloud (signed)\n";
        assert_eq!(
            newest_package(search, s510).as_deref(),
            Some("linux-image-5.10.0-32-cloud-amd64")
        );
        assert_eq!(newest_package(search, series("5.1")), None);
    }

    #[test]
    fn version_keys_compare_numerically() {
        assert!(version_key("6.1.0-56") > version_key("6.1.0-9"));
        assert!(version_key("6.12.117+deb12") > version_key("6.12.9+deb12"));
    }
}
