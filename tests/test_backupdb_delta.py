"""The backupdb's nightly upload stays small: a night of 1% churn over 100,000 files uploads a
backupdb delta of at most 300 KB.

Real files, the real SQLite backupdb, the real CLI (in process): 1,000 directories of 100 small
files with month-old mtimes, a first backup, a second one with nothing changed (so everything
settles), then a night of 1% churn - 1,000 files edited, scattered over the directories, with
mtimes an hour old as after a day's work, plus 10 files added and 10 deleted - and a third
backup, whose `backupdb_bytes` is what the requirement bounds. The figures (local backupdb,
full export, delta) are printed on the terminal.

This takes about two minutes on a 2-core machine, nearly all of it the first backup of 100,000
files; it runs by default all the same, since it guards a design property (append-only catalog,
export in rowid order) that any schema or export change could silently break.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from tests.helpers import describe, restored_root, root_of

DIRS = 1000
PER_DIR = 100
FILES = DIRS * PER_DIR
EDITED = FILES // 100  # a night of 1% churn
ADDED = DELETED = 10
LIMIT = 300_000  # the requirement: bytes of the uploaded backupdb delta


def _name(d: int, f: int) -> str:
    return f"d{d:04d}/f{f:03d}.txt"


def _build(src: Path, old_ns: int) -> None:
    """DIRS directories of PER_DIR files of a few bytes each, all with an old mtime."""
    times = (old_ns, old_ns)
    for d in range(DIRS):
        directory = src / f"d{d:04d}"
        directory.mkdir(parents=True)
        for f in range(PER_DIR):
            path = src / _name(d, f)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, b"file %d/%d\n" % (d, f))
            finally:
                os.close(fd)
            os.utime(path, ns=times)
        os.utime(directory, ns=times)


def _churn(src: Path, rnd: random.Random, edited_ns: int) -> tuple[list[str], list[str], list[str]]:
    """Edit EDITED files scattered over the tree, add ADDED and delete DELETED files."""
    edited = [_name(*divmod(i, PER_DIR)) for i in rnd.sample(range(FILES), EDITED)]
    for rel in edited:
        path = src / rel
        path.write_bytes(path.read_bytes().replace(b"file", b"edited file"))
        os.utime(path, ns=(edited_ns, edited_ns))
    dirs = rnd.sample(range(DIRS), ADDED + DELETED)
    added = [f"d{d:04d}/new.txt" for d in dirs[:ADDED]]
    for rel in added:
        (src / rel).write_bytes(b"new file in " + rel.encode() + b"\n")
        os.utime(src / rel, ns=(edited_ns, edited_ns))
    deleted = []
    for d in dirs[ADDED:]:
        rel = next(_name(d, f) for f in range(PER_DIR) if _name(d, f) not in edited)
        (src / rel).unlink()
        deleted.append(rel)
    return edited, added, deleted


def test_backupdb_delta_for_one_percent_churn_of_100k_files(
    tmp_path: Path, home: Path, cli, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    src = tmp_path / "src"
    now_ns = time.time_ns()
    timings: dict[str, float] = {}
    started = time.monotonic()
    _build(src, now_ns - 30 * 86400 * 10**9)
    timings["build"] = time.monotonic() - started

    def backup(label: str):
        t0 = time.monotonic()
        run = cli("--json", "backup", src)
        timings[label] = time.monotonic() - t0
        assert run.code == 0, run.err
        return run.json

    first = backup("first")
    assert first["counts"]["files"] == FILES
    full_bytes = first["backupdb_bytes"]  # snapshot 1 is a full export

    settled = backup("no change")
    assert settled["scan"]["queued"] == {"new": 0, "changed": 0, "meta": 0, "deleted": 0}
    assert settled["bytes_uploaded"] == 0

    edited, added, deleted = _churn(src, random.Random(20240601), now_ns - 3600 * 10**9)
    night = backup("1% churn")
    queued = night["scan"]["queued"]
    assert queued["changed"] == EDITED and queued["new"] == ADDED
    assert queued["deleted"] == DELETED and queued["meta"] == ADDED + DELETED  # their dirs
    assert night["counts"]["files"] == EDITED + ADDED
    assert night["counts"]["deleted"] == DELETED

    root = root_of(home)
    assert root["snapshot"] == 3
    chain = root["backupdb"]
    assert [e["type"] for e in chain] == ["full", "delta", "delta"]
    delta_bytes = night["backupdb_bytes"]
    assert delta_bytes == chain[-1]["size"]
    local_bytes = (home / "backupdb.sqlite").stat().st_size
    with capsysbinary.disabled():
        print(
            f"\nbackupdb for {FILES} files: local {local_bytes:,} B, full export (zstd) "
            f"{full_bytes:,} B; 1% churn delta {delta_bytes:,} B "
            f"({100 * delta_bytes / full_bytes:.2f}% of the full export); "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        )
    assert delta_bytes <= LIMIT
    assert delta_bytes * 20 <= full_bytes  # a small fraction, not a disguised full export

    # The snapshot holds the night's changes: restore two directories that changed.
    touched = sorted({rel.split("/")[0] for rel in edited[:1] + added[:1] + deleted[:1]})
    target = tmp_path / "restore"
    args = [a for d in touched for a in ("--path", str(src / d))]
    assert cli("restore", *args, target).code == 0
    for d in touched:
        assert describe(restored_root(target, src / d)) == describe(src / d)
    ls = cli("--json", "ls", src / edited[0]).json["entries"]
    digest = hashlib.blake2b((src / edited[0]).read_bytes(), digest_size=32).hexdigest()
    assert [(e["path"], e["hash"]) for e in ls] == [(str(src / edited[0]), digest)]
