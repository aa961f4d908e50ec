"""Damage heals: a damaged blob is named, recorded, never built on again, and repaired from the
sources that still hold its bytes.

Real stores on disk, real backupdbs, the CLI in subprocesses; the damage is a bit flipped in a
pack file, or the store's objects folder emptied.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from deltagrid.restore.rebuild import DirectSource, materialize
from deltagrid.store.filestore import FileStore
from deltagrid.store.tahoe_grid import LocalGrid, tahoe_executable
from tests import gridfixtures
from tests.helpers import describe, dg, restored_root, settle
from tests.test_maintenance import call, configure, ok

grid = gridfixtures.grid  # the session's grid, shared with the other grid tests
healthy = gridfixtures.healthy

SIZE = 200_000  # above delta_min_size: changed versions may be deltas


def _tree(src: Path) -> None:
    src.mkdir()
    for name in ("a", "b", "c", "d"):
        data = os.urandom(SIZE // 2) + bytes(SIZE // 2)
        (src / name).write_bytes(data)
    (src / "small").write_text("hello")
    settle(src)


def _age(path: Path) -> None:
    old = time.time() - 3600
    os.utime(path, (old, old))


def _db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "backupdb.sqlite")


def _content_of(home: Path, path: Path) -> int:
    """The content id of the live version of `path`."""
    with closing(_db(home)) as conn:
        row = conn.execute(
            "SELECT v.content_id FROM versions v JOIN paths p ON p.id = v.path_id "
            "WHERE p.path = ? ORDER BY v.id DESC LIMIT 1",
            (os.fsencode(path),),
        ).fetchone()
    return int(row[0])


def _flip_bit(home: Path, content_id: int, seq: int = 0) -> int:
    """Flip one bit in the middle of the content's blob number `seq` (the first), in its pack
    file; the blob id."""
    with closing(_db(home)) as conn:
        blob_id, ref, offset, length = conn.execute(
            "SELECT b.id, p.ref, b.offset, b.length FROM content_blobs cb "
            "JOIN blobs b ON b.id = cb.blob_id JOIN packs p ON p.id = b.pack_id "
            "WHERE cb.content_id = ? ORDER BY cb.seq LIMIT 1 OFFSET ?",
            (content_id, seq),
        ).fetchone()
    pack = home / "store" / "objects" / ref[:2] / ref
    data = bytearray(pack.read_bytes())
    data[offset + length // 2] ^= 0x10
    pack.write_bytes(bytes(data))
    return int(blob_id)


def _damaged(home: Path) -> set[int]:
    with closing(_db(home)) as conn:
        return {r[0] for r in conn.execute("SELECT blob_id FROM damaged_blobs")}


def _chain_blobs(home: Path, content_id: int) -> set[int]:
    """Every blob a content's rebuild reads: its own and those of the contents below it."""
    blobs: set[int] = set()
    with closing(_db(home)) as conn:
        current = content_id
        while current is not None:
            blobs |= {
                r[0]
                for r in conn.execute(
                    "SELECT blob_id FROM content_blobs WHERE content_id = ?", (current,)
                )
            }
            current = conn.execute(
                "SELECT basis_id FROM contents WHERE id = ?", (current,)
            ).fetchone()[0]
    return blobs


def _restores_exactly(home: Path, tmp: Path, src: Path, expected: dict, *snapshot: str) -> None:
    target = tmp / f"r{len(list(tmp.glob('r*')))}"
    run = dg(home, "restore", *snapshot, target)
    assert run.code == 0, run.err
    assert describe(restored_root(target, src)) == expected


