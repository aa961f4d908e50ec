"""The uploader's queries, in SQL on a plain sqlite3 connection.

A night with work to upload runs on sqlite3 alone, like a quiet one (connection.py says why).
Reads run on their own; the writers below run inside the caller's transaction
(connection.transaction): the uploader records each pack, its blobs, the finished entries'
contents, paths and versions, and their queue rows' done marks in one, so a kill loses at most
the packs put and not yet recorded (uploader/recorder.py: two).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from deltagrid.backupdb import damage
from deltagrid.backupdb.entries import META_COLUMNS, time_from_db, time_to_db
from deltagrid.backupdb.sql import (
    HASH_KEY,
    LIVE,
    insert_many,
    insert_numbered,
    rows_by_hash,
    rows_in,
)
from deltagrid.floor.errors import CorruptData

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


def _queue_rows(rows: Iterable[tuple[Any, ...]]) -> list[QueueRow]:
    queued = list(map(QueueRow._make, rows))
    return [
        q if type(q.mtime_ns) is int else q._replace(mtime_ns=time_from_db(q.mtime_ns))
        for q in queued
    ]


_PENDING = (
    f"SELECT {', '.join(QueueRow._fields)} FROM queue WHERE done = 0 AND id > ? ORDER BY id LIMIT ?"
)


def pending(conn: sqlite3.Connection, after_id: int, limit: int) -> list[QueueRow]:
    """The next `limit` rows to upload after queue row `after_id`, in queue order."""
    return _queue_rows(conn.execute(_PENDING, (after_id, limit)))


_PENDING_BIG = f"""
SELECT {", ".join(QueueRow._fields)} FROM queue
WHERE done = 0 AND id > ? AND id <= ? AND kind = 'f' AND reason != 'deleted' AND size > ?
ORDER BY id LIMIT ?
"""


def pending_big(
    conn: sqlite3.Connection, after_id: int, upto_id: int, size: int, limit: int
) -> list[QueueRow]:
    """The next `limit` rows to upload among those after `after_id` up to `upto_id` that are
    files larger than `size`, in queue order."""
    rows = conn.execute(_PENDING_BIG, (after_id, upto_id, size, limit))
    return _queue_rows(rows)


def mark_done(conn: sqlite3.Connection, outcomes: Iterable[tuple[int, str]]) -> None:
    """Mark queue rows done, each with its outcome (stored, unchanged, vanished...): a statement
    for each run of consecutive rows of one outcome, most of a pack's rows in one."""
    runs: list[list[Any]] = []  # [outcome, first id, last id]
    for qid, outcome in sorted(outcomes):
        if runs and runs[-1][0] == outcome and runs[-1][2] + 1 == qid:
            runs[-1][2] = qid
        else:
            runs.append([outcome, qid, qid])
    conn.executemany("UPDATE queue SET done = 1, outcome = ? WHERE id BETWEEN ? AND ?", runs)


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
    mtime = time_to_db(mtime_ns)
    params = {"scan_id": scan_id, "inode": inode, "dev": dev, "size": size, "mtime": mtime}
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
    """The intact contents with these bytes, of those there are: asked for many files at once.
    A broken one (damage.py) is not there for the uploader, which stores the file again."""
    rows = rows_by_hash(conn, f"{_CONTENTS} WHERE {HASH_KEY} IN ({{}})", digests, at=1)
    found = {content.hash: content for content in map(Content._make, rows)}
    broken = damage.broken_among(conn, [c.id for c in found.values()])
    return {h: c for h, c in found.items() if c.id not in broken}


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


def delta_basis(conn: sqlite3.Connection, content_id: int) -> Content | None:
    """The content to build a delta on, unless its chain is broken: then the file is stored
    whole, as a keyframe read from the source."""
    if damage.broken_among(conn, [content_id]):
        return None
    return content_by_id(conn, content_id)


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


def add_contents(
    conn: sqlite3.Connection, new: Sequence[NewContent], all_new: bool = False
) -> list[int]:
    """Insert many contents and their blob lists (in a write transaction); their ids, in order.

    A content whose hash the catalog holds already is a broken one stored again (the uploader
    saw no intact content with these bytes): it is healed in place, keeping its id, so every
    snapshot and every delta built on it reads the new blobs. So a hash has one content: the
    index on contents.hash holds only its first bytes and cannot enforce it (schema.py).
    `all_new`: none of them can be in the catalog (a first backup's, uploader/catalog.py), which
    is then not asked, as its hash index may not be built yet."""
    held: dict[bytes, int] = {}
    if not all_new:
        query = f"SELECT hash, id FROM contents WHERE {HASH_KEY} IN ({{}})"
        held = dict(rows_by_hash(conn, query, [c.hash for c in new]))
    fresh = [c for c in new if c.hash not in held]
    assert len({c.hash for c in fresh}) == len(fresh), "one content a hash (no index enforces it)"
    columns = ("hash", "size", "basis_id", "depth", "chain_bytes")
    fresh_rows = [c[:5] for c in fresh]
    fresh_ids = iter(insert_numbered(conn, "contents", columns, fresh_rows, sort_on=0))
    ids = [held[c.hash] if c.hash in held else next(fresh_ids) for c in new]
    for content_id, c in zip(ids, new, strict=True):
        if c.hash in held:
            heal_content(conn, content_id, c)
    listed = [
        (i, n, b)
        for i, c in zip(ids, new, strict=True)
        if c.hash not in held
        for n, b in enumerate(c.blob_ids)
    ]
    insert_many(conn, "content_blobs", ("content_id", "seq", "blob_id"), listed)
    return ids


