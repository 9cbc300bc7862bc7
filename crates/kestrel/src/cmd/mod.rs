//! The subcommands: thin front ends over the library's agent. None imports
//! another; what they share lives in the library.

pub mod check;
pub mod plan;
pub mod record;
pub mod run;

use kestrel::agent::AgentError;

/// The library's error with the CLI's pointer to the fix: which command, flag or
/// configuration key.
pub fn with_cli_hint(e: AgentError) -> anyhow::Error {
    let hint = match &e {
        AgentError::Unsupported { .. } => {
            "run `sudo kestrel check` for the full report and how to fix each item \
             (Kestrel needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + CAP_SYSLOG); \
             without off-CPU support use --off-cpu-probability 0"
        }
        AgentError::NoSuchProcess { .. } => "check the --pid value with `ps -p PID`",
        AgentError::Topology(_) => {
            "Kestrel needs sysfs mounted at /sys to learn the CPU topology"
        }
        AgentError::Plan(_) => {
            "see `kestrel plan` for every map's formula; memory.bpf_cap_bytes bounds the total"
        }
        AgentError::OffCpuHook(_) => {
            "set off_cpu.hook = \"auto\", or off_cpu.probability = 0 (--off-cpu-probability 0) \
             to record on-CPU only; `kestrel check` shows which hooks this kernel allows"
        }
        AgentError::Start(_) | AgentError::Drain(_) | AgentError::Counters(_) => {
            "run `kestrel check` to see what this kernel refuses"
        }
        AgentError::Symbols(_) => {
            "check symbols.cache_dir (KESTREL_SYMBOLS__CACHE_DIR), or set it to \"\" for no disk tier"
        }
        AgentError::NoRingInPlan => "please report this bug",
    };
    anyhow::anyhow!("{}\n{hint}", kestrel::agent::error_chain(&e))
}
