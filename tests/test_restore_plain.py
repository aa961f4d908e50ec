"""Restore reads the backupdb on plain sqlite3 (backupdb/restore_queries.py): every way of
restoring gives back exactly what was backed up, and really leaves SQLAlchemy (and tqdm, when
quiet) unimported; the plain queries give exactly the entries the definition of a snapshot
says."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from deltagrid.backupdb import restore_queries
from tests.helpers import describe, dg, one_error, restored_root, settle


def _restore(home: Path, *args: str | Path) -> dict:
    """`deltagrid --json restore ARGS...` traced with -X importtime: it succeeded, reading the
    backupdb through restore_queries.py and importing neither SQLAlchemy nor tqdm. Its JSON
    document."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "deltagrid", "--home", str(home), "--json"]
        + ["restore", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backupdb.restore_queries\n" in proc.stderr  # the trace is there...
    assert "sqlalchemy" not in proc.stderr and "tqdm" not in proc.stderr  # ...and these are not
    return json.loads(proc.stdout)


def _edit(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _date(src: Path, *changed: str) -> None:
    """Date the entries changed tonight, and the directories above them, an hour back (as
    `settle`), leaving the rest as the last backup recorded them."""
    old = time.time() - 3600
    for rel in changed:
        path = src / rel
        while path != src.parent:
            if os.path.lexists(path):
                os.utime(path, (old, old), follow_symlinks=False)
            path = path.parent


def _first_night(src: Path) -> None:
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "other").mkdir()
    for i in range(12):
        (src / "docs" / f"note{i}.txt").write_text(f"note {i}\n" * (i + 1))
    (src / "docs" / "deep" / "big.bin").write_bytes(os.urandom(600 << 10))
    (src / "other" / "big2.bin").write_bytes(os.urandom(300 << 10))
    (src / "docs" / "linked.txt").write_text("one inode, two names\n")
    os.link(src / "docs" / "linked.txt", src / "other" / "linked-too.txt")
    os.symlink("docs/note1.txt", src / "to-note")
    os.symlink("/nowhere/at/all", src / "docs" / "dangling")
    (src / "docs" / "private.txt").write_text("secret\n")
    os.chmod(src / "docs" / "private.txt", 0o600)
    settle(src)


def _second_night(src: Path) -> None:
    _edit(src / "docs" / "deep" / "big.bin", 4000, b"the first scattered edit")
    _edit(src / "other" / "big2.bin", 100_000, b"and another")
    with open(src / "docs" / "note3.txt", "a") as f:
        f.write("edited\n")
    (src / "docs" / "note4.txt").unlink()
    (src / "docs" / "new.txt").write_text("new tonight\n")
    os.link(src / "docs" / "new.txt", src / "docs" / "new-again.txt")
    os.unlink(src / "to-note")
    os.symlink("docs/note2.txt", src / "to-note")
    _date(src, "docs/deep/big.bin", "other/big2.bin", "docs/note3.txt", "docs/new.txt", "to-note")


def test_every_restore_gives_the_backup_back_without_sqlalchemy(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    _first_night(src)
    assert dg(home, "backup", src).code == 0
    first = describe(src)
    time.sleep(0.01)
    after_first = datetime.now().astimezone().isoformat()
    time.sleep(0.01)
    _second_night(src)
    assert dg(home, "backup", src).code == 0
    deep = describe(src / "docs" / "deep")
    _edit(src / "docs" / "deep" / "big.bin", 300_000, b"a second delta on the same chain")
    _date(src, "docs/deep/big.bin")
    doc = dg(home, "--json", "backup", src).json
    assert doc["counts"]["deltas"] == 1

    out = tmp_path / "latest"
    doc = _restore(home, out)
    assert doc["snapshot_id"] == 3 and doc["errors"] == [] and doc["hardlinks"] == 2
    assert describe(restored_root(out, src)) == describe(src)

    out = tmp_path / "at"
    assert _restore(home, "--at", after_first, out)["snapshot_id"] == 1
    assert describe(restored_root(out, src)) == first

    out = tmp_path / "subset"
    doc = _restore(home, "--snapshot", "2", "--path", src / "docs" / "deep", out)
    assert doc["snapshot_id"] == 2 and doc["files"] == 1
    assert sorted(p.name for p in restored_root(out, src).iterdir()) == ["docs"]
    assert describe(restored_root(out, src / "docs" / "deep")) == deep

    mirror = tmp_path / "mirror"
    _restore(home, "--snapshot", "1", "--path", src, "--into", mirror)
    assert describe(mirror) == first
    doc = _restore(home, "--path", src, "--into", mirror, "--swap", "--link-dest", mirror)
    assert doc["published"] == "exchanged" and doc["linked"] > 0
    assert describe(mirror) == describe(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["src", "home", "latest", "at", "subset", "mirror"]
    )  # the staging tree and the old one are gone


def _definition(db: Path, snapshot_id: int, prefixes: list[bytes]) -> list[tuple]:
    """The entries of a snapshot below `prefixes`, as the design defines them, from the whole
    tables in Python: live when valid_from <= S and not ended at or before S."""
    conn = sqlite3.connect(db)
    try:
        ends = dict(conn.execute("SELECT version_id, valid_until FROM version_ends"))
        rows = conn.execute(
            "SELECT p.path, v.*, c.hash FROM versions v JOIN paths p ON p.id = v.path_id "
            "LEFT JOIN contents c ON c.id = v.content_id"
        ).fetchall()
    finally:
        conn.close()
    return sorted(
        row
        for row in rows
        if row[3] <= snapshot_id
        and ends.get(row[1], snapshot_id + 1) > snapshot_id
        and (
            not prefixes
            or any(p == b"/" or row[0] == p or row[0].startswith(p + b"/") for p in prefixes)
        )
    )


def test_plain_queries_give_the_entries_and_snapshots_the_definition_gives(
    tmp_path: Path,
) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    for name in ("a", "a.b", "a0", "ab", "a/x", "a/x/y"):  # neighbours of "a" in byte order
        (src / name).mkdir(parents=True)
        (src / name / "f").write_text(name)
    (src / "a" / "x" / b"\xff-not-utf8".decode("utf-8", "surrogateescape")).write_text("raw")
    settle(src)
    for night in range(3):
        assert dg(home, "backup", src).code == 0
        for name in ("a", "a0", "a/x/y"):
            (src / name / "f").write_text(f"{name} after night {night}")
        (src / "a" / f"new{night}").write_text("new")
        if night == 1:
            (src / "a.b" / "f").unlink()
        settle(src)
    assert dg(home, "forget", "--keep-last", "2").code == 0

    db, root = home / "backupdb.sqlite", os.fsencode(src)
    conn = sqlite3.connect(db)
    try:
        for snapshot_id in (1, 2, 3):
            for prefixes in (
                [],
                [b"/"],
                [root],
                [root + b"/a"],
                [root + b"/a", root + b"/ab"],
                [root + b"/a/x/y/f"],
                [root + b"/a/nothing-here"],
            ):
                got = list(restore_queries.versions_at(conn, snapshot_id, prefixes))
                assert [tuple(e) for e in got] == _definition(db, snapshot_id, prefixes)
                assert got or prefixes == [root + b"/a/nothing-here"]
        assert restore_queries.snapshot(conn, 1) is None  # forgotten
        snap = restore_queries.snapshot(conn, 3)
        assert snap is not None and snap.id == 3 and json.loads(snap.sources) == [str(src)]
        at = restore_queries.snapshot_at(conn, snap.committed_ns, upto=2)
        assert at is not None and at.id == 2
        assert restore_queries.snapshot_at(
            conn, snap.committed_ns - 1, upto=3
        ) == restore_queries.snapshot(conn, 2)
    finally:
        conn.close()
    one_error(dg(home, "restore", "--snapshot", "1", tmp_path / "t"), 2, "no snapshot 1")
    assert not (tmp_path / "t").exists()
