#!/usr/bin/env python3
"""Kestrel against the profilers a user would pick instead, measured side by side.

One fixed workload (bench/workload.c: one thread per online CPU burning in known
functions) runs DURATION seconds, ROUNDS times, under each configuration:

  none            the workload alone (throughput baseline)
  kestrel         kestrel record -F 19 (on-CPU)
  kestrel-offcpu  kestrel record -F 19 --off-cpu-probability 1
  perf            perf record -F 19 -a -g, then perf report --stdio (symbolized)
  bpftrace        bpftrace -e 'profile:hz:19 { @[kstack, ustack, comm] = count(); }'

Every profiler is started, given START_DELAY seconds, then the workload (already
created and parked) is told to go; when it reports the end of its burn the profiler
gets SIGINT and we wait for it (and its post-processing) to finish. Configurations
run in forward order on even rounds and reversed on odd rounds.

Measured per run (see docs/benchmarks.md for the why of each):
  cpu_s      user+system CPU of every process of the tool, from wait4() rusage of
             each process we start (covers all its threads and waited-for children),
             post-processing (perf report, bpftrace's printing) included
  rss        peak resident set (ru_maxrss = the kernel's hiwater RSS, VmHWM), max
             over the tool's processes
  throughput the workload's rounds/s relative to the same round's unprofiled run
  samples    samples whose stack belongs to the workload, against
             19 Hz x online CPUs x DURATION; "symbolized" = of those, the share
             whose stack names burn_thread and burn_round

Only the standard library; run as root. Writes bench/results/latest.{md,json}
and a timestamped copy; raw tool outputs go to bench/results/raw/<timestamp>/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
FREQUENCY_HZ = 19
WORKLOAD_NAME = "kbench-burn"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# Each configuration: how to start it and how to post-process its output.
CONFIGS = ["none", "kestrel", "kestrel-offcpu", "perf", "bpftrace"]
KESTREL_ROWS = ["kestrel", "kestrel-offcpu"]
PEERS = ["perf", "bpftrace"]
BPFTRACE_PROGRAM = "profile:hz:19 { @[kstack, ustack, comm] = count(); }"

# The targets of issue 10.
CPU_RATIO_TARGET = 0.5  # Kestrel CPU <= half the cheapest peer's
SLOWDOWN_TARGET = 0.01  # workload slowdown < 1 %
RSS_TARGET_BYTES = 32 * MIB  # kestrel record peak RSS < 32 MiB
SAMPLES_TARGET = 0.99  # >= 99 % of expected samples


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_checked(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + " ".join(argv))
    return subprocess.run(argv, check=True, **kwargs)


# --------------------------------------------------------------------------- setup


def ensure_peers() -> None:
    """Install perf and bpftrace from apt when they are missing."""
    missing = [pkg for binary, pkg in (("perf", "linux-perf"), ("bpftrace", "bpftrace")) if shutil.which(binary) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        sys.exit(f"bench: {', '.join(missing)} missing and apt-get is not available: install them and rerun")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_checked(["apt-get", "update", "-qq"], env=env)
    run_checked(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def build_kestrel() -> Path:
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    run_checked([cargo, "build", "--release", "--locked", "-p", "kestrel"], cwd=REPO)
    return REPO / "target/release/kestrel"


def build_workload(out_dir: Path) -> Path:
    """Compile the workload with frame pointers (every profiler here unwinds by them)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        sys.exit("bench: no C compiler (cc, gcc or clang): apt-get install gcc")
    binary = out_dir / WORKLOAD_NAME
    run_checked(
        [compiler, "-O2", "-g", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer", "-pthread",
         "-o", str(binary), str(BENCH / "workload.c")]
    )
    return binary


