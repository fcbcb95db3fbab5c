"""``nodeguard demo``'s entry point: refuse what cannot run here, take the machine-wide flood lock,
run the scenario (scenario.py) with its display (live.py), and remove everything in every case."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

from ..lab.lock import machine_lock
from ..lab.netns import remove_stale
from . import lab as labmod
from .lab import Interrupted
from .scenario import PREFIX, Demo


def main(quick: bool, plot: str, cleanup_only: bool = False, keep: str | None = None) -> int:
    """Run the demo; the exit code: 0 ok, 1 a step failed or the results were not sane, 2 cannot run
    here, 128 + signal when interrupted (everything is removed in every case)."""
    if cleanup_only:
        removed = remove_stale(PREFIX)
        print(f"removed {len(removed)} namespaces left by demos that no longer run" +
              (f": {', '.join(removed)}" if removed else ""))
        return 0
    problem = _cannot_run()
    if problem:
        print(f"nodeguard demo: {problem}", file=sys.stderr)
        return 2
    from .live import Display

    started = time.monotonic()
    with labmod.signals_unwind():
        try:
            with machine_lock(print) as waited:
                if waited > 0.5:
                    print(f"waited {waited:.1f} s for the machine-wide flood lock")
                started = time.monotonic()
                stale = remove_stale(PREFIX)
                if stale:
                    print(f"removed namespaces left by a killed demo: {', '.join(stale)}")
                return _run(quick, plot, started, Display, keep)
        except Interrupted as exc:
            name = signal.Signals(exc.signum).name
            print(f"demo interrupted by {name}; everything was removed", flush=True)
            return 128 + exc.signum


def _run(quick: bool, plot: str, started: float, display_cls, keep: str | None) -> int:
    demo = Demo(quick, plot, keep=keep)
    display = display_cls(demo)
    demo.say = display.say
    try:
        try:
            demo.say(f"nodeguard demo{' --quick' if quick else ''}: floods {demo.timing.flood:.0f} s each; "
                     f"the host's ruleset is never touched")
            demo.build()
            demo.install()
            demo.start_telemetry()
            with display:
                demo.run_floods(display)
            demo.summary()
            demo.report()
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is one line, and cleanup still runs
            demo.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        with labmod.no_signals():
            demo.cleanup()
    took = time.monotonic() - started
    if demo.failures:
        for f in demo.failures:
            demo.say(f"FAILED: {f}")
        demo.say(f"demo FAILED in {took:.1f} s")
        return 1
    demo.say(f"demo OK in {took:.1f} s")
    return 0


def _cannot_run() -> str | None:
    from ..optional import missing

    lacking = missing(("rich", "matplotlib"), "demo", "nodeguard demo")
    if lacking:
        return lacking
    if os.geteuid() != 0:
        return "needs root (network namespaces, CAP_NET_ADMIN)"
    missing = [t for t in ("ip", "nft", "iptables-nft-restore", "hping3") if not shutil.which(t)]
    if missing:
        return f"missing tools: {', '.join(missing)} (apt-get install iproute2 nftables iptables hping3)"
    return None
