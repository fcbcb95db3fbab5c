"""What one lock around libnftables (guard/backend/nft.py) costs: a watcher-like thread lists the
ruleset (terse, JSON) 200 times alone, then again while another thread lists a 20,000-element address
set 10 times (text, as the snapshots do). Prints one JSON object: the watcher's listings in wall ms
(median, max) and each phase's wall and CPU s (the process' user+sys).

    cd TREE && PYTHONPATH=$PWD unshare -n nice -n 19 .venv/bin/python bench/nft_threads.py

(a fresh network namespace of its own: nothing outside it is touched; PYTHONPATH picks the tree).
"""

from __future__ import annotations

import json
import resource
import statistics
import threading
import time

from guard.backend.nft import Nft

ELEMENTS, LISTINGS, SET_LISTINGS = 20_000, 200, 10


def setup(nft: Nft) -> None:
    nft.run_text("add table inet t\nadd set inet t big { type ipv4_addr; size 65536; }\n" + "".join(
        f"add set inet t s{i} {{ type ipv4_addr . inet_service; }}\n" for i in range(10)))
    for start in range(0, ELEMENTS, 5000):
        elems = ", ".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(start, start + 5000))
        nft.run_text(f"add element inet t big {{ {elems} }}\n")


def listings(nft: Nft) -> list[float]:
    times = []
    for _ in range(LISTINGS):
        t = time.monotonic()
        nft.list("ruleset inet", terse=True)
        times.append((time.monotonic() - t) * 1000)
    return times


def phase(work) -> dict:
    cpu0, t0 = _cpu(), time.monotonic()
    times = work()
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 1),
            "wall_s": round(time.monotonic() - t0, 2), "cpu_s": round(_cpu() - cpu0, 2)}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    nft = Nft()
    setup(nft)

    def beside() -> list[float]:
        def snapshots() -> None:
            other = Nft()
            for _ in range(SET_LISTINGS):
                other.text("set inet t big")
        t = threading.Thread(target=snapshots)
        t.start()
        times = listings(nft)
        t.join()
        return times
    print(json.dumps({"alone": phase(lambda: listings(nft)), "beside_set_listings": phase(beside)}))


if __name__ == "__main__":
    main()
