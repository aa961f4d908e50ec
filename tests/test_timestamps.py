"""Any time the file system holds — before 1970, before 1677, after 2262 — is backed up and
restored to the nanosecond, and a backupdb from before schema 4 is migrated."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

from deltagrid.backupdb.connection import SCHEMA_VERSION
from tests.helpers import dg, restored_root, settle

NS = 1_000_000_000
TIMES = {
    "far_future": 10_413_792_000 * NS + 123_456_789,  # 2300-01-01, past int64 ns (2262)
    "pre_1970": -631_152_000 * NS + 987_654_321,  # 1950-01-01 (ext4 holds 1901 to 2446)
    "just_before_epoch": -1,  # 1969-12-31T23:59:59.999999999
    "before_1677": -9_500_000_000 * NS,  # 1668: below int64 ns, where the file system allows
}


def settable(path: Path, ns: int) -> bool:
    """Whether this file system stores `ns` as an mtime exactly."""
    try:
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
    except (OSError, OverflowError):
        return False
    return os.lstat(path).st_mtime_ns == ns


def test_far_future_and_pre_1970_times_restore_exactly(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    settle(src)
    wanted: dict[str, int] = {}
    for name, ns in TIMES.items():
        for kind in ("file", "dir", "link"):
            path = src / f"{kind}-{name}"
            if kind == "file":
                path.write_bytes(name.encode())
            elif kind == "dir":
                path.mkdir()
            else:
                path.symlink_to("file-" + name)
            if settable(path, ns):
                wanted[path.name] = ns
            else:
                os.remove(path) if kind != "dir" else path.rmdir()
    assert "file-far_future" in wanted and "file-pre_1970" in wanted, "ext4 and tmpfs hold these"
    os.utime(src, ns=(TIMES["pre_1970"], TIMES["pre_1970"]))
    wanted["."] = TIMES["pre_1970"]
    time.sleep(1.1)  # every ctime (the clock when dated) more than a second before the backup

    run = dg(home, "--json", "backup", src)
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    target = tmp_path / "r"
    assert dg(home, "restore", target).code == 0
    back = restored_root(target, src)
    for name, ns in wanted.items():
        assert os.lstat(back / name).st_mtime_ns == ns, name

    quiet = dg(home, "--json", "backup", src)  # nothing changed the next night
    assert quiet.code == 0 and quiet.json["bytes_uploaded"] == 0
    # Nothing is queued: every date compares equal, and a file dated ahead of the clock is not
    # read again for its date alone (its ctime says when it last changed).
    assert any(ns > time.time_ns() for n, ns in wanted.items() if n.startswith("file-"))
    queued = quiet.json["scan"]["queued"]
    assert queued == {"new": 0, "changed": 0, "meta": 0, "deleted": 0}

    listing = dg(home, "ls", "1", src / "file-far_future")
    assert listing.code == 0 and "2300-01-01" in listing.out


def test_a_backupdb_of_schema_3_is_migrated_and_takes_the_new_columns(
    home: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "old.txt").write_text("from before the migration\n")
    settle(src)
    assert dg(home, "backup", src).code == 0
    db = home / "backupdb.sqlite"
    with sqlite3.connect(db) as conn:  # what schema 3 had: no versions.extents
        conn.execute("ALTER TABLE versions DROP COLUMN extents")
        conn.execute("UPDATE schema_version SET version = 3")
    conn.close()

    (src / "future.txt").write_text("from the future\n")
    os.utime(src / "future.txt", ns=(TIMES["far_future"], TIMES["far_future"]))
    fd = os.open(src / "sparse.img", os.O_WRONLY | os.O_CREAT, 0o644)
    os.ftruncate(fd, 64 << 20)
    os.pwrite(fd, b"data" * 1024, 32 << 20)
    os.close(fd)
    run = dg(home, "backup", src)
    assert run.code == 0, run.err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(versions)")]
    conn.close()
    assert columns[-1] == "extents"  # last, as in a new backupdb: exports stay alike
    target = tmp_path / "r"
    assert dg(home, "restore", target).code == 0
    back = restored_root(target, src)
    assert (back / "old.txt").read_text() == "from before the migration\n"
    assert os.stat(back / "future.txt").st_mtime_ns == TIMES["far_future"]
    assert os.stat(back / "sparse.img").st_blocks * 512 <= 64 << 10


@pytest.mark.parametrize("name", ["far_future", "pre_1970"])
def test_attach_rebuilds_a_catalog_holding_such_times(
    name: str, home: Path, tmp_path: Path
) -> None:
    """The export and its import carry a time stored as digits as it is."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text(name)
    settle(src)
    os.utime(src / "f", ns=(TIMES[name], TIMES[name]))
    assert dg(home, "backup", src).code == 0
    (home / "backupdb.sqlite").unlink()
    assert dg(home, "attach").code == 0
    target = tmp_path / "r"
    assert dg(home, "restore", target).code == 0
    assert os.stat(restored_root(target, src) / "f").st_mtime_ns == TIMES[name]


@pytest.fixture
def tmpfs_dir():
    """A directory on tmpfs, which holds any 64-bit second: ext4 stops at 1901 and 2446."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="dg-times-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_times_far_outside_64_bit_nanoseconds_round_trip(home: Path, tmpfs_dir: Path) -> None:
    src = tmpfs_dir / "src"
    src.mkdir()
    wanted = {
        "before_1677": TIMES["before_1677"],
        "year_5138": 10**20 + 5,
        "year_33658": 10**21 + 1,  # past what Python's datetime holds
    }
    for name, ns in wanted.items():
        (src / name).write_text(name)
        if not settable(src / name, ns):
            pytest.skip(f"{tmpfs_dir} does not hold {name}")
    assert dg(home, "backup", src).code == 0
    quiet = dg(home, "--json", "backup", src)  # the two ahead of the clock are read again
    assert quiet.json["scan"]["queued"] == {"new": 0, "changed": 2, "meta": 0, "deleted": 0}
    target = tmpfs_dir / "r"
    assert dg(home, "restore", target).code == 0
    for name, ns in wanted.items():
        assert os.stat(restored_root(target, src) / name).st_mtime_ns == ns, name
    listing = dg(home, "ls", "2", src / "year_33658")
    assert listing.code == 0 and f"@{10**12}" in listing.out
