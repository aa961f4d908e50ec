"""Restore one kept backup again and again: two deltagrid checkouts and restic, interleaved.

Run on demand, on a home and a restic repository that already hold the tree (compare.py --keep
leaves both under its run's tools/ directory; or back a tree up with each tool by hand):

    .venv/bin/python bench/restore_again.py --home HOME --restic-repo REPO --restic PATH
        [--restic-password deltagrid-bench] [--old DIR] [--new DIR] [--rounds 3]

Each round restores the latest snapshot with every command in turn (--old and --new are
deltagrid checkouts or `git archive`s of them, run with their own code first on PYTHONPATH;
restic restores its latest) into a fresh directory under a temporary one, with a `sync` before
each and a `sync` after it that is counted, as in compare.py; the round's trees are removed
once all its restores are timed. Printed: each restore's seconds, user and system CPU seconds
and the load, then the medians and the ratios of the pairs. Nothing is asserted.
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


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Seconds (the command and a sync after it), user and system CPU seconds of the child."""
    os.sync()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    _pid, status, usage = os.wait4(proc.pid, 0)
    os.sync()
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"`{' '.join(argv)}` failed")
    return elapsed, usage.ru_utime, usage.ru_stime


def commands(args: argparse.Namespace) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (argv with TARGET for the target, environment)."""
    out = {}
    for name, src in (("old", args.old), ("new", args.new)):
        if src:
            env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
            argv = [sys.executable, "-m", "deltagrid", "--home", str(args.home), "restore"]
            out[name] = (argv + ["TARGET"], env)
    if args.restic:
        env = dict(
            os.environ,
            RESTIC_REPOSITORY=str(args.restic_repo),
            RESTIC_PASSWORD=args.restic_password,
            RESTIC_CACHE_DIR=str(Path(tempfile.gettempdir()) / "restore-again-restic-cache"),
        )
        out["restic"] = ([args.restic, "restore", "latest", "--target", "TARGET"], env)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="the deltagrid home")
    parser.add_argument("--old", help="a deltagrid checkout (the baseline)")
    parser.add_argument("--new", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--restic", help="the restic to run")
    parser.add_argument("--restic-repo", type=Path)
    parser.add_argument("--restic-password", default="deltagrid-bench")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs = commands(args)
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="restore-again-") as work:
        for r in range(args.rounds):
            for name, (argv, env) in runs.items():
                target = str(Path(work) / f"{name}-{r}")
                times[name].append(timed([target if a == "TARGET" else a for a in argv], env))
                s, u, k = times[name][-1]
                load = os.getloadavg()[0]
                print(f"round {r} {name}: {s:.2f} s ({u:.2f} u + {k:.2f} s) load {load:.1f}")
            for entry in Path(work).iterdir():
                shutil.rmtree(entry)
    for name, got in times.items():
        s, u, k = (statistics.median(t[i] for t in got) for i in range(3))
        print(f"{name}: median {s:.2f} s ({u:.2f} u + {k:.2f} s)")
    names = list(times)
    for a, b in [(x, y) for i, x in enumerate(names) for y in names[i + 1 :]]:
        pairs = [p[0] / q[0] for p, q in zip(times[a], times[b], strict=True)]
        print(f"{a} / {b}: {statistics.median(pairs):.2f} (median of the pairs)")


if __name__ == "__main__":
    main()
