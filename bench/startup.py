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
  falls on both alike. The ratio column is candidate / baseline. The CPU columns are the medians of
  the same runs' user + system time: on a loaded machine, where wall times swing by 2x, compare those.

Every run happens inside a throwaway network namespace with a veth uplink and a default route
(guard/lab/netns.py): the host's ruleset is never touched. Each tree is imported through PYTHONPATH,
so the venv's editable install of another checkout does not leak in. Bytecode caches are
allowed (PYTHONDONTWRITEBYTECODE is dropped for the children; the warm-up run writes them), as
after a pip install: otherwise each run would time the compiler, not the CLI.

Measured on 2 shared cores, nothing else running (``--runs 9 --baseline e4ff56f``, main at the end of
2026-12-03's session, after closed_ports, the valve and datapath detection; ms, python -c pass 29):

    case                    baseline  candidate  ratio   goal
    version                   305 ms      91 ms   0.30  150 ms ok
    help                      310 ms      82 ms   0.26  150 ms ok
    apply-default             407 ms     348 ms   0.86  300 ms MISSED
    apply-default install     379 ms     340 ms   0.90  300 ms MISSED
    apply-10k                 914 ms     587 ms   0.64  500 ms MISSED
    apply-10k install         746 ms     647 ms   0.87  500 ms MISSED

(branch h17B, the lazy CLI, had measured 297, 270, 488 and 528 ms for the apply rows against a baseline
357, 336, 784, 637 ms.) Most of an apply is imports: the policy schema's pydantic models alone are about
half of it under cProfile; detecting XDP/tc programs costs 5 ms.
Absolute figures move by ~10 % with the machine's load; the ratios hold.

usage: sudo .venv/bin/python bench/startup.py [--runs 9] [--baseline main] [--only version,help]
Hold /tmp/nodeguard-kernel-tests.lock around it on a machine where the kernel tests run
(``flock /tmp/nodeguard-kernel-tests.lock python bench/startup.py``).
"""

from __future__ import annotations

import argparse
import os
import resource
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

RULES = "<the tree's rules/default.yaml>"
GOALS_MS = {"version": 150, "help": 150, "apply-default": 300, "apply-10k": 500}


def run(tree: Path | None, argv: list[str]) -> tuple[float, float]:
    """One process, timed from spawn to exit: (wall ms, CPU ms: its user + system time, which other
    jobs on a shared machine move far less). ``tree`` None: ``argv`` is the whole command."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as installed: with .pyc
    cmd = argv
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
        cmd = [sys.executable, "-m", "guard", *argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=tree or ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ms = (time.perf_counter() - t) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} (tree {tree}) failed ({res.returncode}): {res.stderr.decode()[-2000:]}")
    return ms, cpu


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
        # each tree's own rules/default.yaml: the built-in policy is package data, which the venv's editable
        # install would resolve in its own checkout, not in the tree under test
        "apply-default": (["apply", "-c", RULES], None),
        "apply-default install": (["apply", "-c", RULES], uninstall),
        "apply-10k": (["apply", "-c", str(big)], None),
        "apply-10k install": (["apply", "-c", str(big)], uninstall),
    }
    if args.only:
        keep = args.only.split(",")
        cases = {k: v for k, v in cases.items() if k.split()[0] in keep}
    try:
        floor = statistics.median(run(None, [sys.executable, "-c", "pass"])[0] for _ in range(args.runs))
        print(f"python -c pass: {floor:.0f} ms (median of {args.runs}); baseline tree: {args.baseline} ({rev})")
        print(f"{'case':<22} {'baseline':>9} {'candidate':>10} {'ratio':>6} {'- floor':>8} {'goal':>7}       "
              f"{'CPU: baseline':>13} {'candidate':>10} {'ratio':>6}")
        for name, (argv, before) in cases.items():
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in trees}
            argvs = {k: [str(t / "rules" / "default.yaml") if a == RULES else a for a in argv]
                     for k, t in trees.items()}
            for which, tree in trees.items():  # warm the page cache and install the policy once for each tree
                run(tree, argvs[which])
            for _ in range(args.runs):
                for which, tree in trees.items():
                    if before:
                        before(tree)
                    times[which].append(run(tree, argvs[which]))
            (b, bc), (c, cc) = ((statistics.median(w for w, _ in times[k]), statistics.median(u for _, u in times[k]))
                                for k in trees)
            goal = GOALS_MS[name.split()[0]]
            print(f"{name:<22} {b:>6.0f} ms {c:>7.0f} ms {c / b:>6.2f} {c - floor:>5.0f} ms {goal:>4} ms "
                  f"{'ok' if c <= goal else 'MISSED':<6} {bc:>10.0f} ms {cc:>7.0f} ms {cc / bc:>6.2f}", flush=True)
        uninstall(ROOT)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
