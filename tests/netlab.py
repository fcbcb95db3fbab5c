"""Kernel tests' labs, built on guard.lab: a victim and an attacker on a veth pair, a pod, and what
the tests read from a namespace (nft, status, counters) and run in it (servers, clients, floods).

Nothing here touches the root namespace's ruleset: every command runs under
``ip netns exec``. Namespaces are always deleted, even when a test fails.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from guard.lab import netns as core
from guard.render.ipt_names import chain_name as _ipt_chain_name

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kube-rulesets"  # copied from shared/, SOURCES.md kept
HELPERS = Path(__file__).resolve().parent / "helpers"
_ids = itertools.count()

VICTIM4, ATTACKER4, LEGIT4, TRUSTED4 = "10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4"
FRESH4 = ("10.77.0.5", "10.77.0.6", "10.77.0.7")  # sources a test keeps unused until its "brand-new client" step
VICTIM6, ATTACKER6, LEGIT6 = "fd77::1", "fd77::2", "fd77::3"
VICTIM_IF, ATTACKER_IF = "ngv0", "nga0"


def _whole_output(res: subprocess.CompletedProcess) -> AssertionError:
    """A failed command fails the test with everything it printed."""
    return AssertionError(f"{' '.join(res.args)} -> {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}")


class Netns(core.Netns):
    """guard.lab's namespace with what the tests read from it; a slow command (a loaded machine) gets
    120 s, and a failed one fails the test with its whole output."""

    timeout = 120
    failure = staticmethod(_whole_output)

    def nodeguard(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-m", "guard", *args], check=check)

    def nft_json(self, what: str = "ruleset") -> list[dict]:
        return json.loads(self.run(f"nft -j list {what}").stdout or '{"nftables": []}')["nftables"]

    def our_priorities(self) -> dict[str, int]:
        """nodeguard's base chains and their priorities, as the kernel has them."""
        return {c["chain"]["name"]: c["chain"]["prio"] for c in self.nft_json("chains")
                if c.get("chain", {}).get("table") == "nodeguard" and "prio" in c["chain"]}

    def conntrack_count(self) -> int:
        """conntrack -C; a failed or empty read fails the test (it must never read as 0 entries)."""
        out = self.run("conntrack -C").stdout.strip()
        assert out.isdigit(), f"conntrack -C printed {out!r}"
        return int(out)

    # --- nodeguard's own view, from ``status --json`` ------------------------------------
    def status(self, policy: str) -> dict:
        return json.loads(self.nodeguard("status", "--json", "-c", policy).stdout)

    def in_sync(self, policy: str) -> bool:
        return self.status(policy)["in_sync"]

    def wait_in_sync(self, policy: str, timeout: float = 5.0) -> float:
        """Seconds until status says in sync; the drift it reports in the AssertionError otherwise."""
        try:
            return wait_until(lambda: self.in_sync(policy), timeout=timeout, interval=0.1)
        except AssertionError:
            raise AssertionError(f"not in sync within {timeout} s: {self.status(policy)['drift']}") from None

    def meters(self, policy: str) -> dict[str, dict]:
        """status's sets by their model name ("icmp-src-v4", "trusted-v4", ...): kind, kernel_name, elements."""
        return {m["set"]: m for m in self.status(policy)["meters"]}

    def bans(self, policy: str) -> list[str]:
        """The banned sources ``nodeguard bans --json`` lists, sorted."""
        return sorted(b["source"] for b in json.loads(self.nodeguard("bans", "--json", "-c", policy).stdout)["bans"])

    def has_element(self, backend: str, kernel_name: str, addr: str) -> bool:
        """Is ``addr`` in the kernel set ``kernel_name`` (nft set of table inet nodeguard, or ipset)?"""
        cmd = (["nft", "get", "element", "inet", "nodeguard", kernel_name, f"{{ {addr} }}"] if backend == "nft"
               else ["ipset", "test", kernel_name, addr])
        return self.run(cmd, check=False).returncode == 0

    def set_members(self, backend: str, kernel_name: str) -> set[str]:
        """The addresses a kernel set holds now (nft set of table inet nodeguard, or ipset)."""
        if backend == "nft":
            set_ = next(o["set"] for o in self.nft_json(f"set inet nodeguard {kernel_name}") if "set" in o)
            return {e["elem"]["val"] if isinstance(e, dict) else e for e in set_.get("elem", [])}
        listing = self.run(["ipset", "list", kernel_name]).stdout
        return {ln.split()[0] for ln in listing.split("\nMembers:\n", 1)[1].splitlines() if ln.strip()}

    def nft_set_handles(self) -> dict[str, int]:
        """name -> handle of every set of table inet nodeguard: a set deleted and added again gets a new one."""
        return {o["set"]["name"]: o["set"]["handle"] for o in self.nft_json("sets table inet nodeguard")
                if "set" in o}

    def trusted(self, backend: str, policy: str, addr: str) -> bool:
        """Has ``addr`` a place in the trusted set (a completed handshake), as the kernel holds it?"""
        return self.has_element(backend, self.meters(policy)["trusted-v4"]["kernel_name"], addr)

    def seconds_left(self, backend: str, kernel_name: str, version: int) -> dict[str, int | None]:
        """member -> whole seconds its timeout has left, read with the readers the snapshot uses (nft: the
        raw netlink dump of set_times; iptables: Ipset.timeouts)."""
        code = ("from guard.backend.ipset import Ipset; print(json.dumps({m.split('/')[0]: s for m, s in "
                f"Ipset.timeouts({kernel_name!r}).items()}}))") if backend != "nft" else (
                "from guard.backend.nfnetlink import set_times; print(json.dumps({socket.inet_ntop("
                f"socket.AF_INET{'6' if version == 6 else ''}, k): None if ms is None else ms // 1000 "
                f"for k, ms in set_times({kernel_name!r})}}))")
        return json.loads(self.run([sys.executable, "-c", f"import json, socket; {code}"], cwd=ROOT).stdout)

    def forget_trusted(self, backend: str, kernel_name: str) -> None:
        """Empty the trusted set ``kernel_name``: every source is as one that never completed a handshake."""
        self.run(["nft", "flush", "set", "inet", "nodeguard", kernel_name] if backend == "nft"
                 else ["ipset", "flush", kernel_name])

    # --- nodeguard's rules, found by their comment --------------------------------------
    def counters(self, backend: str = "nft") -> dict[str, int]:
        """"<model chain>: <label>" → packets, for every nodeguard rule of ``backend``.

        iptables renders one rule per family and per ICMP type: those are summed, so the
        keys are the same for every backend.
        """
        out: dict[str, int] = {}
        if backend == "nft":
            for o in self.nft_json("table inet nodeguard"):
                rule = o.get("rule")
                if rule and rule.get("comment", "").startswith("nodeguard:"):
                    label = rule["comment"].split(" ", 1)[1]
                    pk = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), None)
                    if pk is not None:  # rules nobody reads carry no counter
                        out[f"{rule['chain']}: {label}"] = pk
            return out
        flavour = backend.split("-", 1)[1]
        for tool in (f"iptables-{flavour}-save", f"ip6tables-{flavour}-save"):
            for line in self.run([tool, "-c"]).stdout.splitlines():
                m = _IPT_RULE.match(line)
                if m and m["chain"] in IPT_CHAINS:
                    label = re.sub(r" type \d+$", "", m["label"])
                    key = f"{IPT_CHAINS[m['chain']]}: {label}"
                    out[key] = out.get(key, 0) + int(m["packets"])
        return out


