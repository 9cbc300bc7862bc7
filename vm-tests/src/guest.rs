//! One guest: its QEMU command line, its run under a time limit, and (for the
//! hot-plug case) the vCPUs hot-added through QMP while Kestrel records.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::kernels::{GuestKernel, Series};
use crate::qmp;

/// The most vCPUs QEMU 7.2's `pc` machine lists in its ACPI tables; more
/// possible CPUs need the guest kernel argument `possible_cpus=`.
pub const PC_MAX_CPUS: u32 = 255;

/// What the guest does besides booting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Scenario {
    /// Plan and record at a fixed topology.
    Matrix,
    /// Record while the host hot-adds `add` vCPUs, which the guest brings
    /// online; after `offline_after_s` seconds the guest takes the last
    /// `offline_count` of them offline again (the last added first).
    Hotplug {
        add: u32,
        offline_after_s: u32,
        offline_count: u32,
        /// Whether Kestrel's plan for `online + add` CPUs is larger than
        /// for `online` (`kestrel plan --online N --possible P` on the
        /// host), so the re-plans must grow it and, once every added CPU
        /// is offline again, shrink it back.
        plan_grows: bool,
    },
}

/// A guest of the test matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuestSpec {
    pub series: String,
    pub online: u32,
    pub possible: u32,
    pub scenario: Scenario,
    /// Length of `kestrel record`, seconds.
    pub record_s: u32,
}

impl GuestSpec {
    /// `6.12 2/64`, `6.1 2/8 hotplug`.
    pub fn label(&self) -> String {
        let mut label = format!("{} {}/{}", self.series, self.online, self.possible);
        if matches!(self.scenario, Scenario::Hotplug { .. }) {
            label.push_str(" hotplug");
        }
        label
    }

    /// A name usable as a directory name.
    pub fn slug(&self) -> String {
        self.label().replace([' ', '/'], "-")
    }
}

impl fmt::Display for GuestSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// The most possible CPUs a guest of `series` can have under this QEMU and
/// TCG: where `possible_cpus=` can raise the count (Linux < 6.9: 5.10, 6.1)
/// the rig's largest row, 1024, through that argument; on 6.9+ the `pc`
/// machine's [`PC_MAX_CPUS`] through `-smp maxcpus=`, as QEMU 7.2 refuses
/// more under TCG ("requires kernel irqchip and X2APIC API support").
pub fn most_possible_cpus(series: Series) -> u32 {
    if series.possible_cpus_param_can_raise() {
        1024
    } else {
        PC_MAX_CPUS
    }
}

/// Why a guest cannot be built on this kernel, if it cannot.
pub fn unsupported_reason(spec: &GuestSpec, series: Series) -> Option<String> {
    if spec.possible > PC_MAX_CPUS && !series.possible_cpus_param_can_raise() {
        return Some(format!(
            "Linux {series} only lowers the possible CPUs with possible_cpus= (x86 CPU enumeration since 6.9), \
             and QEMU 7.2's pc machine lists at most {PC_MAX_CPUS} CPUs (no x2APIC under TCG)"
        ));
    }
    None
}

/// The QEMU arguments (without the program) that boot `spec`.
pub fn qemu_args(
    spec: &GuestSpec,
    series: Series,
    vmlinuz: &Path,
    initramfs: &Path,
    qmp_socket: Option<&Path>,
) -> Vec<String> {
    let mut append = vec![
        "console=ttyS0".to_owned(),
        "quiet".to_owned(),
        "panic=-1".to_owned(),
    ];
    let maxcpus = if spec.possible > PC_MAX_CPUS {
        // Past the machine's limit the kernel is told instead (Linux < 6.9).
        append.push(format!("possible_cpus={}", spec.possible));
        spec.online
    } else {
        spec.possible
    };
    match spec.scenario {
        Scenario::Matrix => append.push("kvt.mode=matrix".to_owned()),
        Scenario::Hotplug {
            add,
            offline_after_s,
            offline_count,
            ..
        } => {
            append.push("kvt.mode=hotplug".to_owned());
            append.push(format!("kvt.hotplug_add={add}"));
            append.push(format!("kvt.offline_after={offline_after_s}"));
            append.push(format!("kvt.offline_count={offline_count}"));
        }
    }
    append.push(format!("kvt.duration={}", spec.record_s));

    let mut args: Vec<String> = ["-accel", "tcg", "-m", "1G", "-smp"]
        .map(str::to_owned)
        .to_vec();
    args.push(format!("cpus={},maxcpus={maxcpus}", spec.online));
    if series.needs_hypervisor_hint() {
        // 6.12 under TCG honours the hot-plug slots only when it believes it
        // runs on a hypervisor: hide the CPUID bit, show VMware's backdoor.
        args.extend(
            [
                "-cpu",
                "qemu64,-hypervisor",
                "-machine",
                "pc,vmport=on",
                "-smbios",
                "type=1,serial=VMware-test",
            ]
            .map(str::to_owned),
        );
    }
    args.push("-kernel".to_owned());
    args.push(vmlinuz.display().to_string());
    args.push("-initrd".to_owned());
    args.push(initramfs.display().to_string());
    args.push("-append".to_owned());
    args.push(append.join(" "));
    if let Some(socket) = qmp_socket {
        args.push("-qmp".to_owned());
        args.push(format!("unix:{},server=on,wait=off", socket.display()));
    }
    args.extend(["-nographic", "-no-reboot"].map(str::to_owned));
    args
}

