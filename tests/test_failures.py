"""Failures a nightly backup must survive: kills, vanished and unreadable entries, live writers.

Kills are real SIGKILLs of a `python -m deltagrid` subprocess; unreadable entries are injected at
the one function that opens source files (`uploader.reader.open_source`) or at the scanner's
`os.scandir`, since running as root no chmod makes a file unreadable.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import deltagrid.scanner.scan
from tests.helpers import Run, describe, dg, fail_reading, restored_root

PACK_SIZE = 256 << 10
PIECE_SIZE = 64 << 10
# A pack is put once it reaches pack_size, so it holds at most one piece more (plus its index).
ONE_PACK = PACK_SIZE + PIECE_SIZE + 4096
SIZES = [0, 100, 3_000, 40_000, 70_000, 200_000, 700_000, 1_500_000]


def spawn(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "deltagrid", "--home", str(home), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def small_packs(home: Path) -> None:
    """From now on, uploads go out in many 256 KiB packs."""
    with open(home / "config.toml", "a") as f:
        f.write(f"\n[upload]\npack_size = {PACK_SIZE}\npiece_size = {PIECE_SIZE}\n")


def store_objects(home: Path) -> set[str]:
    """The refs of every whole object in the home's file store (temporaries excluded)."""
    found: set[str] = set()
    with os.scandir(home / "store" / "objects") as subs:
        for sub in subs:
            if sub.is_dir():
                with os.scandir(sub.path) as objs:
                    found.update(o.name for o in objs if not o.name.startswith("."))
    return found


def pack_bytes(home: Path, refs: set[str]) -> int:
    """Total size of those objects that are packs (not backupdb exports)."""
    total = 0
    for ref in refs:
        path = home / "store" / "objects" / ref[:2] / ref
        with open(path, "rb") as f:
            if f.read(8) == b"DGPACK01":
                total += path.stat().st_size
    return total


def blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def entries(run: Run, src: Path) -> dict[str, dict]:
    """`ls --json` entries by path relative to `src` ('' for src itself)."""
    assert run.code == 0, run.err
    base = str(src.absolute())
    return {e["path"][len(base) :].lstrip("/"): e for e in run.json["entries"]}


def assert_restores(cli, snapshot: int, src: Path, expected: dict, target: Path) -> None:
    restored = cli("restore", "--snapshot", str(snapshot), target)
    assert restored.code == 0, restored.err
    assert describe(restored_root(target, src)) == expected


# --- trees for the kill tests: ~28 MB one night, ~13 MB new or changed the next -----------------


def night1(src: Path) -> None:
    rng = random.Random(1)
    for i in range(90):
        d = src / f"dir{i % 5}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:03}.bin").write_bytes(rng.randbytes(rng.choice(SIZES)))
    (src / "dir0" / "link").symlink_to("sub0/file000.bin")


def night2(src: Path) -> None:
    """Scattered edits (deltas), appends, deletions, a rename, a chmod and 40 new files."""
    rng = random.Random(2)
    doomed = src / "dir4" / "sub2"
    files = sorted(p for p in src.rglob("*.bin") if doomed not in p.parents)
    big = [p for p in files if p.stat().st_size >= 700_000]
    for p in big[:4]:
        size = p.stat().st_size
        with open(p, "r+b") as f:
            for _ in range(5):
                f.seek(rng.randrange(size - 100))
                f.write(rng.randbytes(100))
    for p in big[4:6]:
        with open(p, "ab") as f:
            f.write(rng.randbytes(300_000))
    big[6].rename(big[6].with_name("renamed.bin"))
    os.chmod(big[7], 0o600)
    for p in [f for f in files if f not in big][::9]:
        p.unlink()
    shutil.rmtree(doomed)
    new = src / "new" / "deeper"
    new.mkdir(parents=True)
    for i in range(40):
        (new / f"n{i:02}.bin").write_bytes(rng.randbytes(rng.choice(SIZES)))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """The second night uploaded without interruption: pack bytes and count."""
    base = tmp_path_factory.mktemp("baseline")
    src, home = base / "src", base / "home"
    night1(src)
    assert dg(home, "backup", src).code == 0
    small_packs(home)
    before = store_objects(home)
    night2(src)
    second = dg(home, "--json", "backup", src)
    assert second.code == 0, second.err
    grown = pack_bytes(home, store_objects(home) - before)
    assert grown == second.json["bytes_uploaded"]
    assert second.json["packs"] >= 30, "the kill tests need many packs to aim at"
    return {"pack_bytes": grown, "packs": second.json["packs"]}


