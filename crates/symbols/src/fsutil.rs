//! Opening files of other processes safely and reading them with a size cap.
//!
//! Paths inside a process's mount namespace are opened through `/proc/PID/root`.
//! A plain `open("/proc/PID/root/<path>")` follows absolute symlinks planted
//! inside a container *relative to our root*, so a container could make the agent
//! (root) read any host file. We therefore use `openat2(2)` with
//! `RESOLVE_IN_ROOT` (symlinks resolve inside the process's root, `..` cannot
//! climb out of it) and `RESOLVE_NO_MAGICLINKS`, plus `O_NOFOLLOW` so the final
//! component is never a symlink at all (paths from `/proc/PID/maps` are already
//! resolved by the kernel). Kernels before 5.6 lack `openat2`; there we fall back
//! to `O_NOFOLLOW` on the final component only, which still stops the classic
//! "replace the file with a symlink" trick but not symlinked directories.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Cap on any procfs or perf map file read in one go (maps, cgroup, perf maps).
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// Reads at most `cap` bytes of a file; returns the bytes and whether the file
/// was longer than the cap.
pub fn read_capped(file: &mut impl Read, cap: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    let mut limited = file.take(cap.saturating_add(1));
    limited.read_to_end(&mut buf)?;
    let truncated = buf.len() as u64 > cap;
    if truncated {
        buf.truncate(cap as usize);
    }
    Ok((buf, truncated))
}

/// Reads a (procfs) file as text with the size cap; lossy on invalid UTF-8.
pub fn read_text_capped(path: &Path) -> io::Result<(String, bool)> {
    let mut file = File::open(path)?;
    let (bytes, truncated) = read_capped(&mut file, MAX_READ_BYTES)?;
    let text = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok((text, truncated))
}

/// Opens `path` (absolute, as the process sees it) read-only inside the root
/// directory of process `pid`. See the module documentation for the rules.
pub fn open_in_process_root(pid: u32, path: &str) -> io::Result<File> {
    let root = File::open(format!("/proc/{pid}/root"))?;
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let c_path = CString::new(Path::new(relative).as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match openat2_in_root(&root, &c_path) {
        Ok(file) => Ok(file),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
            // No openat2 (old kernel or a seccomp filter): final component only.
            open_nofollow(&format!("/proc/{pid}/root/{relative}"))
        }
        Err(e) => Err(e),
    }
}

fn openat2_in_root(root: &File, relative: &CString) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    // SAFETY: `open_how` is a plain C struct for which all-zero bytes are valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the dirfd is open for the duration of the call, `relative` is a
    // NUL-terminated string and `how` points to a properly sized `open_how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            relative.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn open_nofollow(path: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capped_reports_truncation() {
        let data = [1u8; 100];
        let (b, t) = read_capped(&mut &data[..], 100).unwrap();
        assert_eq!((b.len(), t), (100, false));
        let (b, t) = read_capped(&mut &data[..], 10).unwrap();
        assert_eq!((b.len(), t), (10, true));
    }

    #[test]
    fn opens_files_in_own_root_and_refuses_symlink_escapes() {
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real");
        std::fs::write(&target, b"hello").unwrap();
        let mut f = open_in_process_root(pid, target.to_str().unwrap()).unwrap();
        let (bytes, _) = read_capped(&mut f, 100).unwrap();
        assert_eq!(bytes, b"hello");

        // A symlink as the final component is refused (ELOOP), even though its
        // target is readable.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_in_process_root(pid, link.to_str().unwrap()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    /// A chrooted process whose root holds an absolute symlink to a host
    /// directory: the symlink must resolve inside its root, never to the host.
    #[test]
    fn absolute_symlinks_in_another_root_stay_inside_it() {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("waiter");
        let src = root.path().join("waiter.c");
        std::fs::write(
            &src,
            "#include <unistd.h>\nint main(void){char b[8];while(read(0,b,8)>0){}return 0;}\n",
        )
        .unwrap();
        let built = Command::new("gcc")
            .arg("-static")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap();
        assert!(
            built.success(),
            "gcc -static failed (libc6-dev provides libc.a)"
        );
        // Inside the root: /escape -> /etc (absolute), and its own /etc/hostname.
        std::os::unix::fs::symlink("/etc", root.path().join("escape")).unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/hostname"), b"inside-the-root\n").unwrap();

        let mut child = Command::new("chroot")
            .arg(root.path())
            .arg("/waiter")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        // chroot(8) execs the waiter; wait until the pid's root is the new one.
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{pid}/root")).unwrap() != root.path() {
            assert!(
                std::time::Instant::now() < deadline,
                "chroot did not happen"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }

        let mut f = open_in_process_root(pid, "/escape/hostname").unwrap();
        let (bytes, _) = read_capped(&mut f, 100).unwrap();
        assert_eq!(
            bytes, b"inside-the-root\n",
            "the symlink escaped to the host's /etc"
        );

        child.stdin.take().unwrap().write_all(b"").unwrap();
        child.wait().unwrap();
    }
}