/// What the host did to a hot-plug guest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HotplugLog {
    /// `device_add` arguments of every vCPU plugged.
    pub plugged: Vec<serde_json::Value>,
    /// Seconds after boot start the vCPUs were plugged.
    pub plugged_at_s: Option<f64>,
    pub error: Option<String>,
}

/// The result of one boot.
#[derive(Debug, Clone)]
pub struct GuestRun {
    pub console: String,
    pub console_log: PathBuf,
    pub timed_out: bool,
    pub qemu_status: Option<i32>,
    pub elapsed: Duration,
    pub hotplug: Option<HotplugLog>,
}

/// The console marker after which the host hot-adds vCPUs.
const HOTPLUG_TRIGGER: &str = "@@KVT-EVENT recording@@";

/// Boots `spec` and waits for it to power off, at most `limit`.
pub fn run(
    spec: &GuestSpec,
    kernel: &GuestKernel,
    initramfs: &Path,
    work_dir: &Path,
    limit: Duration,
) -> Result<GuestRun> {
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let console_log = work_dir.join("console.log");
    let qmp_socket = work_dir.join("qmp.sock");
    let hotplug = matches!(spec.scenario, Scenario::Hotplug { .. });
    if qmp_socket.exists() {
        std::fs::remove_file(&qmp_socket).ok();
    }
    let args = qemu_args(
        spec,
        kernel.series,
        &kernel.vmlinuz,
        initramfs,
        hotplug.then_some(qmp_socket.as_path()),
    );
    std::fs::write(
        work_dir.join("qemu-command.txt"),
        format!("qemu-system-x86_64 {}\n", shell_words(&args)),
    )?;

    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;

    let console = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    let log_file = Arc::new(Mutex::new(
        std::fs::File::create(&console_log)
            .with_context(|| format!("creating {}", console_log.display()))?,
    ));
    let streams: Vec<Box<dyn Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for mut stream in streams {
        let console = Arc::clone(&console);
        let log_file = Arc::clone(&log_file);
        readers.push(std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(read) = stream.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buffer[..read]);
                if let Ok(mut console) = console.lock() {
                    console.push_str(&text);
                }
                if let Ok(mut file) = log_file.lock() {
                    let _ = file.write_all(&buffer[..read]);
                }
            }
        }));
    }

    let deadline = started + limit;
    let mut hotplug_log = hotplug.then(HotplugLog::default);
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // The guest hangs or is too slow: stop it, report the row as failed.
            let _ = child.kill();
            break child.wait().ok();
        }
        if let (Some(log), Scenario::Hotplug { add, .. }) = (hotplug_log.as_mut(), spec.scenario) {
            let triggered = console
                .lock()
                .map(|text| text.contains(HOTPLUG_TRIGGER))
                .unwrap_or(false);
            if triggered && log.plugged_at_s.is_none() && log.error.is_none() {
                match hot_add(&qmp_socket, add) {
                    Ok(plugged) => {
                        log.plugged = plugged;
                        log.plugged_at_s = Some(started.elapsed().as_secs_f64());
                    }
                    Err(e) => log.error = Some(format!("{e:#}")),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for reader in readers {
        let _ = reader.join();
    }
    let console = console.lock().map(|text| text.clone()).unwrap_or_default();
    Ok(GuestRun {
        console,
        console_log,
        timed_out,
        qemu_status: status.and_then(|s| s.code()),
        elapsed: started.elapsed(),
        hotplug: hotplug_log,
    })
}

fn hot_add(socket: &Path, count: u32) -> Result<Vec<serde_json::Value>> {
    let mut client = qmp::Client::connect(socket, Duration::from_secs(10))?;
    let slots = client.hot_add_cpus(count as usize)?;
    Ok(slots
        .iter()
        .enumerate()
        .map(|(index, slot)| qmp::device_add_arguments(slot, &format!("kvt-cpu{index}")))
        .collect())
}

/// `args` quoted for a shell, for the command file a person may rerun.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            if arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+".contains(c))
            {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(online: u32, possible: u32, scenario: Scenario) -> GuestSpec {
        GuestSpec {
            series: "6.12".into(),
            online,
            possible,
            scenario,
            record_s: 5,
        }
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> &'a str {
        let at = args.iter().position(|a| a == flag).unwrap();
        &args[at + 1]
    }

    #[test]
    fn the_topology_goes_to_smp_below_the_machine_limit() {
        let args = qemu_args(
            &spec(4, 240, Scenario::Matrix),
            "6.1".parse().unwrap(),
            Path::new("/k/vmlinuz"),
            Path::new("/i.gz"),
            None,
        );
        assert_eq!(value_after(&args, "-smp"), "cpus=4,maxcpus=240");
        assert_eq!(value_after(&args, "-accel"), "tcg");
        assert_eq!(value_after(&args, "-m"), "1G");
        let append = value_after(&args, "-append");
        assert!(append.contains("console=ttyS0") && append.contains("kvt.mode=matrix"));
        assert!(append.contains("kvt.duration=5"));
        assert!(!append.contains("possible_cpus"));
        assert!(!args.contains(&"-qmp".to_owned()));
        assert!(
            !args.contains(&"-cpu".to_owned()),
            "6.1 needs no hypervisor hint"
        );
        assert!(args.ends_with(&["-nographic".to_owned(), "-no-reboot".to_owned()]));
    }

    #[test]
    fn past_255_cpus_the_kernel_argument_sets_the_possible_cpus() {
        let args = qemu_args(
            &spec(2, 1024, Scenario::Matrix),
            "6.1".parse().unwrap(),
            Path::new("/k"),
            Path::new("/i"),
            None,
        );
        assert_eq!(value_after(&args, "-smp"), "cpus=2,maxcpus=2");
        assert!(value_after(&args, "-append").contains("possible_cpus=1024"));
        assert_eq!(
            unsupported_reason(&spec(2, 1024, Scenario::Matrix), "6.1".parse().unwrap()),
            None
        );
        let reason = unsupported_reason(&spec(2, 1024, Scenario::Matrix), "6.12".parse().unwrap());
        assert!(reason.unwrap().contains("possible_cpus="));
        assert_eq!(
            unsupported_reason(&spec(4, 240, Scenario::Matrix), "6.12".parse().unwrap()),
            None
        );
    }

    #[test]
    fn hotplug_on_6_12_gets_qmp_and_the_hypervisor_hint() {
        let args = qemu_args(
            &spec(
                2,
                8,
                Scenario::Hotplug {
                    add: 2,
                    offline_after_s: 3,
                    offline_count: 1,
                    plan_grows: false,
                },
            ),
            "6.12".parse().unwrap(),
            Path::new("/k"),
            Path::new("/i"),
            Some(Path::new("/run/q.sock")),
        );
        assert_eq!(
            value_after(&args, "-qmp"),
            "unix:/run/q.sock,server=on,wait=off"
        );
        assert_eq!(value_after(&args, "-cpu"), "qemu64,-hypervisor");
        assert_eq!(value_after(&args, "-machine"), "pc,vmport=on");
        assert_eq!(value_after(&args, "-smbios"), "type=1,serial=VMware-test");
        let append = value_after(&args, "-append");
        assert!(append.contains(
            "kvt.mode=hotplug kvt.hotplug_add=2 kvt.offline_after=3 kvt.offline_count=1"
        ));
    }

    #[test]
    fn labels_and_quoting() {
        let hot = spec(
            2,
            8,
            Scenario::Hotplug {
                add: 2,
                offline_after_s: 3,
                offline_count: 1,
                plan_grows: false,
            },
        );
        assert_eq!(hot.label(), "6.12 2/8 hotplug");
        assert_eq!(hot.slug(), "6.12-2-8-hotplug");
        assert_eq!(
            shell_words(&["-append".into(), "console=ttyS0 quiet".into()]),
            "-append 'console=ttyS0 quiet'"
        );
    }
}
