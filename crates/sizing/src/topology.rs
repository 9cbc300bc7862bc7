//! CPU topology as the kernel reports it in sysfs (read by [`crate::host`]).

use serde::Serialize;

use crate::host::LiveSystem;
use crate::{CpuSet, SizingError};

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
    /// Reads the masks of the running system from [`crate::SYSFS_CPU_DIR`]: a
    /// convenience for [`Topology::from_host`] on [`LiveSystem`].
    pub fn detect() -> Result<Topology, SizingError> {
        Topology::from_host(&LiveSystem)
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
    use crate::host::{Cpuid, HostTree};
    use std::fs;

    /// A host whose `/sys/devices/system/cpu` holds these masks.
    fn sysfs_dir(possible: &str, online: &str, present: &str) -> (tempfile::TempDir, HostTree) {
        let dir = tempfile::tempdir().unwrap();
        let host = HostTree::new(dir.path(), Cpuid::default());
        let cpu_dir = dir.path().join("sys/devices/system/cpu");
        fs::create_dir_all(&cpu_dir).unwrap();
        fs::write(cpu_dir.join("possible"), possible).unwrap();
        fs::write(cpu_dir.join("online"), online).unwrap();
        fs::write(cpu_dir.join("present"), present).unwrap();
        (dir, host)
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
        let (_dir, host) = sysfs_dir("0-127\n", "0-15\n", "0-15\n");
        let topology = Topology::from_host(&host).unwrap();
        assert_eq!(topology.online_count(), 16);
        assert_eq!(topology.possible_count(), 128);
        assert_eq!(topology.present.to_string(), "0-15");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Topology::from_host(&HostTree::new(dir.path(), Cpuid::default())).unwrap_err();
        assert!(matches!(err, SizingError::ReadSysfs { .. }));
        assert!(err.to_string().contains("online"), "{err}");
    }

    #[test]
    fn inconsistent_masks_are_rejected() {
        let (_dir, host) = sysfs_dir("0-1\n", "0-3\n", "0-1\n");
        let err = Topology::from_host(&host).unwrap_err();
        assert!(matches!(err, SizingError::InvalidTopology { .. }), "{err}");
        let (_dir, host) = sysfs_dir("0-3\n", "\n", "0-3\n");
        let err = Topology::from_host(&host).unwrap_err();
        assert!(err.to_string().contains("no CPU is online"), "{err}");
    }

    #[test]
    fn malformed_sysfs_content_is_an_error() {
        let (_dir, host) = sysfs_dir("0-x\n", "0\n", "0\n");
        let err = Topology::from_host(&host).unwrap_err();
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