def test_damage_is_named_never_reused_then_repaired(tmp_path: Path, figures) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    _tree(src)
    assert dg(home, "backup", src).code == 0
    night1 = describe(src)
    ids = {n: _content_of(home, src / n) for n in ("a", "b", "c")}
    flipped = {n: _flip_bit(home, ids[n]) for n in ids}
    figures.count("damage", "bits flipped", len(flipped))

    verify = dg(home, "--json", "verify", "--read-data")
    assert verify.code == 1
    named = {p for problem in verify.json["problems"] for p in problem.get("paths", [])}
    assert named == {str(src / n) for n in ids}
    assert _damaged(home) == set(flipped.values())

    # Without repair: a changed file gets a keyframe, never a delta on its damaged base...
    with open(src / "a", "r+b") as f:
        f.seek(1000)
        f.write(b"edited")
    settle(src)
    assert dg(home, "backup", src).code == 0
    new_a = _content_of(home, src / "a")
    assert new_a != ids["a"]
    assert not _chain_blobs(home, new_a) & _damaged(home)
    # ... and an unchanged one read again with --checksum is stored again, not pointed at the
    # damaged blob.
    assert dg(home, "backup", "--checksum", src).code == 0
    for name in ("a", "b", "c", "small"):
        assert not _chain_blobs(home, _content_of(home, src / name)) & _damaged(home)
    night3 = describe(src)
    _restores_exactly(home, tmp_path, src, night3)

    repair = dg(home, "--json", "repair")
    # The first version of `a` is gone from the source: named, by path and snapshot.
    assert repair.code == 1, repair.err
    lost = repair.json["unrecoverable"]
    assert [(u["paths"], u["snapshots"]) for u in lost] == [([str(src / "a")], [1])]
    assert str(src / "a") in repair.err and "snapshots [1]" in repair.err
    figures.count("damage", "unrecoverable reported", len(lost))

    # Every snapshot restores exactly but for that one version; verify names only it.
    _restores_exactly(home, tmp_path, src, night3)
    target = tmp_path / "first"
    first = dg(home, "--json", "restore", "--snapshot", "1", target)
    assert first.code == 1
    assert [e["path"] for e in first.json["errors"]] == [str(src / "a")]
    got, want = describe(restored_root(target, src)), dict(night1)
    del want[b"a"]
    assert got == want
    verify = dg(home, "--json", "verify", "--read-data")
    assert [p["paths"] for p in verify.json["problems"]] == [[str(src / "a")]]


def test_repair_restores_every_snapshot_the_sources_still_hold(tmp_path: Path, figures) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    _tree(src)
    assert dg(home, "backup", src).code == 0
    flipped = [_flip_bit(home, _content_of(home, src / n)) for n in ("b", "d")]
    figures.count("damage", "bits flipped", len(flipped))
    # A restore finds it first: it names the file and records the blob (no verify needed).
    restore = dg(home, "restore", tmp_path / "broken")
    assert restore.code == 1
    assert str(src / "b") in restore.err and "recorded" in restore.err
    assert _damaged(home) == set(flipped)

    (src / "e").write_bytes(os.urandom(5000))
    _age(src / "e")  # only `e` changes: b and d are not read again by this backup
    assert dg(home, "backup", src).code == 0
    night2 = describe(src)
    repair = dg(home, "--json", "repair")
    assert repair.code == 0, repair.err
    assert repair.json["repaired"] == 2 and repair.json["unrecoverable"] == []
    figures.count("damage", "contents repaired", repair.json["repaired"])
    assert dg(home, "verify", "--read-data").code == 0
    want1 = dict(night2)
    del want1[b"e"]
    _restores_exactly(home, tmp_path, src, want1, "--snapshot", "1")
    _restores_exactly(home, tmp_path, src, night2)
    again = dg(home, "--json", "repair")
    assert again.code == 0 and again.json["repaired"] == 0


def test_repair_heals_a_wiped_objects_folder(tmp_path: Path, figures) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    _tree(src)
    assert dg(home, "backup", src).code == 0
    (src / "d").rename(src / "moved")
    (src / "copy").write_bytes((src / "a").read_bytes())
    settle(src)
    assert dg(home, "backup", src).code == 0
    night1_names = {b"a", b"b", b"c", b"d", b"small"}
    night2 = describe(src)
    objects = home / "store" / "objects"
    wiped = sum(1 for _ in objects.rglob("*") if _.is_file())
    shutil.rmtree(objects)
    objects.mkdir()
    figures.count("damage", "store objects wiped", wiped)

    assert dg(home, "verify").code == 1  # every pack is missing: named, and recorded
    repair = dg(home, "--json", "repair")
    assert repair.code == 0, repair.err
    assert repair.json["packs_lost"] == repair.json["packs"] > 0
    figures.count("damage", "contents repaired", repair.json["repaired"])
    verify = dg(home, "--json", "verify", "--read-data")
    assert verify.code == 0, verify.json["problems"]
    _restores_exactly(home, tmp_path, src, night2)
    target = tmp_path / "first"
    assert dg(home, "restore", "--snapshot", "1", target).code == 0
    first = describe(restored_root(target, src))
    assert {k for k in first if b"/" not in k} == night1_names
    assert first[b"d"][:4] == night2[b"moved"][:4]
    # the next night is an ordinary one again
    (src / "f").write_bytes(os.urandom(3000))
    assert dg(home, "backup", src).code == 0
    _restores_exactly(home, tmp_path, src, describe(src))


