//! Tables built from real files on this machine: Debian's libc, python3.11, and a
//! C program compiled here without frame pointers, unwound live with the
//! reference unwinder.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kestrel_unwind::unwinder::{unwind, End, Regs};
use kestrel_unwind::{
    build, file_offset_of_vaddr, vaddr_of_file_offset, Built, CfaBase, RbpRule, UnwindRule,
};
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const PYTHON: &str = "/usr/bin/python3.11";

fn built(path: &str) -> (Vec<u8>, Built) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (a test input)"));
    let b = build(&bytes).unwrap();
    (bytes, b)
}

/// Function symbols (dynamic and static) with a size: (vaddr, size, name).
fn functions(elf: &[u8]) -> Vec<(u64, u64, String)> {
    let file = object::File::parse(elf).unwrap();
    let mut out: Vec<_> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0 && s.address() > 0)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
        .collect();
    out.sort();
    out.dedup_by_key(|f| f.0);
    out
}

fn rsp8() -> UnwindRule {
    UnwindRule::Cfa {
        base: CfaBase::Rsp,
        offset: 8,
        rbp: RbpRule::Unchanged,
    }
}

/// Entries give CFA = rsp + 8; a point inside gives a plausible CFA rule; the
/// PLT is marked; the row count is in the range measured for the file.
fn check_real_file(path: &str, rows: std::ops::Range<usize>) {
    let (bytes, b) = built(path);
    let s = &b.stats;
    eprintln!("{path}: {s:?}, {} B", b.table.bytes());
    assert!(rows.contains(&s.rows), "{path}: {} rows", s.rows);
    assert!(s.fdes > 1000 && s.fdes_skipped == 0 && s.section_errors == 0);
    assert!(
        b.table.bytes_per_row() <= 4.5,
        "{}",
        b.table.bytes_per_row()
    );

    let funcs = functions(&bytes);
    assert!(funcs.len() > 500, "{path}: {} functions", funcs.len());
    let (mut entries_ok, mut middles_ok, mut covered) = (0, 0, 0);
    for (vaddr, size, _) in &funcs {
        let Some(off) = file_offset_of_vaddr(&b.segments, *vaddr) else {
            continue;
        };
        let Some(rule) = b.table.lookup(off) else {
            continue;
        };
        covered += 1;
        entries_ok += usize::from(rule == rsp8());
        let mid = b.table.lookup(off + size / 2);
        let plausible = match mid {
            Some(UnwindRule::Cfa {
                base: CfaBase::Rsp,
                offset,
                ..
            }) => offset >= 8 && offset % 8 == 0 && offset < 1 << 20,
            Some(UnwindRule::Cfa {
                base: CfaBase::Rbp,
                offset,
                rbp,
            }) => offset == 16 && rbp == RbpRule::AtCfa(-16),
            _ => false,
        };
        middles_ok += usize::from(plausible);
    }
    eprintln!(
        "{path}: {covered}/{} functions covered, {entries_ok} entries rsp+8, {middles_ok} middles plausible",
        funcs.len()
    );
    assert!(covered * 100 >= funcs.len() * 95);
    assert!(entries_ok * 100 >= covered * 99, "{entries_ok}/{covered}");
    assert!(middles_ok * 100 >= covered * 97, "{middles_ok}/{covered}");

    // Every PLT entry after the first (PLT0 has explicit rows) is the PLT rule.
    let file = object::File::parse(&*bytes).unwrap();
    let plt = file.section_by_name(".plt").unwrap();
    let plt_off = file_offset_of_vaddr(&b.segments, plt.address()).unwrap();
    for a in plt_off + 16..plt_off + plt.size() {
        assert_eq!(
            b.table.lookup(a),
            Some(UnwindRule::Plt {
                base_offset: 8,
                threshold: 11
            }),
            "{path}: PLT offset {a:#x}"
        );
    }
    assert!(s.plt_rows >= 1);
    // Serialized and read back, the same table.
    assert_eq!(
        kestrel_unwind::Table::from_bytes(&b.table.to_bytes()).unwrap(),
        b.table
    );
}