# SIGKILL right after the upload's Nth pack is put (0: never; the count is printed at exit):
# deterministic, where polling the store from outside would land a fast upload's kill late.
_KILL_AFTER_PACKS = """
import atexit, os, signal, sys
from deltagrid.store.filestore import FileStore
real, count, kill_at = FileStore.move_file, [0], int(sys.argv[1])
def move_file(self, *args):
    ref = real(self, *args)
    count[0] += 1
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return ref
FileStore.move_file = move_file  # how the uploader puts its packs (the export is put_file)
atexit.register(lambda: print(f"packs put: {count[0]}", file=sys.stderr))
from deltagrid.cli import main
sys.exit(main(sys.argv[2:]))
"""


def upload_killed_after(home: Path, packs: int) -> subprocess.CompletedProcess[str]:
    """Run `upload`, SIGKILL it as soon as its `packs`th pack is in the store (0: never)."""
    return subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_PACKS, str(packs), "--home", str(home), "upload"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def packs_an_upload_puts(home: Path) -> int:
    """How many packs the upload `home` is ready for puts, run whole on a copy of the home.
    Pack boundaries shift by a pack or so from run to run (big files are taken up when their
    pass is done), so a kill "near the end" is aimed by this run's count, not the baseline's."""
    dry = home.with_name(home.name + "-dry")
    shutil.copytree(home, dry)
    config = dry / "config.toml"  # its own store, not the original's
    config.write_text(config.read_text().replace(str(home.absolute()), str(dry.absolute())))
    proc = upload_killed_after(dry, 0)
    assert proc.returncode == 0, proc.stderr
    count = int(proc.stderr.strip().splitlines()[-1].removeprefix("packs put: "))
    shutil.rmtree(dry)
    return count


# SIGKILL at an exact moment of the commit: just before, or just after, the root pointer moves.
_KILL_IN_COMMIT = """
import os, signal, sys
from deltagrid.store.filestore import FileStore
real = FileStore.replace_root
def replace_root(self, data):
    if sys.argv[1] == "after-root":
        real(self, data)
    os.kill(os.getpid(), signal.SIGKILL)
FileStore.replace_root = replace_root
from deltagrid.cli import main
sys.exit(main(sys.argv[2:]))
"""


