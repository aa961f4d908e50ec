"""The upload's recorder process: a large upload's transactions are written by a second process
(uploader/recorder.py). Real backups of thousands of files, the process found in /proc, real
SIGKILL and SIGTERM: what it recorded restores exactly, it never outlives the upload, and an
upload whose recorder died, or met a full disk, says so in one line and is finished by the
next run."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest

from deltagrid.backupdb import connection
from deltagrid.backupdb.connection import HASH_INDEXES
from tests.helpers import dg_started, one_error
from tests.reliability.test_resources import FULL, MiB, Tmpfs, fill, tmpfs  # noqa: F401
from tests.reliability.test_signals import assert_no_litter, assert_restores
from tests.test_maintenance import call, configure, ok, query

RECORDER = b"deltagrid.uploader.recorder"


def tree(src: Path, files: int, seed: int = 0) -> None:
    """`files` small files of their own bytes in directories of 500, a few symlinks."""
    rng = random.Random(seed)
    for i in range(files):
        path = src / f"d{i // 500:03d}" / f"f{i:05d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1, 200)))
        os.utime(path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))  # no same-second reread
    for i in range(3):
        (src / f"link{i}").symlink_to(f"d000/f{i:05d}")


def helpers_of(home: Path, module: bytes = RECORDER) -> list[int]:
    """The pids of helper processes running `module` on `home`'s backupdb."""
    db = os.fsencode(home / "backupdb.sqlite")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if module in argv and db in argv:
                found.append(int(entry))
    return found


def started_with(home: Path, module: bytes, *args: str | Path) -> tuple[subprocess.Popen[str], int]:
    """A backup started, once its helper running `module` has the backupdb open: the backup,
    the helper's pid."""
    proc = dg_started(home, "backup", *args)
    db = str(home / "backupdb.sqlite")
    deadline = time.monotonic() + 120
    while not (found := [pid for pid in helpers_of(home, module) if holds(pid, db)]):
        assert proc.poll() is None, (f"the backup ended with no {module!r}", proc.communicate())
        assert time.monotonic() < deadline
        time.sleep(0.001)
    return proc, found[0]


def started_with_recorder(home: Path, src: Path) -> tuple[subprocess.Popen[str], int]:
    """A backup started, once its recorder process has the backupdb open and has had a moment
    to say it is ready."""
    started = started_with(home, RECORDER, src)
    time.sleep(0.1)
    return started


def holds(pid: int, path: str) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


def gone(home: Path, module: bytes = RECORDER) -> bool:
    """Whether no helper running `module` on `home` is left (a killed one may take a moment
    to be reaped)."""
    deadline = time.monotonic() + 10
    while helpers_of(home, module):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def home_with_tree(tmp_path: Path, files: int) -> tuple[Path, Path]:
    """A home putting packs of 256 KiB (about 2,000 of these files), and a tree of `files`."""
    home, src = tmp_path / "home", tmp_path / "src"
    configure(home, pack_size=256 << 10)
    tree(src, files)
    return home, src


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, Path]:
    """A home, and a tree whose upload takes a few transactions of thousands of entries."""
    return home_with_tree(tmp_path, 8_000)


def test_a_large_upload_is_recorded_by_a_process_and_restores_exactly(
    big: tuple[Path, Path], tmp_path: Path
) -> None:
    home, src = big
    proc, _pid = started_with_recorder(home, src)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert gone(home)
    assert_restores(home, src, tmp_path / "restored")
    assert ok(home, "verify", "--read-data")["problems"] == []
    assert ok(home, "backup", src)["counts"].get("files", 0) == 0  # all of it was recorded


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_an_upload_stopped_while_its_recorder_works_leaves_none_and_the_rerun_finishes(
    big: tuple[Path, Path], tmp_path: Path, signum: int
) -> None:
    """SIGKILL: the recorder dies with the upload (its transaction rolls back). SIGTERM: the
    upload stops cleanly, the recorder finishing its transaction first."""
    home, src = big
    proc, _pid = started_with_recorder(home, src)
    time.sleep(random.uniform(0, 0.3))
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=300)
    assert gone(home), "a recorder outlived its upload"
    if signum == signal.SIGTERM and proc.returncode != 0:
        assert proc.returncode == 143, err
        assert err.splitlines() == [
            "deltagrid: interrupted by SIGTERM; run the command again to finish"
        ], err
    else:
        assert proc.returncode in (0, -signal.SIGKILL), err
    if signum == signal.SIGTERM:
        assert_no_litter(home)
    rerun = call(home, "backup", src)
    assert rerun.code == 0, rerun.err
    assert_no_litter(home)
    assert_restores(home, src, tmp_path / "restored")
    assert ok(home, "verify", "--read-data")["problems"] == []