def wait_until_quiet(max_minutes: float, threshold: float = 0.5, quiet_for_s: float = 60, poll_s: float = 30) -> dict:
    """Poll the 1-minute load until it stays below threshold for quiet_for_s; give up after max_minutes."""
    started = time.monotonic()
    quiet_since = None
    samples = []
    while True:
        load1 = float(Path("/proc/loadavg").read_text().split()[0])
        samples.append(load1)
        now = time.monotonic()
        if load1 < threshold:
            quiet_since = quiet_since if quiet_since is not None else now
            if now - quiet_since >= quiet_for_s:
                return {"quiet": True, "waited_s": round(now - started), "last_load1": load1}
        else:
            quiet_since = None
        if now - started >= max_minutes * 60:
            log(f"machine still busy after {max_minutes:g} min (load1 {load1}); running anyway")
            return {"quiet": False, "waited_s": round(now - started), "last_load1": load1}
        log(f"waiting for a quiet machine: load1 = {load1} (want < {threshold} for {quiet_for_s:g} s)")
        time.sleep(poll_s)


def wait_until_idle(budget_s: float, threshold: float, window_s: float = 20) -> float:
    """Between runs: wait until other processes use < threshold of all CPU time for two
    windows in a row (measured from /proc/stat, nothing of ours runs now); at most budget_s.
    Returns the seconds waited."""
    started = time.monotonic()
    calm_windows = 0
    ncpu = os.cpu_count() or 1
    while time.monotonic() - started < budget_s and calm_windows < 2:
        busy0 = system_busy_ticks()
        time.sleep(window_s)
        share = (system_busy_ticks() - busy0) / CLOCK_TICKS / (ncpu * window_s)
        calm_windows = calm_windows + 1 if share < threshold else 0
        log(f"  others use {share * 100:.1f} % of the CPUs (want < {threshold * 100:g} % twice)")
    return time.monotonic() - started


def machine_info(kestrel: Path) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    hypervisor = None
    try:
        check = json.loads(subprocess.run([str(kestrel), "check", "--json"], capture_output=True, text=True).stdout)
        hypervisor = (check.get("virtualization") or {}).get("hypervisor")
    except (json.JSONDecodeError, OSError):
        pass
    if hypervisor is None and re.search(r"^flags\s*:.*\bhypervisor\b", cpuinfo, re.M):
        hypervisor = "unknown hypervisor"

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    return {
        "nproc": os.cpu_count(),
        "online_cpus": Path("/sys/devices/system/cpu/online").read_text().strip(),
        "kernel": platform.release(),
        "cpu_model": model.group(1).strip() if model else "unknown",
        "virtualized": hypervisor is not None,
        "hypervisor": hypervisor,
        "versions": {
            "kestrel": version([str(kestrel), "--version"]),
            "perf": version(["perf", "--version"]),
            "bpftrace": version(["bpftrace", "--version"]),
            "cc": version([os.environ.get("CC") or "cc", "--version"]),
            "git": version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        },
    }


# --------------------------------------------------------------------------- process accounting


@dataclass
class Usage:
    """What wait4() tells about one finished process (and its waited-for children)."""

    cpu_s: float = 0.0
    maxrss_bytes: int = 0
    wall_s: float = 0.0
    returncode: int | None = None


