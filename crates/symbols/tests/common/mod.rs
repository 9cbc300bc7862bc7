//! Helpers shared by the integration tests: build the C test programs with gcc,
//! run them, and ask binutils (`nm`, `addr2line`) for the facts to compare with.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use tempfile::TempDir;

pub fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")
}

/// Compiles `tests/programs/<name>.c` into a fresh temporary directory.
pub fn compile(name: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(name);
    let src = programs_dir().join(format!("{name}.c"));
    let status = Command::new("gcc")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc must be installed to build the test programs");
    assert!(status.success(), "gcc failed on {}", src.display());
    (dir, out)
}

/// A running test program with line-based stdin/stdout.
pub struct Program {
    pub child: Child,
    stdout: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
}

impl Program {
    pub fn spawn(path: &Path) -> Program {
        Program::spawn_command(&mut Command::new(path))
    }

    /// Runs `command` (e.g. a program under `chroot`) with piped stdin/stdout.
    pub fn spawn_command(command: &mut Command) -> Program {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        Program {
            child,
            stdout,
            stdin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "program ended before printing {prefix:?}");
            if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin (the programs exit then) and waits for the exit.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success());
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// Symbol -> (address, size) from `nm -S` (defined symbols with a size).
pub fn nm(path: &Path) -> HashMap<String, (u64, u64)> {
    let out = Command::new("nm").arg("-S").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[3].to_string(), (parse_hex(f[0]), parse_hex(f[1]))))
        })
        .collect()
}

/// One frame as binutils' addr2line reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFrame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// `addr2line -f -i` for an ELF virtual address: frames innermost first.
pub fn addr2line(path: &Path, address: u64) -> Vec<LineFrame> {
    let out = Command::new("addr2line")
        .args(["-f", "-i", "-e"])
        .arg(path)
        .arg(format!("{address:#x}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|c| {
            let (file, line) = c[1].rsplit_once(':').unwrap();
            let line = line.split_whitespace().next().unwrap().parse().unwrap_or(0);
            LineFrame {
                function: c[0].to_string(),
                file: file.to_string(),
                line,
            }
        })
        .collect()
}

/// The 1-based line of `tests/programs/<program>.c` tagged `LINE:<tag>`.
pub fn tagged_line(program: &str, tag: &str) -> u32 {
    let src = std::fs::read_to_string(programs_dir().join(format!("{program}.c"))).unwrap();
    let needle = format!("LINE:{tag} ");
    let idx = src
        .lines()
        .position(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no LINE:{tag} in {program}.c"));
    idx as u32 + 1
}

/// GNU build ID as `readelf -n` prints it.
pub fn readelf_build_id(path: &Path) -> Option<String> {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
}
