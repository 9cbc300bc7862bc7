#!/usr/bin/env bash
# Runs the kestrel binary inside an approximation of the NixOS module's systemd
# sandbox, on a host without systemd as PID 1, to check that the unit's
# hardening still lets Kestrel work, and that the options it leaves off would
# really break something.
#
#   NIXPKGS_LIB=/path/to/nixpkgs/lib bash nix/check-hardening.sh [KESTREL-BINARY]
#
# Needs: root with BPF and perf events, nix-instantiate, a nixpkgs lib/ (the
# unit comes from evaluating nix/module.nix through nix/eval-module.nix),
# python3-seccomp, util-linux (unshare, setpriv), gcc, systemd-analyze, and a
# built kestrel (default target/debug/kestrel). x86_64 only (the workload's
# "JIT" code is x86 machine code). Not part of .ci/run. (No KESTREL_* variables
# here: Kestrel reads those as configuration.)
#
# Emulated from the evaluated unit: User= (as nobody; the kestrel user does not
# exist here), AmbientCapabilities=, CapabilityBoundingSet=, NoNewPrivileges=,
# SystemCallFilter=, SystemCallErrorNumber=, RestrictAddressFamilies=, UMask=,
# Environment= (and nothing else, as systemd starts services with a clean
# environment), PrivateTmp=, ProtectHome=, ProtectSystem=strict (root and /sys
# remounted read-only), StateDirectory= and CacheDirectory= (fresh each run).
# Not emulated: MemoryMax=, LimitMEMLOCK= (cannot be raised here),
# PrivateDevices=, InaccessiblePaths=, ReadOnlyPaths=, and the Protect*= flags
# that only take away capabilities already outside the bounding set.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

: "${NIXPKGS_LIB:?set NIXPKGS_LIB to a nixpkgs lib/ directory}"
kestrel=$(realpath "${1:-$repo/target/debug/kestrel}")
[ -x "$kestrel" ] || { echo "no kestrel binary at $kestrel: cargo build -p kestrel" >&2; exit 2; }
[ "$(uname -m)" = x86_64 ] || { echo "check-hardening.sh is x86_64 only" >&2; exit 2; }
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\nsandbox = false'

# Not under /var/lib, /var/cache, /tmp, /home or /root: the sandbox hides those.
work=$(mktemp -d /run/kestrel-hardening.XXXXXX)
workloads=()
cleanup() {
  for pid in "${workloads[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work" /home/kestrel-hardening-workload /root/.kestrel-hardening-workload
}
trap cleanup EXIT
chmod 755 "$work"

failures=0
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }

echo "== evaluating nix/module.nix with $NIXPKGS_LIB"
nix-instantiate --eval --strict --json nix/eval-module.nix \
  --arg lib "import $NIXPKGS_LIB" >"$work/eval.json"
# The unit of the default configuration, as shell variables.
eval "$(/usr/bin/python3 - "$work/eval.json" "$work/kestrel.toml" <<'EOF'
import json, shlex, sys
scenario = json.load(open(sys.argv[1]))["scenarios"]["defaults"]
open(sys.argv[2], "w").write(scenario["configText"])
unit = scenario["serviceConfig"]
def caps(key):
    return ",".join(["-all"] + ["+" + c.removeprefix("CAP_").lower() for c in unit[key]])
values = {
    "ambient": caps("AmbientCapabilities"),
    "bounding": caps("CapabilityBoundingSet"),
    "nnp": "--no-new-privs" if unit["NoNewPrivileges"] else "",
    "syscalls": " ".join(unit["SystemCallFilter"]),
    "syscall_errno": unit["SystemCallErrorNumber"],
    "families": " ".join(unit["RestrictAddressFamilies"]),
    "umask": unit["UMask"],
    "private_tmp": str(unit["PrivateTmp"]).lower(),
    "protect_home": str(unit["ProtectHome"]).lower(),
    "protect_system": unit["ProtectSystem"],
    "protect_kernel_tunables": str(unit["ProtectKernelTunables"]).lower(),
}
for key, value in values.items():
    print(f"{key}={shlex.quote(value)}")
EOF
)"
chmod 644 "$work/kestrel.toml"
echo "unit: caps $ambient, filter '$syscalls' ($syscall_errno), families '$families'," \
  "PrivateTmp=$private_tmp ProtectHome=$protect_home ProtectSystem=$protect_system" \
  "ProtectKernelTunables=$protect_kernel_tunables"

