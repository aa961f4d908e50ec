"""Maintenance: forget, prune, compact and check.

Whatever a policy keeps must still restore exactly after prune; a SIGKILL anywhere inside prune
must leave a store from which every kept snapshot restores, and a rerun must finish the job;
compaction bounds the chains of the latest files; on a real grid `check` touches every live
object once.

Snapshot times come from the clock, so nights are simulated: after each backup the snapshot's
`committed_ns` in the local backupdb is set to night k of a calendar (the forget policy reads it
from there). File mtimes are set well in the past, so no file is re-read for being recent.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard

from deltagrid.backupdb.schema import SCHEMA_VERSION
from deltagrid.cli import main
from deltagrid.repository.fetch import fetch_export
from deltagrid.repository.root import new_root, parse_root
from deltagrid.store.filestore import FileStore
from deltagrid.store.pack import digest
from deltagrid.store.tahoe_grid import LocalGrid
from tests import gridfixtures
from tests.helpers import Run, describe, restored_root, root_of

grid = gridfixtures.grid  # the session's grid, shared with tests/test_grid.py
healthy = gridfixtures.healthy

BASE = datetime(2024, 1, 1, 2, 30)  # a Monday, local time (no DST change for weeks after)
OLD = 1_600_000_000  # file mtimes: night k's edits are stamped OLD + k days
DAY = 86_400
SMALL_PACKS = {"pack_size": 128 << 10, "piece_size": 32 << 10}


# --- running deltagrid and looking at what it left -----------------------------------------------


def call(home: Path, *args: str | Path | int) -> Run:
    """`deltagrid --home HOME ARGS...` in this process (any home, unlike the `cli` fixture)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape")
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["--home", str(home), *map(str, args)])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        out.flush()
        err.flush()
    text = [s.buffer.getvalue().decode("utf-8", "surrogateescape") for s in (out, err)]
    return Run(code, text[0], text[1])


def ok(home: Path, *args: str | Path | int) -> Any:
    """Run a command with --json that must succeed; its JSON document."""
    run = call(home, "--json", *args)
    assert run.code == 0, f"{args}: {run.err}"
    return run.json


def configure(home: Path, **upload: int) -> None:
    assert call(home, "init").code == 0
    if upload:
        with open(home / "config.toml", "a") as f:
            f.write("\n[upload]\n" + "".join(f"{k} = {v}\n" for k, v in upload.items()))


