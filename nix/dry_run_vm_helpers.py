#!/usr/bin/python3
"""Runs the VM tests' helpers (nix/vm_test_helpers.py) on this host.

The NixOS VM tests cannot run where nixpkgs is unreachable. This drives the
same helper functions, in the order of a topology test, against the real
kestrel binary on this host instead of a guest: the agent is started as
`nobody` with exactly the unit's capabilities (standing in for the systemd
service; the few `systemctl` queries the helpers make are answered for it),
so the helpers' parsing of `kestrel plan --json`, stats.json, the agent's
counters file, /proc/PID/fdinfo and /proc/PID/status is checked for real.
Hotplug needs QEMU and is not covered.

    dry_run_vm_helpers.py KESTREL CONFIG.toml HELPERS.py
(run by nix/check-hardening.sh with a guest's rendered configuration).
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator

kestrel, guest_config, helpers_path = sys.argv[1:4]
scratch = tempfile.mkdtemp(prefix="kestrel-dry-run.", dir="/run")
os.chmod(scratch, 0o755)
state_dir = os.path.join(scratch, "state")
os.makedirs(state_dir)
os.chown(state_dir, 65534, 65534)

# The guest's file with its /var/lib/kestrel and /var/cache/kestrel moved here.
config_text = open(guest_config).read().replace("/var/lib/kestrel", state_dir)
config_path = os.path.join(scratch, "kestrel.toml")
with open(config_path, "w") as config_file:
    config_file.write(config_text)
os.chmod(config_path, 0o644)

caps = "-all,+bpf,+perfmon,+sys_ptrace,+syslog"
agent_env = {
    "PATH": os.environ["PATH"],
    "NO_COLOR": "1",
    "KESTREL_SYMBOLS__CACHE_DIR": os.path.join(state_dir, "cache"),
}
agent = subprocess.Popen(
    ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--no-new-privs",
     "--inh-caps", caps, "--ambient-caps", caps, "--bounding-set", caps,
     kestrel, "--config", config_path, "run"],
    env=agent_env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(scratch, "agent.log"), "w"),
)
agent_result = "running"


class LocalMachine:
    """The test driver's Machine, for this host and the agent started above."""

    def _run(self, command: str) -> subprocess.CompletedProcess:
        global agent_result
        command = command.replace(
            "$(systemctl show --property MainPID --value kestrel.service)", str(agent.pid)
        )
        if command == "systemctl show --property MainPID --value kestrel.service":
            return subprocess.CompletedProcess(command, 0, f"{agent.pid}\n", "")
        if command == "systemctl stop kestrel.service":
            agent.send_signal(signal.SIGTERM)
            agent_result = "success" if agent.wait(timeout=60) == 0 else "exit-code"
            return subprocess.CompletedProcess(command, 0, "", "")
        if command == "systemctl show --property Result --value kestrel.service":
            return subprocess.CompletedProcess(command, 0, f"{agent_result}\n", "")
        command = command.replace(f"--config {guest_config}", f"--config {config_path}")
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True)

    def succeed(self, command: str, timeout: int | None = None) -> str:
        result = self._run(command)
        assert result.returncode == 0, f"`{command}` failed ({result.returncode}): {result.stderr}"
        return str(result.stdout)

    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str:
        deadline = time.monotonic() + timeout
        while True:
            result = self._run(command)
            if result.returncode == 0:
                return str(result.stdout)
            assert time.monotonic() < deadline, f"`{command}` did not succeed in {timeout} s"
            time.sleep(1)

    def wait_for_unit(self, unit: str, timeout: int = 900) -> None:
        assert agent.poll() is None, f"the agent exited: {open(os.path.join(scratch, 'agent.log')).read()}"


@contextmanager
def subtest(name: str) -> Iterator[None]:
    print(f"subtest: {name}")
    yield


machine: Any = LocalMachine()
KESTREL = kestrel
CONFIG = config_path
TOTAL_BOUND = 8388608
GROWTH_BOUND = 1048576
GROWTH_UP_TO = 240
AGENT_STATS = os.path.join(state_dir, "agent-stats.json")
exec(open(helpers_path).read())

try:
    online = len(topology(machine)["online"])  # noqa: F821 (from the helpers)
    possible = len(topology(machine)["possible"])  # noqa: F821
    # The body of a topology test (nix/tests.nix), on this host's topology.
    topo = check_topology(machine, online, possible, False)  # noqa: F821
    machine.succeed(f"{KESTREL} --config {CONFIG} config")
    with subtest("agent runs unprivileged with exactly the needed capabilities"):
        pid = wait_for_agent_maps(machine)  # noqa: F821
        check_agent_privileges(machine, pid)  # noqa: F821
    with subtest("agent's BPF memory is within the plan and the bound"):
        the_plan = plan(machine)  # noqa: F821
        check_agent_memory(machine, pid, the_plan)  # noqa: F821
        check_agent_stats(machine, the_plan)  # noqa: F821
        check_possible_cpu_growth(machine, online, len(topo["possible"]), the_plan)  # noqa: F821
    with subtest("kestrel record: every online CPU sampled, measured == planned"):
        stats = record(machine, 5, os.path.join(scratch, "record"))  # noqa: F821
        check_record(stats, topo["online"], the_plan)  # noqa: F821
    with subtest("agent stops cleanly on SIGTERM"):
        stop_agent(machine)  # noqa: F821
    print("dry run: the VM tests' helpers pass against this host")
finally:
    if agent.poll() is None:
        agent.kill()
    subprocess.run(["rm", "-rf", scratch, "/tmp/kestrel-record-cache"])