echo "== workloads"
# A program whose function names only its ELF file knows, which also runs
# "JIT" code named only in /tmp/perf-PID.map: one copy in a world-readable
# directory under /home (hidden from the agent by ProtectHome=), one under
# /root (mode 0700: readable only with CAP_DAC_READ_SEARCH).
cat >"$work/workload.c" <<'EOF'
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

__attribute__((noinline)) void kestrel_hardening_spin(void) {
    for (volatile unsigned long i = 0; i < 100000000UL; i++) {
    }
}

int main(void) {
    /* mov ecx, 0x8000000; dec ecx; jnz .-2; ret */
    static const unsigned char loop[] = {0xb9, 0x00, 0x00, 0x00, 0x08, 0xff, 0xc9, 0x75, 0xfc, 0xc3};
    unsigned char *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) return 1;
    memcpy(code, loop, sizeof loop);
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
    FILE *map = fopen(path, "w");
    if (!map) return 1;
    fprintf(map, "%lx %zx kestrel_hardening_jit\n", (unsigned long)code, sizeof loop);
    fclose(map);
    for (;;) {
        ((void (*)(void))code)();
        kestrel_hardening_spin();
    }
}
EOF
mkdir -p /home/kestrel-hardening-workload /root/.kestrel-hardening-workload
chmod 755 /home/kestrel-hardening-workload
gcc -O1 -g -fno-omit-frame-pointer -o /home/kestrel-hardening-workload/spin-home "$work/workload.c"
cp /home/kestrel-hardening-workload/spin-home /root/.kestrel-hardening-workload/spin-root
/home/kestrel-hardening-workload/spin-home >/dev/null 2>&1 &
workloads+=($!)
home_pid=$!
/root/.kestrel-hardening-workload/spin-root >/dev/null 2>&1 &
workloads+=($!)
echo "spin-home pid $home_pid, spin-root pid $!; $(stat -c '%A' /root) /root"

# sandboxed NAME [--hide-kallsyms] [--extra-cap CAP] [--env VAR=VALUE] [--probe] [--exec] -- KESTREL-ARGS...
# Runs kestrel as nobody in the emulated unit, with its own output and cache.
# --exec replaces the calling (sub)shell, so that `sandboxed ... &` leaves the
# kestrel process itself in $! (unshare, bash, python and setpriv all exec).
sandboxed() {
  local name=$1 hide_kallsyms=false extra_caps="" probe="" exec="" extra_env=""
  shift
  while [ "$1" != -- ]; do
    case $1 in
      --hide-kallsyms) hide_kallsyms=true ;;
      --extra-cap) extra_caps+=",+$2"; shift ;;
      --probe) probe=--probe ;;
      --exec) exec=exec ;;
      --env) extra_env+=" $2"; shift ;;
    esac
    shift
  done
  shift
  mkdir -p "$work/$name"
  chown -R 65534:65534 "$work/$name"
  $exec unshare --mount --propagation private bash -euo pipefail -c '
    work=$1 name=$2 hide_kallsyms=$3 probe=$4 extra_caps=$5 extra_env=$6; shift 6
    if [ "$private_tmp" = true ]; then
      mount -t tmpfs -o mode=1777 tmpfs /tmp
      mount -t tmpfs -o mode=1777 tmpfs /var/tmp
    fi
    if [ "$protect_home" = true ]; then
      for dir in /home /root /run/user; do
        if [ -d "$dir" ]; then mount -t tmpfs -o mode=000 tmpfs "$dir"; fi
      done
    fi
    mount --bind "$work" "$work"
    # StateDirectory= and CacheDirectory=: fresh, owned by the service user
    # (here nobody), the only writable places besides $work.
    for dir in /var/lib:0750 /var/cache:0700; do
      mount -t tmpfs -o mode=755 tmpfs "${dir%:*}"
      install -d -o 65534 -g 65534 -m "${dir#*:}" "${dir%:*}/kestrel"
      mount --bind "${dir%:*}/kestrel" "${dir%:*}/kestrel"
      mount -o remount,bind,ro "${dir%:*}"
    done
    if [ "$protect_system" = strict ]; then
      mount -o remount,bind,ro /
      mount -o remount,bind,ro /sys
    fi
    # What ProtectKernelTunables=yes would do to /proc/kallsyms.
    if [ "$hide_kallsyms" = true ]; then mount --bind /dev/null /proc/kallsyms; fi
    umask "$umask"
    cd "$work/$name"
    exec env -i PATH="$PATH" NO_COLOR=1 $extra_env \
      /usr/bin/python3 "$repo/nix/sandbox_exec.py" --filter "$syscalls" \
        --errno "$syscall_errno" --families "$families" $probe -- \
      setpriv --reuid 65534 --regid 65534 --clear-groups $nnp \
        --inh-caps "$ambient$extra_caps" --ambient-caps "$ambient$extra_caps" \
        --bounding-set "$bounding$extra_caps" "$kestrel" --config "$work/kestrel.toml" "$@"
  ' sandboxed "$work" "$name" "$hide_kallsyms" "$probe" "$extra_caps" "$extra_env" "$@"
}
export repo kestrel private_tmp protect_home protect_system umask syscalls syscall_errno families nnp ambient bounding