def kill_in_commit(home: Path, when: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_IN_COMMIT, when, "--home", str(home), "upload"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.communicate(timeout=120)
    return proc


@pytest.mark.parametrize(
    "moment", ["first-pack", "half-the-packs", "last-packs", "before-root", "after-root"]
)
def test_upload_killed_then_run_again_commits_exactly(
    tmp_path: Path, home: Path, cli, baseline: dict[str, int], moment: str
) -> None:
    src = tmp_path / "src"
    night1(src)
    assert cli("backup", src).code == 0
    first = describe(src)
    small_packs(home)
    before = store_objects(home)
    night2(src)
    assert cli("scan", src).code == 0
    second = describe(src)

    if moment in ("before-root", "after-root"):
        killed = kill_in_commit(home, moment)
    else:
        if moment == "last-packs":  # three packs before the end of this very upload
            packs = packs_an_upload_puts(home) - 3
        else:
            packs = {"first-pack": 1, "half-the-packs": baseline["packs"] // 2}[moment]
        killed = upload_killed_after(home, packs)
    assert killed.returncode == -signal.SIGKILL
    put_before_kill = pack_bytes(home, store_objects(home) - before)

    # What the kill left: readers still see only what the root pointer names.
    status = cli("--json", "status").json
    assert status["snapshot_id"] == (2 if moment == "after-root" else 1)
    if moment == "before-root":
        assert status["unpublished_snapshot"] == 2
    elif moment != "after-root":
        assert status["queue"]["entries"] > 0
    published = [s["id"] for s in cli("--json", "snapshots").json["snapshots"]]
    assert published == ([1, 2] if moment == "after-root" else [1])

    resumed = dg(home, "--json", "upload")
    assert resumed.code == 0, resumed.err
    status = cli("--json", "status").json
    assert status["queue"]["entries"] == 0
    assert status["spool"]["packs"] == 0
    assert status["unpublished_snapshot"] is None
    published = [s["id"] for s in cli("--json", "snapshots").json["snapshots"]]
    assert published[-1] == resumed.json["snapshot_id"] == status["snapshot_id"]
    if moment == "before-root":  # the rerun only finishes the commit: no empty snapshot 3
        assert published == [1, 2]

    # Every snapshot after the first holds the second night exactly; the first is untouched.
    assert_restores(cli, 1, src, first, tmp_path / "r1")
    for snap in published[1:]:
        assert_restores(cli, snap, src, second, tmp_path / f"r{snap}")
    assert cli("verify", "--read-data").code == 0

    # The kill cost at most the one pack that was put but not yet recorded: what the resumed run
    # sent again on top of the uninterrupted run's bytes (identical packs land on the same object,
    # so the store itself may not grow at all).
    put = put_before_kill + resumed.json["bytes_uploaded"]
    assert put <= baseline["pack_bytes"] + ONE_PACK
    assert pack_bytes(home, store_objects(home) - before) <= put


# SIGKILL once the scan has committed two batches of queue rows, long before it finishes.
_KILL_IN_SCAN = """
import os, signal, sys
import deltagrid.scanner.scan
deltagrid.scanner.scan.BATCH = deltagrid.scanner.scan.FIRST_BATCH = 50
real = deltagrid.scanner.scan.Scanner._flush
flushes = []
def _flush(self, conn):
    flushes.append(1)
    if len(flushes) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, conn)
deltagrid.scanner.scan.Scanner._flush = _flush
from deltagrid.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_scan_killed_then_upload_refuses_until_scan_runs_again(
    tmp_path: Path, home: Path, cli
) -> None:
    src = tmp_path / "src"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (src / f"d{d}" / f"f{i:03}").write_bytes(os.urandom(i * 10))
    assert cli("init").code == 0
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_IN_SCAN, "--home", str(home), "scan", str(src)],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    db = sqlite3.connect(f"file:{home / 'backupdb.sqlite'}?mode=ro", uri=True)
    try:
        left = db.execute(
            "SELECT count(*) FROM queue JOIN scans ON scans.id = queue.scan_id "
            "WHERE scans.finished_ns IS NULL"
        ).fetchone()[0]
    finally:
        db.close()
    assert left == 100  # two batches of the killed scan are in the queue

    assert cli("--json", "status").json["scan_interrupted"] is True
    for _ in range(2):  # refuses, and keeps refusing: nothing was half-uploaded
        refused = dg(home, "upload")
        assert refused.code == 1
        assert refused.err.splitlines() == [
            "deltagrid: error: the last scan was interrupted; run 'deltagrid scan' again"
        ]
    assert cli("--json", "status").json["snapshot_id"] == 0

    rescan = cli("--json", "scan", src)
    assert rescan.code == 0, rescan.err
    assert rescan.json["queued"]["new"] == 1 + 3 + 300
    assert cli("--json", "status").json["queue"]["entries"] == 1 + 3 + 300  # killed rows gone
    upload = cli("--json", "upload")
    assert upload.code == 0, upload.err
    assert upload.json["counts"]["files"] == 300
    assert_restores(cli, 1, src, describe(src), tmp_path / "r")


def test_file_vanished_between_scan_and_upload_exits_24(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("keep\n")
    (src / "old.txt").write_text("old\n")
    assert cli("backup", src).code == 0

    (src / "old.txt").write_text("old, edited\n")
    (src / "new.txt").write_text("new\n")
    assert cli("scan", src).code == 0
    (src / "old.txt").unlink()
    (src / "new.txt").unlink()

    upload = cli("--json", "upload")
    assert upload.code == 24
    assert sorted(upload.json["vanished"]) == [str(src / "new.txt"), str(src / "old.txt")]
    assert upload.json["counts"]["vanished"] == 2
    assert upload.json["snapshot_id"] == 2
    assert [s["id"] for s in cli("--json", "snapshots").json["snapshots"]] == [1, 2]
    assert set(entries(cli("--json", "ls", "2"), src)) == {"", "keep.txt"}
    assert set(entries(cli("--json", "ls", "1"), src)) == {"", "keep.txt", "old.txt"}

    again = cli("--json", "backup", src)
    assert again.code == 0, again.err
    assert again.json["vanished"] == []
    target = tmp_path / "r"
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)


def test_unreadable_file_exits_23_keeps_its_previous_version_then_converges(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    v1 = os.urandom(100_000)
    (src / "bad.bin").write_bytes(v1)
    (src / "ok.txt").write_text("one\n")
    assert cli("backup", src).code == 0

    v2 = os.urandom(120_000)
    (src / "bad.bin").write_bytes(v2)
    (src / "ok.txt").write_text("two\n")
    (src / "bad-new.txt").write_text("never read yet\n")
    failing = {os.fsencode(src / "bad.bin"), os.fsencode(src / "bad-new.txt")}
    fail_reading(monkeypatch, failing)
    faulty = cli("--json", "backup", src)
    monkeypatch.undo()

    assert faulty.code == 23
    assert sorted(u["path"] for u in faulty.json["unreadable"]) == [
        str(src / "bad-new.txt"),
        str(src / "bad.bin"),
    ]
    assert all(u["error"] == os.strerror(errno.EIO) for u in faulty.json["unreadable"])
    assert faulty.json["counts"]["unreadable"] == 2
    assert f"cannot read {src / 'bad.bin'}" in faulty.err
    assert "Traceback" not in faulty.err
    # The rest is committed; the unreadable file keeps the version it had, the new one is absent.
    assert faulty.json["snapshot_id"] == 2
    listed = entries(cli("--json", "ls", "2"), src)
    assert set(listed) == {"", "bad.bin", "ok.txt"}
    assert listed["bad.bin"]["hash"] == blake(v1)
    assert listed["ok.txt"]["hash"] == blake(b"two\n")
    target = tmp_path / "r2"
    assert cli("restore", "--snapshot", "2", target).code == 0
    assert (restored_root(target, src) / "bad.bin").read_bytes() == v1

    clean = cli("--json", "backup", src)
    assert clean.code == 0, clean.err
    assert clean.json["unreadable"] == []
    listed = entries(cli("--json", "ls"), src)
    assert listed["bad.bin"]["hash"] == blake(v2)
    assert "bad-new.txt" in listed
    target = tmp_path / "r3"
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)


def test_unreadable_directory_exits_23_and_its_children_are_not_deleted(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    (src / "locked" / "deep").mkdir(parents=True)
    (src / "locked" / "a.txt").write_text("a\n")
    (src / "locked" / "deep" / "b.txt").write_text("b\n")
    (src / "open.txt").write_text("one\n")
    assert cli("backup", src).code == 0

    (src / "locked" / "c.txt").write_text("added while locked\n")
    (src / "open.txt").write_text("two\n")
    locked = os.fsencode(src / "locked")
    real_scandir = os.scandir

    def scandir(path=".", *args, **kwargs):
        if isinstance(path, (str, bytes, os.PathLike)) and os.fsencode(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(deltagrid.scanner.scan.os, "scandir", scandir)
    faulty = cli("--json", "backup", src)
    monkeypatch.undo()

    assert faulty.code == 23
    assert faulty.json["scan"]["errors"] == [
        {"path": str(src / "locked"), "error": os.strerror(errno.EACCES)}
    ]
    assert faulty.json["scan"]["queued"]["deleted"] == 0
    assert faulty.json["counts"].get("deleted", 0) == 0
    assert f"cannot read {src / 'locked'}" in faulty.err
    listed = entries(cli("--json", "ls", "2"), src)
    assert {"locked/a.txt", "locked/deep", "locked/deep/b.txt"} <= set(listed)
    assert "locked/c.txt" not in listed
    assert listed["open.txt"]["hash"] == blake(b"two\n")

    clean = cli("--json", "backup", src)
    assert clean.code == 0, clean.err
    assert "locked/c.txt" in entries(cli("--json", "ls"), src)
    target = tmp_path / "r"
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)


def test_file_rewritten_while_read_is_stored_consistently_then_exactly(
    tmp_path: Path, home: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    hot, log = src / "hot.bin", src / "app.log"
    size = 20 << 20
    initial = os.urandom(size)
    hot.write_bytes(initial)
    log.write_text("start\n")
    (src / "quiet.txt").write_text("nobody writes here\n")
    assert dg(home, "backup", src).code == 0  # a first version, for a delta to start from

    stop = threading.Event()

    def rewrite() -> None:  # rewrite pieces all through the file, over and over
        n = 0
        while not stop.is_set():
            n += 1
            with open(hot, "r+b") as f:
                for off in range((n * 4096) % (1 << 20), size - 65536, 1 << 20):
                    f.seek(off)
                    f.write(n.to_bytes(8, "little") * 8192)
            time.sleep(0.002)

    def append() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            with open(log, "a") as f:
                f.write(f"line {n}\n")
            time.sleep(0.001)

    writers = [threading.Thread(target=rewrite), threading.Thread(target=append)]
    for w in writers:
        w.start()
    try:
        time.sleep(0.1)
        during = dg(home, "--json", "backup", src)
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert during.code == 0, during.err
    assert during.json["snapshot_id"] == 2

    # Whatever bytes were stored, they are exactly the bytes recorded: verify rebuilds every
    # stored version and checks its hash, and a restore gives back the recorded hash.
    assert dg(home, "verify", "--read-data").code == 0
    recorded = entries(dg(home, "--json", "ls", "2"), src)
    assert recorded["hot.bin"]["hash"] != blake(initial)  # the writer was at work before the read
    target = tmp_path / "r2"
    assert dg(home, "restore", "--snapshot", "2", target).code == 0
    root2 = restored_root(target, src)
    for name in ("hot.bin", "app.log"):
        data = (root2 / name).read_bytes()
        assert blake(data) == recorded[name]["hash"]
        assert len(data) == recorded[name]["size"]

    # With the writers stopped, the next backup stores the final state exactly.
    after = dg(home, "--json", "backup", src)
    assert after.code == 0, after.err
    target = tmp_path / "r3"
    assert dg(home, "restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)
    assert dg(home, "verify", "--read-data").code == 0