def namespace(prefix: str = "ng"):
    """A new namespace for one test. A test that failed mid-flood leaves its hping3, sampler or server
    running: they are killed at once (SIGKILL), nothing of a test's needs a clean exit."""
    return core.namespace(prefix, str(next(_ids)), cls=Netns, signals=(signal.SIGKILL,))


@contextmanager
def lab():
    """victim (10.77.0.1, fd77::1) <-veth-> attacker (10.77.0.2-4, fd77::2-3).

    The victim's default routes point at the veth, so ``interfaces: auto`` picks it.
    """
    with namespace("ngv") as victim, namespace("nga") as attacker:
        core.veth(victim, VICTIM_IF, attacker, ATTACKER_IF)
        for ns, ifname, addrs in ((victim, VICTIM_IF, [VICTIM4]), (attacker, ATTACKER_IF, [ATTACKER4, LEGIT4, TRUSTED4, *FRESH4])):
            for a in addrs:
                ns.run(f"ip addr add {a}/24 dev {ifname}")
        victim.run(f"ip -6 addr add {VICTIM6}/64 dev {VICTIM_IF} nodad")
        for a in (ATTACKER6, LEGIT6):
            attacker.run(f"ip -6 addr add {a}/64 dev {ATTACKER_IF} nodad")
        victim.run(f"ip route add default via {ATTACKER4}")
        victim.run(f"ip -6 route add default via {ATTACKER6}")
        victim.run("sysctl -qw net.ipv4.tcp_syncookies=1")
        _wait_reachable(attacker, VICTIM4)
        yield victim, attacker


