"""Reads whose cost grows with what the kernel's sets hold, kept to a bounded share of a core.

Full banned and trusted sets (262,144 elements with the defaults) cost a second or more of CPU to
read (the kernel's dump and parsing it). Each paced job starts again no sooner than its factor times
the CPU time of its last run after that run started: at most 1/factor of a core, whatever the sets
hold. With small sets their own intervals rule, as before.
"""

from __future__ import annotations

import time

# Measured with all four sets full (bench/daemon_fullsets.py, 2 shared cores): a snapshot took
# 1.4-1.6 s of CPU, a read of both ban sets 0.75 s, a count of every set's fill 0.6-0.7 s; the
# daemon idles at 0.5-1.2 %. The snapshot gets the larger share (2.5 %: one every ~60 s, under the
# 120 s of the NodeguardBansNotSnapshotted alert); the ban records and the fill metrics, which may
# come later, 0.7 % each (every ~110 s): with factors of 100 for those two a 60 s window measured
# 5.1 %, over the 5 % goal; now at most 3.8 % of a core together, beside the idle daemon's.
SNAPSHOT = 40  # persist.py's snapshot (daemon/snapshot_part.py)
BANS = 150  # the sampler's read of the ban sets (ban and unban records)
FILL = 150  # the metrics' count of every set's fill (daemon/provider.py)
# A ban read this cheap (small sets) is not paced: ban records keep the window's cadence. Paced at 150x,
# a 20 ms read under load waited 3 s, and a 2 s ban (the demo's) went unrecorded.
CHEAP_S = 0.05

def next_due(started: float, interval: float, cpu_s: float, factor: int) -> float:
    """When a job that started at ``started`` and took ``cpu_s`` of CPU may run again."""
    return started + max(interval, factor * cpu_s)


def cpu() -> float:
    """CPU seconds of the calling thread (user and system: the kernel's dump is system time)."""
    return time.thread_time()