# Frames of a folded file: named = not a raw address.
frames() { grep -o "[^;]*$2" "$1" | sed 's/ [0-9]*$//' | sort -u; }
named_kernel_frames() { frames "$1" '_\[k\]' | grep -vc '^0x' || true; }
all_kernel_frames() { frames "$1" '_\[k\]' | wc -l; }

check_stats() {
  /usr/bin/python3 - "$1" <<'EOF'
import json, sys
stats = json.load(open(sys.argv[1]))
for m in stats["maps"]:
    assert m["memlock_bytes"] == m["planned_bytes"], m
assert stats["total_memlock_bytes"] <= 8 * 1024 * 1024, stats["total_memlock_bytes"]
assert stats["samples"]["received"] > 0
print(f"{stats['samples']['received']} samples, {len(stats['maps'])} maps, "
      f"{stats['total_memlock_bytes']} bytes measured == planned")
EOF
}

echo "== kestrel check in the sandbox"
if sandboxed check --probe -- check >"$work/check.log" 2>&1; then
  pass "kestrel check: everything Kestrel needs is available under the unit's restrictions"
  grep '^probe:' "$work/check.log" | sed 's/^/        /'
else
  fail "kestrel check in the sandbox:"; sed 's/^/        /' "$work/check.log"
fi

record() { sandboxed "$1" "${@:2}" -- record -F 99 --duration 5 -o "$work/$1/out" --no-progress >"$work/$1.log" 2>&1; }

echo "== kestrel record in the sandbox (the unit as configured)"
if record unit; then
  folded=$work/unit/out/profile.folded
  if stats=$(check_stats "$work/unit/out/stats.json"); then pass "record: $stats"; else fail "record stats: $stats"; fi
  if grep -q '^spin-home;.*kestrel_hardening_spin' "$folded"; then
    pass "binary under /home (hidden by ProtectHome=) symbolized through /proc/PID/root"
  else fail "binary under /home not symbolized: ProtectHome= hides it"; fi
  if grep -q '^spin-home;.*kestrel_hardening_jit' "$folded"; then
    pass "/tmp/perf-PID.map (hidden by PrivateTmp=) read through /proc/PID/root"
  else fail "perf map not read: PrivateTmp= hides it"; fi
  named=$(named_kernel_frames "$folded")
  if [ "$named" -gt 0 ]; then pass "kernel frames named ($named distinct names): /proc/kallsyms readable with CAP_SYSLOG"
  else fail "no kernel frame has a name"; fi
  if grep -q '^spin-root;.*\[spin-root\]+0x' "$folded"; then
    echo "  note  binary under /root (0700) not symbolized: file permissions still apply (readAnyFile adds CAP_DAC_READ_SEARCH)"
  fi
else
  fail "kestrel record in the sandbox failed:"; sed 's/^/        /' "$work/unit.log"
fi

echo "== what the module's readAnyFile adds"
if record read-any-file --extra-cap dac_read_search \
  && grep -q '^spin-root;.*kestrel_hardening_spin' "$work/read-any-file/out/profile.folded"; then
  pass "with CAP_DAC_READ_SEARCH the binary under /root is symbolized too"
else
  fail "CAP_DAC_READ_SEARCH did not make the binary under /root readable"
fi

