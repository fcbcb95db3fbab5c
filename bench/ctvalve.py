"""Prototype: the conntrack-aware SYN valve's userspace switch (runs in the node's network namespace).

The ruleset holds the valve rule all the time; it only counts while the set ``syn-valve-on`` holds
the element ``tcp`` (a set lookup keyed on ``meta l4proto``). This agent reads
/proc/sys/net/netfilter/nf_conntrack_count (one pread of an open file: no process, no netlink dump)
every ``--interval`` seconds and adds or deletes that one element. Rules, rule ids and handles never
change, so the watcher sees no drift.

  engage    when count >= on x max
  disengage when count has stayed below off x max for ``--hold`` seconds
(Reading the valve's drop counter to tell "attack over" from "held back" would need a netlink
GETOBJ of its own: libnftables' ``list counter`` fetches the whole cache, 65,536-element meters
included, and took 441 ms here, against 1.9 ms for ``add element``.)

``--monitor-only`` only samples the count. On SIGINT it prints one JSON line:
{"ct_max": highest count seen, "engaged_s": seconds engaged, "toggles": n, "polls": n}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"
MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


class NftSwitch:
    def __init__(self, table: str, set_name: str, counter: str):
        from nftables import Nftables
        self.nft = Nftables()
        self.nft.set_json_output(True)
        self.table, self.set, self.counter = table, set_name, counter

    def _cmd(self, text: str) -> str:
        rc, out, err = self.nft.cmd(text)
        if rc:
            raise RuntimeError(f"{text}: {err}")
        return out

    def set_engaged(self, on: bool) -> None:
        # add/delete of one element: a one-message transaction, no rule is touched
        self._cmd(f"{'add' if on else 'delete'} element {self.table} {self.set} {{ tcp }}")

    def drops(self) -> int:
        out = json.loads(self._cmd(f"list counter {self.table} {self.counter}"))["nftables"]
        return next(o["counter"]["packets"] for o in out if "counter" in o)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--monitor-only", action="store_true")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--on", type=float, default=0.40)
    ap.add_argument("--off", type=float, default=0.30)
    ap.add_argument("--hold", type=float, default=5.0)
    ap.add_argument("--table", default="inet nodeguard")
    ap.add_argument("--set", default="syn-valve-on")
    ap.add_argument("--counter", default="syn-valve-drops")
    ap.add_argument("--max", type=int, default=0, help="override nf_conntrack_max (tests only)")
    a = ap.parse_args()

    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with open(MAX) as f:
        ct_max = a.max or int(f.read())
    fd = os.open(COUNT, os.O_RDONLY)
    sw = None if a.monitor_only else NftSwitch(a.table, a.set, a.counter)
    engaged, since, toggles, polls, peak, engaged_s = False, 0.0, 0, 0, 0, 0.0
    last_high = 0.0
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        count = int(os.pread(fd, 32, 0))
        polls += 1
        peak = max(peak, count)
        if sw:
            if not engaged and count >= a.on * ct_max:
                sw.set_engaged(True)
                engaged, since, toggles = True, now, toggles + 1
                last_high = now
            elif engaged:
                if count >= a.off * ct_max:
                    last_high = now
                if now - last_high >= a.hold:
                    sw.set_engaged(False)
                    engaged, toggles = False, toggles + 1
                    engaged_s += now - since
        time.sleep(a.interval)
    if engaged:
        engaged_s += time.monotonic() - since
        sw.set_engaged(False)
    print(json.dumps({"ct_max": peak, "engaged_s": round(engaged_s, 2), "toggles": toggles, "polls": polls}), flush=True)


if __name__ == "__main__":
    main()
