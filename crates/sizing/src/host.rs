//! Where kestrel-sizing meets the machine: the only module that does I/O.
//!
//! Sizing needs three kinds of facts about a host: its CPU masks (sysfs), whether
//! it is virtual (CPUID and DMI) and `pid_max` (procfs, for the comparison with
//! the reference agent). [`HostFacts`] is the narrow interface to them: raw file
//! contents and raw CPUID answers, nothing interpreted. Interpretation (parsing,
//! validation, naming the hypervisor) is pure and lives with the types it builds:
//! [`Topology::from_host`], [`Virtualization::from_host`], [`pid_max`].
//!
//! [`LiveSystem`] is the running machine. [`HostTree`] is a machine laid out under
//! a directory (`<root>/sys/...`, `<root>/proc/...`) with given CPUID answers: a
//! snapshot of another host, or a test fixture.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{CpuSet, SizingError, Topology, Virtualization};

/// Where Linux publishes the CPU masks.
pub const SYSFS_CPU_DIR: &str = "/sys/devices/system/cpu";
/// Where the kernel publishes the largest PID + 1.
pub const PID_MAX_PATH: &str = "/proc/sys/kernel/pid_max";
/// Where the kernel publishes the firmware's (DMI) identity of the machine.
pub const DMI_ID_DIR: &str = "/sys/class/dmi/id";

/// Every file sizing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostFile {
    /// CPUs running now.
    CpusOnline,
    /// CPUs that could ever come online.
    CpusPossible,
    /// CPUs physically there.
    CpusPresent,
    /// DMI system vendor, e.g. `QEMU`.
    DmiSysVendor,
    /// DMI product name, e.g. `Standard PC (Q35 + ICH9, 2009)`.
    DmiProductName,
    /// `kernel.pid_max`.
    PidMax,
    /// `kernel.osrelease`: which kernel layout the memory cost model uses.
    OsRelease,
}

impl HostFile {
    /// The file's path on a running Linux system.
    pub fn live_path(self) -> PathBuf {
        let (dir, name) = match self {
            HostFile::CpusOnline => (SYSFS_CPU_DIR, "online"),
            HostFile::CpusPossible => (SYSFS_CPU_DIR, "possible"),
            HostFile::CpusPresent => (SYSFS_CPU_DIR, "present"),
            HostFile::DmiSysVendor => (DMI_ID_DIR, "sys_vendor"),
            HostFile::DmiProductName => (DMI_ID_DIR, "product_name"),
            HostFile::PidMax => return PathBuf::from(PID_MAX_PATH),
            HostFile::OsRelease => return PathBuf::from(crate::cost::OSRELEASE_PATH),
        };
        Path::new(dir).join(name)
    }
}

/// What the CPU says about a hypervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cpuid {
    /// CPUID.1:ECX[31], set by every hypervisor that admits to being one.
    pub hypervisor_bit: bool,
    /// The 12-byte signature of leaf 0x4000_0000 (e.g. `KVMKVMKVM`), when the
    /// bit is set and the signature is not empty.
    pub hypervisor_signature: Option<String>,
}

/// The raw facts of one host.
pub trait HostFacts {
    /// The contents of `file`.
    fn read(&self, file: HostFile) -> io::Result<String>;
    /// Where `file` is on this host, for messages.
    fn path(&self, file: HostFile) -> PathBuf;
    /// The CPU's hypervisor answers.
    fn cpuid(&self) -> Cpuid;
}

/// The running machine: `/sys`, `/proc` and the CPUID instruction.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveSystem;

impl HostFacts for LiveSystem {
    fn read(&self, file: HostFile) -> io::Result<String> {
        std::fs::read_to_string(file.live_path())
    }

    fn path(&self, file: HostFile) -> PathBuf {
        file.live_path()
    }

    fn cpuid(&self) -> Cpuid {
        cpuid_hypervisor()
    }
}

/// A host laid out under a directory: each file at its live path below `root`
/// (`<root>/sys/devices/system/cpu/online`, ...), with given CPUID answers.
#[derive(Debug, Clone)]
pub struct HostTree {
    root: PathBuf,
    cpuid: Cpuid,
}

impl HostTree {
    pub fn new(root: impl Into<PathBuf>, cpuid: Cpuid) -> HostTree {
        HostTree {
            root: root.into(),
            cpuid,
        }
    }
}

impl HostFacts for HostTree {
    fn read(&self, file: HostFile) -> io::Result<String> {
        std::fs::read_to_string(self.path(file))
    }

    fn path(&self, file: HostFile) -> PathBuf {
        let live = file.live_path();
        // Every live path is absolute; below the root it is relative.
        self.root
            .join(live.strip_prefix("/").unwrap_or(live.as_path()))
    }