# --- verify reads adjacent blobs in one read, and still names the one at fault --------------------

PIECE = 64 << 10  # files of a few pieces: blobs adjacent in their pack, read as one run


def _small_files_and_a_few_in_pieces(src: Path) -> None:
    rng = random.Random(18)
    for i in range(300):
        path = src / f"d{i % 6}" / f"f{i:03d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(10, 4000)))
    for i in range(3):
        (src / f"pieces{i}").write_bytes(rng.randbytes(10 * PIECE + 123))
    settle(src)


def _store_reads(monkeypatch: pytest.MonkeyPatch, run: Callable[[], object]) -> int:
    """How many reads `run` asks of the real FileStore (every get is counted, then done)."""
    reads = [0]
    real = FileStore.get

    def counted(self: FileStore, ref: str, offset: int = 0, length: int | None = None) -> bytes:
        reads[0] += 1
        return real(self, ref, offset, length)

    with monkeypatch.context() as m:
        m.setattr(FileStore, "get", counted)
        run()
    return reads[0]


def _rebuild_every_content_directly(home: Path, work: Path) -> None:
    """What verify --read-data did before it named damaged blobs: every content rebuilt
    through DirectSource (one read per run of adjacent blobs), in id order."""
    work.mkdir()
    store = FileStore(home / "store")
    with closing(_db(home)) as conn:
        for (content_id,) in conn.execute("SELECT id FROM contents ORDER BY id").fetchall():
            materialize(conn, DirectSource(store), content_id, work).unlink()


def test_a_clean_verify_reads_adjacent_blobs_in_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    _small_files_and_a_few_in_pieces(src)
    configure(home, piece_size=PIECE)
    assert call(home, "backup", src).code == 0
    with closing(_db(home)) as conn:
        blobs = conn.execute("SELECT count(*) FROM content_blobs").fetchone()[0]

    packs_only = _store_reads(monkeypatch, lambda: ok(home, "verify"))
    verify = _store_reads(monkeypatch, lambda: ok(home, "verify", "--read-data"))
    before = _store_reads(
        monkeypatch, lambda: _rebuild_every_content_directly(home, tmp_path / "w")
    )

    print(f"verify --read-data: {verify - packs_only} reads for {blobs} blobs; before: {before}")
    assert verify - packs_only == before < blobs - 20  # each file in pieces: one read, not 11
    figures.count("damage", "blob reads a clean verify saved", blobs - before)


def test_verify_names_the_one_damaged_blob_of_a_run(tmp_path: Path, figures) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    _small_files_and_a_few_in_pieces(src)
    configure(home, piece_size=PIECE)
    assert call(home, "backup", src).code == 0
    flipped = _flip_bit(home, _content_of(home, src / "pieces1"), seq=5)
    figures.count("damage", "bits flipped", 1)

    verify = dg(home, "--json", "verify", "--read-data")

    assert verify.code == 1, verify.err
    assert [p["paths"] for p in verify.json["problems"]] == [[str(src / "pieces1")]]
    assert _damaged(home) == {flipped}
    assert dg(home, "repair").code == 0
    assert dg(home, "verify", "--read-data").code == 0
    _restores_exactly(home, tmp_path, src, describe(src))


@gridfixtures.needs_tahoe
def test_repair_on_a_grid_that_lost_a_pack(tmp_path: Path, healthy: LocalGrid, figures) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    _tree(src)
    assert dg(home, "init", "--store", healthy.url).code == 0
    assert dg(home, "backup", src).code == 0
    with closing(_db(home)) as conn:
        refs = [r[0] for r in conn.execute("SELECT ref FROM packs")]
    for ref in refs:  # every share of every pack, on every storage server
        dump = subprocess.run(
            [tahoe_executable(), "debug", "dump-cap", ref], capture_output=True, text=True
        )
        index = dump.stdout.split("storage index:")[1].split()[0]
        for shares in healthy.base.glob(f"storage*/storage/shares/{index[:2]}/{index}"):
            shutil.rmtree(shares)
    figures.count("damage", "grid packs lost", len(refs))
    verify = dg(home, "verify")
    assert verify.code == 1 and "recorded" in verify.err
    repair = dg(home, "--json", "repair")
    assert repair.code == 0, repair.err
    assert repair.json["repaired"] == 5 and repair.json["unrecoverable"] == []
    assert dg(home, "verify", "--read-data").code == 0
    _restores_exactly(home, tmp_path, src, describe(src))
