//! Guest kernels: Debian's cloud kernels, fetched with `apt-get download` and
//! unpacked with `dpkg-deb -x` into the cache directory.

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

fn apt_search() -> Result<String> {
    run_checked(std::process::Command::new("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-.*-cloud-amd64$",
    ]))
}

/// Finds, downloads (once) and unpacks the newest cloud kernel of `series`.
pub fn ensure(series: Series, cache: &Path) -> Result<GuestKernel> {
    let mut listing = apt_search()?;
    if newest_package(&listing, series).is_none() {
        eprintln!("vm-tests: no {series} cloud kernel in the apt lists; running apt-get update");
        run_checked(std::process::Command::new("apt-get").arg("update"))?;
        listing = apt_search()?;
    }
    let package = newest_package(&listing, series).ok_or_else(|| {
        anyhow!("apt knows no linux-image-{series}*-cloud-amd64 package (Debian bookworm or later has 6.1 and 6.12)")
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
            std::process::Command::new("apt-get")
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
    fn version_keys_compare_numerically() {
        assert!(version_key("6.1.0-56") > version_key("6.1.0-9"));
        assert!(version_key("6.12.117+deb12") > version_key("6.12.9+deb12"));
    }
}
