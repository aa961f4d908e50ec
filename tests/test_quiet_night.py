"""A night runs on plain sqlite3 (backupdb/connection.py, scan_queries.py, upload_queries.py), with
nothing to upload or with edits, additions, deletions, a renamed directory and deltas of big
files: it must still be a whole snapshot, and it must really leave SQLAlchemy unimported."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from deltagrid.backupdb import connection, schema
from deltagrid.uploader.sigcache import SigCache
from tests.helpers import describe, dg, restored_root, settle


def test_plain_table_names_are_the_schemas() -> None:
    """Every table of schema.py is named once, as catalog (exported) or local."""
    names = connection.CATALOG + connection.LOCAL
    assert len(set(names)) == len(names)
    assert set(names) == set(schema.metadata.tables)


def _traced(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run deltagrid with -X importtime: its stderr names every module it imported."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "deltagrid", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_quiet_night_is_a_whole_snapshot_without_sqlalchemy(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a" * 1000)
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 300)
    settle(src)
    assert dg(home, "backup", src).code == 0
    leftover = home / "spool" / "pack-left-by-a-killed-run"
    leftover.write_bytes(b"never recorded")

    proc = _traced(home, "backup", src)
    assert proc.returncode == 0, proc.stderr
    assert "backupdb.scan_queries\n" in proc.stderr  # the trace is there...
    assert "sqlalchemy" not in proc.stderr and "tqdm" not in proc.stderr  # ...and these are not
    assert not leftover.exists()

    listed = _traced(home, "ls", src)  # a quick look at the catalog: no SQLAlchemy either
    assert listed.returncode == 0, listed.stderr
    assert "backupdb.restore_queries\n" in listed.stderr and "sqlalchemy" not in listed.stderr

    snaps = dg(home, "--json", "snapshots").json["snapshots"]
    assert [s["id"] for s in snaps] == [1, 2]
    assert snaps[-1]["files"] == 2 and snaps[-1]["sources"] == [str(src)]
    out = tmp_path / "out"
    assert dg(home, "restore", "--snapshot", "2", "--into", out).code == 0
    assert describe(restored_root(out, src)) == describe(src)


def _edit(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _has_signature(home: Path, data: bytes) -> bool:
    """The uploader keeps the librsync signature of a content with these bytes."""
    cache = SigCache(home / "sigs")
    try:
        return cache.get(hashlib.blake2b(data, digest_size=32).digest()) is not None
    finally:
        cache.close()


def test_churn_night_is_a_whole_snapshot_without_sqlalchemy(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(15):
            (src / f"d{d}" / f"f{i}.txt").write_text(f"file {i} of d{d}\n" * (i + 1))
    big, moved = src / "big.bin", src / "d0" / "big2.bin"
    big.write_bytes(os.urandom(1 << 20))
    moved.write_bytes(os.urandom(300 << 10))
    old_big = big.read_bytes()
    settle(src)
    assert dg(home, "backup", src).code == 0
    assert _has_signature(home, old_big)

    for i in range(8):  # the churn: edits, additions, deletions, a directory renamed...
        with open(src / "d1" / f"f{i}.txt", "a") as f:
            f.write("edited\n")
    (src / "new").mkdir()
    for i in range(20):
        (src / "new" / f"n{i}.txt").write_text(f"new file {i}\n")
    shutil.rmtree(src / "d3")
    for i in range(5):
        (src / "d2" / f"f{i}.txt").unlink()
    (src / "d0").rename(src / "renamed")
    _edit(big, 5000, b"a scattered edit")  # ...and deltas: in place, and after the rename
    _edit(src / "renamed" / "big2.bin", 100, b"moved, then edited")
    settle(src)

    proc = _traced(home, "--json", "backup", src)
    assert proc.returncode == 0, proc.stderr
    assert "backupdb.upload_queries\n" in proc.stderr  # the upload ran, traced...
    assert "sqlalchemy" not in proc.stderr and "tqdm" not in proc.stderr  # ...without these
    doc = json.loads(proc.stdout)
    assert doc["counts"]["deltas"] == 2  # the big file's and the moved one's (the same inode)
    assert doc["counts"]["deduplicated"] >= 15  # the renamed directory's files: nothing new
    assert doc["counts"]["deleted"] > 0
    assert not _has_signature(home, old_big)  # its content is no longer live
    assert _has_signature(home, big.read_bytes())

    listed = _traced(home, "ls", src)  # a quick look at the catalog: no SQLAlchemy either
    assert listed.returncode == 0, listed.stderr
    assert "backupdb.restore_queries\n" in listed.stderr and "sqlalchemy" not in listed.stderr

    snaps = dg(home, "--json", "snapshots").json["snapshots"]
    assert [s["id"] for s in snaps] == [1, 2]
    assert snaps[-1]["files"] == sum(1 for p in src.rglob("*") if p.is_file())
    out = tmp_path / "out"
    assert dg(home, "restore", "--into", out).code == 0
    assert describe(restored_root(out, src)) == describe(src)
    assert dg(home, "verify", "--read-data").code == 0