add_uplink = core.add_uplink  # a veth "ngu0" with 192.0.2.1/24 and the default route


def nft_queue_supported(ns: Netns) -> bool:
    """Does this kernel have nft ``queue`` (CONFIG_NFT_QUEUE)? Asked in check mode, nothing changes."""
    return ns.run(["nft", "-c", "add table inet q; add chain inet q c; add rule inet q c queue num 0"],
                  check=False).returncode == 0


POD4 = "10.180.0.3"  # kube-proxy-iptables-tracepacket.rules: NodePort 3003 -> DNAT 10.180.0.3:80


@contextmanager
def pod(node: Netns):
    """A pod namespace behind the node (10.180.0.3, the fixture's NodePort 3003 endpoint)."""
    with namespace("ngp") as p:
        core.veth(node, "ngpod0", p, "eth0")
        node.run("ip addr add 10.180.0.1/24 dev ngpod0")
        node.run("sysctl -qw net.ipv4.ip_forward=1")
        p.run(f"ip addr add {POD4}/24 dev eth0")
        p.run("ip route add default via 10.180.0.1")
        yield p


def _wait_reachable(ns: Netns, addr: str) -> None:
    for _ in range(50):
        if ns.run(f"ping -c1 -W1 {addr}", check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{addr} unreachable from {ns.name}")


# --- Kubernetes fixtures ---------------------------------------------------------------
FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("*") if p.suffix in (".rules", ".nft"))


def fixture_loaders(name: str) -> list[str]:
    """How a fixture can be loaded: iptables dumps in both flavours, nft files with nft."""
    return ["nft"] if name.endswith(".nft") else ["iptables-nft", "iptables-legacy"]


def load_fixture(ns: Netns, name: str, loader: str) -> None:
    path = FIXTURES / name
    cmd = {"nft": ["nft", "-f", str(path)],
           "iptables-nft": ["iptables-nft-restore", str(path)],
           "iptables-legacy": ["iptables-legacy-restore", str(path)]}[loader]
    ns.run(cmd)


_IPT_RULE = re.compile(r'^\[(?P<packets>\d+):\d+\] -A (?P<chain>\S+) .*--comment "nodeguard:[0-9a-f]+ (?P<label>[^"]*)"')
IPT_CHAINS = {"NODEGUARD-PRE-UPLINK": "filter-prerouting", "NODEGUARD-CONN-UPLINK": "filter-conntrack",
              "NODEGUARD-CLOSED-UPLINK": "closed-ports", "NODEGUARD-TCP-PICKUP": "tcp-pickup",
              "NODEGUARD-BOGUS": "bogus-flags", "NODEGUARD-ICMP": "icmp-flood", "NODEGUARD-SYN": "syn-flood",
              **{_ipt_chain_name(c): c for c in ("limit-udp-per-source",)}}  # the default limit's chain