def query(home: Path, sql: str, params: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(home / "backupdb.sqlite")
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def night_ns(k: int) -> int:
    """When night k's snapshot was committed: BASE + k days, local time."""
    return int((BASE + timedelta(days=k)).timestamp()) * 10**9


def set_committed(home: Path, snapshot_id: int, ns: int) -> None:
    db = sqlite3.connect(home / "backupdb.sqlite")
    try:
        with db:
            db.execute("UPDATE snapshots SET committed_ns = ? WHERE id = ?", (ns, snapshot_id))
    finally:
        db.close()


def store_objects(store: Path) -> set[str]:
    """Every whole object in a file store (temporary files excluded)."""
    return {p.name for p in (store / "objects").glob("*/*") if not p.name.startswith(".")}


def store_bytes(store: Path) -> int:
    """What `du -b` would say: the bytes of every file in the store."""
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


def referenced(home: Path) -> set[str]:
    """The objects the backupdb's packs and the root's backupdb chain name."""
    packs = {r[0] for r in query(home, "SELECT ref FROM packs")}
    return packs | {e["ref"] for e in root_of(home)["backupdb"]}


def listed(home: Path) -> list[int]:
    return [s["id"] for s in ok(home, "snapshots")["snapshots"]]


def assert_restores(home: Path, snapshot: int, src: Path, expected: dict, target: Path) -> None:
    """Restore `snapshot` into `target` (removed afterwards); it must equal `expected`."""
    restored = call(home, "--json", "restore", "--snapshot", snapshot, target)
    assert restored.code == 0, f"snapshot {snapshot}: {restored.err}"
    assert restored.json["snapshot_id"] == snapshot
    assert describe(restored_root(target, src)) == expected, f"snapshot {snapshot}"
    shutil.rmtree(target)


def waiting(home: Path) -> set[str]:
    """The objects prune recorded as unreferenced, to delete once `delete_after` has passed."""
    return {r[0] for r in query(home, "SELECT ref FROM unreferenced")}


def assert_clean(home: Path) -> None:
    """verify --read-data finds nothing; the store holds everything referenced, and nothing
    else but what waits out `delete_after`."""
    verified = call(home, "--json", "verify", "--read-data")
    assert verified.code == 0, verified.err
    assert verified.json["problems"] == []
    stored, named = store_objects(home / "store"), referenced(home)
    assert named <= stored, f"objects missing from the store: {named - stored}"
    assert stored - named <= waiting(home), "orphans in the store that prune did not record"


def set_delete_after(home: Path, duration: str) -> None:
    """Set `[maintenance] delete_after` in the home's config.toml."""
    config = home / "config.toml"
    text = config.read_text().split("\n[maintenance]\n")[0]
    config.write_text(text + f'\n[maintenance]\ndelete_after = "{duration}"\n')


def chain_invariants(home: Path) -> None:
    """Every content's depth and basis agree with its basis's; bases exist."""
    rows = {r[0]: r[1:] for r in query(home, "SELECT id, basis_id, depth FROM contents")}
    for cid, (basis, depth) in rows.items():
        if basis is None:
            assert depth == 0, f"keyframe {cid} has depth {depth}"
        else:
            assert basis in rows, f"content {cid} is built on missing content {basis}"
            assert depth == rows[basis][1] + 1, f"content {cid} depth {depth}"


# --- a tree that changes night after night -------------------------------------------------------


def stamp(path: Path, night: int) -> None:
    t = (OLD + night * DAY) * 10**9 + 123_456_789
    os.utime(path, ns=(t, t), follow_symlinks=False)


class Tree:
    """A few MB edited night after night: scattered in-place edits of big files (their deltas
    chain), a growing log, small files added and deleted, short-lived temporary files, and now and
    then a big file renamed."""

    def __init__(self, src: Path, seed: int, bigs: int = 4) -> None:
        self.src = src
        self.rng = random.Random(seed)
        self.bigs = [src / "big" / f"b{i}.bin" for i in range(bigs)]

    def _write(self, path: Path, data: bytes, night: int) -> None:
        path.write_bytes(data)
        stamp(path, night)

    def night(self, k: int) -> None:
        rng, src = self.rng, self.src
        if k == 1:
            for d in ("big", "small", "tmp"):
                (src / d).mkdir(parents=True)
            for p in self.bigs:
                self._write(p, rng.randbytes(rng.randrange(300_000, 700_000)), k)
            self._write(src / "log.txt", b"".join(b"line %d\n" % i for i in range(12_000)), k)
            for i in range(20):
                self._write(src / "small" / f"s{i:03}", rng.randbytes(rng.randrange(50, 20_000)), k)
            os.symlink("big/b0.bin", src / "first-big")
            return
        for p in (self.bigs[k % len(self.bigs)], self.bigs[(k + 1) % len(self.bigs)]):
            size = p.stat().st_size
            with open(p, "r+b") as f:  # scattered edits: a small delta on the last version
                for _ in range(4):
                    f.seek(rng.randrange(size - 64))
                    f.write(rng.randbytes(64))
            stamp(p, k)
        with open(src / "log.txt", "ab") as f:
            f.write(b"".join(b"night %d line %d\n" % (k, i) for i in range(400)))
        stamp(src / "log.txt", k)
        smalls = sorted((src / "small").iterdir())
        smalls[rng.randrange(len(smalls))].unlink()
        self._write(src / "small" / f"n{k:03}", rng.randbytes(rng.randrange(50, 20_000)), k)
        # Both live 3 nights. The one below a piece shares a pack with what lives on (a bigger
        # file fills packs of its own, which die whole), so prune has packs to repack.
        self._write(src / "tmp" / f"t{k:03}.bin", rng.randbytes(150_000), k)
        self._write(src / "tmp" / f"u{k:03}.bin", rng.randbytes(20_000), k)
        for gone in (src / "tmp" / f"t{k - 3:03}.bin", src / "tmp" / f"u{k - 3:03}.bin"):
            if gone.exists():
                gone.unlink()
        if k % 6 == 0:  # a rename: the content is reused, the next edit a delta on it
            i = (k // 6) % len(self.bigs)
            new = self.bigs[i].with_name(f"b{i}-renamed-{k}.bin")
            self.bigs[i].rename(new)
            self.bigs[i] = new


def backup_nights(home: Path, tree: Tree, nights: range) -> dict[int, dict]:
    """Run each night's edits and backup; snapshot k is committed on night k. Returns the
    description of the source after each night."""
    seen = {}
    for k in nights:
        tree.night(k)
        done = ok(home, "backup", tree.src)
        assert done["snapshot_id"] == k
        set_committed(home, k, night_ns(k))
        seen[k] = describe(tree.src)
    return seen


def restic_keep(committed: dict[int, int], **counts: int) -> dict[str, set[int]]:
    """Independently of deltagrid: for each bucket kind (restic's), the newest snapshot of each
    of the N newest buckets holding a snapshot."""
    bucket_of: dict[str, Callable[[datetime], tuple]] = {
        "daily": lambda t: (t.year, t.month, t.day),
        "weekly": lambda t: tuple(t.isocalendar()[:2]),
    }
    kept: dict[str, set[int]] = {}
    for kind, n in counts.items():
        groups: dict[tuple, list[int]] = {}
        for sid, ns in committed.items():
            groups.setdefault(bucket_of[kind](datetime.fromtimestamp(ns / 1e9)), []).append(sid)
        # More buckets than N: restic's "keep the oldest while counts are left" never applies.
        assert len(groups) > n
        newest = sorted(groups, reverse=True)[:n]
        kept[kind] = {max(groups[b], key=lambda s: committed[s]) for b in newest}
    return kept


# --- 1. forty nights, forget, prune --------------------------------------------------------------


def test_forty_nights_forget_and_prune_keep_exactly_the_policy(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    configure(home, pack_size=256 << 10, piece_size=64 << 10)
    tree = Tree(src, seed=40)
    nights = backup_nights(home, tree, range(1, 41))

    by_kind = restic_keep({k: night_ns(k) for k in nights}, daily=7, weekly=4)
    expected = by_kind["daily"] | by_kind["weekly"]
    # Nights 34-40 (Sunday the 4th to Saturday the 10th of February); the newest of the four
    # newest ISO weeks are nights 40, 34 (also daily ones), 27 and 20.
    assert expected == {20, 27, *range(34, 41)}

    forgot = ok(home, "forget", "--keep-daily", "7", "--keep-weekly", "4")
    kept = {d["id"]: d["reasons"] for d in forgot["kept"]}
    assert set(kept) == expected
    assert forgot["forgotten"] == sorted(set(nights) - expected)
    for sid, reasons in kept.items():
        assert ("daily" in reasons) == (sid in by_kind["daily"]), (sid, reasons)
        assert ("weekly" in reasons) == (sid in by_kind["weekly"]), (sid, reasons)
    assert listed(home) == sorted(expected)

    store = home / "store"
    objects, size = store_objects(store), store_bytes(store)
    plan = ok(home, "prune", "--dry-run")
    assert plan["dry_run"] is True
    assert plan["plan"]["versions"] > 0 and plan["plan"]["packs_deleted"] > 0
    assert store_objects(store) == objects and store_bytes(store) == size  # dry run: no change

    # What puts killed part-way leave: half-written objects and a half-written root pointer.
    (store / "objects" / ".tmp-killedput").write_bytes(b"x" * 1000)
    (store / ".tmp-killedroot").write_bytes(b"{")
    pruned = ok(home, "prune", "--delete-now")
    assert not list(store.glob(".tmp-*")) and not list(store.glob("objects/.tmp-*"))
    assert pruned["versions_dropped"] == plan["plan"]["versions"]
    assert pruned["contents_dropped"] == plan["plan"]["contents"]
    assert pruned["keyframes_written"] == plan["plan"]["keyframes"] > 0
    assert pruned["packs_deleted"] == plan["plan"]["packs_deleted"]
    assert pruned["objects_deleted"] >= pruned["packs_deleted"] + pruned["packs_repacked"]
    after = store_bytes(store)
    assert after < size - pruned["bytes_freed"] // 2, (size, after, pruned)
    assert after < size * 0.8  # the forgotten nights' temporary files and old chains are gone

    assert listed(home) == sorted(expected)
    for sid in sorted(expected):
        assert_restores(home, sid, src, nights[sid], tmp_path / f"r{sid}")
    for sid in (1, 33):
        gone = call(home, "restore", "--snapshot", sid, tmp_path / f"gone{sid}")
        assert gone.code != 0 and "Traceback" not in gone.err
    assert_clean(home)
    chain_invariants(home)

    again = ok(home, "prune")  # nothing left to do
    assert {k: v for k, v in again.items() if v and k != "dry_run"} == {}

    # Backups go on from the pruned store; the new night restores, so do the kept ones.
    tree41 = backup_nights(home, tree, range(41, 42))
    assert_restores(home, 41, src, tree41[41], tmp_path / "r41")
    assert_restores(home, 20, src, nights[20], tmp_path / "r20")
    assert_clean(home)


# --- 2. prune killed at any point ----------------------------------------------------------------

# SIGKILL this process when `module.Class.method` is entered for the k-th time, before or after
# the real method runs; then run deltagrid with the remaining arguments.
_KILLER = """
import importlib, os, signal, sys
module, attr, k, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
owner_name, name = attr.split(".")
owner = getattr(importlib.import_module(module), owner_name)
real = getattr(owner, name)
calls = []
def wrapper(*args, **kwargs):
    calls.append(1)
    if len(calls) == k and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if len(calls) == k and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, wrapper)
from deltagrid.cli import main
sys.exit(main(sys.argv[5:]))
"""


@dataclass
class Pruneable:
    """A home with forgotten snapshots, before prune: copy it for each kill."""

    src: Path
    home: Path
    nights: dict[int, dict]
    kept: list[int]
    outcome: dict[str, int]  # what an uninterrupted prune does
    seconds: float  # how long it takes, as a subprocess

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.home, dest, symlinks=True)
        config = dest / "config.toml"
        config.write_text(config.read_text().replace(str(self.home), str(dest)))
        return dest


def prune_process(home: Path, *kill: str) -> subprocess.Popen[str]:
    prefix = ["-c", _KILLER, *kill] if kill else ["-m", "deltagrid"]
    return subprocess.Popen(
        [sys.executable, *prefix, "--home", str(home), "--json", "prune"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def pruneable(tmp_path_factory: pytest.TempPathFactory) -> Pruneable:
    base = tmp_path_factory.mktemp("pruneable")
    src, home = base / "src", base / "home"
    configure(home, **SMALL_PACKS)
    set_delete_after(home, "0s")  # every step of deleting runs in the one prune, to be killed in
    nights = backup_nights(home, Tree(src, seed=12), range(1, 13))
    forgot = ok(home, "forget", "--keep-last", "2", "--keep-weekly", "2")
    kept = [d["id"] for d in forgot["kept"]]
    assert kept == [6, 11, 12]  # Sunday the 7th ends ISO week 1; night 12 is in week 2

    trial = Pruneable(src, home, nights, kept, {}, 0.0).copy(base / "trial")
    started = time.monotonic()
    proc = prune_process(trial)
    out, err = proc.communicate(timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, err
    outcome = json.loads(out)
    # Every step of prune has work to do, so every kill point below is reached.
    assert outcome["keyframes_written"] > 0 and outcome["packs_repacked"] > 0
    assert outcome["packs_deleted"] > 0 and outcome["packs_written"] >= 3
    assert outcome["objects_deleted"] >= 4
    shutil.rmtree(trial)
    return Pruneable(src, home, nights, kept, outcome, seconds)


def kill_points(o: dict[str, int]) -> dict[str, tuple[str, str, int, str]]:
    """By name, (module, Class.method, k-th call, before/after): one for each step of a prune."""
    files, deleted = "deltagrid.store.filestore", o["objects_deleted"]
    return {
        "move_file-1-before": (files, "FileStore.move_file", 1, "before"),  # nothing put yet
        "move_file-2-after": (files, "FileStore.move_file", 2, "after"),  # put, not recorded
        "flush-last-after": (
            "deltagrid.maintenance.executor",
            "Executor._flush",
            o["packs_written"],
            "after",
        ),
        "rewrite_catalog-after": (
            "deltagrid.maintenance.executor",
            "Executor._rewrite_catalog",
            1,
            "after",
        ),
        "publish-before": (
            "deltagrid.repository.publisher",
            "Publisher.publish",
            2,
            "before",
        ),  # committed
        # the export goes out as a file, after the packs; the root not moved yet
        "put_export-after": (files, "FileStore.put_file", 1, "after"),
        "replace_root-before": (files, "FileStore.replace_root", 1, "before"),
        "replace_root-after": (files, "FileStore.replace_root", 1, "after"),  # nothing deleted
        "delete-1-after": (files, "FileStore.delete", 1, "after"),
        "delete-half-after": (files, "FileStore.delete", deleted // 2, "after"),
        "delete-last-before": (files, "FileStore.delete", deleted, "before"),
    }


def check_after_kill(p: Pruneable, home: Path, work: Path) -> None:
    """What a killed prune must leave, then what the rerun must reach."""
    # Every kept snapshot restores from what the kill left, before anything repairs it.
    for sid in p.kept:
        assert_restores(home, sid, p.src, p.nights[sid], work / f"killed-{sid}")
    # The root still names a whole catalog: a new machine attached now restores the latest.
    fresh = work / "fresh-home"
    assert call(fresh, "attach", "--store", f"file://{home / 'store'}").code == 0
    assert listed(fresh) == p.kept
    assert_restores(fresh, p.kept[-1], p.src, p.nights[p.kept[-1]], work / "fresh")

    rerun = call(home, "--json", "prune")
    assert rerun.code == 0, rerun.err
    # The rerun cleared what the killed run left in the spool (a pack, rebuilt keyframes).
    assert ok(home, "status")["spool"]["packs"] == 0
    assert list((home / "spool").iterdir()) == []
    for sid in p.kept:
        assert_restores(home, sid, p.src, p.nights[sid], work / f"rerun-{sid}")
    assert listed(home) == p.kept
    assert_clean(home)
    chain_invariants(home)
    last = ok(home, "prune")  # converged: nothing left
    assert {k: v for k, v in last.items() if v and k != "dry_run"} == {}


@pytest.mark.parametrize("point", list(kill_points({"objects_deleted": 2, "packs_written": 1})))
def test_prune_killed_at_each_step_loses_nothing_and_reruns(
    tmp_path: Path, pruneable: Pruneable, point: str
) -> None:
    home = pruneable.copy(tmp_path / "home")
    module, method, k, when = kill_points(pruneable.outcome)[point]
    proc = prune_process(home, module, method, str(k), when)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"never reached {method} #{k}: {err}"
    check_after_kill(pruneable, home, tmp_path)


# A prune that defers: the first records what it frees, a later one (after delete_after) deletes.
GRACE = 2.0
DEFERRED_KILLS = {
    # the catalog rewritten, the unreferenced rows not committed: rolled back
    "record/rewrite_catalog-after": ("deltagrid.maintenance.executor", "Executor._rewrite_catalog"),
    # rows committed, the root moved, their grace period not started yet
    "record/replace_root-after": ("deltagrid.store.filestore", "FileStore.replace_root"),
    # the grace period over: the first object deleted, the rest not
    "delete/delete-first-after": ("deltagrid.store.filestore", "FileStore.delete"),
    # every due object deleted, their rows not dropped yet
    "delete/delete-last-after": ("deltagrid.store.filestore", "FileStore.delete"),
}


@pytest.mark.parametrize("point", list(DEFERRED_KILLS))
def test_deferred_prune_killed_at_each_step_loses_nothing(
    tmp_path: Path, pruneable: Pruneable, point: str
) -> None:
    home = pruneable.copy(tmp_path / "home")
    set_delete_after(home, f"{GRACE:g}s")
    module, method = DEFERRED_KILLS[point]
    k = 1
    if point.startswith("delete/"):
        first = ok(home, "prune")
        assert first["objects_deleted"] == 0 and first["objects_waiting"] > 0
        k = first["objects_waiting"] if point.endswith("last-after") else 1
        time.sleep(GRACE + 0.2)
    proc = prune_process(home, module, method, str(k), "after")
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"never reached {method} #{k}: {err}"
    check_after_deferred_kill(pruneable, home, tmp_path)


def check_after_deferred_kill(p: Pruneable, home: Path, work: Path) -> None:
    """Every kept snapshot restores from what the kill left, and from the store alone; prunes
    after the grace period delete every unreferenced object and nothing else."""
    for sid in p.kept:
        assert_restores(home, sid, p.src, p.nights[sid], work / f"killed-{sid}")
    fresh = work / "fresh-home"
    assert call(fresh, "attach", "--store", f"file://{home / 'store'}").code == 0
    assert referenced(fresh) <= store_objects(home / "store")  # the root's catalog is whole
    assert_restores(fresh, p.kept[-1], p.src, p.nights[p.kept[-1]], work / "fresh")
    for _ in range(2):  # the rerun stamps what the kill left unstamped; the next deletes it
        time.sleep(GRACE + 0.2)
        assert call(home, "prune").code == 0
    assert waiting(home) == set() and store_objects(home / "store") == referenced(home)
    for sid in p.kept:
        assert_restores(home, sid, p.src, p.nights[sid], work / f"rerun-{sid}")
    assert_clean(home)
    chain_invariants(home)


def kill_after(p: Pruneable, home: Path, seconds: float) -> None:
    proc = prune_process(home)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), err


@pytest.mark.parametrize("seed", [1, 2])
def test_prune_killed_at_a_random_moment_loses_nothing(
    tmp_path: Path, pruneable: Pruneable, seed: int
) -> None:
    home = pruneable.copy(tmp_path / "home")
    # Past the interpreter's start (about a third of the run), somewhere in the work.
    delay = random.Random(seed).uniform(0.35, 0.95) * pruneable.seconds
    kill_after(pruneable, home, delay)
    check_after_kill(pruneable, home, tmp_path)


@pytest.mark.slow
def test_prune_killed_again_and_again_at_random_moments(
    tmp_path: Path, pruneable: Pruneable
) -> None:
    """Twenty random kills, each on a fresh copy; then three kills in a row on one home."""
    rng = random.Random(2024)
    for i in range(20):
        work = tmp_path / f"kill{i}"
        work.mkdir()
        home = pruneable.copy(work / "home")
        kill_after(pruneable, home, rng.uniform(0.2, 1.1) * pruneable.seconds)
        check_after_kill(pruneable, home, work)
    work = tmp_path / "repeated"
    work.mkdir()
    home = pruneable.copy(work / "home")
    for _ in range(3):
        kill_after(pruneable, home, rng.uniform(0.3, 0.9) * pruneable.seconds)
    check_after_kill(pruneable, home, work)


# --- 3. compaction -------------------------------------------------------------------------------


def live_depths(home: Path, snapshot: int) -> dict[int, int]:
    """Depth of every content a version live in `snapshot` uses."""
    rows = query(
        home,
        "SELECT DISTINCT c.id, c.depth FROM versions v JOIN contents c ON c.id = v.content_id "
        "LEFT JOIN version_ends e ON e.version_id = v.id "
        "WHERE v.valid_from <= ? AND (e.valid_until IS NULL OR e.valid_until > ?)",
        (snapshot, snapshot),
    )
    return dict(rows)


def _edit(path: Path, night: int, seed: int) -> None:
    rng = random.Random(seed * 1000 + night)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for _ in range(3):
            f.seek(rng.randrange(size - 64))
            f.write(rng.randbytes(64))
    stamp(path, night)


def test_compact_bounds_every_chain_of_the_latest_snapshot(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    src.mkdir()
    configure(home)  # max_chain 16: ten nights of edits make one chain ten deltas long
    a, copy, c = src / "a.bin", src / "a-copy.bin", src / "c.bin"
    nights: dict[int, dict] = {}
    night6 = b""
    for k in range(1, 12):
        if k == 1:
            a.write_bytes(random.Random(1).randbytes(400_000))
            c.write_bytes(random.Random(2).randbytes(200_000))
            (src / "small.txt").write_text("small\n")
            for p in (a, c, src / "small.txt"):
                stamp(p, k)
        else:
            _edit(a, k, 1)
        if k == 7:  # a.bin as of night 6, copied: a content five deltas deep, live to the end
            copy.write_bytes(night6)
            stamp(copy, k)
        if k >= 10:
            _edit(c, k, 2)
        assert ok(home, "backup", src)["snapshot_id"] == k
        nights[k] = describe(src)
        if k == 6:
            night6 = a.read_bytes()

    before = live_depths(home, 11)
    assert sorted(before.values()) == [0, 2, 5, 10]  # small.txt, c.bin, the copy, a.bin
    dry = ok(home, "compact", "--max-chain", "3", "--dry-run")
    assert dry["plan"]["keyframes"] == 2
    assert live_depths(home, 11) == before

    compacted = ok(home, "compact", "--max-chain", "3")
    assert compacted["keyframes_written"] == 2
    after = live_depths(home, 11)
    assert set(after) == set(before)
    assert all(depth <= 3 for depth in after.values()), after
    assert sorted(after.values()) == [0, 0, 0, 2]  # c.bin's short chain was left alone
    chain_invariants(home)
    assert ok(home, "compact", "--max-chain", "3")["plan"]["keyframes"] == 0  # nothing left
    for k, expected in nights.items():
        assert_restores(home, k, src, expected, tmp_path / f"r{k}")
    verified = call(home, "--json", "verify", "--read-data")
    assert verified.code == 0, verified.err

    # Prune then frees the deltas the new keyframes replaced; every snapshot still restores.
    pruned = ok(home, "prune")
    assert pruned["versions_dropped"] == 0 and pruned["keyframes_written"] == 0
    for k, expected in nights.items():
        assert_restores(home, k, src, expected, tmp_path / f"p{k}")
    assert_clean(home)

    # The next edit of a.bin is a delta on its new keyframe.
    _edit(a, 12, 1)
    assert ok(home, "backup", src)["snapshot_id"] == 12
    assert sorted(live_depths(home, 12).values()) == [0, 0, 1, 2]
    assert_restores(home, 12, src, describe(src), tmp_path / "r12")


# --- 4. forget -----------------------------------------------------------------------------------


def small_nights(home: Path, src: Path, count: int) -> dict[int, dict]:
    src.mkdir()
    seen = {}
    for k in range(1, count + 1):
        (src / f"night{k}.txt").write_text(f"night {k}\n")
        (src / "log.txt").write_text("".join(f"night {i}\n" for i in range(k)))
        for p in src.iterdir():
            stamp(p, k)
        assert ok(home, "backup", src)["snapshot_id"] == k
        set_committed(home, k, night_ns(k))
        seen[k] = describe(src)
    return seen


def test_forget_dry_run_changes_nothing_and_forget_publishes(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    nights = small_nights(home, src, 6)
    root = (home / "store" / "root.json").read_bytes()

    dry = ok(home, "forget", "--keep-last", "2", "--dry-run")
    assert dry["dry_run"] is True
    assert dry["forgotten"] == [1, 2, 3, 4]
    assert [d["id"] for d in dry["kept"]] == [5, 6]
    assert (home / "store" / "root.json").read_bytes() == root
    assert query(home, "SELECT count(*) FROM forgotten") == [(0,)]
    assert listed(home) == [1, 2, 3, 4, 5, 6]

    # --keep-within: everything committed within 2.5 days of the newest snapshot.
    within = ok(home, "forget", "--keep-within", "2d12h")
    assert within["dry_run"] is False
    assert within["forgotten"] == [1, 2, 3]
    assert {d["id"]: d["reasons"] for d in within["kept"]} == {
        4: ["within"],
        5: ["within"],
        6: ["newest", "within"],
    }
    assert listed(home) == [4, 5, 6]
    assert (home / "store" / "root.json").read_bytes() != root
    assert ok(home, "forget", "--keep-within", "2d12h")["forgotten"] == []  # nothing more

    # Published: a new machine attached to the store sees only what was kept.
    fresh = tmp_path / "fresh"
    assert call(fresh, "attach", "--store", f"file://{home / 'store'}").code == 0
    assert listed(fresh) == [4, 5, 6]
    assert_restores(fresh, 4, src, nights[4], tmp_path / "r4")
    gone = call(fresh, "restore", "--snapshot", "2", tmp_path / "r2")
    assert gone.code != 0 and "Traceback" not in gone.err
    # The data is still there until prune: a forgotten snapshot is only hidden.
    assert query(home, "SELECT count(*) FROM versions WHERE valid_from = 2") != [(0,)]


def test_forget_and_check_usage_errors(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    small_nights(home, src, 2)
    for args in (
        ["forget"],
        ["forget", "--dry-run"],
        ["forget", "--keep-within", "soon"],
        ["forget", "--keep-daily", "many"],
        ["compact", "--max-chain", "-1"],
        ["check", "--renew-leases"],  # no leases on a file store
    ):
        failed = call(home, *args)
        assert failed.code == 2, (args, failed.err)
        assert "Traceback" not in failed.err
    assert listed(home) == [1, 2]
    checked = ok(home, "check")  # a file store: every live object is there
    assert checked["problems"] == []
    assert checked["checked"] == len(referenced(home))


# --- 5. schema migration -------------------------------------------------------------------------


def _to_schema_1(db_path: Path) -> None:
    """Make a backupdb (or an export) look as schema version 1 wrote it."""
    db = sqlite3.connect(db_path)
    try:
        with db:
            db.execute("DROP TABLE forgotten")  # added in version 2
            db.execute("DROP TABLE IF EXISTS runs")  # a local table added in version 3
            db.execute("ALTER TABLE versions DROP COLUMN xattrs")  # added in version 4
            db.execute("UPDATE schema_version SET version = 1")
    finally:
        db.close()


def test_a_schema_1_backupdb_is_migrated_and_forget_works(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    nights = small_nights(home, src, 3)
    _to_schema_1(home / "backupdb.sqlite")
    assert query(home, "SELECT name FROM sqlite_master WHERE name = 'forgotten'") == []

    assert listed(home) == [1, 2, 3]  # opening it migrates
    assert query(home, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert ok(home, "forget", "--keep-last", "1")["forgotten"] == [1, 2]
    assert listed(home) == [3]
    assert ok(home, "prune")["versions_dropped"] > 0
    assert_restores(home, 3, src, nights[3], tmp_path / "r3")
    assert_clean(home)


def test_a_schema_1_export_loads_through_attach(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    nights = small_nights(home, src, 3)
    # Make the store's root name an export as schema 1 wrote it: no `forgotten` table.
    store = FileStore(home / "store")
    root = parse_root(store.read_root())
    assert root is not None
    exported = tmp_path / "export.sqlite"
    fetch_export(store, root, exported)
    _to_schema_1(exported)
    db = sqlite3.connect(exported)
    db.execute("VACUUM")
    db.close()
    data = exported.read_bytes()
    assert digest(data).hex() != root["backupdb"][-1]["hash"]
    blob = zstandard.ZstdCompressor().compress(data)
    entry = {"type": "full", "ref": store.put_bytes(blob), "size": len(blob)}
    entry["hash"] = digest(data).hex()
    generation = root["generation"] + 1
    store.replace_root(new_root(root["snapshot"], [entry], root["store_id"], generation))

    fresh = tmp_path / "fresh"
    attached = call(fresh, "--json", "attach", "--store", f"file://{home / 'store'}")
    assert attached.code == 0, attached.err
    assert query(fresh, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert query(fresh, "SELECT count(*) FROM forgotten") == [(0,)]
    assert listed(fresh) == [1, 2, 3]
    assert_restores(fresh, 2, src, nights[2], tmp_path / "r2")
    assert ok(fresh, "forget", "--keep-last", "2")["forgotten"] == [1]
    assert listed(fresh) == [2, 3]


# --- 6. leases on a real grid --------------------------------------------------------------------


@gridfixtures.needs_tahoe
def test_check_renews_every_live_object_once_and_forgets_pruned_packs(
    tmp_path: Path, healthy: LocalGrid
) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    created = call(home, "--json", "init", "--store", healthy.url)
    assert created.code == 0, created.err
    with open(home / "config.toml", "a") as f:
        f.write("\n[upload]\n" + "".join(f"{k} = {v}\n" for k, v in SMALL_PACKS.items()))
    tree = Tree(src, seed=6, bigs=2)
    nights = backup_nights(home, tree, range(1, 5))

    def counts() -> tuple[int, int]:
        return query(home, "SELECT count(*) FROM packs")[0][0], len(root_of(home)["backupdb"])

    packs, chain = counts()
    assert chain > 1  # a full export and deltas
    renewed = ok(home, "check", "--renew-leases")
    assert renewed["checked"] == packs + chain + 1  # every pack, every backupdb object, the root
    assert renewed["renewed"] == renewed["checked"]
    assert renewed["problems"] == []

    assert ok(home, "forget", "--keep-last", "1")["forgotten"] == [1, 2, 3]
    pruned = ok(home, "prune")
    assert pruned["packs_deleted"] + pruned["packs_repacked"] > 0
    assert pruned["objects_deleted"] == 0  # a grid deletes nothing: unrenewed leases run out
    packs_after, chain_after = counts()
    assert chain_after == 1  # prune publishes a full export
    dropped = pruned["packs_deleted"] + pruned["packs_repacked"]
    assert packs_after == packs - dropped + pruned["packs_written"]
    checked = ok(home, "check")
    assert checked["checked"] == packs_after + chain_after + 1 < renewed["checked"]
    assert checked["renewed"] == 0 and checked["problems"] == []
    assert_restores(home, 4, src, nights[4], tmp_path / "r4")
