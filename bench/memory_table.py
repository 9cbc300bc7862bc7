#!/usr/bin/env python3
"""Kernel-memory table for docs/benchmarks.md: `kestrel plan` totals beside the reference agent.

For each (online, possible) CPU topology and pid_max, runs

    kestrel plan --json --online N --possible M --off-cpu-probability P --pid-max X

at P = 0 and P = 1 and prints a Markdown table of the plan's total at its floor
(what it allocates at start) and at its cap (the most live tiers may grow to),
beside the reference agent's off-CPU table: its original size (per-CPU LRU hash
with pid_max entries per possible CPU) and its current one, as `kestrel plan`
reports them in `reference`. Nothing here is computed by this script; every
number is read from the plan's JSON.

usage: bench/memory_table.py [--kestrel target/release/kestrel] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOPOLOGIES = [(2, 2), (16, 128), (64, 240)]
PID_MAXES = [32768, 4194304]
PROBABILITIES = ["0", "1"]


def plan(kestrel: Path, online: int, possible: int, probability: str, pid_max: int) -> dict:
    argv = [str(kestrel), "plan", "--json", "--online", str(online), "--possible", str(possible),
            "--off-cpu-probability", probability, "--pid-max", str(pid_max)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"memory_table: {' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout)


def human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kestrel", type=Path, default=REPO / "target/release/kestrel")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()

    rows = []
    for online, possible in TOPOLOGIES:
        for pid_max in PID_MAXES:
            plans = {p: plan(args.kestrel, online, possible, p, pid_max) for p in PROBABILITIES}
            # The reference agent's off-CPU table does not depend on Kestrel's p;
            # Kestrel reports it beside an off-CPU plan (p = 1).
            reference = plans["1"]["reference"]
            rows.append({
                "online": online, "possible": possible, "pid_max": pid_max,
                **{f"p{p}_floor": plans[p]["total_bytes_floor"] for p in PROBABILITIES},
                **{f"p{p}_cap": plans[p]["total_bytes_cap"] for p in PROBABILITIES},
                "reference_original": reference["original_offcpu_bytes"],
                "reference_current": reference["current_offcpu_bytes"],
            })

    print("| online / possible CPUs | pid_max | Kestrel p = 0: floor … cap | Kestrel p = 1: floor … cap "
          "| reference off-CPU table, original | reference, current | original ÷ Kestrel p = 1 cap |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['online']} / {r['possible']} | {r['pid_max']:,} "
              f"| {human(r['p0_floor'])} … {human(r['p0_cap'])} "
              f"| {human(r['p1_floor'])} … {human(r['p1_cap'])} "
              f"| {human(r['reference_original'])} ({r['reference_original']:,} B) "
              f"| {human(r['reference_current'])} ({r['reference_current']:,} B) "
              f"| {r['reference_original'] / r['p1_cap']:,.0f}× |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