def wait_usage(proc: subprocess.Popen, started: float, timeout_s: float) -> Usage:
    """Reap proc with wait4 to get its rusage; SIGKILL it after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() > deadline:
            log(f"pid {proc.pid} did not exit within {timeout_s:g} s: SIGKILL")
            os.kill(proc.pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Usage(
        cpu_s=rusage.ru_utime + rusage.ru_stime,
        maxrss_bytes=rusage.ru_maxrss * 1024,
        wall_s=time.monotonic() - started,
        returncode=proc.returncode,
    )


def run_usage(argv: list[str], stdout_path: Path, cwd: Path, timeout_s: float = 600) -> Usage:
    """Run a post-processing command to completion and return its rusage."""
    with open(stdout_path, "wb") as out, open(str(stdout_path) + ".stderr", "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd)
        return wait_usage(proc, started, timeout_s)


def proc_cpu_ticks(pid: int) -> int:
    """utime+stime of a live process (all its threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def perf_event_fds(pid: int) -> int:
    """How many perf events the process holds open (profilers open one per CPU)."""
    count = 0
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                count += os.readlink(fd) == "anon_inode:[perf_event]"
            except OSError:
                continue
    except OSError:
        return 0
    return count


def wait_ready(proc: subprocess.Popen, nproc: int, timeout_s: float) -> float | None:
    """Seconds until the tool holds a perf event per online CPU; None on timeout.

    The same test for every profiler; it matters because bpftrace 0.17 loses a
    SIGINT that arrives before it attached and then never exits.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            return None
        if perf_event_fds(proc.pid) >= nproc:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def system_busy_ticks() -> int:
    """Busy clock ticks of all CPUs (everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle


# --------------------------------------------------------------------------- tools


@dataclass
class ToolRun:
    """One profiler's processes and outputs during one run."""

    name: str
    out_dir: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    usages: dict = field(default_factory=dict)
    stop_to_output_s: float = 0.0


def start_tool(name: str, kestrel: Path, out_dir: Path) -> ToolRun:
    run = ToolRun(name, out_dir)
    if name == "none":
        return run
    if name in KESTREL_ROWS:
        probability = "1" if name == "kestrel-offcpu" else "0"
        argv = [str(kestrel), "record", "-F", str(FREQUENCY_HZ), "--duration", "86400",
                "--off-cpu-probability", probability, "-o", str(out_dir / "kestrel-out"), "--no-progress"]
    elif name == "perf":
        argv = ["perf", "record", "-F", str(FREQUENCY_HZ), "-a", "-g", "-o", str(out_dir / "perf.data")]
    elif name == "bpftrace":
        argv = ["bpftrace", "-o", str(out_dir / "bpftrace.out"), "-e", BPFTRACE_PROGRAM]
    else:
        raise ValueError(name)
    (out_dir / "argv.json").write_text(json.dumps(argv))
    run.started = time.monotonic()
    run.proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=open(out_dir / "tool.stdout", "wb"),
        stderr=open(out_dir / "tool.stderr", "wb"),
        cwd=out_dir,
        start_new_session=True,  # a terminal Ctrl-C reaches only the bench, which cleans up
    )
    return run


def stop_tool(run: ToolRun) -> None:
    """SIGINT, wait for the tool to write its output, then run its post-processing."""
    if run.proc is None:
        return
    stop_requested = time.monotonic()
    os.kill(run.proc.pid, signal.SIGINT)
    run.usages["record"] = wait_usage(run.proc, run.started, timeout_s=600)
    if run.name == "perf":
        # The symbolized profile a perf user reads: perf report with call chains.
        # -n and --sort comm,... give per-command sample counts; -g folded prints
        # every chain (threshold 0) so the stacks can be checked for names.
        argv = ["perf", "report", "--stdio", "-i", str(run.out_dir / "perf.data"), "--no-children", "-n",
                "--sort", "comm,dso,sym", "-g", "folded,0,caller,count"]
        (run.out_dir / "post-argv.json").write_text(json.dumps(argv))
        run.usages["report"] = run_usage(argv, run.out_dir / "perf-report.txt", run.out_dir)
    run.stop_to_output_s = time.monotonic() - stop_requested


# --------------------------------------------------------------------------- sample counting


@dataclass
class Samples:
    total: int = 0
    workload: int = 0
    symbolized: int = 0


def stack_is_symbolized(stack_text: str) -> bool:
    return "burn_thread" in stack_text and "burn_round" in stack_text


def count_kestrel(out_dir: Path) -> Samples:
    counts = Samples()
    for line in (out_dir / "kestrel-out/profile.folded").read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        counts.total += n
        if stack.split(";", 1)[0] == WORKLOAD_NAME:
            counts.workload += n
            counts.symbolized += n if stack_is_symbolized(stack) else 0
    return counts


PERF_ENTRY = re.compile(r"^\s+[\d.]+%\s+(\d+)\s+(.+?)\s{2,}")
PERF_CHAIN = re.compile(r"^(\d+) (.*)$")


def count_perf(out_dir: Path) -> Samples:
    counts = Samples()
    in_workload = False
    for line in (out_dir / "perf-report.txt").read_text(errors="replace").splitlines():
        entry = PERF_ENTRY.match(line)
        if entry:
            n = int(entry.group(1))
            counts.total += n
            in_workload = entry.group(2).strip() == WORKLOAD_NAME
            counts.workload += n if in_workload else 0
            continue
        chain = PERF_CHAIN.match(line)
        if chain and in_workload and stack_is_symbolized(chain.group(2)):
            counts.symbolized += int(chain.group(1))
    return counts


BPFTRACE_ENTRY = re.compile(r"^@\[(.*?)\]: (\d+)$", re.S | re.M)


def count_bpftrace(out_dir: Path) -> Samples:
    counts = Samples()
    text = (out_dir / "bpftrace.out").read_text(errors="replace")
    for entry in BPFTRACE_ENTRY.finditer(text):
        body, n = entry.group(1), int(entry.group(2))
        stacks, _, comm = body.rpartition(", ")
        counts.total += n
        if comm == WORKLOAD_NAME:
            counts.workload += n
            counts.symbolized += n if stack_is_symbolized(stacks) else 0
    return counts


def count_samples(name: str, out_dir: Path) -> Samples | None:
    if name in KESTREL_ROWS:
        return count_kestrel(out_dir)
    if name == "perf":
        return count_perf(out_dir)
    if name == "bpftrace":
        return count_bpftrace(out_dir)
    return None


# --------------------------------------------------------------------------- one run


def one_run(name: str, round_no: int, args, kestrel: Path, workload: Path, raw_dir: Path, attempt: int) -> dict:
    out_dir = raw_dir / f"r{round_no}-{name}" if attempt == 0 else raw_dir / f"r{round_no}-{name}-retry{attempt}"
    out_dir.mkdir(parents=True)
    # The workload process exists before the profiler starts and burns on a go line.
    burn = subprocess.Popen(
        [str(workload), str(args.duration)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(out_dir / "workload.stderr", "wb"),
        start_new_session=True,
    )
    burn_started = time.monotonic()
    tool = start_tool(name, kestrel, out_dir)
    extra_wait_s = 0.0
    try:
        time.sleep(args.start_delay)
        if tool.proc is not None:
            # Normally ready long before the delay ends; on a loaded machine wait on.
            waited = wait_ready(tool.proc, os.cpu_count() or 1, timeout_s=120)
            if waited is None:
                raise RuntimeError(f"{name} did not open its perf events within 120 s after the start delay, "
                                   f"or exited; see {out_dir}/tool.stderr")
            extra_wait_s = waited
        busy0, burn0 = system_busy_ticks(), proc_cpu_ticks(burn.pid)
        tool0 = proc_cpu_ticks(tool.proc.pid) if tool.proc else 0
        assert burn.stdin is not None and burn.stdout is not None  # both are PIPE above
        burn.stdin.write(b"go\n")
        burn.stdin.close()
        report_line = burn.stdout.readline()
        busy1, burn1 = system_busy_ticks(), proc_cpu_ticks(burn.pid)
        tool1 = proc_cpu_ticks(tool.proc.pid) if tool.proc else 0
        if not report_line:
            raise RuntimeError(f"the workload ended without its report; see {out_dir}/workload.stderr")
        burn_report = json.loads(report_line)
        stop_tool(tool)
    finally:
        if tool.proc is not None and tool.proc.returncode is None:
            os.kill(tool.proc.pid, signal.SIGKILL)
            os.waitpid(tool.proc.pid, 0)
        os.kill(burn.pid, signal.SIGTERM)
        burn_usage = wait_usage(burn, burn_started, timeout_s=30)

    window_s = burn_report["elapsed_s"]
    result = {
        "config": name,
        "round": round_no,
        "workload": burn_report,
        "workload_cpu_s": burn_usage.cpu_s,
        "extra_start_wait_s": extra_wait_s,
        "window": {
            "seconds": window_s,
            "system_busy_cpu_s": (busy1 - busy0) / CLOCK_TICKS,
            "workload_cpu_s": (burn1 - burn0) / CLOCK_TICKS,
            "tool_cpu_s": (tool1 - tool0) / CLOCK_TICKS,
        },
    }
    # CPU time nobody we measure used during the burn: other tenants of the machine.
    w = result["window"]
    w["foreign_cpu_s"] = max(0.0, w["system_busy_cpu_s"] - w["workload_cpu_s"] - w["tool_cpu_s"])
    if tool.proc is not None:
        for step, usage in tool.usages.items():
            if usage.returncode not in (0, None) and not (step == "record" and usage.returncode == -signal.SIGINT):
                log(f"warning: {name} {step} exited with {usage.returncode}; see {out_dir}")
        result["tool"] = {
            "cpu_s": sum(u.cpu_s for u in tool.usages.values()),
            "peak_rss_bytes": max(u.maxrss_bytes for u in tool.usages.values()),
            "steps": {k: vars(u) for k, u in tool.usages.items()},
            "stop_to_output_s": tool.stop_to_output_s,
        }
        samples = count_samples(name, out_dir)
        result["samples"] = vars(samples)
        if name in KESTREL_ROWS:
            stats = json.loads((out_dir / "kestrel-out/stats.json").read_text())
            result["kestrel_stats"] = {"samples": stats.get("samples"), "off_cpu": stats.get("off_cpu"),
                                       "total_memlock_bytes": stats.get("total_memlock_bytes"),
                                       "symbols": stats.get("symbols")}
    return result


# --------------------------------------------------------------------------- summary


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[dict], args, nproc: int) -> dict:
    expected = FREQUENCY_HZ * nproc * args.duration
    baseline = {r["round"]: r["workload"]["rounds_per_s"] for r in runs if r["config"] == "none"}
    rows = {}
    for name in CONFIGS:
        mine = [r for r in runs if r["config"] == name]
        if not mine:
            continue
        row = {
            "throughput_rounds_per_s": spread([r["workload"]["rounds_per_s"] for r in mine]),
            "relative_throughput": spread([r["workload"]["rounds_per_s"] / baseline[r["round"]] for r in mine]),
            "foreign_cpu_share": spread([r["window"]["foreign_cpu_s"] / (nproc * r["window"]["seconds"]) for r in mine]),
        }
        if name != "none":
            row["cpu_s"] = spread([r["tool"]["cpu_s"] for r in mine])
            row["peak_rss_bytes"] = spread([r["tool"]["peak_rss_bytes"] for r in mine])
            row["samples_vs_expected"] = spread([r["samples"]["workload"] / expected for r in mine])
            row["samples_vs_workload_cpu"] = spread(
                [r["samples"]["workload"] / (FREQUENCY_HZ * r["window"]["workload_cpu_s"]) for r in mine])
            row["record_cpu_s"] = spread([r["tool"]["steps"]["record"]["cpu_s"] for r in mine])
            row["post_cpu_s"] = spread([r["tool"]["cpu_s"] - r["tool"]["steps"]["record"]["cpu_s"] for r in mine])
            row["window_cpu_s"] = spread([r["window"]["tool_cpu_s"] for r in mine])
            row["stop_to_output_s"] = spread([r["tool"]["stop_to_output_s"] for r in mine])
            row["symbolized"] = spread(
                [r["samples"]["symbolized"] / r["samples"]["workload"] if r["samples"]["workload"] else 0.0 for r in mine])
        rows[name] = row
    return {"expected_samples": expected, "rows": rows, "targets": evaluate_targets(rows),
            "repeats": sum(r.get("attempt", 0) for r in runs),
            "noisy_kept": sum(1 for r in runs if r.get("noisy")), "max_noise": args.max_noise}


def evaluate_targets(rows: dict) -> list[dict]:
    peer_cpu = [rows[p]["cpu_s"]["median"] for p in PEERS if p in rows]
    cheapest = min(peer_cpu) if peer_cpu else None
    targets = []
    for name in KESTREL_ROWS:
        if name not in rows:
            continue
        row = rows[name]
        checks = []
        if cheapest is not None:
            ratio = row["cpu_s"]["median"] / cheapest
            checks.append(("CPU time <= 1/2 of the cheapest peer's", f"{ratio:.3f} of {cheapest:.2f} s",
                           ratio <= CPU_RATIO_TARGET))
        slowdown = 1 - row["relative_throughput"]["median"]
        checks.append(("workload slowdown < 1 %", f"{slowdown * 100:+.2f} %", slowdown < SLOWDOWN_TARGET))
        rss = row["peak_rss_bytes"]["median"]
        checks.append(("peak RSS < 32 MiB", f"{rss / MIB:.1f} MiB", rss < RSS_TARGET_BYTES))
        got = row["samples_vs_expected"]["median"]
        checks.append((">= 99 % of expected samples", f"{got * 100:.1f} %", got >= SAMPLES_TARGET))
        for target, measured, ok in checks:
            targets.append({"config": name, "target": target, "measured": measured, "pass": ok})
    return targets


def fmt_spread(s: dict, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    return f"{med:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def markdown(summary: dict, machine: dict, args, meta: dict) -> str:
    rows = summary["rows"]
    ref = rows.get("kestrel")
    lines = [
        f"Kestrel vs peers — {meta['finished']}, {args.rounds} rounds × {args.duration:g} s, "
        f"{FREQUENCY_HZ} Hz, start delay {args.start_delay:g} s",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']}, "
        f"{'VM: ' + str(machine['hypervisor']) if machine['virtualized'] else 'bare metal'}; "
        f"quiet wait: {meta['quiet']}",
        f"Expected samples per run: {FREQUENCY_HZ} × {machine['nproc']} CPUs × {args.duration:g} s = "
        f"{summary['expected_samples']:g}. Cells: median (min–max).",
        f"Runs repeated because other processes used > {summary['max_noise'] * 100:g} % of the CPUs during the "
        f"burn: {summary['repeats']}; runs kept although they did (retries or wait budget spent): "
        f"{summary['noisy_kept']}.",
        "",
        "| config | CPU s (all processes) | × Kestrel | peak RSS MiB | × Kestrel | throughput vs none "
        "| workload samples / expected | … / (19 × workload CPU-s) | symbolized | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        if name not in rows:
            continue
        row = rows[name]
        others = fmt_spread(row["foreign_cpu_share"], 100, 1, " %")
        if name == "none":
            tput = row["throughput_rounds_per_s"]
            lines.append(f"| none | – | – | – | – | {tput['median']:.0f} rounds/s (= 1) | – | – | – | {others} |")
            continue
        cpu_ratio = f"{row['cpu_s']['median'] / ref['cpu_s']['median']:.1f}×" if ref else "–"
        rss_ratio = f"{row['peak_rss_bytes']['median'] / ref['peak_rss_bytes']['median']:.1f}×" if ref else "–"
        lines.append(
            f"| {name} | {fmt_spread(row['cpu_s'], digits=3)} | {cpu_ratio} "
            f"| {fmt_spread(row['peak_rss_bytes'], 1 / MIB, 1)} | {rss_ratio} "
            f"| {fmt_spread(row['relative_throughput'], digits=4)} "
            f"| {fmt_spread(row['samples_vs_expected'], 100, 1, ' %')} "
            f"| {fmt_spread(row['samples_vs_workload_cpu'], 100, 1, ' %')} "
            f"| {fmt_spread(row['symbolized'], 100, 1, ' %')} | {others} |"
        )
    lines += ["", "Where the CPU goes (medians, seconds): the recording process over its whole life, the "
              "post-processing processes, the recording process during the burn only, and the wall time "
              "from SIGINT to the symbolized profile on disk.", "",
              "| config | recording process | post-processing | during the burn | SIGINT → output |",
              "|---|---|---|---|---|"]
    for name in CONFIGS:
        if name == "none" or name not in rows:
            continue
        row = rows[name]
        lines.append(f"| {name} | {row['record_cpu_s']['median']:.3f} | {row['post_cpu_s']['median']:.3f} "
                     f"| {row['window_cpu_s']['median']:.2f} | {row['stop_to_output_s']['median']:.2f} |")
    lines += ["", "| Kestrel config | target | measured (median) | result |", "|---|---|---|---|"]
    for t in summary["targets"]:
        lines.append(f"| {t['config']} | {t['target']} | {t['measured']} | {'PASS' if t['pass'] else 'MISS'} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=int(env.get("ROUNDS", 3)))
    parser.add_argument("--duration", type=float, default=float(env.get("DURATION", 20)),
                        help="seconds the workload burns per run (default 20)")
    parser.add_argument("--start-delay", type=float, default=float(env.get("START_DELAY", 3)),
                        help="seconds between starting a profiler and starting the burn (default 3)")
    parser.add_argument("--settle", type=float, default=float(env.get("SETTLE", 2)),
                        help="pause between runs (default 2 s)")
    parser.add_argument("--quiet-wait-min", type=float, default=float(env.get("QUIET_WAIT_MIN", 40)),
                        help="wait up to this many minutes for 1-min load < 0.5 during a minute (0 = no wait)")
    parser.add_argument("--max-noise", type=float, default=float(env.get("MAX_NOISE", 0.05)),
                        help="repeat a run when other processes used more than this share of the CPUs during "
                             "its burn (default 0.05)")
    parser.add_argument("--max-retries", type=int, default=int(env.get("MAX_RETRIES", 3)),
                        help="repeats per run at most (default 3)")
    parser.add_argument("--retry-wait-min", type=float, default=float(env.get("RETRY_WAIT_MIN", 30)),
                        help="minutes, over the whole bench, to wait for other processes before repeats (default 30)")
    parser.add_argument("--configs", default=env.get("CONFIGS", ",".join(CONFIGS)),
                        help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--skip-build", action="store_true", help="use target/release/kestrel as it is")
    args = parser.parse_args()
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown or "none" not in args.configs:
        parser.error(f"--configs must include none and only use {CONFIGS}; got {args.configs}")
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the profilers load BPF programs and open system-wide perf events)")
    ensure_peers()
    kestrel = REPO / "target/release/kestrel" if args.skip_build else build_kestrel()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    raw_dir = RESULTS / "raw" / stamp
    raw_dir.mkdir(parents=True)
    workload = build_workload(raw_dir)
    machine = machine_info(kestrel)
    quiet = wait_until_quiet(args.quiet_wait_min) if args.quiet_wait_min > 0 else {"quiet": None, "waited_s": 0}
    quiet_text = ("reached" if quiet["quiet"] else "gave up, machine busy" if quiet["quiet"] is False
                  else "skipped") + f" after {quiet['waited_s']} s"
    log(f"machine: {machine['nproc']} CPUs, {machine['kernel']}, {machine['cpu_model']}; quiet wait {quiet_text}")

    runs = []
    retry_budget_s = args.retry_wait_min * 60
    for round_no in range(args.rounds):
        order = args.configs if round_no % 2 == 0 else list(reversed(args.configs))
        for name in order:
            log(f"round {round_no + 1}/{args.rounds}: {name}")
            attempt = 0
            while True:
                result = one_run(name, round_no, args, kestrel, workload, raw_dir, attempt)
                noise = result["window"]["foreign_cpu_s"] / ((os.cpu_count() or 1) * result["window"]["seconds"])
                if noise <= args.max_noise or attempt >= args.max_retries or retry_budget_s <= 0:
                    break
                attempt += 1
                log(f"  others used {noise * 100:.1f} % of the CPUs during the burn (> {args.max_noise * 100:g} %): "
                    f"waiting for them, then repeating the run (attempt {attempt + 1})")
                retry_budget_s -= wait_until_idle(retry_budget_s, args.max_noise)
            result["attempt"] = attempt
            result["noisy"] = noise > args.max_noise
            runs.append(result)
            brief = f"{result['workload']['rounds_per_s']:.0f} rounds/s"
            if "tool" in result:
                brief += (f", cpu {result['tool']['cpu_s']:.3f} s, rss {result['tool']['peak_rss_bytes'] / MIB:.1f} MiB"
                          f", workload samples {result['samples']['workload']} ({result['samples']['symbolized']} named)")
            log(f"  {brief}; others' CPU {result['window']['foreign_cpu_s']:.2f} s")
            time.sleep(args.settle)

    summary = summarize(runs, args, machine["nproc"])
    meta = {"finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "quiet": quiet_text,
            "command": " ".join([sys.executable, *sys.argv])}
    table = markdown(summary, machine, args, meta)
    print("\n" + table)
    document = {"meta": meta, "quiet_wait": quiet, "machine": machine,
                "settings": {k: v for k, v in vars(args).items()}, "frequency_hz": FREQUENCY_HZ,
                "bpftrace_program": BPFTRACE_PROGRAM, "summary": summary, "runs": runs}
    for stem in (f"peers-{stamp}", "latest"):
        (RESULTS / f"{stem}.md").write_text(table)
        (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=1) + "\n")
    log(f"wrote {RESULTS}/latest.md, latest.json (raw outputs: {raw_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