BACKENDS = ("nft", "iptables-nft", "iptables-legacy")
# A source over a per-source limit for escalate.after_s (3 s) is banned (tests/test_escalation.py).
# Tests that measure what the per-source limits, the sampler or the counters do during a longer flood
# from one source turn escalation off with this section.
NO_ESCALATION = "escalate:\n  enabled: false\n"


def backend_policy(backend: str, text: str = "") -> str:
    """A policy text for ``backend``: the YAML ``text`` plus the backend keys."""
    import textwrap
    head = "" if backend == "nft" else f"backend: iptables\niptables:\n  flavour: {backend.split('-', 1)[1]}\n"
    return head + textwrap.dedent(text)


def kube_loader(backend: str) -> str:
    """Load kube fixtures with the flavour the backend uses (nft tables for the nft backend)."""
    return "iptables-legacy" if backend == "iptables-legacy" else "iptables-nft"


# --- traffic -----------------------------------------------------------------------------
@contextmanager
def _server(ns: Netns, script: str, *args: str):
    """A helper server from tests/helpers in ``ns``; yields once it printed "ready"."""
    proc = ns.popen([sys.executable, str(HELPERS / script), *args])
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def tcp_server(ns: Netns, addr: str, port: int, hold: bool = False, echo: bool = False):
    return _server(ns, "tcp_server.py", addr, str(port), *(["--hold"] if hold else []), *(["--echo"] if echo else []))


def udp_echo(ns: Netns, addr: str, port: int):
    return _server(ns, "udp_echo.py", addr, str(port))


def udp_clients(ns: Netns, src: str, dst: str, port: int, count: int, *extra: str) -> dict:
    res = ns.run([sys.executable, str(HELPERS / "udp_clients.py"), src, dst, str(port), str(count), *extra])
    return json.loads(res.stdout.splitlines()[0])


def tcp_clients(ns: Netns, src: str, dst: str, port: int, count: int, *extra: str) -> dict:
    res = ns.run([sys.executable, str(HELPERS / "tcp_clients.py"), src, dst, str(port), str(count), *extra])
    return json.loads(res.stdout.splitlines()[0])


def flood(ns: Netns, seconds: float, *hping_args: str) -> subprocess.Popen:
    """hping3 in flood mode for ``seconds`` (SIGINT at the end, so it prints its statistics)."""
    return ns.popen(["timeout", "-s", "INT", str(seconds), "hping3", "--flood", "-q", *hping_args])


_PING_STATS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping_stats(output: str) -> tuple[int, int]:
    m = _PING_STATS.search(output)
    assert m, output
    return int(m[1]), int(m[2])


# --- the truth: what arrived, counted before anything of ours ---------------------------------
TRUTH_PRIORITY = -1000  # netdev ingress: before ip_rcv, so before every netfilter hook


