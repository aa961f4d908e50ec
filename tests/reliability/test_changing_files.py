"""Files that change under the backup: a writer appending to a big log, files truncated while
read, a file replaced by a directory (and back) between scan and upload or just before it is
opened, directories removed mid-walk, and a tree churned by a writer through several backups.

Each backup ends with the exit code its race calls for (0, or 24 when entries vanished between
scan and upload); every file version it stored restores to bytes whose hash and size are the
ones the catalog (versions JOIN contents) records; `verify --read-data` agrees; and the next run
picks up the final state exactly. Writers are real threads; a race that must happen at one
moment is forced where test_failures.py forces its own: at the one function that opens source
files (`deltagrid.uploader.reader.open_source`), the two that read them
(`deltagrid.uploader.reader._read` in passes, `_read_fd` into memory), or the scanner's
`os.scandir`. (test_failures.py has vanished and unreadable entries and a file rewritten in
place while read; they are not repeated here.)
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import deltagrid.scanner.scan
import deltagrid.uploader.reader
from tests.helpers import describe, restored_root

MiB = 1 << 20
OLD_NS = 1_600_000_000 * 10**9  # an mtime long past: a file so dated is not flagged for re-read


def blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def catalog(home: Path, snapshot: int) -> dict[bytes, dict]:
    """The versions live in `snapshot`, straight from the backupdb's catalog tables."""
    db = sqlite3.connect(f"file:{home / 'backupdb.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT p.path, v.kind, v.size, v.recheck, c.hash, c.size FROM versions v "
            "JOIN paths p ON p.id = v.path_id "
            "LEFT JOIN contents c ON c.id = v.content_id "
            "LEFT JOIN version_ends e ON e.version_id = v.id "
            "WHERE v.valid_from <= ? AND (e.valid_until IS NULL OR e.valid_until > ?)",
            (snapshot, snapshot),
        ).fetchall()
    finally:
        db.close()
    return {
        bytes(path): {
            "kind": kind,
            "size": size,
            "recheck": bool(recheck),
            "hash": content_hash.hex() if content_hash is not None else None,
            "content_size": content_size,
        }
        for path, kind, size, recheck, content_hash, content_size in rows
    }


def stored_as_recorded(
    cli, home: Path, snapshot: int, src: Path, target: Path
) -> dict[bytes, dict]:
    """Restore `snapshot`: every path the catalog lists below `src` is there, and each file's
    bytes have the recorded hash and size. Returns the catalog's entries, relative to `src`."""
    restored = cli("restore", "--snapshot", str(snapshot), target)
    assert restored.code == 0, restored.err
    base = os.fsencode(src)
    below = {
        p[len(base) :].lstrip(b"/"): v
        for p, v in catalog(home, snapshot).items()
        if p == base or p.startswith(base + b"/")
    }
    root = restored_root(target, src)
    on_disk = set(describe(root)) | {b""}
    assert on_disk == set(below), (sorted(on_disk ^ set(below)), snapshot)
    for rel, v in below.items():
        if v["kind"] == "f":
            data = (root / os.fsdecode(rel)).read_bytes()
            assert (blake(data), len(data)) == (v["hash"], v["size"]), rel
            assert v["content_size"] == v["size"], rel
    return below


def converges(cli, src: Path, target: Path) -> None:
    """With nothing changing any more, the next backup stores the final state exactly."""
    final = cli("--json", "backup", src)
    assert final.code == 0, final.err
    assert final.json["vanished"] == [] and final.json["unreadable"] == []
    restored = cli("restore", target)
    assert restored.code == 0, restored.err
    assert describe(restored_root(target, src)) == describe(src)
    verified = cli("verify", "--read-data")
    assert verified.code == 0, verified.err


def settle(*paths: Path) -> None:
    for p in paths:
        os.utime(p, ns=(OLD_NS, OLD_NS), follow_symlinks=False)


# --- a writer appending to a big log ----------------------------------------------------------


