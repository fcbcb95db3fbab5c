"""The demo's and the flood bench's lab: a node with kube-proxy's rules, its pod, an attacker and a
client in throwaway namespaces (guard.lab), and the processes started in them.

Namespaces are named by guard.lab.netns (owner pid inside), so ``nodeguard demo --cleanup`` finds the
leftovers of a run killed with SIGKILL. Processes are started by ``Lab`` and ended by their pid.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..lab.netns import Netns, veth

NODE, GATEWAY, ATTACKER, CLIENT = "10.66.0.1", "10.66.0.254", "10.66.0.66", "10.66.0.20"
POD, POD_GW = "10.180.0.3", "10.180.0.254"
HOST_TCP, NODEPORT, UDP_PORT, HOST_SINK, HOST_RR = 8080, 3003, 5353, 8081, 8082
UPLINK = "up0"
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent.parent)


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP during a run: unwinds through every ``finally`` (cleanup)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise(signum: int, _frame) -> None:
    raise Interrupted(signum)


@contextmanager
def signals_unwind() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` in the main thread, so cleanup runs."""
    old = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def no_signals() -> Iterator[None]:
    """Cleanup must not itself be interrupted by a second Ctrl-C."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Lab:
    """Namespaces and processes of one run; ``close()`` removes all of them."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.netns: list[Netns] = []
        self.procs: list[subprocess.Popen] = []

    def ns(self, role: str) -> Netns:
        ns = Netns.owned(self.prefix, role)
        self.netns.append(ns)  # before creating it: a failure half-way still cleans up
        ns.create()
        return ns

    def spawn(self, ns: Netns, args: list[str], python: bool = False, **kw) -> subprocess.Popen:
        """Start a process in ``ns`` (its own session: a terminal's Ctrl-C reaches only us, and we end it)."""
        if python:
            args = [sys.executable, *args]
            kw.setdefault("env", python_env())
        proc = ns.popen(args, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 3.0) -> None:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
                proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc, timeout=1.0)
        for ns in reversed(self.netns):
            ns.remove()
        self.netns.clear()
        self.procs.clear()


def python_env() -> dict[str, str]:
    """The environment for a Python child that must import this very ``guard`` package."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [PACKAGE_PARENT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))


def nodeguard(ns: Netns, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """``nodeguard ARGS`` inside ``ns``, through the CLI only."""
    return ns.run([sys.executable, "-m", "guard", *args], check=check, timeout=timeout, env=python_env())


@dataclass
class NodeLab:
    lan: Netns
    node: Netns
    pod: Netns
    attacker: Netns
    client: Netns
    kube_rules: int


def build_node_lab(lab: Lab, counters: dict[str, str], counter_table: str) -> NodeLab:
    """The demo's and the bench's network (docstring of ``guard.demo.scenario``): a bridge "lan" with a
    gateway that silently drops replies to spoofed sources; the node (default route via its uplink,
    kube-proxy's iptables ruleset with NodePort 3003 -> pod 10.180.0.3:80, echo services), the pod,
    an attacker and a client. ``counters``: name -> nft match, counted at netdev ingress of the
    node's uplink in ``table netdev <counter_table>`` (read with ``parse_counters``)."""
    lan, node, pod = lab.ns("lan"), lab.ns("node"), lab.ns("pod")
    atk, cli = lab.ns("attacker"), lab.ns("client")
    lan.run(["ip", "link", "add", "br0", "type", "bridge"])
    lan.run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", "br0"])
    lan.run(["ip", "link", "set", "br0", "up"])
    lan.sysctl("net.ipv4.ip_forward", "1")
    lan.run(["ip", "route", "add", "blackhole", "default"])  # replies to spoofed sources end here, silently
    for ns, ifname, port, addr in ((node, UPLINK, "p-node", NODE), (atk, "eth0", "p-atk", ATTACKER),
                                   (cli, "eth0", "p-cli", CLIENT)):
        veth(ns, ifname, lan, port)
        lan.run(["ip", "link", "set", port, "master", "br0"])
        ns.run(["ip", "addr", "add", f"{addr}/24", "dev", ifname])
        ns.run(["ip", "route", "add", "default", "via", GATEWAY])
    veth(node, "pod0", pod, "eth0")
    node.run(["ip", "addr", "add", f"{POD_GW}/24", "dev", "pod0"])
    pod.run(["ip", "addr", "add", f"{POD}/24", "dev", "eth0"])
    pod.run(["ip", "route", "add", "default", "via", POD_GW])
    node.sysctl("net.ipv4.ip_forward", "1")
    node.sysctl("net.ipv4.tcp_syncookies", "1")

    rules = importlib.resources.files("guard.demo").joinpath("kube-proxy-iptables-tracepacket.rules")
    with importlib.resources.as_file(rules) as path:
        node.run(["iptables-nft-restore", str(path)])
    kube_rules = sum(1 for ln in node.run(["iptables-nft-save"]).stdout.splitlines() if ln.startswith("-A "))

    decl = "; ".join(f"add counter netdev {counter_table} in_{k}" for k in counters)
    rules_ = "; ".join(f"add rule netdev {counter_table} in {m} counter name in_{k}" for k, m in counters.items())
    node.run(["nft", f"add table netdev {counter_table}; {decl}; add chain netdev {counter_table} in "
                    f"{{ type filter hook ingress device {UPLINK} priority -1000; }}; {rules_}"])  # a tap: first

    services = [lab.spawn(node, ["-m", "guard.demo.services", NODE, f"tcp:{HOST_TCP}", f"udp:{UDP_PORT}",
                                 f"sink:{HOST_SINK}", f"rr:{HOST_RR}"], python=True, stderr=subprocess.DEVNULL),
                lab.spawn(pod, ["-m", "guard.demo.services", POD, "tcp:80"], python=True, stderr=subprocess.DEVNULL)]
    for p in services:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("an echo service did not start")
    return NodeLab(lan, node, pod, atk, cli, kube_rules)


def parse_counters(nft_json: str) -> dict[str, int]:
    """name -> packets from ``nft -j list table netdev T`` (names without the "in_"). Not
    ``list counters``: nft 1.0.6 fetches every set element of every table for it (1 s with a full meter
    in nodeguard's table), ``list table`` only its own table's (none here)."""
    return {o["counter"]["name"].removeprefix("in_"): o["counter"]["packets"]
            for o in json.loads(nft_json)["nftables"] if "counter" in o}
