//! `kestrel check`: what this kernel and these privileges allow, by really trying.

use std::process::ExitCode;

use anyhow::Result;
use kestrel_probes::features::lockdown_mode;
use kestrel_probes::{KernelFeatures, Outcome};
use kestrel_sizing::{Topology, Virtualization};
use serde::Serialize;

use crate::cli::CheckArgs;

/// Capability bits (linux/capability.h) Kestrel cares about, and what lacking
/// each one disables.
pub const CAPABILITIES: &[(&str, u32, &str)] = &[
    ("CAP_BPF", 39, "no BPF programs or maps (unless CAP_SYS_ADMIN is held)"),
    ("CAP_PERFMON", 38, "no perf_event sampling or tracing programs (unless CAP_SYS_ADMIN is held)"),
    (
        "CAP_SYS_ADMIN",
        21,
        "nothing while CAP_BPF and CAP_PERFMON are held, except sampling hot-added CPUs where kernel.perf_event_paranoid > 2",
    ),
    ("CAP_SYS_PTRACE", 19, "no symbols for other users' processes (their /proc/PID/maps and executables)"),
    ("CAP_SYSLOG", 34, "no kernel symbol names (/proc/kallsyms shows zero addresses)"),
    (
        "CAP_DAC_READ_SEARCH",
        2,
        "(optional) no symbols for executables in directories the agent's user cannot read",
    ),
];

#[derive(Debug, Serialize)]
pub struct Capability {
    pub name: &'static str,
    pub held: bool,
    pub needed_for: &'static str,
}

