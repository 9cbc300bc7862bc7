//! CPU topology as the kernel reports it in sysfs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::{CpuSet, SizingError};

/// Where Linux publishes the CPU masks.
pub const SYSFS_CPU_DIR: &str = "/sys/devices/system/cpu";

/// The three CPU masks that matter for BPF map sizing.
///
/// * `online`: CPUs running now. Rates (samples, context switches) scale
///   with these.
/// * `possible`: every CPU that could ever come online. The kernel allocates
///   per-CPU map values for each of these, online or not; VMs often report
///   far more possible than online CPUs.
/// * `present`: CPUs physically there (may be offline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub online: CpuSet,
    pub possible: CpuSet,
    pub present: CpuSet,
}

impl Topology {
    /// Reads the masks of the running system from [`SYSFS_CPU_DIR`].
    pub fn detect() -> Result<Topology, SizingError> {
        Topology::detect_from(Path::new(SYSFS_CPU_DIR))
    }

    /// Reads `possible`, `online` and `present` from `sysfs_cpu_dir` (a
    /// directory laid out like `/sys/devices/system/cpu`) and checks that
    /// they are consistent.
    pub fn detect_from(sysfs_cpu_dir: &Path) -> Result<Topology, SizingError> {
        let read_mask = |name: &str| -> Result<CpuSet, SizingError> {
            let path: PathBuf = sysfs_cpu_dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|source| SizingError::ReadSysfs {
                path: path.clone(),
                source: Arc::new(source),
            })?;
            CpuSet::parse(&text)
        };
        let topology = Topology {
            online: read_mask("online")?,
            possible: read_mask("possible")?,
            present: read_mask("present")?,
        };
        topology.validate()?;
        Ok(topology)
    }

    /// A made-up topology for planning another machine (`kestrel plan
    /// --online 16 --possible 128`) and for tests: CPUs `0..online` are
    /// online and present (as with QEMU's `-smp cpus=N,maxcpus=M`), CPUs
    /// `0..possible` are possible. `possible` is raised to `online` when
    /// smaller, because an online CPU is always possible.
    pub fn synthetic(online: u32, possible: u32) -> Topology {
        let possible = possible.max(online);
        Topology {
            online: CpuSet::first_n(online),
            possible: CpuSet::first_n(possible),
            present: CpuSet::first_n(online),
        }
    }

    /// Checks the invariants every Linux system satisfies: at least one CPU
    /// online, and online ⊆ present ⊆ possible.
    pub fn validate(&self) -> Result<(), SizingError> {
        let invalid = |reason: String| Err(SizingError::InvalidTopology { reason });
        if self.online.is_empty() {
            return invalid("no CPU is online".to_owned());
        }
        if !self.online.is_subset(&self.possible) {
            return invalid(format!(
                "online CPUs {} are not all possible ({})",
                self.online, self.possible
            ));
        }
        if !self.present.is_subset(&self.possible) {
            return invalid(format!(
                "present CPUs {} are not all possible ({})",
                self.present, self.possible
            ));
        }
        Ok(())
    }

    /// Number of online CPUs.
    pub fn online_count(&self) -> u32 {
        self.online.len()
    }

    /// Number of possible CPUs: the multiplier of every per-CPU map.
    pub fn possible_count(&self) -> u32 {
        self.possible.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sysfs_dir(possible: &str, online: &str, present: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("possible"), possible).unwrap();
        fs::write(dir.path().join("online"), online).unwrap();
        fs::write(dir.path().join("present"), present).unwrap();
        dir
    }

    #[test]
    fn detects_the_running_system_consistently_with_sysfs() {
        let topology = Topology::detect().unwrap();
        let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        assert_eq!(topology.online.to_string(), online.trim());
        assert!(topology.online_count() >= 1);
        assert!(topology.possible_count() >= topology.online_count());
    }

    #[test]
    fn detects_a_vm_like_layout_from_a_directory() {
        let dir = sysfs_dir("0-127\n", "0-15\n", "0-15\n");
        let topology = Topology::detect_from(dir.path()).unwrap();
        assert_eq!(topology.online_count(), 16);
        assert_eq!(topology.possible_count(), 128);
        assert_eq!(topology.present.to_string(), "0-15");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Topology::detect_from(dir.path()).unwrap_err();
        assert!(matches!(err, SizingError::ReadSysfs { .. }));
        assert!(err.to_string().contains("online"), "{err}");
    }

    #[test]
    fn inconsistent_masks_are_rejected() {
        let dir = sysfs_dir("0-1\n", "0-3\n", "0-1\n");
        let err = Topology::detect_from(dir.path()).unwrap_err();
        assert!(matches!(err, SizingError::InvalidTopology { .. }), "{err}");
        let dir = sysfs_dir("0-3\n", "\n", "0-3\n");
        let err = Topology::detect_from(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no CPU is online"), "{err}");
    }

    #[test]
    fn malformed_sysfs_content_is_an_error() {
        let dir = sysfs_dir("0-x\n", "0\n", "0\n");
        let err = Topology::detect_from(dir.path()).unwrap_err();
        assert!(matches!(err, SizingError::MalformedCpuList { .. }), "{err}");
    }

    #[test]
    fn synthetic_topology() {
        let topology = Topology::synthetic(16, 128);
        assert_eq!(topology.online.to_string(), "0-15");
        assert_eq!(topology.possible.to_string(), "0-127");
        assert_eq!(topology.present.to_string(), "0-15");
        topology.validate().unwrap();
        // possible is never below online
        assert_eq!(Topology::synthetic(4, 2).possible_count(), 4);
    }
}
