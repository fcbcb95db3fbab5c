"""Hot-path cost of nodeguard's rules vs the hardware floor, in one run (docs/hotpath.md).

Builds two network namespaces (ngh-node-<pid>: the node, kube-proxy's iptables fixture
loaded with iptables-nft; ngh-att-<pid>: attacker and clients) joined by a veth pair, and
measures for each defence:

* softirq CPU per attack packet: delta of softirq ticks in /proc/stat (of the CPU the flood is pinned to) during the
  flood / packets counted by a netdev ingress counter (priority -1000) on the node's veth,
  for single-source ICMP echo, SYN and UDP floods and a spoofed SYN flood, each at
  hping3 --flood and at a fixed rate (hping3 -i u10);
* pass-through cost of legitimate established TCP (an ACK stream of one flow; a sink drops
  it at prerouting -151, after conntrack and nodeguard's -190 chain);
* without attack: TCP connect/request/response/close rate (200 client addresses, so no
  per-source limit is hit), ping-pong rate on one connection, and bulk throughput.

Defences (default): floor (one drop in a netdev ingress chain), one drop at prerouting -350, the
hand-made filter-table chains, ``main``: nodeguard before escalation (``python -m guard apply`` of
branch main as committed, exported with ``git archive``; NODEGUARD_MAIN=DIR takes a tree instead),
and ``nodeguard``: ``python -m guard apply`` of this checkout (escalation on, as by default), whose
single-source floods are measured after the attacker is banned. Both with the default policy plus
``interfaces: [nghn0]`` and an allowlist the attacker is not in. The research prototypes stay
available with --only: the lean nft table (bench/lean_table.py) with and without escalation, and
the iptables prototype (bench/ipt_proto.py); ``today`` is ``main``'s old name.

The series holds /tmp/nodeguard-kernel-tests.lock (flock) from the first flood to the last.

usage: sudo PYTHONPATH=. /work/main/.venv/bin/python bench/hotpath.py [--quick] [--runs N]
       [--only CONFIG,...] [--modes flood,fixed] [--no-traffic] [--json FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import lean_table  # noqa: E402
import ipt_proto  # noqa: E402

# "main": the guard package of branch main as committed (exported at start; NODEGUARD_MAIN=DIR: that tree);
# "nodeguard": the guard package of this checkout.
MAIN_TREE = os.environ.get("NODEGUARD_MAIN", "")
VENV_PY = Path(os.environ.get("NODEGUARD_PY", "/work/main/.venv/bin/python"))
FIXTURE = ROOT / "tests" / "fixtures" / "kube-rulesets" / "kube-proxy-iptables-tracepacket.rules"
LOCK = "/tmp/nodeguard-kernel-tests.lock"
NODE_IF, ATT_IF = "nghn0", "ngha0"
NODE4, ATT4, LEGIT4, NODE6, ATT6 = "10.99.0.1", "10.99.0.2", "10.99.0.3", "fd99::1", "fd99::2"
CLIENT_BASE, CLIENTS = "10.99.1.1", 200
ALLOW4 = ("10.96.0.0/16", "10.244.0.0/16", "172.16.0.0/12", "10.99.0.9/32")  # the lab is 10.99/16: not in 10.96.0.0/12
ALLOW6 = ("fd00:10::/56",)
AFTER_S = 3
USER_HZ = os.sysconf("SC_CLK_TCK")

FLOODS = {  # name: hping3 arguments (node address appended)
    "icmp": ["--icmp"],
    "syn": ["-S", "-p", "80"],
    "udp": ["--udp", "-p", "9999"],
    "spoofed-syn": ["-S", "-p", "80", "--rand-source"],
}
MODES = {"flood": ["--flood"], "fixed": ["-i", "u10"]}
ESCALATING = ("lean+esc", "lean-concat+esc", "lean-ingress+esc", "lean-ingress-concat+esc", "ipt+esc", "nodeguard")
TRAFFIC_DEFENCES = ("none", "main", "nodeguard", "lean", "lean+esc", "lean-ingress+esc")
LEAN_VARIANTS = tuple(f"lean{where}{gate}{extra}" for where in ("", "-ingress") for gate in ("", "-concat")
                      for extra in ("", "+esc", "-allcounters"))  # gate: "simple" unless -concat


def sh(args: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


_depth = 0


@contextmanager
def locked():
    """The machine-wide flood lock; re-entrant, so a batch of measurements can hold it once."""
    global _depth
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _depth = 1
        try:
            yield
        finally:
            _depth = 0
            fcntl.flock(f, fcntl.LOCK_UN)


class NS:
    def __init__(self, name: str):
        self.name = name

    def argv(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: list[str] | str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh(self.argv(args.split() if isinstance(args, str) else args), check=check, **kw)

    def popen(self, args: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(args), text=True, **kw)

    def nft(self, text: str) -> None:
        self.run(["nft", "-f", "-"], input=text)


class Lab:
    """node <-veth-> attacker; static neighbours (a drop-everything ingress chain also eats ARP)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        pid = os.getpid()
        self.node, self.att = NS(f"ngh-node-{pid}"), NS(f"ngh-att-{pid}")
        self.servers: list[subprocess.Popen] = []

    def __enter__(self) -> "Lab":
        sh(["ip", "netns", "add", self.node.name])
        sh(["ip", "netns", "add", self.att.name])
        try:
            self._build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _build(self) -> None:
        n, a = self.node, self.att
        sh(["ip", "link", "add", NODE_IF, "netns", n.name, "type", "veth", "peer", "name", ATT_IF, "netns", a.name])
        for ns in (n, a):
            ns.run("ip link set lo up")
        n.run(f"ip addr add {NODE4}/24 dev {NODE_IF}")
        n.run(f"ip -6 addr add {NODE6}/64 dev {NODE_IF} nodad")
        a.run(f"ip addr add {ATT4}/24 dev {ATT_IF}")
        a.run(f"ip addr add {LEGIT4}/24 dev {ATT_IF}")
        a.run(f"ip -6 addr add {ATT6}/64 dev {ATT_IF} nodad")
        batch = "".join(f"addr add 10.99.1.{i}/32 dev {ATT_IF}\n" for i in range(1, CLIENTS + 1))
        a.run(["ip", "-batch", "-"], input=batch)
        for ns, ifn in ((n, NODE_IF), (a, ATT_IF)):
            ns.run(f"ip link set {ifn} up")
        self.node_mac = n.run(["cat", f"/sys/class/net/{NODE_IF}/address"]).stdout.strip()
        self.att_mac = a.run(["cat", f"/sys/class/net/{ATT_IF}/address"]).stdout.strip()
        for addr in (NODE4, NODE6):
            a.run(["ip", "neigh", "replace", addr, "lladdr", self.node_mac, "dev", ATT_IF, "nud", "permanent"])
        for addr in (ATT4, LEGIT4, ATT6):
            n.run(["ip", "neigh", "replace", addr, "lladdr", self.att_mac, "dev", NODE_IF, "nud", "permanent"])
        n.run(f"ip route add default via {ATT4}")
        n.run(f"ip -6 route add default via {ATT6}")
        for k, v in (("net.ipv4.tcp_syncookies", "1"), ("net.ipv4.tcp_max_syn_backlog", "4096")):
            n.run(["sysctl", "-qw", f"{k}={v}"])
        a.run(["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])
        n.run(["iptables-nft-restore", str(FIXTURE)])
        n.nft(f"table netdev ngh-meter {{\n counter rx {{ }}\n chain c {{\n"
              f"  type filter hook ingress device \"{NODE_IF}\" priority -1000; policy accept;\n"
              f"  counter name \"rx\"\n }}\n}}\n")
        self.nettx = self.tmp / "nettx"
        sh(["cc", "-O2", "-o", str(self.nettx), str(HERE / "nettx.c")])
        for mode, port in (("server", 80), ("sink", 5002)):
            p = n.popen([str(self.nettx), mode, NODE4, str(port)])
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
            self.servers.append(p)

    def __exit__(self, *exc) -> None:
        for p in self.servers:
            p.kill()
            p.wait()
        for ns in (self.node, self.att):
            sh(["ip", "netns", "del", ns.name], check=False)

    def rx_packets(self) -> int:
        out = self.node.run("nft -j list counter netdev ngh-meter rx").stdout
        return next(o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o)

    def guard(self, *args: str, tree: Path = ROOT) -> None:
        """``python -m guard`` of ``tree`` (run from there: -m puts the working directory first on sys.path)."""
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.node.run([str(VENV_PY), "-m", "guard", *args], env=env, cwd=str(tree))

    @property
    def main_tree(self) -> Path:
        """Branch main's guard/ as committed, exported once (or NODEGUARD_MAIN)."""
        if MAIN_TREE:
            return Path(MAIN_TREE)
        tree = self.tmp / "main"
        if not tree.exists():
            tree.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", "main", "guard"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        return tree


FLOOD_CPU, CONTROL_CPU = 1, 0  # floods (and their receive softirq) on one CPU, everything else on the other


def softirq_ticks(cpu: int = FLOOD_CPU) -> int:
    """Softirq ticks of the CPU the flood runs on: veth delivers on the sender's CPU (no RPS here),
    so the receive path of every flood packet is accounted there, while nft/conntrack commands, the
    RCU callbacks they queue (a deleted table frees its meters' elements) and the servers run on
    CONTROL_CPU and do not pollute the measurement."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[7])
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


# --- defences ------------------------------------------------------------------------------
HANDMADE = """*filter
:NGH-SYN - [0:0]
:NGH-PING - [0:0]
-I INPUT 1 -p tcp --syn -j NGH-SYN
-I INPUT 2 -p icmp --icmp-type echo-request -j NGH-PING
-A NGH-SYN -m hashlimit --hashlimit-above 200/sec --hashlimit-burst 400 --hashlimit-mode srcip --hashlimit-name ngh-syn-src -j DROP
-A NGH-SYN -m limit --limit 5000/sec --limit-burst 10000 -j RETURN
-A NGH-SYN -j DROP
-A NGH-PING -m limit --limit 100/sec --limit-burst 200 -j RETURN
-A NGH-PING -j DROP
COMMIT
"""


def policy_text() -> str:
    cidrs = ", ".join(f'"{c}"' for c in (*ALLOW4, *ALLOW6))
    return f"interfaces: [{NODE_IF}]\nallow:\n  cidrs: [{cidrs}]\n"


def lean_params(**kw) -> lean_table.Params:
    return lean_table.Params((NODE_IF,), ALLOW4, ALLOW6, after_s=AFTER_S, **kw)


class Defence:
    def __init__(self, name: str, lab: Lab):
        self.name, self.lab = name, lab

    @property
    def tree(self) -> Path:
        return ROOT if self.name == "nodeguard" else self.lab.main_tree

    def apply(self) -> None:
        n, tmp = self.lab.node, self.lab.tmp
        if self.name == "floor":
            n.nft(f"table netdev ngh-floor {{\n chain c {{\n  type filter hook ingress device \"{NODE_IF}\" priority 0; policy accept;\n  drop\n }}\n}}\n")
        elif self.name == "drop-350":
            n.nft("table inet ngh-pre {\n chain c {\n  type filter hook prerouting priority -350; policy accept;\n  drop\n }\n}\n")
        elif self.name == "handmade":
            n.run(["iptables-nft-restore", "--noflush"], input=HANDMADE)
        elif self.name in ("today", "main", "nodeguard"):
            pol = tmp / "policy.yaml"
            pol.write_text(policy_text())
            self.lab.guard("apply", "-c", str(pol), tree=self.tree)
        elif self.name in LEAN_VARIANTS:
            kw = {"escalate": self.name.endswith("+esc"), "gate": "concat" if "concat" in self.name else "simple",
                  "all_counters": "allcounters" in self.name,
                  "stateless_at": "ingress" if self.name.startswith("lean-ingress") else "prerouting"}
            n.nft(lean_table.render(lean_params(**kw)))
        elif self.name == "ipt+esc":
            ipt_proto.install(n, ipt_proto.Params((NODE_IF,), ALLOW4, ALLOW6, after_s=AFTER_S), flavour="nft")
        elif self.name != "none":
            raise ValueError(self.name)

    def remove(self) -> None:
        n = self.lab.node
        if self.name == "floor":
            n.run("nft delete table netdev ngh-floor")
        elif self.name == "drop-350":
            n.run("nft delete table inet ngh-pre")
        elif self.name == "handmade":
            n.run(["iptables-nft-restore", str(FIXTURE)])  # back to the fixture alone
        elif self.name in ("today", "main", "nodeguard"):
            self.lab.guard("uninstall", tree=self.tree)
        elif self.name.startswith("lean"):
            n.run("nft delete table inet nodeguard")
        elif self.name == "ipt+esc":
            ipt_proto.uninstall(n, flavour="nft")

    def reset(self) -> None:
        """Fresh dynamic state (no ban yet) for the escalating defences."""
        if self.name in ESCALATING:
            self.remove()
            self.apply()


# --- measurements --------------------------------------------------------------------------
def flood_cost(lab: Lab, flood: str, mode: str, warm: float, window: float) -> dict:
    args = ["taskset", "-c", str(FLOOD_CPU), "hping3", *MODES[mode], "-q", *FLOODS[flood], NODE4]
    with locked():
        lab.node.run("conntrack -F", check=False)
        p = lab.att.popen(["timeout", "-s", "INT", str(warm + window + 2), *args], stdout=subprocess.DEVNULL)
        time.sleep(warm)
        s0, c0, t0 = softirq_ticks(), lab.rx_packets(), time.monotonic()
        time.sleep(window)
        s1, c1, t1 = softirq_ticks(), lab.rx_packets(), time.monotonic()
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        time.sleep(0.3)  # let backlogs drain before someone else measures
    pkts = max(c1 - c0, 1)
    return {"us": (s1 - s0) * 1e6 / USER_HZ / pkts, "kpps": pkts / (t1 - t0) / 1e3}


def ack_passthrough_cost(lab: Lab, window: float) -> dict:
    """One established-looking flow of ACKs; a sink drops it after nodeguard's -190 chain."""
    n = lab.node
    n.nft("table inet ngh-sink {\n chain c {\n  type filter hook prerouting priority -151; policy accept;\n"
          f"  iifname \"{NODE_IF}\" tcp dport 5003 drop\n }}\n}}\n")
    try:
        with locked():
            n.run("conntrack -F", check=False)
            p = lab.att.popen(["timeout", "-s", "INT", str(window + 3), "taskset", "-c", str(FLOOD_CPU), "hping3", "--flood", "-q", "-A", "-s", "40000",
                               "-k", "-p", "5003", "-a", LEGIT4, NODE4], stdout=subprocess.DEVNULL)
            time.sleep(1.0)
            s0, c0, t0 = softirq_ticks(), lab.rx_packets(), time.monotonic()
            time.sleep(window)
            s1, c1, t1 = softirq_ticks(), lab.rx_packets(), time.monotonic()
            p.send_signal(signal.SIGINT)
            p.wait(timeout=5)
            time.sleep(0.3)
    finally:
        n.run("nft delete table inet ngh-sink")
    pkts = max(c1 - c0, 1)
    return {"us": (s1 - s0) * 1e6 / USER_HZ / pkts, "kpps": pkts / (t1 - t0) / 1e3}


def traffic(lab: Lab, kind: str, seconds: float) -> float:
    tool = str(lab.nettx)
    if kind == "crr":
        args = [tool, "crr", NODE4, "80", str(seconds), CLIENT_BASE, str(CLIENTS)]
    elif kind == "rr":
        args = [tool, "rr", NODE4, "80", str(seconds), LEGIT4]
    else:
        args = [tool, "stream", NODE4, "5002", str(seconds), LEGIT4]
    with locked():
        out = lab.att.run(["taskset", "-c", str(FLOOD_CPU), *args], timeout=seconds + 30).stdout.split()
    count, secs = float(out[0]), float(out[1])
    return count / secs / (1e9 / 8 if kind == "stream" else 1)  # transactions/s, or Gbit/s


# --- report --------------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float]) -> str:
    """min–max of the runs (on this shared machine other work only ever adds: min is the cleanest run)."""
    if len(xs) < 2:
        return ""
    return f"[{min(xs):.2f}–{max(xs):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 run, short windows, flood mode only (< 2 min)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated defences (default: all)")
    ap.add_argument("--no-traffic", action="store_true", help="skip the no-attack measurements")
    ap.add_argument("--modes", default="", help="flood,fixed (default: both; --quick: flood)")
    ap.add_argument("--json", default="")
    ap.add_argument("--out", default="", help="also write the table here after every run")
    ap.add_argument("--report-json", default="", help="only re-print the table of a saved --json file")
    a = ap.parse_args()
    if a.report_json:
        d = json.loads(Path(a.report_json).read_text())
        cost = {tuple(k.split("|")): v for k, v in d["cost"].items()}
        tx = {tuple(k.split("|")): v for k, v in d["traffic"].items()}
        defs = list(dict.fromkeys(k[0] for k in cost if k[0] != "none"))
        modes = list(dict.fromkeys(k[2] for k in cost))
        runs = max(len(v) for v in cost.values())
        report(a, defs, runs, 2.0, 0.8, modes, cost, d["ack"], tx, time.monotonic(), final=True)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # namespaces are deleted on the way out
    os.sched_setaffinity(0, {CONTROL_CPU})  # inherited by every command and server; floods use FLOOD_CPU
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    for tool in ("hping3", "nft", "iptables-nft-restore", "ipset", "conntrack", "cc"):
        if not shutil.which(tool):
            sys.exit(f"missing tool: {tool}")
    defences = ["floor", "drop-350", "handmade", "main", "nodeguard"]
    if a.only:
        defences = [d for d in a.only.split(",") if d]
    runs = 1 if a.quick else a.runs
    window, warm = (0.8, 0.5) if a.quick else (2.0, 0.8)
    modes = a.modes.split(",") if a.modes else (["flood"] if a.quick else ["flood", "fixed"])
    traffic_secs = 1.0 if a.quick else 3.0
    started = time.monotonic()

    cost: dict[tuple, list[dict]] = {}
    ack: dict[str, list[dict]] = {}
    tx: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ngh-") as tmp, Lab(Path(tmp)) as lab, locked():
        # the whole series in one hold of the machine-wide lock: on a shared machine whose other
        # benches hold it for many minutes, per-measurement holds never get through
        waited = time.monotonic() - started
        started = time.monotonic()
        print(f"lab ready and lock held after {waited:.0f} s", file=sys.stderr, flush=True)
        for run in range(runs):
            for name in defences:
                d = Defence(name, lab)
                d.apply()
                time.sleep(1.0)  # RCU callbacks of the previous defence's teardown
                batch = locked()  # one defence's floods in one hold of the lock (~30 s)
                batch.__enter__()
                try:
                    banned = False
                    for flood in FLOODS:
                        for mode in modes:
                            w = warm
                            if name in ESCALATING and flood != "spoofed-syn" and not banned:
                                # fresh sets, then the first single-source flood escalates to a ban of the
                                # attacker's address; the later floods from it are measured after that ban
                                # (bench/escalation.py shows each flood escalating on its own)
                                d.reset()
                                w, banned = warm + AFTER_S + 1.5, True
                            r = flood_cost(lab, flood, mode, w, window)
                            cost.setdefault((name, flood, mode), []).append(r)
                            print(f"run {run + 1} {name:9} {flood:12} {mode:6} {r['us']:.2f} us/pkt at {r['kpps']:.0f} kpps",
                                  file=sys.stderr, flush=True)
                    if name in ("floor", "drop-350"):
                        continue
                    d.reset()
                    r = ack_passthrough_cost(lab, window)
                    ack.setdefault(name, []).append(r)
                    print(f"run {run + 1} {name:9} ack-passthrough {r['us']:.2f} us/pkt at {r['kpps']:.0f} kpps", file=sys.stderr, flush=True)
                finally:
                    batch.__exit__(None, None, None)
                    d.remove()
            if not a.no_traffic:
                for name in TRAFFIC_DEFENCES:
                    if name != "none" and name not in defences:
                        continue
                    d = Defence(name, lab)
                    d.apply()
                    try:
                        with locked():
                            for kind in ("crr", "rr", "stream"):
                                v = traffic(lab, kind, traffic_secs)
                                tx.setdefault((name, kind), []).append(v)
                                print(f"run {run + 1} {name:9} {kind:6} {v:,.2f}", file=sys.stderr, flush=True)
                            if name == "none":
                                ack.setdefault("none", []).append(ack_passthrough_cost(lab, window))
                    finally:
                        d.remove()
            # the unprotected flood cost (same run)
            with locked():
                for flood in FLOODS:
                    for mode in modes:
                        r = flood_cost(lab, flood, mode, warm, window)
                        cost.setdefault(("none", flood, mode), []).append(r)
                        print(f"run {run + 1} none      {flood:12} {mode:6} {r['us']:.2f} us/pkt at {r['kpps']:.0f} kpps",
                              file=sys.stderr, flush=True)
            report(a, defences, run + 1, window, warm, modes, cost, ack, tx, started)

    report(a, defences, runs, window, warm, modes, cost, ack, tx, started, final=True)


def report(a, defences, runs, window, warm, modes, cost, ack, tx, started, final=False) -> None:
    """Print the table (also after every run, to --out, so a long run that is cut short still reports)."""
    names = [*defences, "none"]
    lines = [f"softirq CPU per attack packet, median of {runs} run(s) [min–max]; "
             f"ratios vs floor and vs hand-made; window {window:.0f} s after {warm:.1f} s warm-up "
             f"(+{AFTER_S + 1.5:.1f} s before the first single-source flood of an escalating defence)", ""]
    for mode in modes:
        lines.append(f"mode {mode} ({' '.join(MODES[mode])})")
        lines.append("| defence | " + " | ".join(f"{f} µs (kpps)" for f in FLOODS) + " | " + " | ".join(f"{f} ×floor / ×hand" for f in FLOODS) + " |")
        lines.append("|---" * (1 + 2 * len(FLOODS)) + "|")
        for name in names:
            cells, ratios = [], []
            for flood in FLOODS:
                rs = cost.get((name, flood, mode), [])
                us = [r["us"] for r in rs]
                kp = [r["kpps"] for r in rs]
                cells.append(f"{med(us):.2f} {spread(us)} ({med(kp):.0f})")
                fl = med([r["us"] for r in cost.get(("floor", flood, mode), [])])
                hm = med([r["us"] for r in cost.get(("handmade", flood, mode), [])])
                ratios.append(f"{med(us) / fl:.2f} / {med(us) / hm:.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        lines.append("")
    if ack:
        lines.append("legitimate established TCP (one ACK flow, sink at -151): softirq µs per packet")
        base = med([r["us"] for r in ack.get("none", [])])
        for name, rs in ack.items():
            us = [r["us"] for r in rs]
            lines.append(f"  {name:17} {med(us):.2f} µs {spread(us):13} ({med([r['kpps'] for r in rs]):.0f} kpps)  "
                         f"extra vs none {med(us) - base:+.3f} µs")
        lines.append("")
    if tx:
        lines.append("no attack: median (spread), change vs no rules")
        for kind, unit in (("crr", "conn/s"), ("rr", "trans/s"), ("stream", "Gbit/s")):
            base = med(tx.get(("none", kind), []))
            for name in TRAFFIC_DEFENCES:
                xs = tx.get((name, kind))
                if xs:
                    rng = f"[{min(xs):,.2f}–{max(xs):,.2f}]" if len(xs) > 1 else ""
                    lines.append(f"  {kind:6} {name:16} {med(xs):12,.2f} {unit:7} {rng:22} {(med(xs) / base - 1) * 100:+.1f} %")
        lines.append("")
    lines.append(f"total time with the lock held {time.monotonic() - started:.0f} s")
    text = "\n".join(lines)
    if final:
        print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps({"cost": {"|".join(k): v for k, v in cost.items()}, "ack": ack,
                                            "traffic": {"|".join(k): v for k, v in tx.items()}}, indent=1))


if __name__ == "__main__":
    main()
