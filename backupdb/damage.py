"""Damaged blobs: recording what `verify`, `restore` or `repair` found, and which contents it
breaks.

A content is broken when a blob of its own, or of any content below it on its delta chain, is
damaged. The uploader never reuses a broken content or a damaged blob, and never builds a delta
on a broken basis; `repair` re-uploads what it can. Plain sqlite3, like the uploader's queries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import NamedTuple

from deltagrid.backupdb.sql import rows_in

MISMATCH = "bytes do not match"
MISSING = "pack missing"
TRUNCATED = "pack truncated"


class Damage(NamedTuple):
    """A damaged blob as found: its id, and the hash and pack it had then (a blob id a prune
    dropped may be given to a new blob later: a finding is recorded only if both still match)."""

    blob_id: int
    hash: bytes
    ref: str
    how: str


_RECORD = """
INSERT OR IGNORE INTO damaged_blobs (blob_id, found_ns, how)
SELECT b.id, ?, ? FROM blobs b JOIN packs p ON p.id = b.pack_id
WHERE b.id = ? AND b.hash = ? AND p.ref = ?
"""


def record(conn: sqlite3.Connection, found: Iterable[Damage], now_ns: int) -> int:
    """Record findings (in a write transaction): how many were new."""
    added = 0
    for d in found:
        added += conn.execute(_RECORD, (now_ns, d.how, d.blob_id, d.hash, d.ref)).rowcount
    return added


def has_damage(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM damaged_blobs)").fetchone()[0])


def damaged_blob_ids(conn: sqlite3.Connection) -> set[int]:
    return {row[0] for row in conn.execute("SELECT blob_id FROM damaged_blobs")}


_BROKEN_AMONG = """
WITH RECURSIVE chain(top, id) AS (
  SELECT id, id FROM contents WHERE id IN ({})
  UNION ALL
  SELECT chain.top, c.basis_id FROM chain JOIN contents c ON c.id = chain.id
  WHERE c.basis_id IS NOT NULL
)
SELECT DISTINCT chain.top FROM chain
JOIN content_blobs cb ON cb.content_id = chain.id
JOIN damaged_blobs d ON d.blob_id = cb.blob_id
"""


def broken_among(conn: sqlite3.Connection, content_ids: Iterable[int]) -> set[int]:
    """Those of these contents whose chain holds a damaged blob: each chain walked down to its
    keyframe, and only when anything is damaged at all (almost never)."""
    ids = list(content_ids)
    if not ids or not has_damage(conn):
        return set()
    return {row[0] for row in rows_in(conn, _BROKEN_AMONG, ids)}


_DIRECT = """
SELECT cb.content_id FROM content_blobs cb JOIN damaged_blobs d ON d.blob_id = cb.blob_id
"""


_BROKEN = f"""
WITH RECURSIVE broken(id) AS (
  {_DIRECT}
  UNION SELECT c.id FROM contents c JOIN broken b ON c.basis_id = b.id
)
SELECT id FROM broken
"""


def broken_contents(conn: sqlite3.Connection) -> set[int]:
    """Every broken content: those holding a damaged blob, and every delta built on one."""
    return {row[0] for row in conn.execute(_BROKEN)}


class PackBlob(NamedTuple):
    id: int
    hash: bytes
    offset: int
    length: int


def blobs_of_pack(conn: sqlite3.Connection, ref: str) -> list[PackBlob]:
    """The blobs the catalog places in pack `ref`."""
    rows = conn.execute(
        "SELECT b.id, b.hash, b.offset, b.length FROM blobs b JOIN packs p ON p.id = b.pack_id "
        "WHERE p.ref = ? ORDER BY b.offset",
        (ref,),
    )
    return [PackBlob._make(row) for row in rows]
