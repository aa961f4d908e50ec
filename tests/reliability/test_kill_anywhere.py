"""Kill anywhere: `backup`, `prune` / `compact` and `restore --into DIR --swap` are SIGKILLed at
random moments, then run again to completion.

A kill point is a step of deltagrid's own code (tests/reliability/killpoint.py counts call and
line events in its packages). An uninterrupted traced run of the same work tells how many steps
it takes and where it enters its commit-critical functions (pack put and recorded, export put,
root flipped, objects deleted, trees exchanged); kills are drawn across the whole run, a third of
them just after such an entry, and one in six is a timer (no tracing) so real I/O interleavings
are hit. Each kill writes where it struck, so the figures count distinct kill points.

After each kill and after the rerun: every earlier snapshot restores exactly, the new one restores
the new tree exactly, `verify --read-data` is clean, and a backup has put at most one pack per
interruption more than an uninterrupted run of the same night (a twin home backs up the same tree
without interruption). Seeded: the seed is printed, DELTAGRID_KILL_SEED replays it. With
--runslow each command is killed until it has struck 100 distinct points.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import describe
from tests.reliability.killpoint import counting
from tests.test_failures import pack_bytes, store_objects
from tests.test_maintenance import (
    Pruneable,
    Tree,
    assert_clean,
    assert_restores,
    call,
    chain_invariants,
    check_after_kill,
    configure,
    listed,
    ok,
    pruneable,  # noqa: F401 (the fixture: 12 nights, some forgotten, before prune)
)
from tests.test_restore_publish import _tree_night_1, _tree_night_2

KILLPOINT = Path(__file__).with_name("killpoint.py")
PACKS = {"pack_size": 64 << 10, "piece_size": 16 << 10}  # a pack boundary every few files
# A pack is put once it reaches pack_size: it holds at most one piece more, plus its index.
ONE_PACK = PACKS["pack_size"] + PACKS["piece_size"] + 4096
SLOW_DISTINCT = 100  # with --runslow: distinct kill points per command
SLOW_TIMEOUT = 3600  # seconds: a --runslow run of backup or prune takes well over ten minutes
COMPACT = ("compact", "--max-chain", "2")


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("DELTAGRID_KILL_SEED") or random.randrange(1 << 32))
    print(f"{request.node.name}: seed {seed} (DELTAGRID_KILL_SEED={seed} replays it)")
    return random.Random(seed)


@pytest.fixture
def budget(request: pytest.FixtureRequest) -> Callable[[int], int | None]:
    """`budget(n)`: n kills by default; None with --runslow (go on to SLOW_DISTINCT)."""
    slow = request.config.getoption("--runslow")
    return lambda n: None if slow else n


# --- aiming and firing ---------------------------------------------------------------------------


@dataclass
class Aim:
    """What an uninterrupted run looks like: its steps, its marked entries, its duration."""

    steps: int
    marks: list[tuple[int, str]]
    seconds: float

    def draw(self, rng: random.Random) -> str:
        """A kill moment: a timer (1 in 6), just after a marked entry (1 in 3), or any step."""
        roll = rng.random()
        if roll < 1 / 6:
            return f"@{rng.uniform(0, 1.1) * self.seconds:.4f}"
        if roll < 1 / 2 and self.marks:
            entered, _name = rng.choice(self.marks)
            return str(max(1, entered + rng.randrange(-3, 40)))
        return str(rng.randint(1, self.steps))


def counted(home: Path, *args: str | Path) -> tuple[Aim, Any]:
    """Run `deltagrid --json ARGS` uninterrupted in this process, counting its steps."""
    with counting() as steps:
        run = call(home, "--json", *args)
    assert run.code == 0, run.err
    return Aim(steps.count, steps.marks, 0.0), run.json


def timed(home: Path, *args: str | Path) -> tuple[float, Any]:
    """`ok(home, ARGS)` and how long it took."""
    started = time.monotonic()
    done = ok(home, *args)
    return time.monotonic() - started, done


@dataclass
class Tally:
    """Kills fired and where they struck."""

    budget: int | None  # kills; None: until SLOW_DISTINCT distinct kill points
    kills: int = 0
    finished: int = 0  # the run ended before its kill moment
    timers: int = 0
    where: Counter[str] = field(default_factory=Counter)

    def more(self) -> bool:
        """Whether to kill again (a run that ends before its kill moment does not count, but
        the attempts are bounded)."""
        attempts = self.kills + self.finished
        if self.budget is not None:
            return self.kills < self.budget and attempts < 3 * self.budget
        return len(self.where) < SLOW_DISTINCT and attempts < 3 * SLOW_DISTINCT

    def record(self, figures: Any, kind: str) -> None:
        figures.count("kill anywhere", f"{kind} kill points", self.kills)
        figures.count("kill anywhere", f"{kind} distinct locations", len(self.where))
        figures.count("kill anywhere", f"{kind} timer kills", self.timers)
        figures.count("kill anywhere", f"{kind} runs that finished first", self.finished)
        if self.budget is None:
            assert len(self.where) >= SLOW_DISTINCT, f"only {len(self.where)} distinct points"


def killed(home: Path, when: str, side: Path, tally: Tally, *args: str | Path) -> bool:
    """Run deltagrid under killpoint.py until `when` (it writes where it struck to `side`); True
    if it was killed, False if it ended first (successfully)."""
    side.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, KILLPOINT, side, when, "--home", home, "--json", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0, f"killpoint {when}: {proc.stderr}"
        tally.finished += 1
        return False
    tally.kills += 1
    tally.timers += when.startswith("@")
    tally.where[side.read_text()] += 1
    return True


# --- backup --------------------------------------------------------------------------------------


def night(tree: Tree, k: int) -> None:
    """Tree's night (big files edited in place, a log appended, files added and deleted, a big
    one renamed every sixth night) and a small file renamed."""
    tree.night(k)
    if k > 1:
        smalls = sorted((tree.src / "small").iterdir())
        moved = smalls[tree.rng.randrange(len(smalls))]
        moved.rename(moved.with_name(f"renamed-{k}-{moved.name}"))


@pytest.mark.timeout(SLOW_TIMEOUT)
def test_backup_killed_anywhere_then_completed(
    tmp_path: Path, figures: Any, rng: random.Random, budget: Callable
) -> None:
    """Night after night on one home: the night's backup is killed (now and then twice), then
    run to completion; a twin home backs up each night uninterrupted, counted."""
    src, home, twin = tmp_path / "src", tmp_path / "home", tmp_path / "twin"
    for h in (home, twin):
        configure(h, **PACKS)
    tree = Tree(src, seed=rng.randrange(1 << 30))
    night(tree, 1)
    seconds, first = timed(home, "backup", src)
    assert first["snapshot_id"] == ok(twin, "backup", src)["snapshot_id"] == 1
    trees = {1: describe(src)}
    tally = Tally(budget(8))
    k = 1
    while tally.more():
        k += 1
        night(tree, k)
        expected = describe(src)
        aim, uninterrupted = counted(twin, "backup", src)
        aim.seconds = seconds
        previous = max(trees)
        work = tmp_path / f"night{k}"
        work.mkdir()
        put, interrupted = 0, 0
        for _ in range(1 + (rng.random() < 0.2)):  # now and then killed twice before completing
            before = store_objects(home)
            struck = killed(home, aim.draw(rng), tmp_path / "at", tally, "backup", src)
            put += pack_bytes(home, store_objects(home) - before)
            # What the kill left restores the previous night, before anything repairs it.
            assert_restores(home, previous, src, trees[previous], work / "previous")
            if not struck:
                break
            interrupted += 1
        seconds, rerun = timed(home, "backup", src)
        put += rerun["bytes_uploaded"]
        assert put <= uninterrupted["bytes_uploaded"] + interrupted * ONE_PACK, (put, uninterrupted)

        new = [s for s in listed(home) if s > previous]
        assert new and new[-1] == rerun["snapshot_id"]
        for sid in new:  # killed after the root flip: the rerun's snapshot holds the same tree
            trees[sid] = expected
            assert_restores(home, sid, src, expected, work / f"new{sid}")
        assert ok(home, "status")["spool"]["packs"] == 0
        assert ok(home, "verify", "--read-data")["problems"] == []  # every version of every night
        shutil.rmtree(work)
    for sid, then in trees.items():
        assert_restores(home, sid, src, then, tmp_path / f"final{sid}")
    assert listed(home) == sorted(trees)
    tally.record(figures, "backup")
    # Not cleaned by any later run (yet): the temporary files of puts cut short.
    stray = len(list((home / "store" / "objects").glob(".tmp-*")))
    figures.count("kill anywhere", "backup store temporaries left", stray)


# --- prune and compact ---------------------------------------------------------------------------


def check_after_compact(p: Pruneable, home: Path, work: Path) -> None:
    """A killed compact: the kept snapshots restore from what it left; the rerun bounds the
    chains and converges; a prune then frees what the new keyframes (and the kill) left over."""
    for sid in p.kept:
        assert_restores(home, sid, p.src, p.nights[sid], work / f"killed-{sid}")
    ok(home, *COMPACT)
    assert ok(home, *COMPACT)["plan"]["keyframes"] == 0
    chain_invariants(home)
    ok(home, "prune")
    for sid in p.kept:
        assert_restores(home, sid, p.src, p.nights[sid], work / f"rerun-{sid}")
    assert listed(home) == p.kept
    assert_clean(home)  # verify --read-data clean, the store holds exactly what is referenced


@pytest.mark.timeout(SLOW_TIMEOUT)
def test_prune_and_compact_killed_anywhere_then_completed(
    tmp_path: Path,
    figures: Any,
    rng: random.Random,
    budget: Callable,
    pruneable: Pruneable,  # noqa: F811
) -> None:
    """Each kill on a fresh copy of the pruneable home: prune two times in three, else compact."""
    aims = {}
    for command in (("prune",), COMPACT):
        trial = pruneable.copy(tmp_path / "trial")
        aims[command], done = counted(trial, *command)
        assert done["keyframes_written"] > 0, command  # real work to be killed in
        aims[command].seconds = pruneable.seconds
        shutil.rmtree(trial)
    tally = Tally(budget(4))
    while tally.more():
        work = tmp_path / f"kill{tally.kills + tally.finished}"
        home = pruneable.copy(work / "home")
        command = COMPACT if rng.random() < 1 / 3 else ("prune",)
        killed(home, aims[command].draw(rng), tmp_path / "at", tally, *command)
        if command == COMPACT:
            check_after_compact(pruneable, home, work)
        else:  # kept snapshots exact before and after the rerun, forgotten ones gone, clean
            check_after_kill(pruneable, home, work)
        shutil.rmtree(work)
    tally.record(figures, "prune")


# --- restore --into DIR --swap -------------------------------------------------------------------


@pytest.mark.timeout(SLOW_TIMEOUT)
def test_restore_swap_killed_anywhere_leaves_old_or_new_then_new(
    tmp_path: Path, figures: Any, rng: random.Random, budget: Callable
) -> None:
    """DIR holds snapshot 1; swapping in snapshot 2 is killed. DIR is then exactly one of the two
    trees, never a mix, never missing; the rerun publishes the new one and removes what the
    killed run left beside DIR."""
    src, home = tmp_path / "src", tmp_path / "home"
    _tree_night_1(src)
    ok(home, "backup", src)
    old = describe(src)
    _tree_night_2(src)
    ok(home, "backup", src)
    new = describe(src)

    def swap(live: Path) -> tuple[str, ...]:
        return ("restore", "--snapshot", "2", "--path", str(src), "--into", str(live), "--swap")

    trial = tmp_path / "trial" / "mirror"
    trial.parent.mkdir()
    ok(home, "restore", "--snapshot", "1", "--path", src, "--into", trial)
    aim, _done = counted(home, *swap(trial))
    aim.seconds, _done = timed(home, *swap(trial))

    left: Counter[str] = Counter()
    tally = Tally(budget(8))
    while tally.more():
        work = tmp_path / f"kill{tally.kills + tally.finished}"
        live = work / "mirror"
        work.mkdir()
        ok(home, "restore", "--snapshot", "1", "--path", src, "--into", live)
        struck = killed(home, aim.draw(rng), tmp_path / "at", tally, *swap(live))
        now = describe(live)
        assert now in (old, new), "DIR is neither the old tree nor the new one"
        left["old" if now == old else "new"] += struck
        assert ok(home, *swap(live))["published"] == "exchanged"
        assert describe(live) == new
        assert [p.name for p in work.iterdir()] == ["mirror"], "the killed run's tree is left"
        shutil.rmtree(work)
    tally.record(figures, "restore --swap")
    figures.count("kill anywhere", "restore --swap kills leaving the old tree", left["old"])
    figures.count("kill anywhere", "restore --swap kills leaving the new tree", left["new"])
