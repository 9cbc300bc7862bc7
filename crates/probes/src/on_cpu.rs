//! On-CPU sampling: the `on_cpu_sample` perf_event program on a software
//! cpu-clock event per online CPU.

use std::collections::BTreeMap;

use libbpf_rs::{Link, Object};
use tracing::debug;

use crate::perf::open_cpu_clock;
use crate::{KernelFeatures, Probe, ProbeConfig, ProbeError};

const PROGRAM: &str = "on_cpu_sample";

pub(crate) fn factory(
    config: &ProbeConfig,
    _features: &KernelFeatures,
) -> Result<Option<Box<dyn Probe>>, ProbeError> {
    Ok(Some(Box::new(OnCpuProbe {
        frequency_hz: config.frequency_hz,
        links: BTreeMap::new(),
    })))
}

struct OnCpuProbe {
    frequency_hz: u32,
    /// One link per CPU; dropping a link closes its perf event.
    links: BTreeMap<u32, Link>,
}

impl OnCpuProbe {
    fn attach_cpu(&mut self, object: &Object, cpu: u32) -> Result<(), ProbeError> {
        let program = object
            .progs_mut()
            .find(|p| p.name() == PROGRAM)
            .ok_or(ProbeError::MissingProgram(PROGRAM))?;
        let fd = open_cpu_clock(cpu, self.frequency_hz)
            .map_err(|source| ProbeError::PerfEvent { cpu, source })?;
        // libbpf's perf link takes ownership of the event fd and closes it on drop.
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        let link = program.attach_perf_event(raw).map_err(|source| {
            // SAFETY: the attach failed, so libbpf did not take the fd; we still own it.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
            ProbeError::Attach {
                program: PROGRAM,
                cpu: Some(cpu),
                source,
            }
        })?;
        self.links.insert(cpu, link);
        debug!(cpu, "on-CPU sampling attached");
        Ok(())
    }
}

/// `perf_event_open` on a CPU that is not online answers ENODEV.
fn went_offline(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENODEV)
}

impl Probe for OnCpuProbe {
    fn name(&self) -> &'static str {
        "on_cpu"
    }

    fn programs(&self) -> Vec<&'static str> {
        vec![PROGRAM]
    }

    fn attach(&mut self, object: &Object, online: &[u32]) -> Result<(), ProbeError> {
        for &cpu in online {
            match self.attach_cpu(object, cpu) {
                // The CPU went offline between reading the online mask and
                // opening its event (seen during re-plans under CPU hot-plug):
                // nothing to sample there; the next hot-plug check sees it
                // gone, and `cpu_online` attaches it if it comes back.
                Err(ProbeError::PerfEvent { cpu, source }) if went_offline(&source) => {
                    debug!(cpu, "CPU went offline while attaching; skipped");
                }
                other => other?,
            }
        }
        Ok(())
    }

    fn cpu_online(&mut self, object: &Object, cpu: u32) -> Result<(), ProbeError> {
        if self.links.contains_key(&cpu) {
            return Ok(());
        }
        self.attach_cpu(object, cpu)
    }

    fn cpu_offline(&mut self, cpu: u32) {
        self.links.remove(&cpu);
    }

    fn detach(&mut self) {
        self.links.clear();
    }

    fn attachments(&self) -> usize {
        self.links.len()
    }
}