def test_log_appended_while_read_is_stored_as_a_prefix_then_whole(
    tmp_path: Path, home: Path, cli, figures
) -> None:
    """An append-only writer never changes bytes already written: whatever the backup read of
    the log, consistent or retried from a copy, must be a prefix of the final log."""
    src = tmp_path / "src"
    src.mkdir()
    log = src / "app.log"
    rng = random.Random(3)
    with open(log, "wb") as f:  # 3 MB: read in pieces, and as a delta against the first night
        for n in range(30_000):
            f.write(f"{n:08} {rng.randbytes(45).hex()}\n".encode())
    assert cli("backup", src).code == 0
    initial = log.stat().st_size
    with open(home / "config.toml", "a") as f:
        f.write("\n[upload]\npiece_size = 262144\n")

    stop = threading.Event()
    appended = [0]

    def append() -> None:
        n = 30_000
        with open(log, "ab", buffering=0) as f:
            while not stop.is_set():
                f.write(f"{n:08} {os.urandom(45).hex()}\n".encode())
                n += 1
                appended[0] += 1
                if n % 50 == 0:
                    time.sleep(0.0005)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        while appended[0] < 1000:  # the writer is at work before the backup starts
            time.sleep(0.001)
        during = cli("--json", "backup", src)
    finally:
        stop.set()
        writer.join()
    assert during.code == 0, during.err
    final = log.read_bytes()

    stored = stored_as_recorded(cli, home, 2, src, tmp_path / "r2")[b"app.log"]
    assert stored["recheck"]  # it moved while read: the next scan reads it again
    data = (restored_root(tmp_path / "r2", src) / "app.log").read_bytes()
    assert final.startswith(data)
    assert initial < len(data) < len(final)  # it caught some appends, not the last ones
    assert cli("verify", "--read-data").code == 0
    figures.count("changing files", "lines appended during a backup", appended[0])

    converges(cli, src, tmp_path / "r3")


# --- a file truncated while read --------------------------------------------------------------


@pytest.mark.parametrize(
    ("piece_size", "when"),
    [
        pytest.param(4 * MiB, "first pass", id="in-memory"),
        pytest.param(1 * MiB, "first pass", id="streamed-first-pass"),
        pytest.param(1 * MiB, "second pass", id="streamed-second-pass"),
    ],
)
def test_file_truncated_while_read_is_stored_as_it_ended(
    tmp_path: Path,
    home: Path,
    cli,
    monkeypatch: pytest.MonkeyPatch,
    piece_size: int,
    when: str,
    figures,
) -> None:
    """A 3 MiB file truncated to 1.5 MiB once its first MiB was read. Up to piece_size a file
    is read into memory in one pass; a bigger one is hashed and signed in a first pass, then
    read again for its blobs. Either way the stored version is the truncated file, flagged so
    the next scan reads it again."""
    src = tmp_path / "src"
    src.mkdir()
    victim = src / "shrinking.bin"
    original = random.Random(piece_size).randbytes(3 * MiB)
    victim.write_bytes(b"an earlier version " * 10_000)
    (src / "bystander.txt").write_text("unchanged\n")
    settle(victim, src / "bystander.txt")
    assert cli("backup", src).code == 0
    with open(home / "config.toml", "a") as f:
        f.write(f"\n[upload]\npiece_size = {piece_size}\n")
    victim.write_bytes(original)
    keep = 3 * MiB // 2
    inode = victim.stat().st_ino
    passes = {"first pass": 1, "second pass": 2}[when]
    opened = [0]
    real_open = deltagrid.uploader.reader.open_source
    real_read, real_read_fd = deltagrid.uploader.reader._read, deltagrid.uploader.reader._read_fd

    def open_source(path: bytes) -> tuple[int, os.stat_result]:
        opening = real_open(path)
        if opening[1].st_ino == inode:
            opened[0] += 1
        return opening

    def truncate_past_first_mib(fd: int) -> None:
        if (
            opened[0] == passes
            and os.fstat(fd).st_ino == inode
            and os.lseek(fd, 0, os.SEEK_CUR) >= MiB
            and victim.stat().st_size > keep
        ):
            os.truncate(victim, keep)

    def _read(f, n: int) -> bytes:  # a file read in passes
        if not isinstance(f, io.BytesIO):  # a small file's later passes read its bytes
            truncate_past_first_mib(f.fileno())
        return real_read(f, n)

    def _read_fd(fd: int, n: int) -> bytes:  # a file read into memory
        truncate_past_first_mib(fd)
        return real_read_fd(fd, n)

    monkeypatch.setattr(deltagrid.uploader.reader, "open_source", open_source)
    monkeypatch.setattr(deltagrid.uploader.reader, "_read", _read)
    monkeypatch.setattr(deltagrid.uploader.reader, "_read_fd", _read_fd)
    during = cli("--json", "backup", src)
    monkeypatch.undo()
    assert during.code == 0, during.err
    assert victim.stat().st_size == keep  # the truncation did happen, mid-read

    stored = stored_as_recorded(cli, home, 2, src, tmp_path / "r2")[b"shrinking.bin"]
    assert (stored["hash"], stored["size"], stored["recheck"]) == (
        blake(original[:keep]),
        keep,
        True,
    )
    assert cli("verify", "--read-data").code == 0
    figures.count("changing files", "files truncated while read")

    settle(victim)
    converges(cli, src, tmp_path / "r3")
    assert catalog(home, 3)[os.fsencode(victim)]["recheck"] is False


