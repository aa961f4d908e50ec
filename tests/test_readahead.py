"""The uploader's read-ahead: reader threads prepare the next small files while the main thread
records in queue order. Over several queue batches, with files streamed on the main thread in
between and duplicates, a failing or vanishing file must be reported for itself (23 / 24) and
every other file must restore to its own bytes. Faults are injected where test_failures.py
injects them: `deltagrid.uploader.reader.open_source`, which the reader threads call."""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import deltagrid.uploader.bigfiles
import deltagrid.uploader.catalog
import deltagrid.uploader.reader
import deltagrid.uploader.upload
from deltagrid.backupdb import connection
from deltagrid.floor import fs
from tests.helpers import fail_reading, restored_root, watch_opening

PIECE_SIZE = 256 << 10
SIZES = [0, 100, 3_000, 40_000, 70_000, 70_000, 9_000]


def make_tree(src: Path) -> dict[str, bytes]:
    """600 files (three queue batches): small ones, every 50th larger than a piece (read on the
    main thread), every 7th a copy of the first non-empty one."""
    rng = random.Random(7)
    files: dict[str, bytes] = {}
    for i in range(600):
        size = 300_000 if i % 50 == 49 else SIZES[i % len(SIZES)]
        data = files["d0/f0001"] if i % 7 == 6 else rng.randbytes(size)
        files[f"d{i // 100}/f{i:04d}"] = data
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return files


def restored(cli, target: Path, src: Path) -> dict[str, bytes]:
    assert cli("restore", target).code == 0
    root = restored_root(target, src)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def tree(tmp_path: Path, cli) -> tuple[Path, dict[str, bytes]]:
    assert cli("init").code == 0
    with open(tmp_path / "home" / "config.toml", "a") as f:
        f.write(f"\n[upload]\npiece_size = {PIECE_SIZE}\n")
    src = tmp_path / "src"
    return src, make_tree(src)


def catalog_size(home: Path) -> tuple[int, int]:
    """(contents, blobs) in the home's backupdb, which holds no blob twice."""
    with sqlite3.connect(home / "backupdb.sqlite") as conn:
        contents = conn.execute("SELECT count(*) FROM contents").fetchone()[0]
        blobs, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT hash) FROM blobs"
        ).fetchone()
    assert blobs == distinct
    return contents, blobs


@pytest.mark.parametrize("bound", [None, 40])
def test_copies_across_records_and_runs_are_stored_once(
    tmp_path: Path, cli, tree, monkeypatch: pytest.MonkeyPatch, bound: int | None
) -> None:
    """The uploader's catalog cache keeps its answers, "not there" included, across its records
    and is never asked on a first backup: a copy met in a later batch, or in a later run, must
    reuse the content stored before. Small packs: many records a run. With `bound`, the cache
    is dropped every 40 hashes: the copies are then asked about, a first backup's catalog by
    then without its hash indexes (catalog.py), which the first question builds."""
    if bound is not None:
        monkeypatch.setattr(deltagrid.uploader.catalog, "_MAX", bound)
    with open(tmp_path / "home" / "config.toml", "a") as f:
        f.write(f"pack_size = {PIECE_SIZE}\n")
    src, files = tree
    files["d5/piece"] = files["d0/f0049"][:PIECE_SIZE]  # a small file: one blob stored before
    files["d5/zz-copy"] = files["d0/f0049"]  # a large one: its pieces found by the big reader
    for rel in ("d5/piece", "d5/zz-copy"):
        (src / rel).write_bytes(files[rel])
    assert cli("backup", src).code == 0
    contents, blobs = catalog_size(tmp_path / "home")
    assert contents == len(set(files.values()))

    shutil.copytree(src / "d1", src / "copy")  # nothing new: no pack, no content
    again = cli("--json", "backup", src)
    assert again.code == 0, again.err
    assert again.json["bytes_uploaded"] == 0
    assert catalog_size(tmp_path / "home") == (contents, blobs)
    expected = files | {f"copy/{r[3:]}": d for r, d in files.items() if r.startswith("d1/")}
    assert restored(cli, tmp_path / "r", src) == expected


