"""The uploader's queries, in SQL on a plain sqlite3 connection.

A night with work to upload runs on sqlite3 alone, like a quiet one (connection.py says why).
Reads run on their own; the writers below run inside the caller's transaction
(connection.transaction): the uploader records each pack, its blobs, the finished entries'
contents, paths and versions, and their queue rows' done marks in one, so a kill loses at most
the pack in flight.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from backupdb.nightly import LIVE, rows_in
from deltagrid.errors import CorruptData

# --- the queue -----------------------------------------------------------------------------------


class QueueRow(NamedTuple):
    """What the uploader reads of a queue row still to upload."""

    id: int
    scan_id: int
    path: bytes
    reason: str
    kind: str
    size: int
    mtime_ns: int  # these three as the scan saw them: where a new file may have moved from
    inode: int
    dev: int


_PENDING = (
    f"SELECT {', '.join(QueueRow._fields)} FROM queue WHERE done = 0 AND id > ? ORDER BY id LIMIT ?"
)


def pending(conn: sqlite3.Connection, after_id: int, limit: int) -> list[QueueRow]:
    """The next `limit` rows to upload after queue row `after_id`, in queue order."""
    return [QueueRow._make(row) for row in conn.execute(_PENDING, (after_id, limit))]


def mark_done(conn: sqlite3.Connection, outcomes: Iterable[tuple[int, str]]) -> None:
    """Mark queue rows done, each with its outcome (stored, unchanged, vanished...)."""
    conn.executemany(
        "UPDATE queue SET done = 1, outcome = ? WHERE id = ?",
        ((outcome, qid) for qid, outcome in outcomes),
    )


_DELETED_FILES = """
FROM queue q JOIN versions prev ON prev.id = q.prev_version_id
WHERE q.scan_id = :scan_id AND q.reason = 'deleted' AND prev.kind = 'f'
  AND prev.content_id IS NOT NULL
"""
_MOVE_BASIS = f"""
SELECT prev.content_id {_DELETED_FILES}
  AND ((prev.inode = :inode AND prev.dev = :dev) OR (prev.size = :size AND prev.mtime_ns = :mtime))
ORDER BY prev.inode = :inode DESC LIMIT 1
"""


def deletes_files(conn: sqlite3.Connection, scan_id: int) -> bool:
    """Whether the scan found files gone: without, no new file of it can have moved."""
    row = conn.execute(f"SELECT EXISTS (SELECT 1 {_DELETED_FILES})", {"scan_id": scan_id})
    return bool(row.fetchone()[0])


def move_basis(
    conn: sqlite3.Connection, scan_id: int, inode: int, dev: int, size: int, mtime_ns: int
) -> int | None:
    """The content of a file deleted in the same scan that a new file likely came from (rename,
    then edit)."""
    params = {"scan_id": scan_id, "inode": inode, "dev": dev, "size": size, "mtime": mtime_ns}
    row = conn.execute(_MOVE_BASIS, params).fetchone()
    return None if row is None else int(row[0])


# --- contents, blobs, packs ----------------------------------------------------------------------


class Content(NamedTuple):
    """A `contents` row."""

    id: int
    hash: bytes
    size: int
    basis_id: int | None
    depth: int
    chain_bytes: int


_CONTENTS = f"SELECT {', '.join(Content._fields)} FROM contents"


def contents_by_hash(conn: sqlite3.Connection, digests: Iterable[bytes]) -> dict[bytes, Content]:
    """The contents with these bytes, of those there are: asked for many files at once."""
    rows = rows_in(conn, f"{_CONTENTS} WHERE hash IN ({{}})", digests)
    return {content.hash: content for content in map(Content._make, rows)}


def holds_no_contents(conn: sqlite3.Connection) -> bool:
    """Whether the catalog has no contents and no blobs at all (before a first backup)."""
    row = conn.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM contents) AND NOT EXISTS (SELECT 1 FROM blobs)"
    ).fetchone()
    return bool(row[0])


def content_by_id(conn: sqlite3.Connection, content_id: int) -> Content:
    row = conn.execute(f"{_CONTENTS} WHERE id = ?", (content_id,)).fetchone()
    if row is None:
        raise CorruptData(f"the backupdb names content {content_id} but does not hold it")
    return Content._make(row)


_UNUSED = f"""
SELECT c.hash FROM contents c WHERE c.id IN ({{}})
AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.content_id = c.id AND {LIVE})
"""


def unused_contents(conn: sqlite3.Connection, content_ids: Iterable[int]) -> list[bytes]:
    """Hashes of those contents no live version uses any more."""
    return [row[0] for row in rows_in(conn, _UNUSED, content_ids)]


class NewContent(NamedTuple):
    hash: bytes
    size: int
    basis_id: int | None
    depth: int
    chain_bytes: int
    blob_ids: Sequence[int]


_ADD_CONTENT = "INSERT INTO contents (hash, size, basis_id, depth, chain_bytes) VALUES (?,?,?,?,?)"


def add_contents(conn: sqlite3.Connection, new: Sequence[NewContent]) -> list[int]:
    """Insert many contents and their blob lists; their ids, in order."""
    cursor = conn.cursor()
    ids = [_insert(cursor, _ADD_CONTENT, *c[:5]) for c in new]
    cursor.executemany(
        "INSERT INTO content_blobs (content_id, seq, blob_id) VALUES (?, ?, ?)",
        (
            (content_id, i, b)
            for content_id, c in zip(ids, new, strict=True)
            for i, b in enumerate(c.blob_ids)
        ),
    )
    return ids


def blobs_by_hash(conn: sqlite3.Connection, digests: Iterable[bytes]) -> dict[bytes, int]:
    """A stored blob for each of these raw bytes' hashes that has one: asked many at once."""
    rows = rows_in(conn, "SELECT hash, id FROM blobs WHERE hash IN ({})", digests)
    return {digest: int(blob_id) for digest, blob_id in rows}