#[test]
fn libc_table() {
    // 27k rows change the CFA or rbp rule in glibc 2.36 (measured); merged,
    // with padding gaps filled, 23k remain.
    check_real_file(LIBC, 20_000..35_000);
    let (bytes, b) = built(LIBC);
    // The signal trampoline is marked, and `__restore_rt`'s lookup (at the
    // return address - 1, one byte before the symbol) finds it.
    let restore = functions(&bytes)
        .into_iter()
        .find(|f| f.2 == "__restore_rt");
    if let Some((vaddr, _, _)) = restore {
        let off = file_offset_of_vaddr(&b.segments, vaddr).unwrap();
        assert_eq!(b.table.lookup(off - 1), Some(UnwindRule::SignalFrame));
    }
    assert!(b.stats.signal_rows >= 1);
}

#[test]
fn python_table() {
    check_real_file(PYTHON, 50_000..90_000);
    // A non-PIE executable: offsets and virtual addresses differ by the load
    // address, and the conversions are each other's inverse.
    let (_, b) = built(PYTHON);
    let seg = b.segments[0];
    assert_ne!(seg.vaddr, seg.offset);
    let off = file_offset_of_vaddr(&b.segments, seg.vaddr + 0x1234).unwrap();
    assert_eq!(
        vaddr_of_file_offset(&b.segments, off),
        Some(seg.vaddr + 0x1234)
    );
}

fn compile_chain(dir: &Path, extra: &[&str]) -> PathBuf {
    let exe = dir.join("chain");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chain.c");
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer"])
        .args(extra)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc runs (apt-get install gcc)");
    assert!(status.success());
    exe
}

type Frame = (String, String, Option<UnwindRule>);

struct Mapping {
    start: u64,
    end: u64,
    pgoff: u64,
    path: String,
}

fn executable_mappings(pid: i32) -> Vec<Mapping> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || !f[1].contains('x') || !f[5].starts_with('/') {
                return None;
            }
            let (s, e) = f[0].split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                pgoff: u64::from_str_radix(f[2], 16).ok()?,
                path: f[5].to_string(),
            })
        })
        .collect()
}

/// Unwinds the stopped process with tables built from its mapped files and names
/// every frame from the files' symbol tables: (file name, function, the rule
/// at the frame's lookup address).
fn unwind_and_name(pid: i32, regs: Regs) -> (Vec<Frame>, End) {
    let maps = executable_mappings(pid);
    let mut files: HashMap<String, (Vec<u8>, Built)> = HashMap::new();
    for m in &maps {
        files
            .entry(m.path.clone())
            .or_insert_with(|| built(&m.path));
    }
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mapping_of = |pc: u64| maps.iter().find(|m| m.start <= pc && pc < m.end);
    let (pcs, end) = unwind(
        regs,
        64,
        |pc| {
            let m = mapping_of(pc)?;
            files[&m.path].1.table.lookup(pc - m.start + m.pgoff)
        },
        |addr| {
            let mut b = [0u8; 8];
            mem.read_exact_at(&mut b, addr).ok()?;
            Some(u64::from_le_bytes(b))
        },
    );
    let names = pcs
        .iter()
        .enumerate()
        .map(|(i, pc)| {
            let at = if i == 0 { *pc } else { pc - 1 };
            let Some(m) = mapping_of(at) else {
                return ("?".into(), format!("{pc:#x}"), None);
            };
            let (bytes, b) = &files[&m.path];
            let vaddr = vaddr_of_file_offset(&b.segments, at - m.start + m.pgoff).unwrap();
            let name = functions(bytes)
                .into_iter()
                .find(|(a, s, _)| *a <= vaddr && vaddr < a + s)
                .map(|f| f.2)
                .unwrap_or_else(|| format!("{vaddr:#x}"));
            let file = m.path.rsplit('/').next().unwrap_or("").to_string();
            (file, name, b.table.lookup(at - m.start + m.pgoff))
        })
        .collect();
    (names, end)
}

/// Kills and reaps the child however the test ends (a failed assertion must not
/// leave a spinning process behind).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn regs_of(pid: Pid) -> Regs {
    let r = ptrace::getregs(pid).unwrap();
    Regs {
        rip: r.rip,
        rsp: r.rsp,
        rbp: Some(r.rbp),
    }
}

