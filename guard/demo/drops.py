"""nodeguard's drops, read cheaply and often: ``python -m guard.demo.drops POLICY INTERVAL``, run in the
node's namespace, prints one JSON line per read::

    {"t": epoch s of the read, "drops": [[group, mode, packets], ...]}

Why not ``nodeguard status --json``: it also lists every meter element, seconds under a spoofed
flood, so the demo's drops column lagged the flood or showed 0. This reads only the counters of the
rules that condemn (``counters.drops_by_group``: one netlink dump of nodeguard's rules), a few ms.
Groups and modes are the model's (``Rule.group``/``.mode``), never parsed from rule names.
"""

from __future__ import annotations

import json
import sys
import time


def reader(policy_path: str):
    """A callable returning {(group, mode): packets}, with the plan built once (the condemning
    rules keep their ids while the sampler rewrites its sample chains: ``apply.install_in_place``)."""
    from ..cli._shared import kernel, reading_plan
    from ..counters import drops_by_group
    from ..policy.load import load_policy

    policy, _source = load_policy(policy_path)
    plan = reading_plan(policy, kernel())
    return lambda: {key: c["packets"] for key, c in drops_by_group(plan).items()}


def line(t: float, drops: dict[tuple[str, str], int]) -> str:
    return json.dumps({"t": round(t, 4), "drops": [[g, m, n] for (g, m), n in sorted(drops.items())]})


def parse(text: str) -> tuple[float, dict[tuple[str, str], int]]:
    """The time and {(group, mode): packets} of one ``line``."""
    rec = json.loads(text)
    return rec["t"], {(g, m): n for g, m, n in rec["drops"]}


def main(argv: list[str]) -> None:
    read, interval = reader(argv[0]), float(argv[1])
    tick = time.monotonic()
    while True:
        drops = read()
        print(line(time.time(), drops), flush=True)
        tick += interval
        time.sleep(max(0.0, tick - time.monotonic()))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (KeyboardInterrupt, BrokenPipeError):
        pass