# --- a file replaced by a directory, and a directory by a file ---------------------------------


def test_file_and_directory_swapped_between_scan_and_upload(
    tmp_path: Path, home: Path, cli
) -> None:
    """The uploader stores what it finds: the file that became a directory is stored as that
    directory (its new children wait for the next scan); the directory that became a file is
    stored as that file, and the children the scan queued below it have vanished (24)."""
    src = tmp_path / "src"
    (src / "was-dir").mkdir(parents=True)
    for i in range(3):
        (src / "was-dir" / f"child{i}.txt").write_text(f"child {i}\n")
    (src / "was-file").write_bytes(os.urandom(100_000))
    settle(*src.rglob("*.txt"))  # else re-read (and queued) for being new in this second
    assert cli("backup", src).code == 0
    (src / "was-dir" / "child0.txt").write_text("edited\n")  # queued: it will vanish
    (src / "was-dir" / "new.txt").write_text("new\n")
    (src / "was-file").write_bytes(os.urandom(90_000))
    assert cli("scan", src).code == 0

    shutil.rmtree(src / "was-dir")
    (src / "was-dir").write_bytes(b"a file now\n")
    (src / "was-file").unlink()
    (src / "was-file").mkdir()
    (src / "was-file" / "inside.txt").write_text("inside\n")

    upload = cli("--json", "upload")
    assert upload.code == 24, upload.err
    assert sorted(upload.json["vanished"]) == [
        str(src / "was-dir" / "child0.txt"),
        str(src / "was-dir" / "new.txt"),
    ]
    listed = stored_as_recorded(cli, home, 2, src, tmp_path / "r2")
    assert listed[b"was-dir"]["hash"] == blake(b"a file now\n")
    assert listed[b"was-file"]["kind"] == "d"
    # children the scan did not queue: the old ones end with their directory; the new one is
    # for the next run
    assert not any(rel.startswith(b"was-dir/") for rel in listed)
    assert b"was-file/inside.txt" not in listed

    converges(cli, src, tmp_path / "r3")


