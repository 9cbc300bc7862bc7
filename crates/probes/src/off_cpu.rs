//! Off-CPU measurement from sched_switch: tp_btf with task storage where the
//! kernel allows it, raw_tp with a sized hash otherwise. One attachment covers
//! every CPU, so CPU hotplug needs nothing here.

use libbpf_rs::{Link, Object};

use crate::features::OffCpuHook;
use crate::{KernelFeatures, Probe, ProbeConfig, ProbeError};

/// Enabled when `Session` decided a hook (`config.off_cpu_hook`, resolved
/// before the factories run; `None` when off-CPU is off).
pub(crate) fn factory(
    config: &ProbeConfig,
    _features: &KernelFeatures,
) -> Result<Option<Box<dyn Probe>>, ProbeError> {
    let hook = config
        .off_cpu_hook
        .filter(|_| config.off_cpu_probability > 0.0);
    Ok(hook.map(|hook| {
        Box::new(OffCpuProbe {
            hook,
            links: Vec::new(),
        }) as Box<dyn Probe>
    }))
}

struct OffCpuProbe {
    hook: OffCpuHook,
    links: Vec<Link>,
}

impl Probe for OffCpuProbe {
    fn name(&self) -> &'static str {
        "off_cpu"
    }

    fn programs(&self) -> Vec<&'static str> {
        match self.hook {
            OffCpuHook::TpBtfTaskStorage => vec!["off_cpu_switch_btf"],
            // The hash store outlives exiting threads unless their entry is removed.
            OffCpuHook::RawTpHash => vec!["off_cpu_switch_raw", "off_cpu_exit_raw"],
        }
    }

    fn attach(&mut self, object: &Object, _online: &[u32]) -> Result<(), ProbeError> {
        for name in self.programs() {
            let program = object
                .progs_mut()
                .find(|p| p.name() == name)
                .ok_or(ProbeError::MissingProgram(name))?;
            let link = program.attach().map_err(|source| ProbeError::Attach {
                program: name,
                cpu: None,
                source,
            })?;
            self.links.push(link);
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.links.clear();
    }

    fn attachments(&self) -> usize {
        self.links.len()
    }
}