def add_pack(conn: sqlite3.Connection, ref: str, size: int, snapshot_id: int) -> int:
    return _insert(
        conn.cursor(),
        "INSERT INTO packs (ref, size, snapshot_id) VALUES (?, ?, ?)",
        ref,
        size,
        snapshot_id,
    )


_ADD_BLOB = "INSERT INTO blobs (pack_id, offset, length, raw_length, hash) VALUES (?,?,?,?,?)"


def add_blobs(
    conn: sqlite3.Connection, pack_id: int, entries: Sequence[tuple[int, int, int, bytes]]
) -> list[int]:
    """Record a pack's blobs (offset, stored length, raw length, hash); their ids, in order."""
    cursor = conn.cursor()
    return [_insert(cursor, _ADD_BLOB, pack_id, *entry) for entry in entries]


# --- paths and versions --------------------------------------------------------------------------


_ADD_PATH = "INSERT INTO paths (parent_id, path) VALUES (?, ?)"


def ensure_paths(conn: sqlite3.Connection, wanted: Iterable[bytes]) -> dict[bytes, int]:
    """The ids of many paths, adding the missing ones and their missing ancestors: a query per
    directory level, not per path (the uploader records a pack's files at once)."""
    ids: dict[bytes, int] = {}
    missing: set[bytes] = set()
    todo = set(wanted)
    while todo:
        ids.update(rows_in(conn, "SELECT path, id FROM paths WHERE path IN ({})", todo))
        new = todo - ids.keys()
        missing |= new
        todo = {_parent(p) for p in new if p != b"/"} - ids.keys() - missing
    levels: dict[int, list[bytes]] = {}
    for p in missing:
        levels.setdefault(0 if p == b"/" else p.count(b"/"), []).append(p)
    cursor = conn.cursor()
    for level in sorted(levels):  # parents first: each row needs its parent's id
        for p in sorted(levels[level]):
            parent_id = None if p == b"/" else ids[_parent(p)]
            ids[p] = _insert(cursor, _ADD_PATH, parent_id, p)
    return ids


def version_row(
    path_id: int, valid_from: int, columns: dict[str, Any], content_id: int | None, recheck: bool
) -> dict[str, Any]:
    """The values of one new `versions` row; `columns` are Meta.columns()."""
    return {
        "path_id": path_id,
        "valid_from": valid_from,
        "content_id": content_id,
        "recheck": recheck,
        **columns,
    }


_ADD_VERSION = """
INSERT INTO versions (path_id, valid_from, kind, mode, uid, gid, size, mtime_ns, ctime_ns, inode,
                      dev, nlink, target, content_id, recheck)
VALUES (:path_id, :valid_from, :kind, :mode, :uid, :gid, :size, :mtime_ns, :ctime_ns, :inode,
        :dev, :nlink, :target, :content_id, :recheck)
"""


def add_versions(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert many versions (rows of `version_row`) at once; their ids are not needed."""
    conn.executemany(_ADD_VERSION, rows)


def end_versions(conn: sqlite3.Connection, version_ids: Iterable[int], valid_until: int) -> None:
    """The versions are gone from snapshot `valid_until` on."""
    conn.executemany(
        "INSERT INTO version_ends (version_id, valid_until) VALUES (?, ?)",
        ((v, valid_until) for v in version_ids),
    )


def _insert(cursor: sqlite3.Cursor, sql: str, *values: Any) -> int:
    cursor.execute(sql, values)
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _parent(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] or b"/"