def test_file_replaced_by_a_directory_just_before_it_is_opened_is_that_directory(
    tmp_path: Path, home: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the scan and the open: opening the directory now at that path succeeds, so only
    the fstat of what was opened can tell it is no file. Nothing of it is read as a file; the
    entry is stored as what it became, as when the swap came before the upload started."""
    src = tmp_path / "src"
    src.mkdir()
    swapped = src / "swapped.bin"
    swapped.write_bytes(os.urandom(200_000))
    (src / "steady.txt").write_text("steady\n")
    assert cli("backup", src).code == 0
    first = catalog(home, 1)[os.fsencode(swapped)]
    swapped.write_bytes(os.urandom(200_000))
    real_open = deltagrid.uploader.reader.open_source
    swaps = [0]

    def open_source(path: bytes) -> tuple[int, os.stat_result]:
        if path == os.fsencode(swapped) and swapped.is_file():
            swapped.unlink()
            swapped.mkdir()
            swaps[0] += 1
        return real_open(path)

    monkeypatch.setattr(deltagrid.uploader.reader, "open_source", open_source)
    during = cli("--json", "backup", src)
    monkeypatch.undo()
    assert during.code == 0, during.err
    assert swaps[0] == 1
    assert during.json["vanished"] == []
    assert "Traceback" not in during.err
    listed = stored_as_recorded(cli, home, 2, src, tmp_path / "r2")
    assert listed[b"swapped.bin"]["kind"] == "d"
    assert first["kind"] == "f"

    converges(cli, src, tmp_path / "r3")
    assert catalog(home, 3)[os.fsencode(swapped)]["kind"] == "d"


# --- a directory removed mid-walk -------------------------------------------------------------


@pytest.mark.parametrize("known", [True, False], ids=["known-directory", "new-directory"])
def test_directory_removed_mid_walk(
    tmp_path: Path, home: Path, cli, monkeypatch: pytest.MonkeyPatch, known: bool
) -> None:
    """Removed after the scan saw it in its parent and before it was listed. A directory the last
    snapshot had keeps its entries for this one (exit 0; an unlistable directory never looks
    like a deletion); a new one was queued and has vanished by upload (24). The next run sees
    it gone either way."""
    src = tmp_path / "src"
    (src / "stays").mkdir(parents=True)
    (src / "stays" / "a.txt").write_text("a\n")
    doomed = src / "doomed"
    if known:
        (doomed / "deep").mkdir(parents=True)
        (doomed / "deep" / "b.txt").write_text("b\n")
    assert cli("backup", src).code == 0
    before = set(catalog(home, 1))
    if not known:
        (doomed / "deep").mkdir(parents=True)
        (doomed / "deep" / "b.txt").write_text("b\n")
    (src / "stays" / "a.txt").write_text("a, edited\n")
    real_scandir = os.scandir

    def scandir(path=".", *args, **kwargs):
        if isinstance(path, (str, bytes, os.PathLike)) and os.fsencode(path) == os.fsencode(doomed):
            shutil.rmtree(doomed)
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(deltagrid.scanner.scan.os, "scandir", scandir)
    during = cli("--json", "backup", src)
    monkeypatch.undo()
    assert not doomed.exists()
    assert during.code == (0 if known else 24), during.err
    assert during.json["scan"]["errors"] == []
    listed = stored_as_recorded(cli, home, 2, src, tmp_path / "r2")
    if known:
        assert {b"doomed", b"doomed/deep", b"doomed/deep/b.txt"} <= set(listed)
        assert {os.fsencode(src / p) for p in ("doomed", "doomed/deep/b.txt")} <= before
    else:
        assert during.json["vanished"] == [str(doomed)]
        assert not any(rel.startswith(b"doomed") for rel in listed)
    assert (restored_root(tmp_path / "r2", src) / "stays" / "a.txt").read_text() == "a, edited\n"

    converges(cli, src, tmp_path / "r3")
    assert not any(p.startswith(os.fsencode(doomed)) for p in catalog(home, 3))


# --- a tree churned through several backups ---------------------------------------------------


def churn(root: Path, stop: threading.Event, done: list[int]) -> None:
    """Until stopped: create and remove directory trees, swap files and directories, truncate,
    append and rewrite files, all below `root`."""
    rng = random.Random(7)
    n = 0
    while not stop.is_set():
        n += 1
        slot = root / f"slot{rng.randrange(6)}"
        action = rng.randrange(5)
        try:
            if action == 0:  # a fresh tree, or none
                shutil.rmtree(slot, ignore_errors=True)
                if slot.exists():
                    slot.unlink()
                (slot / "sub").mkdir(parents=True)
                for i in range(rng.randrange(1, 5)):
                    (slot / "sub" / f"f{i}").write_bytes(rng.randbytes(rng.randrange(200_000)))
            elif action == 1:  # a file where a directory was, or the other way round
                if slot.is_dir():
                    shutil.rmtree(slot)
                    slot.write_bytes(rng.randbytes(rng.randrange(300_000)))
                else:
                    slot.unlink(missing_ok=True)
                    slot.mkdir()
            else:
                files = [p for p in root.rglob("*") if p.is_file()]
                if files:
                    victim = rng.choice(files)
                    with open(victim, "r+b") as f:
                        if action == 2:
                            f.truncate(rng.randrange(f.seek(0, os.SEEK_END) + 1))
                        elif action == 3:
                            f.seek(0, os.SEEK_END)
                            f.write(rng.randbytes(rng.randrange(50_000)))
                        else:
                            f.seek(rng.randrange(f.seek(0, os.SEEK_END) + 1))
                            f.write(rng.randbytes(1000))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError):
            pass  # raced with itself through rglob: the next step goes on
        done[0] += 1
        time.sleep(0.0005)


def test_tree_churned_through_backups_stores_only_consistent_versions(
    tmp_path: Path, home: Path, cli, figures
) -> None:
    src = tmp_path / "src"
    (src / "churn").mkdir(parents=True)
    (src / "calm").mkdir()
    for i in range(20):
        (src / "calm" / f"c{i}.bin").write_bytes(os.urandom(i * 5000))
    assert cli("backup", src).code == 0
    with open(home / "config.toml", "a") as f:
        f.write("\n[upload]\npiece_size = 65536\n")  # more files read in several passes

    stop, steps = threading.Event(), [0]
    writer = threading.Thread(target=churn, args=(src / "churn", stop, steps))
    writer.start()
    codes: list[int] = []
    try:
        # At least three backups, and as many more (up to 12) as it takes for the churn to make
        # its hundred steps while they run: faster backups see fewer steps each.
        while len(codes) < 3 or (steps[0] <= 100 and len(codes) < 12):
            run = cli("--json", "backup", src)
            assert run.code in (0, 24), run.err
            assert run.json["unreadable"] == [], run.json["unreadable"]
            codes.append(run.code)
    finally:
        stop.set()
        writer.join()
    assert steps[0] > 100

    for snapshot in range(2, 2 + len(codes)):
        listed = stored_as_recorded(cli, home, snapshot, src, tmp_path / f"r{snapshot}")
        assert len([rel for rel in listed if rel.startswith(b"calm/")]) == 20
    assert cli("verify", "--read-data").code == 0
    figures.count("changing files", "churn steps during backups", steps[0])
    figures.count("changing files", "churned backups exiting 24", codes.count(24))

    converges(cli, src, tmp_path / "final")
