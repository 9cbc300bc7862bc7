//! Is this machine a virtual one, and which hypervisor runs it?
//!
//! VMs are where possible CPUs most often exceed online ones (room for hot-added
//! vCPUs), which is what per-CPU maps pay for; so the plan says where it runs.
//! Sources: the CPUID hypervisor bit (leaf 1, ECX bit 31) and vendor signature
//! (leaf 0x4000_0000), and DMI's system vendor and product name from sysfs, all
//! read by [`crate::host`]; this module only interprets them.

use serde::Serialize;

use crate::host::LiveSystem;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Virtualization {
    /// The CPU says a hypervisor is present (CPUID.1:ECX[31]).
    pub hypervisor_bit: bool,
    /// CPUID leaf 0x4000_0000's 12-byte signature, e.g. `KVMKVMKVM`.
    pub cpuid_vendor: Option<String>,
    /// `/sys/class/dmi/id/sys_vendor`.
    pub dmi_vendor: Option<String>,
    /// `/sys/class/dmi/id/product_name`.
    pub dmi_product: Option<String>,
    /// The hypervisor's name as Kestrel reads these (`kvm`, `vmware`, ...),
    /// `None` on bare metal.
    pub hypervisor: Option<String>,
}

impl Virtualization {
    /// Detect from the CPU and sysfs: a convenience for
    /// [`Virtualization::from_host`] on [`LiveSystem`]. Never fails: what
    /// cannot be read is `None`.
    pub fn detect() -> Virtualization {
        Virtualization::from_host(&LiveSystem)
    }

    /// Combine the raw facts; pure.
    pub fn from_parts(
        hypervisor_bit: bool,
        cpuid_vendor: Option<String>,
        dmi_vendor: Option<String>,
        dmi_product: Option<String>,
    ) -> Virtualization {
        let hypervisor = cpuid_vendor
            .as_deref()
            .and_then(name_from_cpuid_signature)
            .or_else(|| name_from_dmi(dmi_vendor.as_deref(), dmi_product.as_deref()))
            .map(str::to_string)
            .or_else(|| hypervisor_bit.then(|| "unknown".to_string()));
        Virtualization {
            hypervisor_bit,
            cpuid_vendor,
            dmi_vendor,
            dmi_product,
            hypervisor,
        }
    }

    pub fn is_virtual(&self) -> bool {
        self.hypervisor.is_some()
    }
}

/// Names for the signatures hypervisors put in CPUID leaf 0x4000_0000.
pub fn name_from_cpuid_signature(signature: &str) -> Option<&'static str> {
    let s = signature.trim_end_matches('\0').trim();
    Some(match s {
        "KVMKVMKVM" => "kvm",
        "TCGTCGTCGTCG" => "qemu-tcg",
        "VMwareVMware" => "vmware",
        "Microsoft Hv" => "hyperv",
        "XenVMMXenVMM" => "xen",
        "bhyve bhyve" => "bhyve",
        "ACRNACRNACRN" => "acrn",
        "QNXQVMBSQG" => "qnx",
        "VBoxVBoxVBox" => "virtualbox",
        "Linux KVM Hv" => "kvm-hyperv",
        "" => return None,
        _ => return None,
    })
}

/// Names from DMI, for hypervisors that hide from CPUID (or non-x86).
pub fn name_from_dmi(vendor: Option<&str>, product: Option<&str>) -> Option<&'static str> {
    let v = vendor.unwrap_or("").to_ascii_lowercase();
    let p = product.unwrap_or("").to_ascii_lowercase();
    if v.contains("qemu") || p.contains("kvm") || p.contains("standard pc") {
        Some("kvm")
    } else if v.contains("vmware") || p.contains("vmware") {
        Some("vmware")
    } else if v.contains("microsoft") && p.contains("virtual") {
        Some("hyperv")
    } else if v.contains("xen") {
        Some("xen")
    } else if v.contains("amazon ec2") || p.starts_with("amazon ec2") {
        Some("aws-nitro")
    } else if v.contains("google") && p.contains("compute engine") {
        Some("gce")
    } else if p.contains("virtualbox") {
        Some("virtualbox")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_signature_wins_then_dmi_then_the_bare_bit() {
        let v = Virtualization::from_parts(
            true,
            Some("KVMKVMKVM\0\0\0".into()),
            Some("QEMU".into()),
            None,
        );
        assert_eq!(v.hypervisor.as_deref(), Some("kvm"));
        let v = Virtualization::from_parts(true, Some("VMwareVMware".into()), None, None);
        assert_eq!(v.hypervisor.as_deref(), Some("vmware"));
        let v = Virtualization::from_parts(
            false,
            None,
            Some("Microsoft Corporation".into()),
            Some("Virtual Machine".into()),
        );
        assert_eq!(v.hypervisor.as_deref(), Some("hyperv"));
        let v = Virtualization::from_parts(true, Some("NewHypervisor".into()), None, None);
        assert_eq!(v.hypervisor.as_deref(), Some("unknown"));
        let v = Virtualization::from_parts(
            false,
            None,
            Some("Dell Inc.".into()),
            Some("PowerEdge R650".into()),
        );
        assert_eq!(v.hypervisor, None);
        assert!(!v.is_virtual());
    }

    #[test]
    fn detect_agrees_with_the_cpu_flags_of_this_machine() {
        let v = Virtualization::detect();
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_flag = flags
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
        assert_eq!(
            v.hypervisor_bit, has_flag,
            "CPUID and /proc/cpuinfo disagree"
        );
        if has_flag {
            assert!(v.is_virtual());
        }
    }
}
