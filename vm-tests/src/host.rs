//! Host tools the rig runs: checked subprocesses and the apt packages it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `command`, returns its stdout; a non-zero exit is an error carrying stderr.
pub fn run_checked(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{shown} printed non-UTF-8"))
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// True when `binary` needs no dynamic loader (`ldd` says so).
fn is_static(binary: &Path) -> bool {
    Command::new("ldd")
        .arg(binary)
        .output()
        .map(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            text.contains("not a dynamic executable") || text.contains("statically linked")
        })
        .unwrap_or(false)
}

/// The tools the rig runs and the Debian packages that provide them.
const TOOLS: [(&str, &str); 5] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    ("gcc", "gcc"),
    ("dpkg-deb", "dpkg"),
    ("objcopy", "binutils"),
];

/// The static busybox from Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";

/// Installs the missing ones of qemu-system-x86, busybox-static, cpio, gcc
/// (and libc6-dev for -static) with apt-get.
pub fn ensure_tools() -> Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, package)| *package)
        .collect();
    if !Path::new(BUSYBOX).is_file() || !is_static(Path::new(BUSYBOX)) {
        missing.push("busybox-static");
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/libc.a").is_file() {
        missing.push("libc6-dev");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("vm-tests: installing {} with apt-get", missing.join(" "));
    let install = |update_first: bool| -> Result<String> {
        if update_first {
            run_checked(Command::new("apt-get").arg("update"))?;
        }
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
        )
    };
    install(false)
        .or_else(|_| install(true))
        .context("installing the VM-test tools (run as root, or install them yourself)")?;
    Ok(())
}