    fn cpuid(&self) -> Cpuid {
        self.cpuid.clone()
    }
}

fn cpu_mask(host: &impl HostFacts, file: HostFile) -> Result<CpuSet, SizingError> {
    let text = host.read(file).map_err(|source| SizingError::ReadSysfs {
        path: host.path(file),
        source: Arc::new(source),
    })?;
    CpuSet::parse(&text)
}

/// `host`'s online CPUs alone: one small read, for following hotplug.
pub fn online_cpus(host: &impl HostFacts) -> Result<CpuSet, SizingError> {
    cpu_mask(host, HostFile::CpusOnline)
}

impl Topology {
    /// Reads `possible`, `online` and `present` from `host` and checks that
    /// they are consistent.
    pub fn from_host(host: &impl HostFacts) -> Result<Topology, SizingError> {
        let topology = Topology {
            online: cpu_mask(host, HostFile::CpusOnline)?,
            possible: cpu_mask(host, HostFile::CpusPossible)?,
            present: cpu_mask(host, HostFile::CpusPresent)?,
        };
        topology.validate()?;
        Ok(topology)
    }
}

impl Virtualization {
    /// What `host`'s CPUID and DMI say. Never fails: what cannot be read is `None`.
    pub fn from_host(host: &impl HostFacts) -> Virtualization {
        let dmi = |file: HostFile| {
            host.read(file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let cpuid = host.cpuid();
        Virtualization::from_parts(
            cpuid.hypervisor_bit,
            cpuid.hypervisor_signature,
            dmi(HostFile::DmiSysVendor),
            dmi(HostFile::DmiProductName),
        )
    }
}

/// `host`'s `kernel.pid_max`.
/// The cost model of `host`'s kernel; the newest layout when the release cannot
/// be read (no procfs).
pub fn kernel_cost_model(host: &impl HostFacts) -> crate::KernelCostModel {
    host.read(HostFile::OsRelease)
        .map(|release| crate::KernelCostModel::for_release(&release))
        .unwrap_or_default()
}

pub fn pid_max(host: &impl HostFacts) -> Result<u64, SizingError> {
    let path = || host.path(HostFile::PidMax);
    let content = host
        .read(HostFile::PidMax)
        .map_err(|source| SizingError::ReadPidMax {
            path: path(),
            source: Arc::new(source),
        })?;
    match content.trim().parse::<u64>() {
        Ok(value) if value > 0 => Ok(value),
        _ => Err(SizingError::MalformedPidMax {
            path: path(),
            content,
        }),
    }
}

#[cfg(target_arch = "x86_64")]
fn cpuid_hypervisor() -> Cpuid {
    // CPUID exists on every x86_64 CPU and has no side effects.
    let leaf1 = std::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 31) == 0 {
        return Cpuid::default();
    }
    // Leaf 0x4000_0000 is defined when the hypervisor bit is set.
    let leaf = std::arch::x86_64::__cpuid(0x4000_0000);
    let mut sig = Vec::with_capacity(12);
    for reg in [leaf.ebx, leaf.ecx, leaf.edx] {
        sig.extend_from_slice(&reg.to_le_bytes());
    }
    let text = String::from_utf8_lossy(&sig)
        .trim_end_matches('\0')
        .to_string();
    Cpuid {
        hypervisor_bit: true,
        hypervisor_signature: (!text.is_empty()).then_some(text),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_hypervisor() -> Cpuid {
    Cpuid::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A host directory holding `files` (each at its live path) and answering
    /// CPUID with `cpuid`.
    fn host(files: &[(HostFile, &str)], cpuid: Cpuid) -> (tempfile::TempDir, HostTree) {
        let dir = tempfile::tempdir().unwrap();
        let tree = HostTree::new(dir.path(), cpuid);
        for (file, content) in files {
            let path = tree.path(*file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        (dir, tree)
    }

    #[test]
    fn the_cost_model_follows_the_hosts_kernel_release() {
        let (_dir, old) = host(
            &[(HostFile::OsRelease, "6.12.57+deb13-cloud-amd64\n")],
            Cpuid::default(),
        );
        assert_eq!(kernel_cost_model(&old), crate::KernelCostModel::LINUX_6_12);
        let (_dir, new) = host(
            &[(HostFile::OsRelease, "6.18.44-fc-v1098\n")],
            Cpuid::default(),
        );
        assert_eq!(kernel_cost_model(&new), crate::KernelCostModel::LINUX_6_18);
        let (_dir, none) = host(&[], Cpuid::default());
        assert_eq!(kernel_cost_model(&none), crate::KernelCostModel::LINUX_6_18);
    }

    fn cpus<'a>(possible: &'a str, online: &'a str, present: &'a str) -> Vec<(HostFile, &'a str)> {
        vec![
            (HostFile::CpusPossible, possible),
            (HostFile::CpusOnline, online),
            (HostFile::CpusPresent, present),
        ]
    }

    #[test]
    fn paths_below_the_root_mirror_the_live_ones() {
        let tree = HostTree::new("/snap", Cpuid::default());
        assert_eq!(
            tree.path(HostFile::CpusOnline),
            Path::new("/snap/sys/devices/system/cpu/online")
        );
        assert_eq!(
            tree.path(HostFile::PidMax),
            Path::new("/snap/proc/sys/kernel/pid_max")
        );
        assert_eq!(
            tree.path(HostFile::DmiSysVendor),
            Path::new("/snap/sys/class/dmi/id/sys_vendor")
        );
        assert_eq!(
            LiveSystem.path(HostFile::CpusPresent),
            Path::new("/sys/devices/system/cpu/present")
        );
    }

    #[test]
    fn a_kvm_guest_with_hot_plug_room() {
        let mut files = cpus("0-63\n", "0-1\n", "0-1\n");
        files.push((HostFile::DmiSysVendor, "QEMU\n"));
        files.push((
            HostFile::DmiProductName,
            "Standard PC (i440FX + PIIX, 1996)\n",
        ));
        files.push((HostFile::PidMax, "4194304\n"));
        let (_dir, tree) = host(
            &files,
            Cpuid {
                hypervisor_bit: true,
                hypervisor_signature: Some("TCGTCGTCGTCG".into()),
            },
        );
        let topology = Topology::from_host(&tree).unwrap();
        assert_eq!(online_cpus(&tree).unwrap(), topology.online);
        assert_eq!(topology.online_count(), 2);
        assert_eq!(topology.possible_count(), 64);
        let v = Virtualization::from_host(&tree);
        assert_eq!(v.hypervisor.as_deref(), Some("qemu-tcg"));
        assert_eq!(v.dmi_vendor.as_deref(), Some("QEMU"));
        assert_eq!(
            v.dmi_product.as_deref(),
            Some("Standard PC (i440FX + PIIX, 1996)")
        );
        assert_eq!(pid_max(&tree).unwrap(), 4_194_304);
    }

    #[test]
    fn dmi_names_a_hypervisor_that_hides_from_cpuid() {
        let files = [
            (HostFile::DmiSysVendor, "VMware, Inc.\n"),
            (HostFile::DmiProductName, "VMware Virtual Platform\n"),
        ];
        let (_dir, tree) = host(&files, Cpuid::default());
        let v = Virtualization::from_host(&tree);
        assert!(!v.hypervisor_bit);
        assert_eq!(v.hypervisor.as_deref(), Some("vmware"));
    }

    #[test]
    fn bare_metal_without_dmi_is_not_virtual() {
        // No DMI files at all (non-x86 boards), and blank ones, read as absent.
        let (_dir, tree) = host(&[(HostFile::DmiProductName, "  \n")], Cpuid::default());
        let v = Virtualization::from_host(&tree);
        assert_eq!(v, Virtualization::default());
        assert!(!v.is_virtual());
    }

    #[test]
    fn missing_and_malformed_files_are_errors_naming_the_path() {
        let (dir, tree) = host(&cpus("0-3\n", "0-1\n", "0-3\n")[..2], Cpuid::default());
        let err = Topology::from_host(&tree).unwrap_err();
        assert!(matches!(err, SizingError::ReadSysfs { .. }), "{err}");
        assert!(
            err.to_string().contains(
                &dir.path()
                    .join("sys/devices/system/cpu/present")
                    .display()
                    .to_string()
            ),
            "{err}"
        );
        let err = pid_max(&tree).unwrap_err();
        assert!(matches!(err, SizingError::ReadPidMax { .. }), "{err}");
        assert!(err.to_string().contains("pid_max"), "{err}");

        for bad in ["lots\n", "0\n", "-5\n", ""] {
            let (_dir, tree) = host(&[(HostFile::PidMax, bad)], Cpuid::default());
            let err = pid_max(&tree).unwrap_err();
            assert!(
                matches!(err, SizingError::MalformedPidMax { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn the_live_system_agrees_with_its_files() {
        let topology = Topology::from_host(&LiveSystem).unwrap();
        let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        assert_eq!(topology.online.to_string(), online.trim());
        let from_proc = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
        assert_eq!(
            pid_max(&LiveSystem).unwrap(),
            from_proc.trim().parse::<u64>().unwrap()
        );
    }
}