_SHIFT_ABOVE = """
WITH RECURSIVE above(id) AS (
  SELECT id FROM contents WHERE basis_id = :id
  UNION SELECT c.id FROM contents c JOIN above a ON c.basis_id = a.id
)
UPDATE contents SET depth = depth + :depth, chain_bytes = chain_bytes + :bytes
WHERE id IN above
"""


def heal_content(conn: sqlite3.Connection, content_id: int, new: NewContent) -> None:
    """Point a broken content at newly stored blobs (in a write transaction): its row and blob
    list are rewritten in place, and the deltas built on it keep their depth and chain bytes
    true. Rare, so the export's rows change in the middle only then."""
    depth, chain_bytes = conn.execute(
        "SELECT depth, chain_bytes FROM contents WHERE id = ?", (content_id,)
    ).fetchone()
    conn.execute(
        "UPDATE contents SET size = ?, basis_id = ?, depth = ?, chain_bytes = ? WHERE id = ?",
        (new.size, new.basis_id, new.depth, new.chain_bytes, content_id),
    )
    conn.execute("DELETE FROM content_blobs WHERE content_id = ?", (content_id,))
    rows = [(content_id, n, b) for n, b in enumerate(new.blob_ids)]
    insert_many(conn, "content_blobs", ("content_id", "seq", "blob_id"), rows)
    shift = {"id": content_id, "depth": new.depth - depth, "bytes": new.chain_bytes - chain_bytes}
    if shift["depth"] or shift["bytes"]:
        conn.execute(_SHIFT_ABOVE, shift)


_BLOBS_BY_HASH = f"""
SELECT hash, id FROM blobs WHERE {HASH_KEY} IN ({{}})
AND id NOT IN (SELECT blob_id FROM damaged_blobs)
"""


def blobs_by_hash(conn: sqlite3.Connection, digests: Iterable[bytes]) -> dict[bytes, int]:
    """A stored blob for each of these raw bytes' hashes that has one, never a damaged one:
    asked many at once."""
    rows = rows_by_hash(conn, _BLOBS_BY_HASH, digests)
    return {digest: int(blob_id) for digest, blob_id in rows}


def add_pack(conn: sqlite3.Connection, ref: str, size: int, snapshot_id: int) -> int:
    return _insert(
        conn.cursor(),
        "INSERT INTO packs (ref, size, snapshot_id) VALUES (?, ?, ?)",
        ref,
        size,
        snapshot_id,
    )


def add_blobs(
    conn: sqlite3.Connection, pack_id: int, entries: Sequence[tuple[int, int, int, bytes]]
) -> list[int]:
    """Record a pack's blobs (offset, stored length, raw length, hash), in a write transaction;
    their ids, in order."""
    columns = ("pack_id", "offset", "length", "raw_length", "hash")
    rows = [(pack_id, *e) for e in entries]
    return insert_numbered(conn, "blobs", columns, rows, sort_on=columns.index("hash"))


# --- paths and versions --------------------------------------------------------------------------


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
    for level in sorted(levels):  # parents first: each row needs its parent's id
        level_paths = sorted(levels[level])
        rows = [(None if p == b"/" else ids[_parent(p)], p) for p in level_paths]
        new_ids = insert_numbered(conn, "paths", ("parent_id", "path"), rows)
        ids.update(zip(level_paths, new_ids, strict=True))
    return ids


# A `versions` row as add_versions takes it: the Meta columns are Meta.values().
VERSION_COLUMNS = ("path_id", "valid_from", *META_COLUMNS, "content_id", "recheck")


def add_versions(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert many versions (tuples of VERSION_COLUMNS) at once; their ids are not needed."""
    insert_many(conn, "versions", VERSION_COLUMNS, rows)


def end_versions(conn: sqlite3.Connection, version_ids: Iterable[int], valid_until: int) -> None:
    """The versions are gone from snapshot `valid_until` on."""
    rows = [(v, valid_until) for v in version_ids]
    insert_many(conn, "version_ends", ("version_id", "valid_until"), rows)


def _insert(cursor: sqlite3.Cursor, sql: str, *values: Any) -> int:
    cursor.execute(sql, values)
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _parent(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] or b"/"
