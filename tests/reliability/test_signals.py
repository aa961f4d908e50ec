"""Signals: SIGTERM (what systemd and `kill` send), SIGINT (Ctrl-C) and SIGHUP stop a run cleanly.

Real `python -m deltagrid` processes get real signals: SIGTERM at random moments (seeded and
printed; DELTAGRID_SIGNAL_SEED replays a run) of backup, restore (into a target, and publishing a
mirror with --into) and prune; SIGINT and SIGHUP once each at a moment chosen to be mid-work.
A backup's and a prune's moment is drawn over the time a like run holds the home's lock, and
the run is held still (SIGSTOP) while the test checks that it still holds it: a signal sent
then surely lands in its work, however fast the run or loaded the machine.
After each: the exit code is 128 + the signal (or 0 when the run was already done), one line on
stderr and no traceback, the run is in `log` as interrupted, no temporary is left (spool packs
and work directories, the store's `.tmp-*`, `.deltagrid-*` entries in a restore target or beside
a mirror), the published snapshot still restores exactly, and the rerun finishes exactly: a
backup resumes (the queue rows recorded before the signal are not read again), a restore starts
over. With --runslow each command is interrupted ten times as often.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import describe, dg_started, restored_root
from tests.reliability.conftest import Figures
from tests.test_maintenance import call, configure, ok, query

SMALL_PACKS = {"pack_size": 1 << 20, "piece_size": 1 << 20}  # dozens of pack puts per backup
SIGNALLED = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGHUP: 129}


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("DELTAGRID_SIGNAL_SEED") or random.randrange(1 << 32))
    print(f"{request.node.name}: seed {seed} (DELTAGRID_SIGNAL_SEED={seed} replays it)")
    return random.Random(seed)


@pytest.fixture
def kills(request: pytest.FixtureRequest) -> Callable[[int], int]:
    return lambda n: n * 10 if request.config.getoption("--runslow") else n


def night(src: Path, seed: int, files: int = 240) -> None:
    """Night `seed` of a tree: about 15 MiB, a few files above piece_size (the big-file thread
    and the restore's background thread), the rest small; each night rewrites a third of the
    files, adds some and deletes some."""
    rng = random.Random(seed)
    for i in range(files):
        path = src / f"d{i % 7}" / f"f{i:04d}"
        if seed and rng.random() < 0.6:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        big = i % 60 == 0
        path.write_bytes(
            rng.randbytes(rng.randint(2 << 20, 3 << 20) if big else rng.randint(0, 60_000))
        )
    for gone in sorted(src.glob("d*/f*"))[: 3 * seed % 11]:
        gone.unlink()
    for path in src.glob("d*/f*"):
        os.utime(path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))


def timed(home: Path, *args: str | Path) -> float:
    """How long the command takes as a process, uninterrupted."""
    began = time.monotonic()
    proc = dg_started(home, *args)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return time.monotonic() - began


def interrupt(
    proc: subprocess.Popen[str], after: float, figures: Figures, signum: int = signal.SIGTERM
) -> bool:
    """Send `signum` `after` seconds into the run; whether it stopped the run (False: the run
    was done first, or the signal came while Python was still starting or the command's
    options were being read: nothing was done). An interrupted run exits 128 +
    the signal, with one line saying so."""
    time.sleep(after)
    proc.send_signal(signum)
    return stopped_by(proc, figures, signum)


def stopped_by(proc: subprocess.Popen[str], figures: Figures, signum: int) -> bool:
    """Whether `signum`, sent, stopped the run (`interrupt` says how that shows)."""
    _out, err = proc.communicate(timeout=300)
    name = signal.Signals(signum).name
    if proc.returncode in (0, -signum) or "before the command began" in err:
        figures.count("signals", f"{name} before start or after the end", 1)
        return False
    assert proc.returncode == SIGNALLED[signum], (proc.returncode, err)
    assert "Traceback" not in err, err
    assert f"deltagrid: interrupted by {name}; run the command again to finish" in err, err
    return True


def last_run(home: Path, command: str, signum: int = signal.SIGTERM) -> dict:
    run = ok(home, "log", "--last", "1")["runs"][0]
    assert run["command"] == command, run
    assert run["exit_code"] == SIGNALLED[signum] and run["outcome"] == "interrupted", run
    assert run["summary"].startswith(f"interrupted by {signal.Signals(signum).name}"), run
    return run


def assert_no_litter(home: Path, *targets: Path) -> None:
    """No spool pack or work directory, no half-written store object, nothing of a restore's
    own (`.deltagrid-*`, `rebuild-*`) anywhere under the targets or beside them."""
    spool = home / "spool"
    assert not (spool.exists() and any(spool.iterdir())), list(spool.iterdir())
    assert not list((home / "store").rglob(".tmp-*"))
    for target in targets:
        for where in (target, target.parent):
            if where.exists():
                litter = [
                    p for p in where.rglob("*") if ".deltagrid-" in p.name or "rebuild-" in p.name
                ]
                assert not litter, litter


def assert_restores(home: Path, src: Path, target: Path) -> None:
    run = call(home, "restore", target)
    assert run.code == 0, run.err
    assert describe(restored_root(target, src)) == describe(src)
    shutil.rmtree(target)


# --- backup -------------------------------------------------------------------------------------


def test_sigterm_at_random_moments_of_backup_resumes_exactly(
    tmp_path: Path, rng: random.Random, kills: Callable[[int], int], figures: Figures
) -> None:
    home, src, target = tmp_path / "home", tmp_path / "src", tmp_path / "restored"
    configure(home, **SMALL_PACKS)
    night(src, 0)
    assert call(home, "backup", src).code == 0
    stopped = 0
    for k in range(1, kills(3) + 1):
        before = describe(src)
        night(src, k)
        window = lock_window(copy_home(home, tmp_path / f"measure{k}"), "backup", src)
        proc, locked = locked_run(home, "backup", src)
        after = rng.uniform(0, window)
        if not signal_while_locked(home, proc, locked + after):
            assert stopped_by(proc, figures, signal.SIGTERM) is False
            assert_no_litter(home)
            assert call(home, "backup", src).code == 0
            continue
        assert stopped_by(proc, figures, signal.SIGTERM)
        stopped += 1
        run = last_run(home, "backup")
        print(f"backup night {k}: SIGTERM {after:.2f} s into {window:.2f} s: {run['summary']}")
        assert_no_litter(home)
        published = call(home, "restore", target)  # the old snapshot, or the new one if the
        assert published.code == 0, published.err  # signal came after the root moved
        assert describe(restored_root(target, src)) in (before, describe(src))
        shutil.rmtree(target)
        recorded = {p for (p,) in query(home, RECORDED_BY_LAST_SCAN)}
        rerun = call(home, "--json", "backup", src)
        assert rerun.code == 0, rerun.err
        requeued = query(home, QUEUED_BY_SCAN, (rerun.json["scan"]["scan_id"],))
        assert not recorded & {p for (p,) in requeued}, "the rerun read recorded files again"
        figures.count(
            "signals", "backup files recorded before SIGTERM, not read again", len(recorded)
        )
        assert_restores(home, src, target)
        assert_no_litter(home, target)
    assert ok(home, "verify", "--read-data")["problems"] == []
    figures.count("signals", "backup SIGTERMs", stopped)
    assert stopped > 0, "no SIGTERM landed inside a backup"


RECORDED_BY_LAST_SCAN = (
    "SELECT path FROM queue WHERE done AND outcome = 'stored' "
    "AND scan_id = (SELECT max(id) FROM scans)"
)
QUEUED_BY_SCAN = "SELECT path FROM queue WHERE scan_id = ? AND reason != 'deleted'"


# --- restore ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("backed-up")
    home, src = base / "home", base / "src"
    configure(home, **SMALL_PACKS)
    night(src, 0, files=400)
    assert call(home, "backup", src).code == 0
    return home, src


def test_sigterm_at_random_moments_of_restore_leaves_no_temporaries(
    backed_up: tuple[Path, Path],
    tmp_path: Path,
    rng: random.Random,
    kills: Callable[[int], int],
    figures: Figures,
) -> None:
    """Into a target, and publishing a mirror (--into DIR, the first time and with --swap):
    after the signal, no temporary in the target, no staging tree beside the mirror, the mirror
    as it was; the rerun restores exactly."""
    home, src = backed_up
    took = timed(home, "restore", tmp_path / "measure")
    stopped = 0
    for k in range(kills(4)):
        how = ("target", "into", "swap")[k % 3]
        target = tmp_path / f"r{k}"
        mirror = target / "mirror"
        if how == "target":
            args: tuple[str | Path, ...] = (target,)
        else:
            mirror.parent.mkdir()
            if how == "swap":
                mirror.mkdir()
                (mirror / "old").write_text("the old tree")
            args = ("--path", src, "--into", mirror) + (("--swap",) if how == "swap" else ())
        old = describe(mirror) if how == "swap" else None
        after = rng.uniform(0.2, took)
        if not interrupt(dg_started(home, "restore", *args), after, figures):
            continue
        stopped += 1
        run = last_run(home, "restore")
        print(f"restore ({how}) {k}: SIGTERM after {after:.2f} s of {took:.2f}: {run['summary']}")
        assert_no_litter(home, target)
        if how == "target":
            restored = restored_root(target, src)
            names = (
                {p.relative_to(restored) for p in restored.rglob("*")}
                if restored.exists()
                else set()
            )
            assert names <= {p.relative_to(src) for p in src.rglob("*")}
        elif how == "into":
            assert not mirror.exists() or describe(mirror) == describe(src)
        else:
            assert describe(mirror) in (old, describe(src))
        rerun = call(
            home, "restore", *(args if how != "into" or not mirror.exists() else (*args, "--swap"))
        )
        assert rerun.code == 0, rerun.err
        assert describe(restored_root(target, src) if how == "target" else mirror) == describe(src)
        assert_no_litter(home, target)
    figures.count("signals", "restore SIGTERMs", stopped)


# --- prune --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forgotten(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A home whose first nights are forgotten, before prune; `src` as the last night left it."""
    base = tmp_path_factory.mktemp("forgotten")
    home, src = base / "home", base / "src"
    configure(home, **SMALL_PACKS)
    for k in range(3):
        night(src, k)
        assert call(home, "backup", src).code == 0
    assert ok(home, "forget", "--keep-last", "1")["forgotten"] == [1, 2]
    return home, src


def copy_home(home: Path, dest: Path) -> Path:
    shutil.copytree(home, dest, symlinks=True)
    config = dest / "config.toml"
    config.write_text(config.read_text().replace(str(home), str(dest)))  # its own store
    return dest


def holds_lock(home: Path, proc: subprocess.Popen[str]) -> bool:
    """Whether `proc` holds the home's write lock: the lock file names its holder while held."""
    try:
        holder = json.loads((home / "lock").read_text() or "null")
    except (OSError, ValueError):
        return False  # not there yet, or caught between its truncation and its write
    return isinstance(holder, dict) and holder.get("pid") == proc.pid


def locked_run(home: Path, *args: str | Path) -> tuple[subprocess.Popen[str], float]:
    """A command started, once it holds the home's lock; when that was."""
    proc = dg_started(home, *args)
    until(lambda: holds_lock(home, proc), proc)
    return proc, time.monotonic()


def signal_while_locked(
    home: Path, proc: subprocess.Popen[str], at: float, signum: int = signal.SIGTERM
) -> bool:
    """At monotonic time `at`, send `signum` if `proc` still holds the home's lock: it is held
    still (SIGSTOP) while that is checked, so a signal sent lands in its work, however loaded
    the machine. Whether it was sent (False: the work was done by then)."""
    time.sleep(max(0.0, at - time.monotonic()))
    proc.send_signal(signal.SIGSTOP)
    try:
        held = holds_lock(home, proc)
        if held:
            proc.send_signal(signum)
    finally:
        proc.send_signal(signal.SIGCONT)
    return held


def lock_window(home: Path, *args: str | Path) -> float:
    """How long the command, uninterrupted, holds the home's lock: the time its work takes.
    Moments drawn in it, counted from when a like run takes the lock, land in that run's work,
    not in Python starting or after the end."""
    proc, took = locked_run(home, *args)
    while holds_lock(home, proc):
        time.sleep(0.002)
    window = time.monotonic() - took
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return window


def test_sigterm_at_random_moments_of_prune_loses_nothing(
    forgotten: tuple[Path, Path],
    tmp_path: Path,
    rng: random.Random,
    kills: Callable[[int], int],
    figures: Figures,
) -> None:
    """The moment is drawn over the time prune holds the home's lock (taken before it reads
    the plan, released after its last deletion), counted from when this prune takes it, so
    nearly every SIGTERM lands in prune's work, not in Python starting. The window is the
    shorter of two uninterrupted runs', so a run slowed by load does not stretch it past
    the work of the next ones; a prune done before its moment (a quiet machine) is run again
    on a fresh copy, at a moment drawn earlier, so every kill lands in prune's work."""
    home, src = forgotten
    window = min(lock_window(copy_home(home, tmp_path / f"measure{i}"), "prune") for i in range(2))
    for k in range(kills(3)):
        target = tmp_path / "restored"
        for attempt in range(8):  # a prune done first: again, at a moment drawn earlier
            copy = copy_home(home, tmp_path / f"h{k}-{attempt}")
            proc, locked = locked_run(copy, "prune")
            after = rng.uniform(0, window)
            if signal_while_locked(copy, proc, locked + after):
                break
            assert stopped_by(proc, figures, signal.SIGTERM) is False
            figures.count("signals", "prune SIGTERMs after its work was done")
            window = after
        assert stopped_by(proc, figures, signal.SIGTERM), "no SIGTERM landed inside prune"
        run = last_run(copy, "prune")
        print(
            f"prune {k}: SIGTERM {after:.2f} s into the {window:.2f} s it locks: {run['summary']}"
        )
        assert_no_litter(copy)
        assert_restores(copy, src, target)
        assert ok(copy, "prune")["objects_kept"] == 0
        assert_restores(copy, src, target)
        assert ok(copy, "verify", "--read-data")["problems"] == []
        figures.count("signals", "prune SIGTERMs")


# --- SIGINT and SIGHUP, once each, mid-work -----------------------------------------------------


def until(ready: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.002)


def test_ctrl_c_stops_a_backup_with_130_and_the_rerun_resumes(
    tmp_path: Path, figures: Figures
) -> None:
    home, src, target = tmp_path / "home", tmp_path / "src", tmp_path / "restored"
    configure(home, **SMALL_PACKS)
    night(src, 0, files=400)
    backup = dg_started(home, "backup", src)
    until(lambda: query(home, "SELECT count(*) FROM packs")[0][0] > 0, backup)
    backup.send_signal(signal.SIGSTOP)  # held still: the moment is surely mid-upload...
    try:
        assert query(home, "SELECT count(*) FROM queue WHERE NOT done")[0][0] > 0
        backup.send_signal(signal.SIGINT)  # ...so the signal lands there as it goes on
    finally:
        backup.send_signal(signal.SIGCONT)
    assert stopped_by(backup, figures, signal.SIGINT)
    run = last_run(home, "backup", signal.SIGINT)
    assert run["files"] > 0 and run["bytes_uploaded"] > 0, run
    assert_no_litter(home)
    assert call(home, "backup", src).code == 0
    assert_restores(home, src, target)
    figures.count("signals", "backup SIGINTs")


def test_sighup_stops_a_mirror_publish_with_129_and_leaves_the_mirror_as_it_was(
    backed_up: tuple[Path, Path], tmp_path: Path, figures: Figures
) -> None:
    home, src = backed_up
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "old").write_text("the old tree")
    args = ("restore", "--path", src, "--into", mirror, "--swap")
    restore = dg_started(home, *args)
    until(
        lambda: (
            any(p.name.startswith(".mirror.deltagrid-staging-") for p in tmp_path.iterdir())
            and any(tmp_path.glob(".mirror.deltagrid-staging-*/*/*"))
        ),
        restore,
    )
    assert interrupt(restore, 0, figures, signal.SIGHUP)
    last_run(home, "restore", signal.SIGHUP)
    assert_no_litter(home, mirror)
    assert describe(mirror) == {b"old": describe(mirror)[b"old"]}
    assert call(home, *args).code == 0
    assert describe(mirror) == describe(src)
    figures.count("signals", "restore SIGHUPs")