class Truth:
    """Packet counters at netdev ingress (and optionally egress) of ``device``: the independent truth of
    what arrived at (left) the victim, which nodeguard's own counters are judged against.

    One table (``netdev truth``, chains ``in`` and ``out``), one counting rule per name, its match an nft
    expression ("ip saddr 10.77.0.2 icmp type echo-request"). Netdev ingress runs before ip_rcv, so
    before every netfilter hook of both iptables flavours and of nodeguard (whose earliest chain is
    filter-prerouting, after defrag). tests/helpers/ban_poll.py reads chain ``in`` too.
    A new Truth replaces the namespace's earlier one: its counters start from zero.
    """

    def __init__(self, ns: Netns, ingress: dict[str, str], egress: dict[str, str] | None = None,
                 device: str = VICTIM_IF):
        self.ns = ns
        cmds = ["add table netdev truth", "delete table netdev truth", "add table netdev truth",  # from zero
                f"add chain netdev truth in {{ type filter hook ingress device {device} priority {TRUTH_PRIORITY}; }}"]
        cmds += [f'add rule netdev truth in {m} counter comment "{n}"' for n, m in ingress.items()]
        if egress:
            cmds.append(f"add chain netdev truth out {{ type filter hook egress device {device} priority 0; }}")
            cmds += [f'add rule netdev truth out {m} counter comment "{n}"' for n, m in egress.items()]
        ns.run(["nft", "; ".join(cmds)])

    def counts(self) -> dict[str, int]:
        """name -> packets counted so far."""
        return {o["rule"]["comment"]: next(e["counter"]["packets"] for e in o["rule"]["expr"] if "counter" in e)
                for o in self.ns.nft_json("table netdev truth") if "rule" in o}


def start_sampler(ns: Netns, policy: str, timeout: float = 10.0, **popen) -> subprocess.Popen:
    """``nodeguard sample`` in ``ns``; returns once it says "sampling via" (its counters are read from then on)."""
    proc = ns.popen([sys.executable, "-m", "guard", "sample", "-c", policy], **popen)
    deadline = time.monotonic() + timeout
    while "sampling via" not in (line := proc.stderr.readline()):
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"sampler did not start: {line!r}")
    return proc


# x86_64 poll, select, pselect6, ppoll: the sampler's loop waits in select.select (glibc: pselect6)
_WAITING_SYSCALLS = {"7", "23", "270", "271"}


def _sampler_idle(pid: int) -> bool:
    """Every netlink socket of process ``pid`` (its NFLOG/NFQUEUE sockets) has nothing left to read, and
    the process waits in select/poll (not parsing a batch it read, nor closing a window)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    # /proc/PID/net is the process's own network namespace: the victim's
    rows = [f for f in map(str.split, Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]) if f[9] in inodes]
    syscall = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    return bool(rows) and all(f[4] == "0" for f in rows) and syscall in _WAITING_SYSCALLS


def wait_sampler_idle(proc: subprocess.Popen, timeout: float = 10.0) -> float:
    """Seconds until ``nodeguard sample`` (from start_sampler) has read and handled every sample the kernel
    queued for it: seen idle (_sampler_idle) twice in a row, 20 ms apart. Called once the traffic is over,
    it replaces sleeping for a window to close: on SIGTERM the sampler closes its window (logs it, changes
    nothing in the kernel), so the attack log then holds every sample, as after a regular window's close;
    only samples still unread or half handled at the signal would be lost."""
    seen = []

    def idle_twice() -> bool:
        assert proc.poll() is None, f"the sampler exited: {proc.returncode}"
        seen.append(_sampler_idle(proc.pid))
        return seen[-2:] == [True, True]
    return wait_until(idle_twice, timeout=timeout, interval=0.02)


def stop_sampler(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM to the sampler once it is idle (wait_sampler_idle), then wait for it to exit."""
    wait_sampler_idle(proc, timeout)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def wait_until(pred, timeout: float = 5.0, interval: float = 0.005) -> float:
    """Seconds until ``pred()`` was true; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # own and children's (the tools it ran)


@contextmanager
def watcher(ns: Netns, policy_path: str, state_path: str):
    """``nodeguard watch`` in ``ns``; yields the process once it has adopted or installed."""
    proc = ns.popen([sys.executable, "-m", "guard", "watch", "-c", policy_path, "--last-good",
                     str(Path(state_path).parent / "last-good.yaml")], stdout=subprocess.DEVNULL)  # not the host's
    try:
        wait_until(lambda: Path(state_path).exists() or proc.poll() is not None, timeout=10)
        assert proc.poll() is None, proc.stderr.read()
        yield proc
    finally:
        proc.kill()
        proc.wait()