echo "== why ProtectKernelTunables= is off"
if record kallsyms-hidden --hide-kallsyms; then
  folded=$work/kallsyms-hidden/out/profile.folded
  named=$(named_kernel_frames "$folded")
  total=$(all_kernel_frames "$folded")
  if [ "$total" -gt 0 ] && [ "$named" -eq 0 ]; then
    pass "with /proc/kallsyms inaccessible (as ProtectKernelTunables=yes makes it) all $total kernel frames are bare addresses"
  else
    fail "hiding /proc/kallsyms left $named of $total kernel frames named: the reason for ProtectKernelTunables=false is gone"
  fi
else
  fail "record with /proc/kallsyms hidden failed:"; sed 's/^/        /' "$work/kallsyms-hidden.log"
fi

echo "== kestrel run (the unit's ExecStart) in the sandbox"
if "$kestrel" run --help >/dev/null 2>&1; then
  # With off-CPU profiling on, so that its maps and tracing programs load too.
  sandboxed agent --exec --env KESTREL_AGENT__STATS_FILE="$work/agent/stats.json" \
    --env KESTREL_AGENT__REPORT_INTERVAL_S=1 --env KESTREL_OFF_CPU__PROBABILITY=1 \
    -- run >"$work/agent.log" 2>&1 &
  agent=$!
  sleep 10
  kill -TERM "$agent" 2>/dev/null || true
  if wait "$agent"; then pass "kestrel run ran 10 s and exited 0 on SIGTERM"
  else fail "kestrel run in the sandbox:"; tail -20 "$work/agent.log" | sed 's/^/        /'; fi
  if memory=$(/usr/bin/python3 - "$work/agent/stats.json" "$kestrel" "$work/kestrel.toml" <<'EOF'
import json, subprocess, sys
stats = json.load(open(sys.argv[1]))
plan = json.loads(subprocess.run(
    [sys.argv[2], "--config", sys.argv[3], "plan", "--json", "--off-cpu-probability", "1"],
    check=True, capture_output=True, text=True).stdout)
measured = stats["bpf_memory_bytes"]
# Maps that grow on demand start at their floor and never pass their cap.
bounds = {m["name"]: (m["bytes_floor"], m["bytes_cap"]) for m in plan["maps"]}
assert measured.keys() == bounds.keys(), f"agent's maps {sorted(measured)}, plan's {sorted(bounds)}"
for name, size in measured.items():
    assert bounds[name][0] <= size <= bounds[name][1], f"{name}: {size} bytes outside {bounds[name]}"
assert sum(measured.values()) <= 8 * 1024 * 1024
exported = stats["exports"]["pprof_dir"]["exported"]
assert exported > 0, stats["exports"]
assert stats["off_cpu_waits"] > 0, "no off-CPU waits measured"
print(f"{stats['reports']} reports ({exported} written by pprof_dir to the StateDirectory), "
      f"{stats['samples_received']} samples, {stats['off_cpu_waits']} off-CPU waits, "
      f"{len(measured)} BPF maps, {sum(measured.values())} bytes, each within its planned floor and cap")
EOF
  ); then pass "agent's own counters: $memory"; else fail "agent counters: $memory"; fi
else
  echo "  skip  this kestrel has no \`run\` command yet"
fi

echo "== the VM tests' helpers, run against this host (nix/dry_run_vm_helpers.py)"
if "$kestrel" run --help >/dev/null 2>&1; then
  nix-instantiate --eval --strict --json --read-write-mode nix/eval-flake.nix \
    --argstr libPath "$NIXPKGS_LIB" >"$work/flake.json"
  /usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["checks"]["x86_64-linux"]["vm-o2-p8"]["guest"]["kestrelConfig"], end="")' \
    "$work/flake.json" >"$work/guest.toml"
  if /usr/bin/python3 nix/dry_run_vm_helpers.py "$kestrel" "$work/guest.toml" nix/vm_test_helpers.py >"$work/dry-run.log" 2>&1; then
    pass "a topology test's steps pass with a guest's configuration on this host"
    grep -E '^(guest topology|agent|record|bytes that grow)' "$work/dry-run.log" | sed 's/^/        /'
  else
    fail "dry run of the VM tests' helpers:"; tail -25 "$work/dry-run.log" | sed 's/^/        /'
  fi
else
  echo "  skip  this kestrel has no \`run\` command yet"
fi

echo
if [ "$failures" -eq 0 ]; then echo "check-hardening: all checks passed"; else echo "check-hardening: $failures check(s) failed"; exit 1; fi
