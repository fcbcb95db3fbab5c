"""Floods against a Kubernetes-like node, one defence at a time, alternating, several repetitions.

Defences: none; hand-made filter-table chains (as DoS recipes write them: a global ``-m limit`` SYN
valve plus a per-source ``hashlimit``, and a ``-m limit`` ping chain, jumped to from INPUT); nodeguard
with the shipped default policy through each backend (nft, iptables-nft, iptables-legacy).
Scenarios: ICMP echo flood; spoofed SYN floods to a host port, to a NodePort that kube-proxy DNATs and
masquerades (externalTrafficPolicy Cluster: SNAT ports run out at 65,536 entries) and to one it DNATs
without masquerade (Local: conntrack fills, the kernel's early-drop copes); spoofed ACK and RST floods to
the NodePort; spoofed first IP fragments (more-fragments set) to the NodePort, which reassembly holds
until they time out or are evicted; spoofed UDP to a closed port; a single-source SYN flood; a UDP flood; each at hping3's
maximum (``--flood``) and at a fixed rate (``-i u10``); and no attack (request/response rate and bulk
throughput: the defence's overhead). nodeguard runs as on a node: ``nodeguard run``.

Measured per run: the legitimate client's connect success and p50/p99 connect latency during the
flood, for a *returning* client (it completed a connection after the defence was installed and
before the flood) and for *brand-new* clients (each attempt from a source address never used before
in this run); conntrack entries at the end; attack packets arrived (netdev ingress counter on the
node's uplink) and dropped by the defence (nodeguard: ``nodeguard status --json``; hand-made chains:
their DROP rules' counters); softirq CPU per arrived attack packet (softirq jiffies delta of
/proc/stat ÷ arrived). nodeguard is used only through its CLI, so the bench keeps working while its
rules change.

Everything runs in network namespaces named ``ngb-<pid>-*`` (removed on exit, Ctrl-C or SIGTERM);
the bench holds /tmp/nodeguard-kernel-tests.lock for its whole run, as the kernel tests do.

usage: sudo .venv/bin/python bench/flood.py [--quick] [--reps N] [--scenario S] [--duration S] [--timeout S] [--out docs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from guard.configfile import add_data_dir  # noqa: E402
from guard.demo import lab as labmod  # noqa: E402
from guard.lab.lock import machine_lock  # noqa: E402
from guard.lab.netns import remove_stale, sh  # noqa: E402
from guard.demo.lab import (CLIENT, HOST_RR, HOST_SINK, HOST_TCP, NODE, NODEPORT, UDP_PORT, Interrupted,  # noqa: E402
                            Lab, nodeguard)

PREFIX = "ngb"
COUNTER_TABLE = "ngb_meter"
DEFENCES = ("none", "handmade", "nodeguard-nft", "nodeguard-iptables-nft", "nodeguard-iptables-legacy")
SYN = "tcp flags & (fin|syn|rst|ack) == syn"
NODEPORT_LOCAL, CLOSED_UDP = 3004, 9999
COUNTERS = {"icmp": "icmp type echo-request", "syn": SYN, "udp": f"udp dport {UDP_PORT}",
            "udp-closed": f"udp dport {CLOSED_UDP}", "ack": "tcp flags & (fin|syn|rst|ack) == ack",
            "rst": "tcp flags & (fin|syn|rst|ack) == rst", "frag": "ip frag-off & 0x3fff != 0"}
SCENARIOS = {  # name: (what, hping3 args, counter, port the legitimate client connects to)
    "icmp": ("ICMP echo flood, one source", ["--icmp", NODE], "icmp", HOST_TCP),
    "syn-spoofed-host": (f"spoofed SYN flood to host port {HOST_TCP}", ["-S", "--rand-source", "-p", str(HOST_TCP), NODE],
                         "syn", HOST_TCP),
    "syn-spoofed-nodeport": (f"spoofed SYN flood to NodePort {NODEPORT} (DNAT)",
                             ["-S", "--rand-source", "-p", str(NODEPORT), NODE], "syn", NODEPORT),
    "syn-spoofed-nodeport-local": (f"spoofed SYN flood to NodePort {NODEPORT_LOCAL} (DNAT, no masquerade: "
                                   "externalTrafficPolicy Local)",
                                   ["-S", "--rand-source", "-p", str(NODEPORT_LOCAL), NODE], "syn", NODEPORT_LOCAL),
    "ack-spoofed-nodeport": (f"spoofed ACK flood to NodePort {NODEPORT}", ["-A", "--rand-source", "-p", str(NODEPORT),
                                                                          NODE], "ack", NODEPORT),
    "rst-spoofed-nodeport": (f"spoofed RST flood to NodePort {NODEPORT}", ["-R", "--rand-source", "-p", str(NODEPORT),
                                                                          NODE], "rst", NODEPORT),
    "frag-spoofed-nodeport": (f"spoofed IP fragments to NodePort {NODEPORT} (first fragments that never complete)",
                              ["-A", "-x", "--rand-source", "-p", str(NODEPORT), NODE], "frag", NODEPORT),
    "udp-spoofed-closed": (f"spoofed UDP flood to closed port {CLOSED_UDP}",
                           ["--udp", "--rand-source", "-p", str(CLOSED_UDP), NODE], "udp-closed", HOST_TCP),
    "syn-single": (f"SYN flood from one source to host port {HOST_TCP}", ["-S", "-p", str(HOST_TCP), NODE], "syn",
                   HOST_TCP),
    "udp": (f"UDP flood, one source, to port {UDP_PORT}", ["--udp", "-p", str(UDP_PORT), NODE], "udp", HOST_TCP),
}
RATES = {"max": ["--flood"], "fixed": ["-i", "u10"]}
NEW_NET = "10.66.64.0/18"  # brand-new client addresses, each used once (the node routes them via the client)
CRR_NET, CRR_SOURCES = "10.66.32.0/24", 64  # the no-attack connection rate comes from 64 sources, each far
# below the per-source SYN limits (one source at 6,000 new connections/s would measure the limit, not the cost)
DELIVERED_TABLE = "ngb_delivered"  # counters after every filter: input and forward hooks, priority 500

# The hand-made defence, written the way DoS recipes write it (same thresholds as nodeguard's default
# policy, so only the mechanism differs): filter table, jumped to from INPUT.
HANDMADE = """*filter
:DOS-SYN - [0:0]
:DOS-PING - [0:0]
-I INPUT 1 -p tcp --syn -j DOS-SYN
-I INPUT 2 -p icmp --icmp-type echo-request -j DOS-PING
-A DOS-SYN -m hashlimit --hashlimit-name dos_syn_src --hashlimit-mode srcip --hashlimit-above 200/sec --hashlimit-burst 400 -j DROP
-A DOS-SYN -m limit --limit 5000/sec --limit-burst 10000 -j RETURN
-A DOS-SYN -j DROP
-A DOS-PING -m limit --limit 100/sec --limit-burst 200 -j RETURN
-A DOS-PING -j DROP
COMMIT
"""


def softirq_jiffies() -> int:
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[7])


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.lab = Lab(PREFIX)
        self.tmp = Path(tempfile.mkdtemp(prefix="nodeguard-bench-"))
        add_data_dir(self.tmp)  # the defences' nodeguard writes its state and log there
        self.new_addrs: list[str] = []
        self.policies: dict[str, Path] = {}
        self.runs: list[dict] = []
        self.status_seconds: list[float] = []
        self.defences = tuple(d for d in DEFENCES if d in (args.defences or DEFENCES))

    # --- set-up -------------------------------------------------------------------------------
    def build(self) -> None:
        topo = labmod.build_node_lab(self.lab, COUNTERS, COUNTER_TABLE)
        self.node, self.atk, self.cli = topo.node, topo.attacker, topo.client
        base = int.from_bytes(bytes(int(x) for x in NEW_NET.split("/")[0].split(".")), "big")
        count = 1 << (32 - int(NEW_NET.split("/")[1]))
        self.new_addrs = [".".join(str((base + i) >> s & 255) for s in (24, 16, 8, 0)) for i in range(1, count - 1)]
        need = len(self.plan()) * (int(self.args.duration / self.args.interval) + 1)
        batch = "".join(f"addr add {a}/32 dev eth0\n" for a in self.new_addrs[:need])
        self.crr_srcs = [f"{CRR_NET.rsplit('.', 1)[0]}.{i}" for i in range(1, CRR_SOURCES + 1)]
        batch += "".join(f"addr add {a}/32 dev eth0\n" for a in self.crr_srcs)
        sh(["ip", "-n", self.cli.name, "-batch", "-"], input=batch)
        # kube-proxy's rules for a Local service: the NodePort DNATs straight to the endpoint, no masquerade
        self.node.run(["iptables-nft", "-t", "nat", "-A", "KUBE-NODEPORTS", "-m", "tcp", "-p", "tcp", "--dport",
                       str(NODEPORT_LOCAL), "-j", "KUBE-SEP-OYPFS5VJICHGATKP"])
        self.node.run(["ip", "route", "add", NEW_NET, "via", CLIENT])
        self.node.run(["ip", "route", "add", CRR_NET, "via", CLIENT])
        decl = "; ".join(f"add counter inet {DELIVERED_TABLE} in_{k}" for k in COUNTERS)
        rules = "; ".join(f"add rule inet {DELIVERED_TABLE} {c} iifname up0 {m} counter name in_{k}"
                          for c in ("input", "forward") for k, m in COUNTERS.items())
        self.node.run(["nft", f"add table inet {DELIVERED_TABLE}; {decl}; "
                             f"add chain inet {DELIVERED_TABLE} input {{ type filter hook input priority 500; }}; "
                             f"add chain inet {DELIVERED_TABLE} forward {{ type filter hook forward priority 500; }}; "
                             f"{rules}"])
        self.fresh = iter(self.new_addrs[:need])
        self.scratch = self.node  # where the defences go
        # this tree's built-in policy: the venv's editable install would resolve the package data in its own checkout
        default = yaml.safe_load((ROOT / "rules" / "default.yaml").read_text())
        default["sampler"]["log"] = str(self.tmp / "attacks.jsonl")
        default["watcher"]["state_file"] = str(self.tmp / "watch.json")
        for d in self.defences:
            if d.startswith("nodeguard-"):
                pol = dict(default)
                if d != "nodeguard-nft":
                    pol["backend"] = "iptables"
                    pol["iptables"] = {"flavour": d.rsplit("-", 1)[1]}
                path = self.tmp / f"{d}.yaml"
                path.write_text(yaml.safe_dump(pol, sort_keys=False))
                self.policies[d] = path
        self.filter_before = self.node.run(["iptables-nft-save", "-t", "filter"]).stdout

    # --- defences -----------------------------------------------------------------------------
    def install(self, d: str) -> None:
        """nodeguard as it runs on a node: its daemon (``nodeguard run``: rules, watcher, sampler, and
        whatever it engages at run time), ready once ``status`` says its rules are installed."""
        if d == "handmade":
            self.node.run(["iptables-nft-restore", "--noflush"], input=HANDMADE)
        elif d != "none":
            log = open(self.tmp / f"{d}.log", "a")
            self.daemon = self.lab.spawn(self.node, ["-m", "guard", "run", "-c", str(self.policies[d]), "--last-good",
                                                     str(self.tmp / f"{d}.last-good.yaml")], python=True,
                                         stdout=subprocess.DEVNULL, stderr=log)
            deadline = time.monotonic() + 30
            while not json.loads(nodeguard(self.node, "status", "--json", "-c", str(self.policies[d])).stdout
                                 ).get("installed"):
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nodeguard run did not install its rules: see {log.name}")
                time.sleep(0.2)

    def remove(self, d: str) -> None:
        if d == "handmade":
            self.node.run(["iptables-nft-restore", "-T", "filter"], input=self.filter_before)
        elif d != "none":
            self.lab.stop(self.daemon)  # SIGTERM: the rules stay, as on a node
            nodeguard(self.node, "uninstall")
        self.node.run(["conntrack", "-F"], check=False)

    def dropped(self, d: str) -> int:
        if d == "none":
            return 0
        if d == "handmade":
            total = 0
            for ln in self.node.run(["iptables-nft-save", "-c", "-t", "filter"]).stdout.splitlines():
                if ln.startswith("[") and " -A DOS-" in ln and ln.endswith("-j DROP"):
                    total += int(ln[1:].split(":", 1)[0])
            return total
        started = time.monotonic()
        st = json.loads(nodeguard(self.node, "status", "--json", "-c", str(self.policies[d]), timeout=120).stdout)
        self.status_seconds.append(time.monotonic() - started)
        # status's drops per rule group, from the condemning rules' counters: the per-source and global
        # limits, bogus flags, connection limits, and "banned" (the ban check's drops of banned sources); "/monitor"
        # groups only would have dropped
        return sum(n["packets"] for group, n in (st.get("drops") or {}).items() if not group.endswith("/monitor"))

    # --- measurements -------------------------------------------------------------------------
    def client(self, *args: str, timeout: float = 120) -> dict:
        res = self.cli.run([sys.executable, str(ROOT / "bench" / "_client.py"), *args], timeout=timeout)
        return json.loads(res.stdout.splitlines()[-1])

    def counters(self) -> dict[str, int]:
        """Attack packets arrived (netdev ingress) and delivered (after every filter, "d:" keys)."""
        out = labmod.parse_counters(self.node.run(["nft", "-j", "list", "table", "netdev",
                                                   COUNTER_TABLE]).stdout)
        out.update({f"d:{k}": v for k, v in labmod.parse_counters(self.node.run(
            ["nft", "-j", "list", "table", "inet", DELIVERED_TABLE]).stdout).items()})
        return out

    def connects(self, port: int, duration: float) -> dict:
        new = [next(self.fresh) for _ in range(int(duration / self.args.interval) + 1)]
        return self.client("connects", NODE, str(port), str(duration), str(self.args.interval),
                           str(self.args.timeout), CLIENT, *new)

    def attack(self, d: str, scenario: str, rate: str, rep: int) -> dict:
        _title, hping, counter, port = SCENARIOS[scenario]
        self.install(d)
        try:
            warm = self.client("connects", NODE, str(port), "0.3", "0.1", "2", CLIENT)  # the returning client
            c0, s0, t0 = self.counters(), softirq_jiffies(), time.monotonic()
            flood = self.lab.spawn(self.atk, ["hping3", "-q", *RATES[rate], *hping], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(self.args.ramp)
            legit = self.connects(port, self.args.duration)
            self.lab.stop(flood, signal.SIGINT)
            c1, s1, t1 = self.counters(), softirq_jiffies(), time.monotonic()
            conntrack = int(self.node.run(["conntrack", "-C"]).stdout.strip() or 0)
            dropped = self.dropped(d)
        finally:
            self.remove(d)
        arrived = c1.get(counter, 0) - c0.get(counter, 0)
        delivered = c1.get(f"d:{counter}", 0) - c0.get(f"d:{counter}", 0)
        run = {"defence": d, "scenario": scenario, "rate": rate, "rep": rep, "seconds": round(t1 - t0, 3),
               "arrived": arrived, "arrived_pps": arrived / (t1 - t0), "dropped": dropped,
               "dropped_pct": 100.0 * dropped / arrived if arrived else None, "delivered": delivered,
               "undelivered_pct": 100.0 * (arrived - delivered) / arrived if arrived else None,
               "softirq_jiffies": s1 - s0,
               "softirq_us_per_pkt": (s1 - s0) * 1e6 / os.sysconf("SC_CLK_TCK") / arrived if arrived else None,
               "conntrack": conntrack, "warm_ok": sum(ok for ok, _ in warm["returning"])}
        run.update(self._legit(legit))
        return run

    def quiet(self, d: str, rep: int) -> dict:
        """No attack: legitimate connects, then request/response and bulk rates with this defence."""
        self.install(d)
        try:
            self.client("connects", NODE, str(HOST_TCP), "0.3", "0.1", "2", CLIENT)
            legit = self.connects(HOST_TCP, self.args.duration / 2)
            crr = self.client("crr", NODE, str(HOST_TCP), str(self.args.quiet_s), *self.crr_srcs)["per_s"]
            rr = self.client("rr", NODE, str(HOST_RR), str(self.args.quiet_s))["per_s"]
            bulk = self.client("bulk", NODE, str(HOST_SINK), str(self.args.quiet_s))["bytes_per_s"]
            conntrack = int(self.node.run(["conntrack", "-C"]).stdout.strip() or 0)
        finally:
            self.remove(d)
        run = {"defence": d, "scenario": "none", "rate": "-", "rep": rep, "crr_per_s": crr, "rr_per_s": rr,
               "bulk_mbit_s": bulk * 8 / 1e6, "conntrack": conntrack}
        run.update(self._legit(legit))
        return run

    @staticmethod
    def _legit(res: dict) -> dict:
        out = {}
        for kind in ("returning", "new"):
            rows = res.get(kind, [])
            lat = [ms for ok, ms in rows if ok]
            out[f"{kind}_ok"], out[f"{kind}_n"] = sum(ok for ok, _ in rows), len(rows)
            out[f"{kind}_ok_pct"] = 100.0 * out[f"{kind}_ok"] / len(rows) if rows else None
            out[f"{kind}_p50_ms"], out[f"{kind}_p99_ms"] = _pct(lat, 0.5), _pct(lat, 0.99)
        return out

    # --- the run ------------------------------------------------------------------------------
    def plan(self) -> list[tuple]:
        scenarios = self.args.scenarios or (["syn-spoofed-host", "icmp"] if self.args.quick else list(SCENARIOS))
        rates = self.args.rates or (["max"] if self.args.quick else list(RATES))
        items = []
        for rep in range(self.args.reps):
            n = len(self.defences)
            order = list(self.defences[rep % n:] + self.defences[:rep % n])  # alternate, rotated
            for sc in scenarios:
                for rate in rates:
                    items += [("attack", d, sc, rate, rep) for d in order]
            items += [("quiet", d, "none", "-", rep) for d in order]
        return items

    def run(self) -> None:
        items = self.plan()
        per_run = int(self.args.duration / self.args.interval) + 1
        if len(items) * per_run > len(self.new_addrs):
            raise SystemExit(f"{len(items)} runs need more brand-new addresses than {NEW_NET} holds")
        started = time.monotonic()
        for i, item in enumerate(items, 1):
            kind, d, sc, rate, rep = item
            run = self.attack(d, sc, rate, rep) if kind == "attack" else self.quiet(d, rep)
            self.runs.append(run)
            print(f"[{time.monotonic() - started:6.1f} s] {i}/{len(items)} {sc:<21} {rate:<5} {d:<26} " + (
                f"arrived {run['arrived_pps']:>9,.0f} pps dropped {run['dropped_pct'] or 0:5.1f} % "
                f"undelivered {run['undelivered_pct'] or 0:5.1f} % "
                f"softirq {run['softirq_us_per_pkt'] or 0:5.2f} us/pkt conntrack {run['conntrack']:>6} "
                if kind == "attack" else
                f"crr {run['crr_per_s']:>7,.0f}/s rr {run['rr_per_s']:>7,.0f}/s bulk {run['bulk_mbit_s']:>7,.0f} Mbit/s ")
                + f"returning {run['returning_ok']}/{run['returning_n']} new {run['new_ok']}/{run['new_n']}",
                flush=True)

    def close(self) -> None:
        self.lab.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- output ---------------------------------------------------------------------------------------
def _med(rows: list[dict], key: str) -> float | None:
    xs = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def _spread(rows: list[dict], key: str) -> tuple[float, float] | None:
    xs = [r[key] for r in rows if r.get(key) is not None]
    return (min(xs), max(xs)) if len(xs) > 1 else None


def summarise(runs: list[dict]) -> dict:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["rate"], r["defence"]), []).append(r)
    out = []
    keys = ("arrived_pps", "dropped_pct", "undelivered_pct", "returning_ok_pct", "new_ok_pct", "returning_p50_ms", "returning_p99_ms",
            "new_p50_ms", "new_p99_ms", "conntrack", "softirq_us_per_pkt", "crr_per_s", "rr_per_s", "bulk_mbit_s")
    for (sc, rate, d), rows in groups.items():
        row = {"scenario": sc, "rate": rate, "defence": d, "reps": len(rows)}
        for k in keys:
            if any(k in r for r in rows):
                row[k] = _med(rows, k)
                row[k + "_range"] = _spread(rows, k)
        out.append(row)
    base = {r["rate"]: r for r in out if r["scenario"] == "none" and r["defence"] == "none"}
    for r in out:
        b = base.get(r["rate"]) if r["scenario"] == "none" else None
        if b:
            for k in ("crr_per_s", "rr_per_s", "bulk_mbit_s"):
                if r.get(k) and b.get(k):
                    r[k.replace("_per_s", "").replace("_mbit_s", "") + "_overhead_pct"] = 100.0 * (1 - r[k] / b[k])
    return {"rows": out}


def _f(v, fmt="{:,.0f}", none="-") -> str:
    return none if v is None else fmt.format(v)


def _ms(v) -> str:
    return "-" if v is None else (f"{v:,.0f}" if v >= 10 else f"{v:.1f}")


def _fr(row: dict, key: str, fmt="{:,.0f}") -> str:
    v, rng = row.get(key), row.get(key + "_range")
    if v is None:
        return "-"
    return fmt.format(v) + (f" [{fmt.format(rng[0])}–{fmt.format(rng[1])}]" if rng else "")


def environment(args: argparse.Namespace, took: float) -> dict:
    def ver(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"command": "sudo .venv/bin/python bench/flood.py " + " ".join(sys.argv[1:]),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{cpu}, {os.cpu_count()} cores, {mem} GiB RAM (shared, noisy)",
            "kernel": platform.release(), "nft": ver("nft", "--version"), "iptables_nft": ver("iptables-nft", "--version"),
            "iptables_legacy": ver("iptables-legacy", "--version"), "hping3": ver("hping3", "--version"),
            "python": platform.python_version(),
            "nf_conntrack_max": int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text()), "nodeguard_commit": commit, "seconds": round(took),
            "settings": {k: v for k, v in vars(args).items() if k != "out"}}


def write_markdown(path: Path, summary: dict, env: dict, status_s: list[float]) -> None:
    rows = summary["rows"]
    attack = [r for r in rows if r["scenario"] != "none"]
    quiet = [r for r in rows if r["scenario"] == "none"]
    order = {d: i for i, d in enumerate(DEFENCES)}
    sc_order = {s: i for i, s in enumerate(SCENARIOS)}
    attack.sort(key=lambda r: (sc_order.get(r["scenario"], 99), r["rate"], order[r["defence"]]))
    quiet.sort(key=lambda r: order[r["defence"]])
    st = env["settings"]
    L = ["# Flood benchmark: nodeguard against no defence and hand-made iptables chains", "",
         f"Generated by `bench/flood.py` on {env['date']}{' (--quick: fewer scenarios, one repetition)' if st['quick'] else ''}"
         f"{'. PARTIAL: ' + st['interrupted'] if st.get('interrupted') else ''}.",
         "Re-run it after changing the rules; it uses nodeguard only through its CLI.", "",
         f"- command: `{env['command']}` ({env['seconds']} s)",
         f"- machine: {env['machine']}; kernel {env['kernel']}; nf_conntrack_max {env.get('nf_conntrack_max', '?'):,}"
         f" (the node's; it cannot be set per namespace); each flood lasts {st['ramp'] + st['duration']:g} s",
         f"- {env['nft']}; {env['iptables_nft']}; {env['iptables_legacy']}; {env['hping3']}",
         f"- nodeguard commit {env['nodeguard_commit']}; policy: the shipped `rules/default.yaml` (backend keys only), "
         "run as on a node: `nodeguard run` (rules, watcher, sampler)",
         f"- per run: the defence is installed fresh; the returning client connects, then hping3 floods; after "
         f"{st['ramp']} s the client makes one attempt every {st['interval']} s for {st['duration']} s from its "
         f"returning address and one from a never-used address (timeout {st['timeout']} s, a SYN retransmit "
         "shows as ~1 s latency); "
         f"{st['reps']} repetition(s), defences alternating in rotated order",
         "- cells: median of the repetitions, [min–max] when there are several; p50/p99 are per run (about "
         f"{int(st['duration'] / st['interval'])} attempts, so p99 is close to the slowest), then the median over runs",
         "- *arrived*: attack packets counted at netdev ingress of the node's uplink; *dropped*: by the defence's own "
         "counters (nodeguard: `status --json`; hand-made: its DROP rules) as a share of arrived; *not delivered*: "
         "arrived minus what reached the input or forward hook after every filter (priority 500), whoever dropped "
         "it: the defence's counted rules, drops no rule counter sees (a full `hashlimit` table drops new sources "
         "silently), or the kernel (a full conntrack table); *softirq*: "
         "/proc/stat softirq time of the whole machine during the flood ÷ arrived packets", "",
         "## Under attack", "",
         "| scenario | rate | defence | arrived kpps | dropped % | not delivered % | returning ok % | new ok % "
         "| returning p50 / p99 ms | new p50 / p99 ms | conntrack | softirq µs/pkt |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in attack:
        kpps = dict(r, arrived_kpps=r["arrived_pps"] / 1000 if r.get("arrived_pps") is not None else None,
                    arrived_kpps_range=tuple(x / 1000 for x in r["arrived_pps_range"]) if r.get("arrived_pps_range") else None)
        L.append(f"| {r['scenario']} | {r['rate']} | {r['defence']} | {_fr(kpps, 'arrived_kpps', '{:,.0f}')} | "
                 f"{_f(r.get('dropped_pct'), '{:.1f}')} | {_f(r.get('undelivered_pct'), '{:.1f}')} | "
                 f"{_fr(r, 'returning_ok_pct')} | {_fr(r, 'new_ok_pct')} | "
                 f"{_ms(r.get('returning_p50_ms'))} / {_ms(r.get('returning_p99_ms'))} | "
                 f"{_ms(r.get('new_p50_ms'))} / {_ms(r.get('new_p99_ms'))} | "
                 f"{_f(r.get('conntrack'))} | {_fr(r, 'softirq_us_per_pkt', '{:.2f}')} |")
    L += ["", "## No attack: the cost of the rules", "",
          "| defence | connect+request+close /s | overhead % | request/response /s | overhead % | bulk Mbit/s "
          "| overhead % | returning ok % | new ok % | new p50 ms |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in quiet:
        L.append(f"| {r['defence']} | {_fr(r, 'crr_per_s')} | {_f(r.get('crr_overhead_pct'), '{:+.1f}')} | "
                 f"{_fr(r, 'rr_per_s')} | {_f(r.get('rr_overhead_pct'), '{:+.1f}')} | {_fr(r, 'bulk_mbit_s')} | "
                 f"{_f(r.get('bulk_overhead_pct'), '{:+.1f}')} | {_fr(r, 'returning_ok_pct')} | "
                 f"{_fr(r, 'new_ok_pct')} | {_f(r.get('new_p50_ms'), '{:.1f}')} |")
    L += ["", "Overhead is against *none* in the same run (positive = slower). The client is one Python process, so "
          "request rates are bounded by it and differences of a few % are noise on this shared machine.", ""]
    if status_s:
        L += [f"`nodeguard status --json` took {min(status_s):.1f}–{max(status_s):.1f} s per call in this run "
              "(slowest after spoofed floods: it lists every element of the per-source meters).", ""]
    L += ["![legitimate success and cost per packet](benchmarks.png)", ""]
    path.write_text("\n".join(L))


README_BEGIN, README_END = "<!-- bench/flood.py --readme: begin -->", "<!-- bench/flood.py --readme: end -->"
README_DEFENCES = ("none", "nodeguard-nft", "nodeguard-iptables-nft", "nodeguard-iptables-legacy")


def threat_table(summary: dict, env: dict) -> str:
    """The README's table of one run: per flood at hping3's top rate, what a brand-new client got and
    the softirq per attack packet, without protection and with each backend, side by side."""
    rows = {(r["scenario"], r["defence"]): r for r in summary["rows"] if r["rate"] == "max"}
    st = env["settings"]
    out = [f"Measured in one run of `{env['command']}` ({env['date']}, nodeguard {env['nodeguard_commit']}, "
           f"{env['machine']}, nf_conntrack_max {env['nf_conntrack_max']:,}, floods of "
           f"{st['ramp'] + st['duration']:g} s at hping3's top rate, {st['reps']} repetition(s)): a brand-new "
           "client's connects that succeeded (1 s each) · softirq µs per attack packet · conntrack entries at "
           "the end. Full tables: [docs/benchmarks.md](docs/benchmarks.md).", "",
           "| flood | " + " | ".join(README_DEFENCES) + " |", "|---|" + "---|" * len(README_DEFENCES)]
    for name, (what, *_rest) in SCENARIOS.items():
        cells = []
        for defence in README_DEFENCES:
            r = rows.get((name, defence))
            cells.append("—" if r is None else f"{r['new_ok_pct']:.0f} % · {r['softirq_us_per_pkt']:.1f} µs · "
                                               f"{r['conntrack']:,}")
        if any(c != "—" for c in cells):
            out.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_readme(path: Path, summary: dict, env: dict) -> None:
    """Replace the block between README_BEGIN and README_END in ``path`` with threat_table()."""
    text = path.read_text()
    begin, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    path.write_text(text[:begin] + "\n" + threat_table(summary, env) + text[end:])


def write_picture(path: Path, summary: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if r["scenario"] != "none" and r["rate"] == "max"]
    if not rows:
        rows = [r for r in summary["rows"] if r["scenario"] != "none"]
    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in rows)]
    colours = {"none": "#7f7f7f", "handmade": "#ff7f0e", "nodeguard-nft": "#1f77b4",
               "nodeguard-iptables-nft": "#2ca02c", "nodeguard-iptables-legacy": "#9467bd"}
    fig, axes = plt.subplots(3, 1, figsize=(12, 10), dpi=100, sharex=True)
    width = 0.8 / len(DEFENCES)
    for ax, key, label in ((axes[0], "new_ok_pct", "brand-new client: connects ok %"),
                           (axes[1], "returning_ok_pct", "returning client: connects ok %"),
                           (axes[2], "softirq_us_per_pkt", "softirq µs per arrived attack packet")):
        for j, d in enumerate(DEFENCES):
            xs, ys, lo, hi = [], [], [], []
            for i, s in enumerate(scenarios):
                r = next((r for r in rows if r["scenario"] == s and r["defence"] == d), None)
                if r is None or r.get(key) is None:
                    continue
                xs.append(i + (j - (len(DEFENCES) - 1) / 2) * width)
                ys.append(r[key])
                rng = r.get(key + "_range") or (r[key], r[key])
                lo.append(r[key] - rng[0])
                hi.append(rng[1] - r[key])
            ax.bar(xs, ys, width, color=colours[d], label=d, yerr=[lo, hi] if any(lo + hi) else None, capsize=2)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylim(0, 105)
    axes[1].set_ylim(0, 105)
    axes[0].legend(ncol=5, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    axes[2].set_xticks(range(len(scenarios)), scenarios, fontsize=9)
    fig.suptitle("floods at hping3's maximum rate: legitimate connects and the kernel's cost per attack packet "
                 "(median, bars = min–max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 scenarios at max rate, 1 repetition (under 2 minutes)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; --quick 1)")
    ap.add_argument("--scenario", dest="scenarios", action="append", choices=list(SCENARIOS), help="repeatable")
    ap.add_argument("--defence", dest="defences", action="append", choices=DEFENCES, help="repeatable (default: all)")
    ap.add_argument("--rate", dest="rates", action="append", choices=list(RATES), help="repeatable")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds of legitimate attempts during each flood (default 4; --quick 2)")
    ap.add_argument("--ramp", type=float, default=0.5, help="seconds of flood before the first attempt")
    ap.add_argument("--timeout", type=float, default=1.0,
                    help="seconds per connect: 1 s allows one SYN (Linux's first retransmission is at 1 s)")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="directory for benchmarks.md/.json/.png")
    ap.add_argument("--readme", default=None, help="also write the run's threat table into this README's marked block")
    args = ap.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 4.0)
    args.interval = max(0.1, args.duration / 50)  # at most 50 brand-new clients per flood
    args.quiet_s = 0.7 if args.quick else 2.0
    if os.geteuid() != 0:
        print("bench/flood.py needs root (network namespaces)", file=sys.stderr)
        return 2
    random.seed(1)
    bench, started, rc = None, time.monotonic(), 0
    with labmod.signals_unwind():
        try:
            with machine_lock(print) as waited:
                if waited > 0.5:
                    print(f"waited {waited:.1f} s for the machine-wide flood lock")
                remove_stale(PREFIX)
                started = time.monotonic()
                bench = Bench(args)
                try:
                    bench.build()
                    bench.run()
                finally:
                    with labmod.no_signals():
                        bench.close()
        except Interrupted as exc:
            print(f"interrupted by {signal.Signals(exc.signum).name}; every ngb- namespace was removed")
            rc = 128 + exc.signum
            if not bench or not bench.runs:
                return rc
            args.interrupted = f"interrupted by {signal.Signals(exc.signum).name} after {len(bench.runs)} runs"
    took = time.monotonic() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(bench.runs)
    env = environment(args, took)
    (out / "benchmarks.json").write_text(json.dumps({"environment": env, "summary": summary, "runs": bench.runs,
                                                     "status_seconds": bench.status_seconds}, indent=1) + "\n")
    write_markdown(out / "benchmarks.md", summary, env, bench.status_seconds)
    write_picture(out / "benchmarks.png", summary)
    if args.readme:
        write_readme(Path(args.readme), summary, env)
    print(f"wrote {out / 'benchmarks.md'}, benchmarks.json, benchmarks.png in {took:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