def test_a_first_backup_past_the_bound_asks_the_catalog_only_about_copies(
    tmp_path: Path, cli, tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropping the cache's answers on a first backup must not make every later file a question
    to the catalog (each a query walking the GIL round the reader threads): the prefixes of what
    was added say which hashes may be there. Only the copies (and their batch-mates asked with
    them) are asked about; without the prefixes every file after the first 40 hashes is."""
    monkeypatch.setattr(deltagrid.uploader.catalog, "_MAX", 40)
    asked: list[int] = []
    real = deltagrid.uploader.catalog.upload_queries.contents_by_hash

    def counting(conn, digests):
        digests = set(digests)
        asked.append(len(digests))
        return real(conn, digests)

    monkeypatch.setattr(deltagrid.uploader.catalog.upload_queries, "contents_by_hash", counting)
    with open(tmp_path / "home" / "config.toml", "a") as f:
        f.write(f"pack_size = {PIECE_SIZE}\n")  # many records, each dropping the answers
    src, files = tree
    assert cli("backup", src).code == 0
    copies = len(files) - len(set(files.values()))
    assert 0 < len(asked) <= copies  # at most one question per copy, none for a new file
    assert restored(cli, tmp_path / "r", src) == files


def test_a_first_backup_finds_a_large_copy_through_the_big_reader_past_the_bound(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file copied far from its original, on a first backup whose cache dropped its
    answers: the big reader asks the catalog about the copy's pieces first, and must build the
    hash indexes the first backup left unbuilt (catalog.py) before it asks; each piece, and the
    content, is stored once."""
    monkeypatch.setattr(deltagrid.uploader.catalog, "_MAX", 40)
    built: list[str] = []
    real = connection.build_hash_indexes

    def noting(conn: sqlite3.Connection) -> None:
        built.append(threading.current_thread().name)
        real(conn)

    monkeypatch.setattr(connection, "build_hash_indexes", noting)
    assert cli("init").code == 0
    with open(tmp_path / "home" / "config.toml", "a") as f:
        f.write(f"\n[upload]\npiece_size = {PIECE_SIZE}\npack_size = {PIECE_SIZE}\n")
    rng = random.Random(3)
    src = tmp_path / "src"
    files = {"a-big": rng.randbytes(3 * PIECE_SIZE + 5)}
    # Beyond the look-ahead's horizon: the copy is read once the original is recorded.
    monkeypatch.setattr(deltagrid.uploader.upload, "_LOOK_AHEAD", 500)
    small = 1_500
    files |= {f"m/{i // 500}/{i:04d}": rng.randbytes(1_000) for i in range(small)}  # 6 packs
    files["a/copy"] = files["a-big"]  # in a directory queued after m/ (the scan is depth-first)
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    assert cli("backup", src).code == 0
    assert any(name.startswith("dg-big") for name in built), built
    assert catalog_size(tmp_path / "home") == (small + 1, small + 4)  # the large one: 4 pieces
    assert restored(cli, tmp_path / "r", src) == files


needs_nowait = pytest.mark.skipif(
    not hasattr(os, "RWF_NOWAIT"), reason="no read here says whether it would wait for the disk"
)


def evict(paths: list[Path]) -> bool:
    """Drop the files' pages from the page cache, as the system does with what nobody read
    lately; whether that took (a file system held in memory, tmpfs, cannot)."""
    os.sync()  # only clean pages go
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    fd = os.open(paths[-1], os.O_RDONLY)
    try:
        waited = fs.read_cached(fd, 1)[1]
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return waited


def tiny_tree(src: Path, count: int, seed: int) -> dict[str, bytes]:
    """`count` files of 1-299 bytes, 250 a directory."""
    rng = random.Random(seed)
    files = {f"d{i // 250}/f{i:04d}": rng.randbytes(rng.randrange(1, 300)) for i in range(count)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return files


@needs_nowait
def test_a_read_says_whether_the_page_cache_held_the_file(tmp_path: Path) -> None:
    """fs.read_cached reads at the position, as os.read does, and says whether the bytes came
    from the disk; fs.fetch_ahead says whether the file was not cached and asks for it."""
    path = tmp_path / "f"
    data = random.Random(1).randbytes(3_000)
    path.write_bytes(data)
    if not evict([path]):
        pytest.skip("this file system keeps every file in memory")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fs.read_cached(fd, 4_000) == (data, True)
        assert fs.read_cached(fd, 10) == (b"", False)  # at the end
        os.lseek(fd, 2_000, os.SEEK_SET)
        assert fs.read_cached(fd, 10) == (data[2_000:2_010], False)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 2_010
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert fs.fetch_ahead(os.fsencode(path)) is True
        assert os.pread(fd, 4_000, 0) == data  # waits for what was asked for, if not in yet
        assert fs.fetch_ahead(os.fsencode(path)) is False
    finally:
        os.close(fd)
    assert fs.fetch_ahead(os.fsencode(tmp_path / "gone")) is False  # left for the read to meet
    read, write = os.pipe()  # no offsets: read as os.read reads it
    try:
        os.write(write, b"abc")
        assert fs.read_cached(read, 10) == (b"abc", False)
    finally:
        os.close(read)
        os.close(write)


@needs_nowait
def test_tiny_files_the_page_cache_lost_are_asked_for_ahead_until_found_cached(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first backup of tiny files nobody read lately: the main thread reads them one at a
    time, each read waiting for the disk. Once a run of them is found on the disk, the kernel
    is asked for the next runs before they are read, side by side. A tree found cached is
    not asked for: the asking stops. Both restore exactly."""
    src = tmp_path / "src"
    files = tiny_tree(src, 2_000, seed=5)
    if not evict([src / rel for rel in files]):
        pytest.skip("this file system keeps every file in memory")
    asked: list[bool] = []
    real = fs.fetch_ahead

    def noting(path: bytes) -> bool:
        asked.append(real(path))
        return asked[-1]

    monkeypatch.setattr(fs, "fetch_ahead", noting)
    assert cli("init").code == 0
    assert cli("backup", src).code == 0
    # All but the first run or so (64 files) were asked for, each found on the disk.
    assert asked.count(True) >= 0.9 * len(files), (len(asked), asked.count(True))

    asked.clear()
    shutil.copytree(src, tmp_path / "copy")  # written just now: in the page cache
    shutil.move(tmp_path / "copy", src / "copy")
    assert cli("backup", src).code == 0
    assert len(asked) < 0.1 * len(files), (len(asked), asked.count(True))
    expected = files | {f"copy/{rel}": data for rel, data in files.items()}
    assert restored(cli, tmp_path / "r", src) == expected


@needs_nowait
def test_a_backup_leaves_every_atime_as_it_was(tmp_path: Path, cli) -> None:
    """A backup reads a file without making it look read (O_NOATIME), and so does the asking
    ahead, which reads a byte of each file to tell whether it is cached. Atimes older than the
    mtimes, which a plain read moves (relatime); half the tree out of the page cache, so the
    asking starts and then meets cached files: every atime stays as it was."""
    src = tmp_path / "src"
    files = tiny_tree(src, 1_000, seed=6)
    old = time.time_ns() - 2 * 86_400 * 10**9
    for rel in files:
        os.utime(src / rel, ns=(old, (src / rel).stat().st_mtime_ns))
    if not evict([src / rel for rel in list(files)[:500]]):
        pytest.skip("this file system keeps every file in memory")
    atimes = {rel: (src / rel).stat().st_atime_ns for rel in files}
    assert cli("init").code == 0
    assert cli("backup", src).code == 0
    assert {rel: (src / rel).stat().st_atime_ns for rel in files} == atimes
    assert restored(cli, tmp_path / "r", src) == files


def test_unreadable_files_read_ahead_are_reported_for_themselves(
    tmp_path: Path, cli, tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, files = tree
    bad = ["d0/f0005", "d2/f0249", "d3/f0300", "d5/f0598"]  # small, large, across batches
    failing = {os.fsencode(src / rel) for rel in bad}
    fail_reading(monkeypatch, failing)
    run = cli("--json", "backup", src)
    monkeypatch.undo()

    assert run.code == 23, run.err
    assert "Traceback" not in run.err
    assert sorted(u["path"] for u in run.json["unreadable"]) == [str(src / r) for r in bad]
    assert all(u["error"] == os.strerror(errno.EIO) for u in run.json["unreadable"])
    good = {rel: data for rel, data in files.items() if rel not in bad}
    assert restored(cli, tmp_path / "r1", src) == good

    assert cli("backup", src).code == 0
    assert restored(cli, tmp_path / "r2", src) == files


def test_files_vanishing_as_they_are_opened_are_reported_for_themselves(
    tmp_path: Path, cli, tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, files = tree
    gone = ["d0/f0000", "d1/f0150", "d1/f0199", "d4/f0420"]  # empty, small, large, small
    vanishing = {os.fsencode(src / rel) for rel in gone}

    def vanish(path: bytes) -> None:
        if path in vanishing and os.path.exists(path):
            os.unlink(path)

    watch_opening(monkeypatch, vanish)
    run = cli("--json", "backup", src)
    monkeypatch.undo()

    assert run.code == 24, run.err
    assert "Traceback" not in run.err
    assert sorted(run.json["vanished"]) == [str(src / r) for r in gone]
    left = {rel: data for rel, data in files.items() if rel not in gone}
    assert restored(cli, tmp_path / "r1", src) == left
    assert cli("verify", "--read-data").code == 0


def test_a_new_big_file_is_read_once_and_a_changed_one_from_its_copy(
    tmp_path: Path, cli, tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file larger than a piece, with nothing to delta against, is hashed, signed and cut into
    blobs in one pass. One that moves on during that pass is stored from its private copy: the
    pieces cut from what was read before are not what the backup records."""
    src, files = tree
    big = sorted(rel for rel, data in files.items() if len(data) > PIECE_SIZE)
    changes = big[0]
    opened: list[str] = []
    fds: dict[int, str] = {}
    real_open, real_read = deltagrid.uploader.reader.open_source, deltagrid.uploader.reader._read

    def open_source(path: bytes) -> tuple[int, os.stat_result]:
        opening = real_open(path)
        fds[opening[0]] = os.path.relpath(os.fsdecode(path), src)
        opened.append(fds[opening[0]])
        return opening

    def read(f, n: int) -> bytes:
        data = real_read(f, n)
        fd = f.fileno() if isinstance(f, io.FileIO) else -1
        if fds.get(fd) == changes and data:  # its first bytes change once read
            fds.pop(fd)
            with open(src / changes, "r+b") as w:
                w.write(b"rewritten while read")
        return data

    monkeypatch.setattr(deltagrid.uploader.reader, "open_source", open_source)
    monkeypatch.setattr(deltagrid.uploader.reader, "_read", read)
    run = cli("--json", "backup", src)
    monkeypatch.undo()

    assert run.code == 0, run.err
    assert len(big) == 11
    assert {rel: opened.count(rel) for rel in big} == {rel: 1 for rel in big}
    new = b"rewritten while read"
    stored = dict(files, **{changes: new + files[changes][len(new) :]})
    assert restored(cli, tmp_path / "r1", src) == stored
    assert cli("verify", "--read-data").code == 0
