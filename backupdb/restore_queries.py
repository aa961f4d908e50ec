"""The queries of a restore, in SQL on a plain sqlite3 connection.

Restore never imports SQLAlchemy (connection.py says why: here a third of a second of a restore
of a few thousand files), and fetching rows through it costs more again. `ls` reads here too;
`diff`, `verify` and maintenance run these on the connection under theirs (queries.driver).
A version is live in snapshot S when valid_from <= S and it has no end at or before S; only
snapshots the root pointer has published are asked for.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from deltagrid.backupdb.entries import with_times
from deltagrid.backupdb.sql import LIVE_AT, bounds, rows_in
from deltagrid.backupdb.upload_queries import Content

# --- snapshots -----------------------------------------------------------------------------------


class Snapshot(NamedTuple):
    """A `snapshots` row."""

    id: int
    started_ns: int
    committed_ns: int
    hostname: str
    sources: str  # JSON list of the roots scanned
    files: int
    bytes_added: int
    stats: str  # JSON counts of the run that made it


_SNAPSHOTS = (
    f"SELECT {', '.join(f's.{name}' for name in Snapshot._fields)} FROM snapshots s "
    "WHERE NOT EXISTS (SELECT 1 FROM forgotten f WHERE f.snapshot_id = s.id)"
)


def snapshot(conn: sqlite3.Connection, snapshot_id: int) -> Snapshot | None:
    """Snapshot `snapshot_id`, unless it was forgotten."""
    row = conn.execute(f"{_SNAPSHOTS} AND s.id = ?", (snapshot_id,)).fetchone()
    return None if row is None else Snapshot._make(row)


def snapshot_at(conn: sqlite3.Connection, time_ns: int, upto: int) -> Snapshot | None:
    """The last snapshot up to `upto`, not forgotten, committed at or before `time_ns`."""
    row = conn.execute(
        f"{_SNAPSHOTS} AND s.committed_ns <= ? AND s.id <= ? ORDER BY s.id DESC LIMIT 1",
        (time_ns, upto),
    ).fetchone()
    return None if row is None else Snapshot._make(row)


# --- versions ------------------------------------------------------------------------------------


class Entry(NamedTuple):
    """A version live in a snapshot: its path, the `versions` row, its content's hash."""

    path: bytes
    id: int
    path_id: int
    valid_from: int
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    dev: int
    nlink: int
    target: bytes | None
    content_id: int | None
    recheck: int
    xattrs: bytes | None
    extents: bytes | None
    rdev: int | None
    content_hash: bytes | None


_VERSIONS = f"""
SELECT p.path, {", ".join(f"v.{name}" for name in Entry._fields[1:-1])}, c.hash
FROM versions v JOIN paths p ON p.id = v.path_id LEFT JOIN contents c ON c.id = v.content_id
WHERE {LIVE_AT}
"""
_UNDER = "(p.path = :p{0} OR (p.path > :lo{0} AND p.path < :hi{0}))"  # a prefix, or below it


def versions_at(
    conn: sqlite3.Connection, snapshot_id: int, prefixes: Sequence[bytes] = ()
) -> Iterator[Entry]:
    """Every entry live in a snapshot (optionally only `prefixes` and what is below them), in
    path order."""
    params: dict[str, int | bytes] = {"s": snapshot_id}
    for i, prefix in enumerate(prefixes):
        params[f"p{i}"] = prefix
        params[f"lo{i}"], params[f"hi{i}"] = bounds(prefix)
    where = " OR ".join(_UNDER.format(i) for i in range(len(prefixes)))
    query = f"{_VERSIONS} AND ({where})" if where else _VERSIONS
    for row in conn.execute(f"{query} ORDER BY p.path", params):
        yield with_times(Entry._make(row))


# --- contents and their blobs --------------------------------------------------------------------


_CONTENTS = f"SELECT {', '.join(Content._fields)} FROM contents WHERE id IN ({{}})"


def contents_by_ids(conn: sqlite3.Connection, content_ids: Iterable[int]) -> dict[int, Content]:
    """Many contents at once, by id."""
    return {row[0]: Content._make(row) for row in rows_in(conn, _CONTENTS, content_ids)}


class BlobPiece(NamedTuple):
    """One blob of a content, with the pack it lives in."""

    content_id: int
    id: int
    offset: int
    length: int
    raw_length: int
    hash: bytes
    ref: str


_PIECES = """
SELECT cb.content_id, b.id, b.offset, b.length, b.raw_length, b.hash, p.ref
FROM content_blobs cb JOIN blobs b ON b.id = cb.blob_id JOIN packs p ON p.id = b.pack_id
WHERE cb.content_id IN ({}) ORDER BY cb.content_id, cb.seq
"""


def pieces_of_contents(
    conn: sqlite3.Connection,
    content_ids: Iterable[int],
    make: Callable[[tuple[Any, ...]], Any] = BlobPiece._make,
) -> dict[int, list[Any]]:
    """The blobs of many contents at once, each content's in order, with their packs: each
    row `make`s one (a BlobPiece, or what restore keeps of it, made once)."""
    found: dict[int, list[Any]] = {}
    for row in rows_in(conn, _PIECES, content_ids):
        found.setdefault(row[0], []).append(make(row))
    return found


def content_pieces(conn: sqlite3.Connection, content_id: int) -> list[BlobPiece]:
    """The blobs of one content in order, with their packs."""
    return pieces_of_contents(conn, [content_id]).get(content_id, [])
