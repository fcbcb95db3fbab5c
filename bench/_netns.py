"""Run a benchmark body inside a throwaway network namespace (never the host's ruleset)."""

from __future__ import annotations

import os
import subprocess
import sys


def reexec_in_netns(tag: str) -> None:
    """Re-run this script inside a fresh netns unless already inside one; exit with its status."""
    if os.environ.get("NODEGUARD_BENCH_NETNS"):
        return
    name = f"ngbench-{tag}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        env = dict(os.environ, NODEGUARD_BENCH_NETNS=name)
        rc = subprocess.call(["ip", "netns", "exec", name, sys.executable, *sys.argv], env=env)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    sys.exit(rc)


def add_uplink() -> None:
    for cmd in ("ip link set lo up", "ip link add ngb0 type veth peer name ngb0p",
                "ip addr add 192.0.2.1/24 dev ngb0", "ip link set ngb0 up", "ip link set ngb0p up",
                "ip route add default via 192.0.2.254"):
        subprocess.run(cmd.split(), check=True)
