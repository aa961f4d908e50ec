"""Recovery: attach a fresh home to a store, repair a lost or damaged backupdb, verify a sample,
and a crafted backupdb whose hard links would lead a restore outside its target."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from deltagrid.backupdb import db, queries, schema
from tests.helpers import Run, backed_up, describe, restored_root, root_of

OLD = 1_600_000_000 * 10**9  # mtimes well in the past: no file is re-read for being recent
DAY = 86_400 * 10**9


def _name_ns(rel: str) -> int:
    return int.from_bytes(hashlib.blake2b(rel.encode(), digest_size=4).digest(), "big")


def _write(path: Path, data: bytes | str, night: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    t = OLD + night * DAY + _name_ns(path.name)
    os.utime(path, ns=(t, t))


def _age_dirs(root: Path) -> None:
    """The same old mtime for each directory every night; a directory whose entries did not
    change is not touched (its ctime would move, and the scanner would queue it as `meta`)."""
    for dirpath, dirnames, _files in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            t = OLD + _name_ns(os.path.relpath(path, root))
            if os.stat(path).st_mtime_ns != t:
                os.utime(path, ns=(t, t))
    if root.stat().st_mtime_ns != OLD:
        os.utime(root, ns=(OLD, OLD))


def _night_1(src: Path, per_dir: int = 5) -> None:
    """Small files in eight directories, and a file large enough to be stored as deltas."""
    for d in range(8):
        for f in range(per_dir):
            _write(src / f"dir{d}" / f"file{f}.txt", f"dir {d} file {f}\n" * (f + 1))
    _write(src / "big.bin", os.urandom(200 << 10))
    os.symlink("big.bin", src / "link")
    _age_dirs(src)


def _night(src: Path, night: int) -> None:
    """One edit in the big file, one small file rewritten, one added."""
    with open(src / "big.bin", "r+b") as f:
        f.seek(night * 1000)
        f.write(os.urandom(100))
    t = OLD + night * DAY
    os.utime(src / "big.bin", ns=(t, t))
    _write(src / "dir0" / "file0.txt", f"rewritten on night {night}\n", night)
    _write(src / f"dir{night % 8}" / f"new-{night}.txt", f"added on night {night}\n", night)
    _age_dirs(src)


def _restore_each(
    cli, tmp_path: Path, src: Path, nights: list[dict], label: str, only: tuple[int, ...] = ()
) -> None:
    for n, expected in enumerate(nights, start=1):
        if only and n not in only:
            continue
        target = tmp_path / f"{label}-{n}"
        run = cli("--json", "restore", "--snapshot", n, target)
        assert run.code == 0, run.err
        assert describe(restored_root(target, src)) == expected, f"snapshot {n}"


def _chain(home: Path) -> list[str]:
    return [e["type"] for e in root_of(home)["backupdb"]]


def _aside(home: Path) -> list[Path]:
    """The backupdb files attach set aside (not their -wal / -shm companions)."""
    return sorted(
        p for p in home.glob("backupdb.sqlite.old-*") if not p.name.endswith(("-wal", "-shm"))
    )


# --- attach on a fresh home ----------------------------------------------------------------------


def test_attach_on_a_fresh_home_restores_every_snapshot_and_continues(
    tmp_path: Path, home: Path, cli, cli_in
) -> None:
    src = tmp_path / "src"
    _night_1(src, per_dir=100)  # enough rows for the full export to dwarf a night's delta
    full_export = backed_up(cli, src)["backupdb_bytes"]  # snapshot 1's is the full export
    nights = [describe(src)]
    for n in (2, 3):
        _night(src, n)
        backed_up(cli, src)
        nights.append(describe(src))

    other = tmp_path / "other-machine"
    url = f"file://{home}/store"
    run = cli_in(other, "--json", "attach", "--store", url)
    assert run.code == 0, run.err
    assert run.json["snapshot_id"] == 3 and run.json["store"] == url
    assert _aside(other) == []  # nothing was there to keep

    def again(*args: str | Path) -> Run:
        return cli_in(other, *args)

    assert again("--json", "snapshots").json == cli("--json", "snapshots").json
    assert [s["id"] for s in again("--json", "snapshots").json["snapshots"]] == [1, 2, 3]
    _restore_each(again, tmp_path, src, nights, "other")
    assert again("--json", "diff", 2, 3).json == cli("--json", "diff", 2, 3).json
    assert again("verify").code == 0

    # The new home backs up the same tree: only the night's changes are queued, and the
    # backupdb goes up as a delta on the chain the first home started.
    _night(src, 4)
    fourth = again("--json", "backup", src)
    assert fourth.code == 0, fourth.err
    doc = fourth.json
    assert doc["snapshot_id"] == 4
    # new-4.txt; big.bin and dir0/file0.txt; the directory new-4.txt went into
    assert doc["scan"]["queued"] == {"new": 1, "changed": 2, "meta": 1, "deleted": 0}
    assert doc["counts"]["deltas"] == 1
    assert _chain(other) == ["full", "delta", "delta", "delta"]
    assert 0 < doc["backupdb_bytes"] * 10 < full_export, (doc["backupdb_bytes"], full_export)
    nights.append(describe(src))
    target = tmp_path / "other-4"
    assert again("restore", "--snapshot", 4, target).code == 0
    assert describe(restored_root(target, src)) == nights[3]

    # The first home is now behind the store: it says so, and attach brings it up to date.
    run = cli("ls")
    assert run.code == 1
    assert "deltagrid attach" in run.err
    run = cli("backup", src)
    assert run.code == 1 and "deltagrid attach" in run.err
    run = cli("--json", "attach")
    assert run.code == 0, run.err
    assert run.json["snapshot_id"] == 4
    assert len(_aside(home)) == 1  # its previous backupdb, kept
    _restore_each(cli, tmp_path, src, nights, "first", only=(1, 4))
    _night(src, 5)
    fifth = backed_up(cli, src)
    assert fifth["snapshot_id"] == 5
    assert _chain(home) == ["full", "delta", "delta", "delta", "delta"]


# --- a lost or damaged local backupdb ------------------------------------------------------------


@pytest.mark.parametrize("damage", ["lost", "garbage"])
def test_attach_repairs_a_lost_or_damaged_backupdb(
    tmp_path: Path, home: Path, cli, damage: str, monkeypatch
) -> None:
    src = tmp_path / "src"
    _night_1(src)
    backed_up(cli, src)
    nights = [describe(src)]
    _night(src, 2)
    backed_up(cli, src)
    nights.append(describe(src))

    path = home / "backupdb.sqlite"
    garbage = os.urandom(path.stat().st_size)
    if damage == "lost":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        path.write_bytes(garbage)

    for args in (["ls"], ["restore", tmp_path / "t"], ["backup", src]):
        run = cli(*args)
        assert run.code == 1, args
        assert "deltagrid attach" in run.err, run.err
    assert not (tmp_path / "t").exists()

    # Two repairs in the same second: each keeps what it replaced.
    monkeypatch.setattr(time, "strftime", lambda *_args: "20260101T000000")
    run = cli("--json", "attach")
    assert run.code == 0, run.err
    assert run.json["snapshot_id"] == 2
    kept = _aside(home)
    if damage == "lost":
        assert kept == []
    else:
        assert [p.read_bytes() == garbage for p in kept] == [True]
    assert cli("attach").code == 0
    kept = _aside(home)
    assert len(kept) == (1 if damage == "lost" else 2)
    if damage == "garbage":
        assert sum(p.read_bytes() == garbage for p in kept) == 1
    monkeypatch.undo()

    _restore_each(cli, tmp_path, src, nights, "repaired")
    # The rebuilt backupdb describes the disk exactly: nothing to queue, nothing to upload, and
    # the backupdb chain continues.
    doc = backed_up(cli, src)
    assert doc["snapshot_id"] == 3
    assert doc["scan"]["queued"] == {"new": 0, "changed": 0, "meta": 0, "deleted": 0}
    assert doc["bytes_uploaded"] == 0
    assert _chain(home) == ["full", "delta", "delta"]


# --- verify a sample -----------------------------------------------------------------------------


def test_verify_read_data_subset_checks_about_that_share_of_versions(
    tmp_path: Path, home: Path, cli
) -> None:
    src = tmp_path / "src"
    _night_1(src)
    backed_up(cli, src)
    for n in (2, 3):
        _night(src, n)
        backed_up(cli, src)
    conn = sqlite3.connect(home / "backupdb.sqlite")
    try:
        (total,) = conn.execute("SELECT count(*) FROM contents").fetchone()
    finally:
        conn.close()
    assert total > 20

    full = cli("--json", "verify", "--read-data")
    assert full.code == 0, full.err
    assert full.json["contents"] == total and full.json["problems"] == []
    half = cli("--json", "verify", "--read-data", "--subset", "50%")
    assert half.code == 0, half.err
    assert abs(half.json["contents"] - total / 2) <= 1, (half.json["contents"], total)
    assert half.json["problems"] == []
    tenth = cli("--json", "verify", "--read-data", "--subset", "10")
    assert abs(tenth.json["contents"] - total / 10) <= 1
    tiny = cli("--json", "verify", "--read-data", "--subset", "0.1%")
    assert tiny.json["contents"] == 1  # never none
    assert cli("--json", "verify").json["contents"] == 0  # packs only

    for args in (["--subset", "50%"], ["--read-data", "--subset", "0%"]):
        assert cli("verify", *args).code == 2, args
    for bad in ("150%", "half"):
        assert cli("verify", "--read-data", "--subset", bad).code == 2, bad


# --- hard links never lead a restore outside its target ------------------------------------------


def _add_link_pair(home: Path, like: Path, paths: list[bytes]) -> None:
    """Add to the latest snapshot, in the backupdb, one version per path: copies of `like`'s
    version sharing one made-up (dev, inode) with nlink 2, i.e. two names of one file."""
    engine = db.open_db(home / "backupdb.sqlite")
    try:
        with engine.begin() as conn:
            template = queries.live_version(conn, os.fsencode(like))
            assert template is not None
            snapshot = queries.last_snapshot_id(conn)
            skip = {"id", "path_id", "valid_from", "content_id", "recheck"}
            columns = {c.name: getattr(template, c.name) for c in schema.versions.c}
            columns = {k: v for k, v in columns.items() if k not in skip}
            columns |= {"inode": 987_654_321, "nlink": 2}
            for path in paths:
                path_id = queries.ensure_path(conn, path)
                queries.add_version(conn, path_id, snapshot, columns, template.content_id, False)
    finally:
        engine.dispose()


@pytest.mark.parametrize("evil_first", [True, False], ids=["link-under-symlink-first", "second"])
def test_restore_puts_no_hard_link_outside_the_target(
    tmp_path: Path, home: Path, cli, evil_first: bool
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("the linked file\n")
    backed_up(cli, src)
    base = os.fsencode(src)
    # Paths restore in path order, hard links after the first name of their file.
    evil_dir = b"a-evil" if evil_first else b"z-evil"
    evil = base + b"/" + evil_dir + b"/x.txt"
    plain = base + b"/m.txt"
    _add_link_pair(home, src / "a.txt", [plain, evil])

    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    root = restored_root(target, src)
    root.mkdir(parents=True)
    (root / os.fsdecode(evil_dir)).symlink_to(outside)  # planted: points out of the target
    before = os.stat(outside)

    run = cli("--json", "restore", target)
    assert run.code == 1
    assert [e["path"] for e in run.json["errors"]] == [os.fsdecode(evil)]
    assert "is in the way and not a directory" in run.json["errors"][0]["error"]
    assert f"cannot restore {os.fsdecode(evil)}" in run.err
    assert list(outside.iterdir()) == []
    after = os.stat(outside)
    assert (after.st_mtime_ns, after.st_ctime_ns, after.st_nlink) == (
        before.st_mtime_ns,
        before.st_ctime_ns,
        before.st_nlink,
    )
    assert (root / os.fsdecode(evil_dir)).is_symlink()
    restored = root / "m.txt"
    assert restored.read_text() == "the linked file\n"
    assert os.stat(restored).st_nlink == 1  # no second name for it anywhere
    assert (root / "a.txt").read_text() == "the linked file\n"


def test_a_hard_link_replaces_a_planted_symlink_and_leaves_its_target_alone(
    tmp_path: Path, home: Path, cli
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("the linked file\n")
    backed_up(cli, src)
    base = os.fsencode(src)
    _add_link_pair(home, src / "a.txt", [base + b"/m.txt", base + b"/n.txt"])

    victim = tmp_path / "victim.txt"
    victim.write_text("not yours\n")
    before = os.stat(victim)
    target = tmp_path / "target"
    root = restored_root(target, src)
    root.mkdir(parents=True)
    (root / "n.txt").symlink_to(victim)  # the second name's place: replaced, never followed

    kept = cli("--json", "restore", target)  # --overwrite never: the symlink stays as it is
    assert kept.code == 0, kept.err
    assert kept.json["kept"] == [str(root / "n.txt")] and (root / "n.txt").is_symlink()
    run = cli("--json", "restore", "--overwrite", "always", target)
    assert run.code == 0, run.err
    assert run.json["hardlinks"] == 1
    assert victim.read_text() == "not yours\n"
    after = os.stat(victim)
    assert (after.st_ino, after.st_nlink, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino,
        before.st_nlink,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
    m, n = os.lstat(root / "m.txt"), os.lstat(root / "n.txt")
    assert stat.S_ISREG(n.st_mode) and m.st_ino == n.st_ino and m.st_nlink == 2
