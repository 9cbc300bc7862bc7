//! The guest's initramfs: busybox, kestrel with the shared libraries it needs,
//! the workload, and /init (guest/init.sh), as a gzip-compressed newc cpio.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::host::{run_checked, BUSYBOX};

const INIT_SCRIPT: &str = include_str!("../guest/init.sh");
const WORKLOAD_SOURCE: &str = include_str!("../guest/workload.c");

/// The files `ldd` says a binary loads: libraries (`name => /path (addr)`) and
/// the dynamic loader (`/path (addr)`); the vDSO has no file and is skipped.
pub fn ldd_paths(ldd_output: &str) -> Vec<PathBuf> {
    ldd_output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, target)) => target.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `source` to `root` + its absolute path (following symlinks), so the
/// guest finds it where the host's `ldd` did.
fn copy_at_same_path(root: &Path, source: &Path) -> Result<()> {
    let relative = source.strip_prefix("/").unwrap_or(source);
    let target = root.join(relative);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(source, &target)
        .with_context(|| format!("copying {} into the initramfs", source.display()))?;
    Ok(())
}

fn write_executable(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// Compiles the workload statically with frame pointers; returns its path.
pub fn build_workload(build_dir: &Path) -> Result<PathBuf> {
    let source = build_dir.join("workload.c");
    let binary = build_dir.join("kvt-workload");
    fs::write(&source, WORKLOAD_SOURCE).with_context(|| format!("writing {}", source.display()))?;
    run_checked(
        Command::new("gcc")
            .args([
                "-static",
                "-O1",
                "-g",
                "-fno-omit-frame-pointer",
                "-pthread",
                "-o",
            ])
            .arg(&binary)
            .arg(&source),
    )
    .context("compiling the guest workload (needs gcc and libc6-dev)")?;
    Ok(binary)
}

/// Every path under `root`, relative, parents before children.
fn list_tree(root: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let child = relative.join(entry.file_name());
            paths.push(child.clone());
            if entry.file_type()?.is_dir() {
                pending.push(child);
            }
        }
    }
    Ok(paths)
}

/// Builds `build_dir/initramfs.cpio.gz` around `kestrel`; returns its path.
pub fn build(build_dir: &Path, kestrel: &Path) -> Result<PathBuf> {
    let root = build_dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let bin = root.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for dir in ["proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }

    write_executable(&root.join("init"), INIT_SCRIPT)?;
    fs::copy(BUSYBOX, bin.join("busybox")).context("copying busybox into the initramfs")?;
    let workload = build_workload(build_dir)?;
    fs::copy(&workload, bin.join("kvt-workload")).context("copying the workload")?;

    // Debug info is for the host; the guest only runs the binary.
    run_checked(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(kestrel)
            .arg(bin.join("kestrel")),
    )
    .context("copying kestrel (without debug info) into the initramfs")?;
    let ldd = run_checked(Command::new("ldd").arg(kestrel))?;
    let libraries = ldd_paths(&ldd);
    if !libraries
        .iter()
        .any(|lib| lib.to_string_lossy().contains("ld-linux"))
    {
        bail!("ldd {} lists no dynamic loader:\n{ldd}", kestrel.display());
    }
    for library in &libraries {
        copy_at_same_path(&root, library)?;
    }

    let archive = build_dir.join("initramfs.cpio");
    let mut cpio = Command::new("cpio")
        .current_dir(&root)
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0", "-O"])
        .arg(&archive)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cpio")?;
    let list: String = list_tree(&root)?
        .iter()
        .map(|path| format!("{}\n", path.display()))
        .collect();
    cpio.stdin
        .take()
        .context("cpio has no stdin")?
        .write_all(list.as_bytes())
        .context("sending the file list to cpio")?;
    let output = cpio.wait_with_output().context("waiting for cpio")?;
    if !output.status.success() {
        bail!(
            "cpio failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    let compressed = build_dir.join("initramfs.cpio.gz");
    let raw = fs::read(&archive).with_context(|| format!("reading {}", archive.display()))?;
    let mut encoder = flate2::write::GzEncoder::new(
        fs::File::create(&compressed)
            .with_context(|| format!("creating {}", compressed.display()))?,
        flate2::Compression::fast(),
    );
    encoder.write_all(&raw)?;
    encoder.finish().context("compressing the initramfs")?;
    fs::remove_file(&archive).ok();
    Ok(compressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader_but_not_the_vdso() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd1a3e5000)\n\
            \tlibelf.so.1 => /lib/x86_64-linux-gnu/libelf.so.1 (0x00007f5b1c3f0000)\n\
            \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f5b1abe1000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5b1a8ff000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f5b1c41e000)\n";
        assert_eq!(
            ldd_paths(output),
            [
                "/lib/x86_64-linux-gnu/libelf.so.1",
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(ldd_paths("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn the_real_ldd_of_a_dynamic_binary_lists_files_that_exist() {
        let ldd = run_checked(Command::new("ldd").arg("/bin/sh")).unwrap();
        let paths = ldd_paths(&ldd);
        assert!(
            paths
                .iter()
                .any(|p| p.to_string_lossy().contains("libc.so")),
            "{ldd}"
        );
        assert!(paths.iter().all(|p| p.is_file()), "{paths:?}");
    }

    #[test]
    fn the_workload_pins_one_busy_blocking_thread_to_each_cpu() {
        // Built with gcc and run for real on the host.
        let dir = std::env::temp_dir().join(format!("kvt-workload-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let binary = build_workload(&dir).unwrap();
        let mut child = Command::new(&binary).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1000));
        let task_dir = format!("/proc/{}/task", child.id());
        let mut workers = Vec::new();
        for task in fs::read_dir(&task_dir).unwrap() {
            let task = task.unwrap().path();
            if task.file_name().unwrap().to_str().unwrap() == child.id().to_string() {
                continue; // the main thread only waits
            }
            let status = fs::read_to_string(task.join("status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap()
                    .trim()
                    .to_owned()
            };
            let on_cpu_ns: u64 = fs::read_to_string(task.join("schedstat"))
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            workers.push((
                field("Cpus_allowed_list:"),
                field("voluntary_ctxt_switches:").parse::<u64>().unwrap(),
                on_cpu_ns,
            ));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        fs::remove_dir_all(&dir).ok();

        let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(workers.len(), cpus, "one worker per CPU ({online})");
        let mut pinned: Vec<String> = workers.iter().map(|w| w.0.clone()).collect();
        pinned.sort();
        pinned.dedup();
        assert_eq!(
            pinned.len(),
            cpus,
            "each worker on its own CPU: {workers:?}"
        );
        assert!(
            pinned.iter().all(|list| list.parse::<u32>().is_ok()),
            "{workers:?}"
        );
        assert!(
            workers.iter().all(|w| w.1 > 0),
            "every worker blocks: {workers:?}"
        );
        assert!(
            workers.iter().all(|w| w.2 > 0),
            "every worker runs: {workers:?}"
        );
    }
}
