#!/usr/bin/python3
"""Runs a command under the system call filter of Kestrel's systemd unit.

Used by nix/check-hardening.sh on a machine without systemd as PID 1. It
approximates what systemd does for SystemCallFilter=, SystemCallErrorNumber=
and RestrictAddressFamilies=: the named groups are expanded with this host's
`systemd-analyze syscall-filter` (the NixOS systemd is newer; its groups only
grow), the calls systemd always allows are added, everything else fails with
the configured errno, and socket() is allowed only for the listed families.

    sandbox_exec.py --filter '@system-service bpf perf_event_open' \
        --errno EPERM --families 'AF_UNIX AF_INET AF_INET6' [--probe] -- CMD...

--probe first checks, under the filter, that name resolution still works
without netlink and that a refused family fails as systemd makes it fail.
"""

import argparse
import errno
import os
import socket
import subprocess
import sys

import seccomp

# systemd.exec(5): implicitly allow-listed whatever the filter says.
ALWAYS_ALLOWED = ["execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"]


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter"], check=True, capture_output=True, text=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if not line.startswith(" ") and item.startswith("@"):
            current = item
            groups[current] = []
        elif current is not None:
            groups[current].append(item)
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        if name.startswith("@"):
            calls |= expand(groups[name], groups)
        else:
            calls.add(name)
    return calls


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--filter", required=True)
    parser.add_argument("--errno", default="EPERM")
    parser.add_argument("--families", required=True)
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    allowed = expand(args.filter.split(), syscall_groups()) | set(ALWAYS_ALLOWED)
    allowed.discard("socket")
    families = [getattr(socket, name) for name in args.families.split()]

    refused = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, args.errno)))
    unknown = []
    for name in sorted(allowed):
        try:
            refused.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            unknown.append(name)  # not a system call on this architecture
    for family in families:
        refused.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
    # Families outside the list fail with EAFNOSUPPORT, as RestrictAddressFamilies= does.
    for family in (socket.AF_NETLINK, socket.AF_PACKET):
        if family not in families:
            refused.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
    refused.load()
    print(f"sandbox_exec: {len(allowed)} system calls allowed, sockets: {args.families}", file=sys.stderr)

    if args.probe:
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            raise SystemExit("probe: a netlink socket was allowed")
        except OSError as refusal:
            assert refusal.errno == errno.EAFNOSUPPORT, refusal
        # AI_ADDRCONFIG (and sorting several results) makes glibc ask netlink
        # for the local addresses; it must fall back when that is refused.
        addresses = socket.getaddrinfo(
            "localhost", 4317, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
        )
        assert addresses, "no address for localhost"
        print(f"probe: netlink refused, name resolution still gives {len(addresses)} addresses", file=sys.stderr)

    os.execvp(command[0], command)
    return 1


if __name__ == "__main__":
    sys.exit(main())