/// Effective capabilities of this process, from /proc/self/status.
pub fn capabilities() -> Vec<Capability> {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    CAPABILITIES
        .iter()
        .map(|&(name, bit, needed_for)| Capability {
            name,
            held: eff & (1u64 << bit) != 0,
            needed_for,
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub kernel_release: String,
    pub lockdown: Option<String>,
    pub online_cpus: String,
    pub possible_cpus: String,
    pub present_cpus: String,
    pub virtualization: Virtualization,
    pub features: KernelFeatures,
    pub off_cpu_hook: Option<&'static str>,
    pub capabilities: Vec<Capability>,
    /// One sentence per missing requirement, with how to fix it.
    pub problems: Vec<String>,
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn report() -> CheckReport {
    let features = KernelFeatures::probe();
    let topology = Topology::detect().ok();
    let caps = capabilities();
    let held = |n: &str| caps.iter().any(|c| c.name == n && c.held);
    let privileged = held("CAP_SYS_ADMIN") || (held("CAP_BPF") && held("CAP_PERFMON"));
    let mut problems = Vec::new();
    if !privileged {
        problems.push(
            "Missing privileges: run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_SYSLOG \
             (e.g. `setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_syslog+ep kestrel`)."
                .to_string(),
        );
    }
    let need = |o: &Outcome, what: &str, fix: &str, problems: &mut Vec<String>| {
        if !o.ok {
            problems.push(format!(
                "{what} failed ({}): {fix}",
                o.error.as_deref().unwrap_or("unknown error")
            ));
        }
    };
    need(
        &features.btf,
        "BTF",
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Kestrel's programs are CO-RE).",
        &mut problems,
    );
    need(
        &features.bpf_syscall,
        "bpf()",
        "run as root or with CAP_BPF; check kernel.unprivileged_bpf_disabled and seccomp.",
        &mut problems,
    );
    need(
        &features.perf_event_program,
        "Loading a perf_event program",
        "needs CAP_PERFMON (or root) and CONFIG_BPF_EVENTS.",
        &mut problems,
    );
    need(
        &features.ringbuf_map,
        "Creating a ring buffer",
        "needs Linux 5.8 or newer.",
        &mut problems,
    );
    need(
        &features.cpu_clock_event,
        "Opening the cpu-clock perf event",
        "needs CAP_PERFMON (or root) and kernel.perf_event_paranoid <= 2 for non-root.",
        &mut problems,
    );
    for name in ["CAP_SYS_PTRACE", "CAP_SYSLOG"] {
        if privileged && !held(name) && !held("CAP_SYS_ADMIN") {
            let what = CAPABILITIES
                .iter()
                .find(|c| c.0 == name)
                .map(|c| c.2)
                .unwrap_or("");
            problems.push(format!("{name} is missing: {what}. Grant it with setcap or the service's AmbientCapabilities."));
        }
    }
    if features.off_cpu_hook().is_none() {
        problems.push(
            "Neither tp_btf nor raw_tp on sched_switch loads: off-CPU profiling is unavailable (set off_cpu.probability = 0)."
                .to_string(),
        );
    }
    CheckReport {
        kernel_release: kernel_release(),
        lockdown: lockdown_mode(),
        online_cpus: topology
            .as_ref()
            .map(|t| t.online.to_string())
            .unwrap_or_default(),
        possible_cpus: topology
            .as_ref()
            .map(|t| t.possible.to_string())
            .unwrap_or_default(),
        present_cpus: topology
            .as_ref()
            .map(|t| t.present.to_string())
            .unwrap_or_default(),
        virtualization: Virtualization::detect(),
        off_cpu_hook: features.off_cpu_hook().map(|h| h.program_name()),
        features,
        capabilities: caps,
        problems,
    }
}

fn line(out: &mut String, name: &str, o: &Outcome, note: &str) {
    let status = if o.ok { "ok" } else { "NO" };
    out.push_str(&format!("  {name:<28} {status:<4} {note}"));
    if let Some(e) = &o.error {
        out.push_str(&format!("  [{e}]"));
    }
    out.push('\n');
}

pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    let r = report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let mut out = String::new();
        out.push_str(&format!("kernel          {}\n", r.kernel_release));
        out.push_str(&format!(
            "lockdown        {}\n",
            r.lockdown.as_deref().unwrap_or("not reported")
        ));
        out.push_str(&format!(
            "CPUs            online {}  possible {}  present {}\n",
            r.online_cpus, r.possible_cpus, r.present_cpus
        ));
        let v = &r.virtualization;
        out.push_str(&format!(
            "virtualization  {} (CPUID hypervisor bit {}, vendor {}, DMI {} / {})\n\n",
            v.hypervisor.as_deref().unwrap_or("none: bare metal"),
            if v.hypervisor_bit { "set" } else { "clear" },
            v.cpuid_vendor.as_deref().unwrap_or("-"),
            v.dmi_vendor.as_deref().unwrap_or("-"),
            v.dmi_product.as_deref().unwrap_or("-"),
        ));
        out.push_str("BPF (each tried for real):\n");
        let f = &r.features;
        line(
            &mut out,
            "BTF (/sys/kernel/btf/vmlinux)",
            &f.btf,
            "required",
        );
        line(&mut out, "bpf() syscall", &f.bpf_syscall, "required");
        line(
            &mut out,
            "perf_event program",
            &f.perf_event_program,
            "required: on-CPU sampling",
        );
        line(
            &mut out,
            "cpu-clock perf event",
            &f.cpu_clock_event,
            "required: on-CPU sampling",
        );
        line(&mut out, "ring buffer map", &f.ringbuf_map, "required");
        line(
            &mut out,
            "tp_btf/sched_switch",
            &f.tp_btf_program,
            "off-CPU, preferred",
        );
        line(
            &mut out,
            "task storage map",
            &f.task_storage_map,
            "off-CPU in-flight state, preferred",
        );
        line(
            &mut out,
            "raw_tp/sched_switch",
            &f.raw_tp_program,
            "off-CPU fallback",
        );
        line(
            &mut out,
            "fentry",
            &f.fentry_program,
            "not used by Kestrel; reported for comparison",
        );
        out.push_str(&format!(
            "  off-CPU will use: {}\n\n",
            r.off_cpu_hook.unwrap_or("nothing (unavailable)")
        ));
        out.push_str("capabilities (effective):\n");
        for c in &r.capabilities {
            out.push_str(&format!(
                "  {:<19} {:<4} {}\n",
                c.name,
                if c.held { "yes" } else { "no" },
                if c.held {
                    String::new()
                } else {
                    format!("without it: {}", c.needed_for)
                }
            ));
        }
        if r.problems.is_empty() {
            out.push_str("\nEverything Kestrel needs is available.\n");
        } else {
            out.push_str("\nProblems:\n");
            for p in &r.problems {
                out.push_str(&format!("  - {p}\n"));
            }
        }
        print!("{out}");
    }
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
