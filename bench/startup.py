"""Whole-process wall-clock figures of the CLI (issue 17, "Startup cost"): the median of N runs of
``python -m guard ...`` as a fresh process, from fork to exit, for

- ``--version`` and ``--help`` (goal <= 150 ms),
- ``apply`` of the built-in default policy (goal <= 300 ms),
- ``apply`` of a policy with 10,000 allow CIDRs (v4 and v6, as bench/apply.py), end to end
  (goal <= 500 ms),

each ``apply`` both as a re-apply of the installed policy (the common case) and as a first install
(uninstalled before each run, outside the timed part).

Baselines measured in the same run, on the same (shared, noisy) machine:

- ``python -c pass``: the interpreter's own start, the floor no CLI can go under;
- the same commands run from a *baseline tree* (``--baseline REV``, default ``main``), checked
  out with ``git worktree add --detach`` into a temporary directory and removed afterwards. The
  runs of the two trees alternate (baseline, candidate, baseline, ...), so load from other jobs
  falls on both alike. The ratio column is candidate / baseline.

Every run happens inside a throwaway network namespace with a veth uplink and a default route
(guard/lab/netns.py): the host's ruleset is never touched. Each tree is imported through PYTHONPATH,
so the venv's editable install of another checkout does not leak in. Bytecode caches are
allowed (PYTHONDONTWRITEBYTECODE is dropped for the children; the warm-up run writes them), as
after a pip install: otherwise each run would time the compiler, not the CLI.

Measured on 2 shared cores while other suites ran (``--runs 9 --baseline e4ff56f``; the
candidate is branch h17B, issue 17's lazy CLI and cheaper load/render; ms, python -c pass 27):

    case                    baseline  candidate  ratio   goal
    version                   292 ms      83 ms   0.28  150 ms ok
    help                      292 ms      65 ms   0.22  150 ms ok
    apply-default             357 ms     297 ms   0.83  300 ms ok
    apply-default install     336 ms     270 ms   0.81  300 ms ok
    apply-10k                 784 ms     488 ms   0.62  500 ms ok
    apply-10k install         637 ms     528 ms   0.83  500 ms MISSED

Absolute figures move by ~10 % with the machine's load; the ratios hold.

usage: sudo .venv/bin/python bench/startup.py [--runs 9] [--baseline main] [--only version,help]
Hold /tmp/nodeguard-kernel-tests.lock around it on a machine where the kernel tests run
(``flock /tmp/nodeguard-kernel-tests.lock python bench/startup.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # this tree's guard.lab, not the venv's install of another checkout
from guard.lab.netns import add_uplink, reexec_in_netns  # noqa: E402
from _policies import big_allowlist  # noqa: E402

GOALS_MS = {"version": 150, "help": 150, "apply-default": 300, "apply-10k": 500}


def run(tree: Path | None, argv: list[str]) -> float:
    """One process, timed from spawn to exit (ms). ``tree`` None: ``argv`` is the whole command."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as installed: with .pyc
    cmd = argv
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
        cmd = [sys.executable, "-m", "guard", *argv]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=tree or ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ms = (time.perf_counter() - t) * 1000
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} (tree {tree}) failed ({res.returncode}): {res.stderr.decode()[-2000:]}")
    return ms


def uninstall(tree: Path) -> None:
    run(tree, ["uninstall"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--baseline", default="main", help="git revision to compare against (a temporary worktree)")
    ap.add_argument("--only", default=None, help="comma-separated case names: " + ",".join(GOALS_MS))
    args = ap.parse_args()
    add_uplink(reexec_in_netns("startup"), "ngb0")  # from here on in a throwaway namespace

    tmp = Path(tempfile.mkdtemp(prefix="ngstartup-"))
    big = tmp / "10k.yaml"
    big.write_text(big_allowlist())
    base_tree = tmp / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_tree), args.baseline],
                   check=True)
    rev = subprocess.run(["git", "-C", str(base_tree), "rev-parse", "--short", "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    trees = {"baseline": base_tree, "candidate": ROOT}
    # name -> (argv, run before each timed run, outside the timing)
    cases = {
        "version": (["--version"], None),
        "help": (["--help"], None),
        "apply-default": (["apply"], None),
        "apply-default install": (["apply"], uninstall),
        "apply-10k": (["apply", "-c", str(big)], None),
        "apply-10k install": (["apply", "-c", str(big)], uninstall),
    }
    if args.only:
        keep = args.only.split(",")
        cases = {k: v for k, v in cases.items() if k.split()[0] in keep}
    try:
        floor = statistics.median(run(None, [sys.executable, "-c", "pass"]) for _ in range(args.runs))
        print(f"python -c pass: {floor:.0f} ms (median of {args.runs}); baseline tree: {args.baseline} ({rev})")
        print(f"{'case':<22} {'baseline':>9} {'candidate':>10} {'ratio':>6} {'- floor':>8} {'goal':>7}")
        for name, (argv, before) in cases.items():
            times: dict[str, list[float]] = {k: [] for k in trees}
            for tree in trees.values():  # warm the page cache and install the policy once for each tree
                run(tree, argv)
            for _ in range(args.runs):
                for which, tree in trees.items():
                    if before:
                        before(tree)
                    times[which].append(run(tree, argv))
            b, c = (statistics.median(times[k]) for k in trees)
            goal = GOALS_MS[name.split()[0]]
            print(f"{name:<22} {b:>6.0f} ms {c:>7.0f} ms {c / b:>6.2f} {c - floor:>5.0f} ms {goal:>4} ms "
                  f"{'ok' if c <= goal else 'MISSED'}", flush=True)
        uninstall(ROOT)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