def indexes(db: Path) -> set[tuple[str, str]]:
    """The backupdb's indexes (name, CREATE statement), those SQLite makes itself left out."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
        return {(name, sql) for name, sql in rows if sql is not None}


def test_a_first_backup_builds_its_hash_indexes_at_its_end_and_after_a_kill_its_rerun_does(
    tmp_path: Path,
) -> None:
    """A first backup drops the catalog's two indexes on a hash and builds them once, at its
    end (uploader/catalog.py). Killed once it has recorded, it leaves a backupdb without them,
    whose next upload builds them before it records: the backupdb then has every index of a
    new one, each content once, and everything restores."""
    home, src = home_with_tree(tmp_path, 20_000)
    connection.create(tmp_path / "new.sqlite").close()
    schema = indexes(tmp_path / "new.sqlite")
    db = home / "backupdb.sqlite"
    assert {name for name, _sql in schema} >= set(HASH_INDEXES)
    proc, _pid = started_with_recorder(home, src)
    while not query(home, "SELECT 1 FROM contents LIMIT 1"):
        assert proc.poll() is None, "the backup ended before it recorded anything"
        time.sleep(0.002)
    proc.kill()
    proc.communicate(timeout=60)
    assert gone(home)
    assert {name for name, _sql in indexes(db)} == {name for name, _sql in schema} - set(
        HASH_INDEXES
    )
    rerun = call(home, "backup", src)
    assert rerun.code == 0, rerun.err
    assert indexes(db) == schema
    assert query(home, "SELECT count(*) = count(DISTINCT hash) FROM contents") == [(1,)]
    assert_restores(home, src, tmp_path / "restored")
    assert ok(home, "verify", "--read-data")["problems"] == []


def test_a_recorder_that_dies_stops_the_upload_with_one_line_and_the_rerun_finishes(
    big: tuple[Path, Path], tmp_path: Path
) -> None:
    home, src = big
    proc, pid = started_with_recorder(home, src)
    proc.send_signal(signal.SIGSTOP)  # its next transaction is surely still to come
    try:
        os.kill(pid, signal.SIGKILL)
        assert gone(home)
    finally:
        proc.send_signal(signal.SIGCONT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    line = (
        f"deltagrid: error: the process recording into backupdb {home / 'backupdb.sqlite'} "
        "ended unexpectedly; run the command again to finish"
    )
    assert err.splitlines() == [line], err
    assert_no_litter(home)
    assert ok(home, "backup", src)["counts"]["files"] > 0
    assert_restores(home, src, tmp_path / "restored")
    assert ok(home, "verify", "--read-data")["problems"] == []


def test_a_disk_that_fills_while_the_recorder_writes_fails_cleanly_and_the_rerun_finishes(
    tmp_path: Path,
    cli_in,
    tmpfs: Tmpfs,  # noqa: F811 - the fixture, imported above
) -> None:
    """The home on a small tmpfs, filled so that a few hundred KiB are left: the recorder's
    transaction meets the full disk (SQLite rolls it back), and the upload says so in one line
    naming the backupdb, publishing nothing; with room again, the next run finishes."""
    home = tmpfs.mount(tmp_path / "home", 64 * MiB)
    src = tmp_path / "src"
    assert cli_in(home, "init").code == 0
    with open(home / "config.toml", "a") as f:
        f.write("\n[upload]\npack_size = 262144\n")
    tree(src, 8_000)
    recorder_failed = 0
    for leave in (192 << 10, 384 << 10, 768 << 10):
        filler = fill(home, leave)
        run = cli_in(home, "backup", src)
        filler.unlink()
        assert cli_in(home, "--json", "snapshots").json["snapshots"] == [], "nothing published"
        if run.code == 0:
            break
        line = one_error(run, 1, str(home))
        assert any(why in line for why in FULL), line
        recorder_failed += line.startswith(f"deltagrid: error: backupdb {home}")
        assert gone(home)
    assert recorder_failed, "no full disk met the recorder"
    final = cli_in(home, "backup", src)
    assert final.code == 0, final.err
    assert_restores(home, src, tmp_path / "restored")
    assert ok(home, "verify", "--read-data")["problems"] == []
