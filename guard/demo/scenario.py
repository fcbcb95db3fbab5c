"""``nodeguard demo``: three floods against a node protected by the default policy, shown live.

Topology (all in network namespaces named ``ngd-<pid>-<role>``; the host's ruleset is never touched)::

    attacker 10.66.0.66 ─┐
    client   10.66.0.20 ─┼─ lan (bridge, gateway 10.66.0.254, blackholes replies to spoofed sources)
    node     10.66.0.1  ─┘  uplink up0 (default route: what nodeguard protects)
      │ kube-proxy's iptables ruleset (NodePort 3003 -> 10.180.0.3:80), host echo service tcp/8080, udp/5353
      └─ pod0 ── pod 10.180.0.3 (echo on tcp/80)

The node runs ``nodeguard apply`` and ``nodeguard sample`` with the shipped default policy (only the
sampler's log and window, and the watcher's state file, moved to a temporary directory; and the SYN valve
always on: by default ``nodeguard run`` engages it only once conntrack fails new connections, which these
short floods do not reach; docs/design/syn-valve.md). The demo's own
netdev ingress counters on up0 count what arrives; nodeguard's own counters of the rules that condemn,
read 4 times a second in the node (``guard.demo.drops``), give what was dropped; the client tries the host service, the NodePort, a ping and a UDP echo every 100 ms.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from ..configfile import add_data_dir
from ..lab.netns import Netns, namespaces, sh
from . import drops as drops_mod
from . import lab as labmod
from .floods import FULL, QUICK, drops_by_threat, threats
from .lab import Lab, nodeguard
from .lab import HOST_TCP, NODE, NODEPORT, POD, UDP_PORT, UPLINK, GATEWAY
from .telemetry import Telemetry

PREFIX = "ngd"
COUNTER_TABLE = "ngd_demo"
PROBES = {"tcp-host": f"{NODE}:{HOST_TCP}", "tcp-nodeport": f"{NODE}:{NODEPORT}", "ping": NODE,
          "udp": f"{NODE}:{UDP_PORT}"}
PROBE_INTERVAL, PROBE_TIMEOUT = 0.1, 1.0
POLL_INTERVAL = 0.25  # both counters, 4 times a second
MIN_CLIENT_OK = 0.80      # "sane": the protected client keeps >= 80 % of its attempts during every flood
MIN_ARRIVED_PPS = 5_000   # below this the "flood" did not happen and nothing was shown
MIN_DROPPED_SHARE = 0.5   # nodeguard must have dropped at least half of what arrived


class Demo:
    def __init__(self, quick: bool, plot: str, out=print, keep: str | None = None):
        self.quick, self.plot, self.say, self.keep = quick, plot, out, keep
        self.timing = QUICK if quick else FULL
        self.lab = Lab(PREFIX)
        self.threats = threats()
        self.tel = Telemetry()
        self.stop_polling = threading.Event()
        self.tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="nodeguard-demo-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        # the demo's nodeguard (apply, sample: they inherit this) writes its log and state there
        add_data_dir(self.tmp)
        self.policy = self.tmp / "policy.yaml"
        self.failures: list[str] = []
        self.t0 = time.monotonic()
        self.node: Netns | None = None

    # --- set-up ---------------------------------------------------------------------------
    def build(self) -> None:
        counters = {th.key: th.ingress for th in self.threats}
        topo = labmod.build_node_lab(self.lab, counters, COUNTER_TABLE)
        self.node, self.atk, self.cli = topo.node, topo.attacker, topo.client
        self.say(f"namespaces: {', '.join(ns.name for ns in self.lab.netns)} (node uplink {UPLINK} {NODE}, "
                 f"default route via {GATEWAY})")
        self.say(f"kube-proxy ruleset loaded in the node (iptables-nft, {topo.kube_rules} rules): "
                 f"NodePort {NODEPORT} -> pod {POD}:80 by DNAT")
        self.say(f"demo counters: netdev ingress on {UPLINK} (table netdev {COUNTER_TABLE}, the demo's, "
                 "not nodeguard's)")
        self.say(f"services: node echo tcp/{HOST_TCP} udp/{UDP_PORT}; pod echo tcp/80")

    def install(self) -> None:
        default = importlib.resources.files("guard.rules").joinpath("default.yaml").read_text()
        policy = yaml.safe_load(default)
        policy["sampler"]["log"] = str(self.tmp / "attacks.jsonl")
        policy["sampler"]["window_s"] = 1
        policy["watcher"]["state_file"] = str(self.tmp / "watch.json")
        # the default engages the SYN valve only while conntrack fails new connections (`nodeguard run`
        # watches for it; docs/design/syn-valve.md); the demo's floods are too short to reach that wall
        policy["syn"]["valve"] = "always"
        self.policy.write_text("# nodeguard demo: the shipped rules/default.yaml; only the sampler's log and window,\n"
                               "# the watcher's state file (a temporary directory, 1 s windows) and syn.valve differ\n"
                               + yaml.safe_dump(policy, sort_keys=False))
        out = nodeguard(self.node, "apply", "-c", str(self.policy)).stdout.strip()
        self.say(f"nodeguard apply (default policy, but syn.valve: always): {out.splitlines()[0] if out else '?'}")
        self.sampler = self.lab.spawn(self.node, ["-m", "guard", "sample", "-c", str(self.policy)], python=True,
                                      stdout=subprocess_devnull())
        self.say(f"nodeguard sample: running in the node, attack log {self.tmp / 'attacks.jsonl'}")

    # --- telemetry --------------------------------------------------------------------------
    def start_telemetry(self) -> None:
        args = ["-m", "guard.demo.probe", str(PROBE_INTERVAL), str(PROBE_TIMEOUT),
                *(f"{k}={v}" for k, v in PROBES.items())]
        self.probe = self.lab.spawn(self.cli, args, python=True, stderr=subprocess_devnull())
        self.drops = self.lab.spawn(self.node, ["-m", "guard.demo.drops", str(self.policy), str(POLL_INTERVAL)],
                                    python=True)
        threading.Thread(target=self._read_probe, daemon=True).start()
        threading.Thread(target=self._read_drops, daemon=True).start()
        threading.Thread(target=self._poll_counters, daemon=True).start()

    def _read_probe(self) -> None:
        for line in self.probe.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            with self.tel.lock:
                self.tel.attempts.append(rec)

    def _read_drops(self) -> None:
        """Drops per threat, stamped by the reader in the node when it read them."""
        for line in self.drops.stdout:
            try:
                t, drops = drops_mod.parse(line)
            except (ValueError, KeyError, TypeError) as exc:
                self.tel.errors.append(f"drop counters: {exc}")
                continue
            with self.tel.lock:
                self.tel.dropped.append((t, drops_by_threat(drops, self.threats)))
        if not self.stop_polling.is_set():
            self.tel.errors.append(f"drop counters: the reader ended: {self.drops.stderr.read().strip()[-200:]}")

    def _poll_counters(self) -> None:
        while not self.stop_polling.wait(POLL_INTERVAL):
            try:
                res = self.node.run(["nft", "-j", "list", "table", "netdev", COUNTER_TABLE], timeout=5)
                vals = _ingress(res.stdout)
            except Exception as exc:  # noqa: BLE001 - a failed poll is shown, never fatal
                self.tel.errors.append(f"ingress counters: {exc}")
                continue
            with self.tel.lock:
                self.tel.arrived.append((time.time(), vals))

    # --- the run ------------------------------------------------------------------------------
    def wait(self, seconds: float, display) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.25, left))
            display.update()

    def run_floods(self, display) -> None:
        t = self.timing
        self.baseline_start = time.time()
        self.wait(t.warm, display)
        ok, total, kinds, _ = self.tel.client(self.baseline_start)
        bad = [k for k, (o, n) in kinds.items() if o < n or n == 0]
        if total == 0 or bad or set(kinds) != set(PROBES):
            raise RuntimeError(f"the client cannot reach the node before any flood ({ok}/{total} ok; failing: "
                               f"{', '.join(bad) or 'no attempt finished'})")
        self.say(f"before the floods: client {ok}/{total} ok (host service, NodePort via DNAT, ping, UDP)")
        for i, th in enumerate(self.threats):
            before = self._snapshot()
            th.started = time.time()
            proc = self.lab.spawn(self.atk, ["hping3", "--flood", "-q", *th.hping], stdout=subprocess_pipe())
            display.event(f"{th.title}: started (hping3 --flood {' '.join(th.hping)})")
            self.wait(t.flood, display)
            os.kill(proc.pid, signal.SIGINT)  # hping3 prints its statistics on SIGINT
            try:
                out, err = proc.communicate(timeout=5)
            except Exception:  # noqa: BLE001
                self.lab.stop(proc)
                out, err = "", ""
            th.hping_out = " ".join((out + err).split())[-200:]
            th.ended = time.time()
            self.wait(t.gap if i < len(self.threats) - 1 else t.cool, display)
            after = self._snapshot()
            th.arrived = after[0].get(th.key, 0) - before[0].get(th.key, 0)
            th.dropped = after[1].get(th.key, 0) - before[1].get(th.key, 0)
            display.event(f"{th.title}: stopped")
            if i < len(self.threats) - 1:  # the floods share one attacker: the next one meets its own limit
                res = nodeguard(self.node, "unban", "--all", "-c", str(self.policy), check=False)
                if res.stdout.strip() not in ("", "no banned sources"):
                    display.event(f"nodeguard unban --all: {res.stdout.strip()} (so the next flood meets its own limit)")

    def _snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """The latest ingress counters and drop counters, fresh from the kernel."""
        now = time.time()
        res = self.node.run(["nft", "-j", "list", "table", "netdev", COUNTER_TABLE])
        return _ingress(res.stdout), self.tel.fresh_drops(now)

    def summary(self) -> None:
        self.say("")
        self.say("summary (client = the legitimate client's attempts started during the flood):")
        for th in self.threats:
            secs = max(th.ended - th.started, 1e-3)
            ok, total, kinds, lat = self.tel.client(th.started, th.ended)
            share = ok / total if total else 0.0
            p50 = f"{statistics.median(lat):.1f} ms" if lat else "-"
            per_kind = ", ".join(f"{k} {o}/{n}" for k, (o, n) in sorted(kinds.items()))
            drop_share = th.dropped / th.arrived if th.arrived else 0.0
            self.say(f"  {th.title:<36} arrived {th.arrived:>10,} ({th.arrived / secs:>9,.0f} pps)  dropped "
                     f"{th.dropped:>10,} ({100 * drop_share:5.1f} %)  client {ok}/{total} ok ({100 * share:.0f} %), "
                     f"p50 {p50}")
            self.say(f"  {'':<36} {per_kind}")
            if th.arrived / secs < MIN_ARRIVED_PPS:
                self.failures.append(f"{th.key}: only {th.arrived / secs:,.0f} pps arrived (hping3: {th.hping_out})")
            if drop_share < MIN_DROPPED_SHARE:
                self.failures.append(f"{th.key}: nodeguard dropped {100 * drop_share:.0f} % of the flood")
            if share < MIN_CLIENT_OK:
                self.failures.append(f"{th.key}: the client got {100 * share:.0f} % of its attempts through "
                                     f"(< {100 * MIN_CLIENT_OK:.0f} %)")

    def report(self) -> None:
        self.lab.stop(self.sampler, signal.SIGTERM, timeout=10)  # closes its last window
        log = str(self.tmp / "attacks.jsonl")
        res = sh([sys.executable, "-m", "guard", "report", "--log", log, "--top", "5", "--plot", self.plot],
                 check=False, env=labmod.python_env())
        self.say("")
        self.say("nodeguard report (the sampler's attack log of this run):")
        self.say(res.stdout.rstrip())
        if res.returncode != 0:
            self.failures.append(f"nodeguard report failed: {res.stderr.strip()}")
            return
        rep = json.loads(sh([sys.executable, "-m", "guard", "report", "--log", log, "--json"],
                            env=labmod.python_env()).stdout)
        rules = {e["rule"] for e in rep["episodes"]}
        for need in ("icmp-flood", "syn-flood"):
            if need not in rules:
                self.failures.append(f"the attack log has no {need} episode")
        if not any(r.startswith("limit-") for r in rules):
            self.failures.append("the attack log has no UDP limit episode")
        self.say(f"timeline picture: {self.plot}")

    def cleanup(self) -> None:
        self.stop_polling.set()
        if self.node is not None:
            res = nodeguard(self.node, "uninstall", check=False)
            self.say(f"nodeguard uninstall: {res.stdout.strip() or res.stderr.strip()}")
        names = [ns.name for ns in self.lab.netns]
        self.lab.close()
        if self.keep:
            self.say(f"kept: the attack log and the policy in {self.tmp} (nodeguard report --log "
                     f"{self.tmp / 'attacks.jsonl'})")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        left = [n for n in names if n in namespaces(PREFIX)]
        self.say(f"cleanup: removed {len(names) - len(left)} namespaces" + (f"; LEFT: {left}" if left else ""))


def _ingress(nft_json: str) -> dict[str, int]:
    """threat key -> packets, from ``nft -j list table netdev ngd_demo`` (see ``parse_counters``)."""
    return labmod.parse_counters(nft_json)


def subprocess_devnull():
    import subprocess
    return subprocess.DEVNULL


def subprocess_pipe():
    import subprocess
    return subprocess.PIPE