fn assert_chain(names: &[Frame], end: End, leaf: &[&str]) {
    let ours: Vec<&str> = names
        .iter()
        .filter(|(f, _, _)| f == "chain")
        .map(|(_, n, _)| n.as_str())
        .collect();
    let expected: Vec<&str> = leaf
        .iter()
        .copied()
        .chain(["level3", "level2_frame", "level1", "main", "_start"])
        .collect();
    assert_eq!(ours, expected, "{names:?}");
    assert_eq!(end, End::Complete, "{names:?}");
}

/// The leaf inside libc: `raise` stops the traced child, and the walk goes from
/// libc through the program (one rbp frame among rsp frames) back into libc's
/// start code and ends at `_start`'s undefined return address.
#[test]
fn unwinds_a_live_stack_stopped_inside_libc() {
    unwind_stopped_chain(&[]);
}

/// The program's own functions described by `.debug_frame` only (no
/// asynchronous unwind tables; the C runtime's start code keeps `.eh_frame`).
#[test]
fn unwinds_a_live_stack_described_by_debug_frame() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_chain(dir.path(), &["-g", "-fno-asynchronous-unwind-tables"]);
    let b = build(&fs::read(&exe).unwrap()).unwrap();
    assert!(b.stats.debug_frame_fdes >= 5, "{:?}", b.stats);
    unwind_stopped_chain(&["-g", "-fno-asynchronous-unwind-tables"]);
}

fn unwind_stopped_chain(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_chain(dir.path(), flags);
    let child = KillOnDrop(
        Command::new(&exe)
            .arg("stop")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = Pid::from_raw(child.0.id() as i32);
    let status = waitpid(pid, None).unwrap();
    assert!(
        matches!(status, WaitStatus::Stopped(_, Signal::SIGSTOP)),
        "{status:?}"
    );
    let (names, end) = unwind_and_name(pid.as_raw(), regs_of(pid));
    eprintln!("{names:?} {end:?}");
    assert_eq!(names[0].0, "libc.so.6", "{names:?}");
    assert_chain(&names, end, &["leaf_stop"]);
    drop(child);
}

/// The leaf in the program, interrupted anywhere in its loop, and a return
/// address past its caller's last instruction (a noreturn call).
#[test]
fn unwinds_a_live_stack_interrupted_in_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_chain(dir.path(), &[]);
    let child = KillOnDrop(
        Command::new(&exe)
            .arg("spin")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = Pid::from_raw(child.0.id() as i32);
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        ptrace::attach(pid).unwrap();
        let status = waitpid(pid, Some(WaitPidFlag::__WALL)).unwrap();
        assert!(matches!(status, WaitStatus::Stopped(_, _)), "{status:?}");
        let (names, end) = unwind_and_name(pid.as_raw(), regs_of(pid));
        assert_chain(&names, end, &["leaf_spin"]);
        assert_eq!(names.len(), 8, "{names:?}");
        ptrace::detach(pid, None).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child);
}

/// Across a signal frame: the handler stops in `leaf_stop`; below it the kernel's
/// frame (glibc's `__restore_rt`, a signal-frame rule), then `raise` interrupted
/// at an exact pc, then the program's chain.
#[test]
fn unwinds_a_live_stack_across_a_signal_frame() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_chain(dir.path(), &[]);
    let child = KillOnDrop(
        Command::new(&exe)
            .arg("signal")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = Pid::from_raw(child.0.id() as i32);
    // A tracee stops for each signal; pass SIGUSR1 on to run the handler.
    let status = waitpid(pid, None).unwrap();
    assert!(
        matches!(status, WaitStatus::Stopped(_, Signal::SIGUSR1)),
        "{status:?}"
    );
    ptrace::cont(pid, Signal::SIGUSR1).unwrap();
    let status = waitpid(pid, None).unwrap();
    assert!(
        matches!(status, WaitStatus::Stopped(_, Signal::SIGSTOP)),
        "{status:?}"
    );
    let (names, end) = unwind_and_name(pid.as_raw(), regs_of(pid));
    eprintln!("{names:?} {end:?}");
    assert_chain(&names, end, &["leaf_stop", "on_usr1"]);
    // The frame right above the handler is libc's signal trampoline.
    let handler = names.iter().position(|n| n.1 == "on_usr1").unwrap();
    assert_eq!(names[handler + 1].0, "libc.so.6", "{names:?}");
    assert_eq!(
        names[handler + 1].2,
        Some(UnwindRule::SignalFrame),
        "{names:?}"
    );
    drop(child);
}
