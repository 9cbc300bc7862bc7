# Helpers of the NixOS VM tests (nix/tests.nix prepends the constants KESTREL,
# CONFIG, TOTAL_BOUND, GROWTH_BOUND, GROWTH_UP_TO and AGENT_STATS, then appends
# one test).
#
# Every figure is measured in the guest: the vCPU topology from sysfs, the
# agent's kernel memory from /proc/PID/fdinfo of its BPF maps, its privileges
# from /proc/PID/status, and a `kestrel record` next to it for per-CPU samples
# and per-map measured-versus-planned bytes.

import json
import time
from typing import Any

# Capability bits (linux/capability.h) the service must hold, and nothing else.
EXPECTED_CAPABILITIES = {
    "CAP_SYS_PTRACE": 19,
    "CAP_SYSLOG": 34,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}

# `kestrel record` runs as root next to the agent; its own symbol store keeps
# it off the agent's locked cache directory.
RECORD_ENV = "KESTREL_SYMBOLS__CACHE_DIR=/tmp/kestrel-record-cache"


def cpu_list(text: str) -> list[int]:
    """Expands a sysfs CPU list such as `0-3,6`."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-")
            cpus.extend(range(int(low), int(high) + 1))
        else:
            cpus.append(int(part))
    return cpus


def topology(machine: Any) -> dict[str, Any]:
    def read(name: str) -> str:
        return str(machine.succeed(f"cat /sys/devices/system/cpu/{name}")).strip()

    return {
        "online": cpu_list(read("online")),
        "possible": cpu_list(read("possible")),
        "present": cpu_list(read("present")),
        "kernel_max": int(read("kernel_max")),
    }


def check_topology(machine: Any, online: int, possible: int, by_kernel_param: bool) -> dict[str, Any]:
    topo = topology(machine)
    expected_possible = possible
    if by_kernel_param:
        # possible_cpus=N is capped by the kernel's NR_CPUS (kernel_max + 1).
        expected_possible = min(possible, topo["kernel_max"] + 1)
    print(f"guest topology: online {len(topo['online'])}, possible {len(topo['possible'])}, "
          f"kernel_max {topo['kernel_max']} (asked for online {online}, possible {possible})")
    assert len(topo["online"]) == online, f"guest has {len(topo['online'])} online CPUs, asked for {online}"
    assert len(topo["possible"]) == expected_possible, (
        f"guest has {len(topo['possible'])} possible CPUs, expected {expected_possible}. Without KVM "
        "(TCG), kernels since 6.9 ignore QEMU's hot-pluggable CPU slots unless they detect a "
        "hypervisor; run the VM tests on a builder with KVM."
    )
    return topo


def plan(machine: Any, extra: str = "") -> dict[str, Any]:
    return dict(json.loads(machine.succeed(f"{KESTREL} --config {CONFIG} plan --json {extra}")))


def agent_pid(machine: Any) -> str:
    pid = str(machine.succeed("systemctl show --property MainPID --value kestrel.service")).strip()
    assert pid not in ("", "0"), "kestrel.service has no main process"
    return pid


def agent_bpf_maps(machine: Any, pid: str) -> list[dict[str, str]]:
    """The BPF maps the agent holds, as the kernel accounts them (fdinfo)."""
    out = str(machine.succeed(f"grep -H -E '^(map_type|map_id|max_entries|memlock):' /proc/{pid}/fdinfo/* || true"))
    by_fd: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        path, _, rest = line.partition(":")
        key, _, value = rest.partition(":")
        by_fd.setdefault(path, {})[key.strip()] = value.strip()
    return [fields for fields in by_fd.values() if "map_type" in fields]


def agent_perf_events(machine: Any, pid: str) -> int:
    return int(str(machine.succeed(f"ls -l /proc/{pid}/fd | grep -c 'perf_event' || true")).strip())


def capability_names(mask: int) -> list[str]:
    return [name for name, bit in EXPECTED_CAPABILITIES.items() if mask & (1 << bit)] + (
        [f"{mask & ~sum(1 << bit for bit in EXPECTED_CAPABILITIES.values()):#x}"]
        if mask & ~sum(1 << bit for bit in EXPECTED_CAPABILITIES.values())
        else []
    )


def check_agent_privileges(machine: Any, pid: str) -> None:
    """Nothing outside the unit's capabilities, in any set. The agent may hold
    fewer: it drops what it no longer needs once its programs are loaded."""
    status = str(machine.succeed(f"cat /proc/{pid}/status"))
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    allowed = sum(1 << bit for bit in EXPECTED_CAPABILITIES.values())
    held = {name: int(fields[name].strip(), 16) for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")}
    for name, mask in held.items():
        assert mask & ~allowed == 0, f"agent {name} holds {capability_names(mask)}, beyond {list(EXPECTED_CAPABILITIES)}"
    uid = fields["Uid"].split()[0]
    assert uid != "0", "the agent runs as root"
    assert fields["NoNewPrivs"].strip() == "1", "NoNewPrivileges is not in effect"
    print(f"agent runs as uid {uid}; effective {capability_names(held['CapEff'])}, "
          f"bounding {capability_names(held['CapBnd'])}")


def wait_for_agent_maps(machine: Any) -> str:
    machine.wait_for_unit("kestrel.service")
    machine.wait_until_succeeds(
        "grep -q '^map_type:' /proc/$(systemctl show --property MainPID --value kestrel.service)/fdinfo/*",
        timeout=180,
    )
    return agent_pid(machine)


def check_agent_memory(machine: Any, pid: str, the_plan: dict[str, Any]) -> int:
    maps = agent_bpf_maps(machine, pid)
    measured = sum(int(fields["memlock"]) for fields in maps)
    print(f"agent holds {len(maps)} BPF maps, {measured} bytes; plan: {the_plan['total_bytes']} "
          f"(floor {the_plan['total_bytes_floor']}, cap {the_plan['total_bytes_cap']})")
    assert measured <= TOTAL_BOUND, f"agent's BPF maps use {measured} bytes, over {TOTAL_BOUND}"
    # Growable maps sit between their floor and their cap; fixed ones equal both.
    assert the_plan["total_bytes_floor"] <= measured <= the_plan["total_bytes_cap"], (
        f"agent's BPF maps use {measured} bytes, outside the plan's "
        f"[{the_plan['total_bytes_floor']}, {the_plan['total_bytes_cap']}]"
    )
    return measured


def check_agent_stats(machine: Any, the_plan: dict[str, Any]) -> None:
    """The agent's own counters: each map within its planned floor and cap,
    reports written by the default pprof_dir exporter."""
    machine.wait_until_succeeds(
        f"test -s {AGENT_STATS} && grep -q '\"reports\": [1-9]' {AGENT_STATS}", timeout=120
    )
    stats = json.loads(machine.succeed(f"cat {AGENT_STATS}"))
    measured = stats["bpf_memory_bytes"]
    bounds = {m["name"]: (m["bytes_floor"], m["bytes_cap"]) for m in the_plan["maps"]}
    print(f"agent counters: {stats['reports']} reports, BPF memory per map {measured}, exports {stats['exports']}")
    assert measured.keys() == bounds.keys(), f"agent's maps {sorted(measured)}, plan's {sorted(bounds)}"
    for name, size in measured.items():
        floor, cap = bounds[name]
        assert floor <= size <= cap, f"agent's map {name}: {size} bytes outside the plan's [{floor}, {cap}]"
    assert sum(measured.values()) <= TOTAL_BOUND
    assert stats["exports"]["pprof_dir"]["exported"] > 0, stats["exports"]


def start_load(machine: Any, seconds: int, busy_loops: str = "$(nproc)") -> None:
    """Keeps every online CPU busy and blocks now and then (off-CPU waits)."""
    machine.succeed(
        f"for i in $(seq {busy_loops}); do timeout {seconds} sh -c 'while :; do :; done' >/dev/null 2>&1 & done; "
        f"timeout {seconds} sh -c 'while :; do sleep 0.01; done' >/dev/null 2>&1 &"
    )


def record(machine: Any, seconds: int, out_dir: str) -> dict[str, Any]:
    machine.succeed(f"rm -rf {out_dir}")
    start_load(machine, seconds + 10)
    machine.succeed(f"{RECORD_ENV} {KESTREL} --config {CONFIG} record --duration {seconds} -o {out_dir} --no-progress")
    return dict(json.loads(machine.succeed(f"cat {out_dir}/stats.json")))


def check_record(stats: dict[str, Any], online: list[int], the_plan: dict[str, Any]) -> None:
    per_cpu = stats["samples"]["per_cpu"]
    print(f"record: {stats['samples']['received']} samples, per CPU {per_cpu}, "
          f"{stats['total_memlock_bytes']} bytes measured, {stats['total_planned_bytes']} planned")
    for cpu in online:
        assert int(per_cpu.get(str(cpu), 0)) > 0, f"online CPU {cpu} produced no samples: {per_cpu}"
    # Maps that grow on demand start at their floor and never pass their cap.
    bounds = {m["name"]: (m["bytes_floor"], m["bytes_cap"]) for m in the_plan["maps"]}
    for bpf_map in stats["maps"]:
        assert bpf_map["memlock_bytes"] == bpf_map["planned_bytes"], f"measured != planned: {bpf_map}"
        floor, cap = bounds[bpf_map["name"]]
        assert floor <= bpf_map["planned_bytes"] <= cap, f"{bpf_map} outside `kestrel plan`'s [{floor}, {cap}]"
    assert stats["total_memlock_bytes"] == stats["total_planned_bytes"]
    assert stats["total_memlock_bytes"] <= TOTAL_BOUND, f"{stats['total_memlock_bytes']} bytes, over {TOTAL_BOUND}"


def check_possible_cpu_growth(machine: Any, online: int, possible: int, the_plan: dict[str, Any]) -> None:
    base = plan(machine, f"--online {online} --possible {online}")
    growth = the_plan["total_bytes"] - base["total_bytes"]
    print(f"bytes that grow with possible CPUs ({online} -> {possible}): {growth}")
    if possible <= GROWTH_UP_TO:
        assert growth <= GROWTH_BOUND, f"{growth} bytes grow with possible CPUs, over {GROWTH_BOUND}"


def stop_agent(machine: Any) -> None:
    """SIGTERM: the agent flushes and exits cleanly."""
    machine.succeed("systemctl stop kestrel.service")
    result = str(machine.succeed("systemctl show --property Result --value kestrel.service")).strip()
    assert result == "success", f"kestrel.service stopped with result {result}"


def hotpluggable_slots(machine: Any) -> list[dict[str, Any]]:
    """Empty vCPU slots, as QEMU describes them (driver and socket/core/thread ids)."""
    client = getattr(machine, "qmp_client", None)
    if client is not None:
        reply = client.send("query-hotpluggable-cpus")
        return [
            {"driver": entry["type"], **entry["props"]}
            for entry in reply["return"]
            if "qom-path" not in entry
        ]
    # Test drivers without QMP access: the human monitor's text form.
    text = str(machine.send_monitor_command("info hotpluggable-cpus"))
    slots: list[dict[str, Any]] = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        value = value.strip().strip('"')
        if key == "type":
            slots.append({"driver": value})
        elif slots and key.endswith("-id"):
            slots[-1][key] = int(value)
        elif slots and key == "qom_path":
            slots[-1]["plugged"] = True
    return [slot for slot in slots if not slot.pop("plugged", False)]


def hot_add(machine: Any, slot: dict[str, Any], device_id: str) -> None:
    client = getattr(machine, "qmp_client", None)
    if client is not None:
        client.send("device_add", {**slot, "id": device_id})
    else:
        props = ",".join(f"{key}={value}" for key, value in slot.items() if key != "driver")
        machine.send_monitor_command(f"device_add {slot['driver']},{props},id={device_id}")


def set_online(machine: Any, cpu: int, online: bool) -> None:
    machine.succeed(f"echo {1 if online else 0} > /sys/devices/system/cpu/cpu{cpu}/online")
    machine.wait_until_succeeds(f"test $(cat /sys/devices/system/cpu/cpu{cpu}/online) = {1 if online else 0}")


def wait_for_perf_events(machine: Any, pid: str, count: int) -> None:
    """The agent keeps one sampling perf event per online CPU."""
    deadline = time.monotonic() + 60
    while True:
        held = agent_perf_events(machine, pid)
        if held == count:
            print(f"agent holds {held} perf events")
            return
        assert time.monotonic() < deadline, f"agent holds {held} perf events, expected {count} (one per online CPU)"
        time.sleep(1)
