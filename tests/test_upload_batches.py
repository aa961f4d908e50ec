"""The uploader records a pack's files in a few batched statements: check what they write.

Real SQLite files, real trees: the ids the batched inserts hand back must point at the rows they
describe, new directories must hang under their parents, and a torn signature is never used.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import select

from deltagrid.backupdb import connection, db, queries, upload_queries
from deltagrid.backupdb.schema import blobs, content_blobs, contents, paths
from deltagrid.uploader.sigcache import SigCache
from tests.helpers import describe, dg, restored_root


def test_ensure_paths_adds_missing_ancestors_parents_first(tmp_path: Path) -> None:
    connection.create(tmp_path / "b.sqlite").close()
    engine = db.open_db(tmp_path / "b.sqlite")
    with engine.begin() as conn:
        raw = queries.driver(conn)  # inside this transaction, as the uploader's own
        known = upload_queries.ensure_paths(raw, [b"/a/b"])
        ids = upload_queries.ensure_paths(raw, [b"/a/b/c/d", b"/a/b/c/e", b"/x", b"/a/b"])
        rows = {r.path: r for r in conn.execute(select(paths))}
    assert ids[b"/a/b"] == known[b"/a/b"]
    assert set(rows) == {b"/", b"/a", b"/a/b", b"/a/b/c", b"/a/b/c/d", b"/a/b/c/e", b"/x"}
    for path, row in rows.items():
        assert ids.get(path, row.id) == row.id
        parent = None if path == b"/" else rows[path.rsplit(b"/", 1)[0] or b"/"].id
        assert row.parent_id == parent, path


def test_batched_contents_and_blobs_keep_their_order(tmp_path: Path) -> None:
    connection.create(tmp_path / "b.sqlite").close()
    engine = db.open_db(tmp_path / "b.sqlite")
    with engine.begin() as conn:
        raw = queries.driver(conn)
        pack = upload_queries.add_pack(raw, "ref", 100, 1)
        entries = [(8 + i, 10 + i, 20 + i, i.to_bytes(2, "little") * 16) for i in range(1500)]
        blob_ids = upload_queries.add_blobs(raw, pack, entries)
        new = [
            upload_queries.NewContent(i.to_bytes(4, "big") * 8, i, None, 0, 0, blob_ids[i : i + 3])
            for i in range(1200)
        ]
        content_ids = upload_queries.add_contents(raw, new)
        stored_blobs = {r.id: r for r in conn.execute(select(blobs))}
        stored = {r.id: r for r in conn.execute(select(contents))}
        links = conn.execute(select(content_blobs).order_by(content_blobs.c.seq)).all()
    for blob_id, (offset, length, raw, h) in zip(blob_ids, entries, strict=True):
        row = stored_blobs[blob_id]
        assert (row.offset, row.length, row.raw_length, row.hash) == (offset, length, raw, h)
    for content_id, c in zip(content_ids, new, strict=True):
        assert (stored[content_id].hash, stored[content_id].size) == (c.hash, c.size)
        assert [r.blob_id for r in links if r.content_id == content_id] == list(c.blob_ids)


def test_many_new_directories_in_one_pack_restore_exactly(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    for i in range(40):
        d = src / f"d{i % 7}" / f"e{i % 5}" / f"f{i}"
        d.mkdir(parents=True)
        (d / "file").write_bytes(os.urandom(100 + i))
        (d / "copy").write_bytes((d / "file").read_bytes())  # the same content twice in a batch
    assert dg(home, "backup", src).code == 0
    assert dg(home, "restore", tmp_path / "r").code == 0
    assert describe(restored_root(tmp_path / "r", src)) == describe(src)


def test_a_torn_signature_is_not_used(tmp_path: Path) -> None:
    cache = SigCache(tmp_path / "sigs")
    key = b"\x01" * 32
    cache.put(key, b"signature bytes")
    cache.flush()
    assert cache.get(key) == b"signature bytes"
    with sqlite3.connect(tmp_path / "sigs" / "signatures.sqlite") as conn:
        conn.execute("UPDATE sig SET sig = substr(sig, 1, 10)")  # a torn write, had it been one
    assert cache.get(key) is None
