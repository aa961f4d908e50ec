"""The queries of a scan, in SQL on a plain sqlite3 connection: the live versions the scanner
compares with the file system, and the scan and queue rows it writes.

A night never imports SQLAlchemy (connection.py says why). Code that holds a SQLAlchemy
connection may run these on the one under it (queries.driver), in the same transaction (reads
only: the writers here begin and commit their own).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from deltagrid.backupdb.connection import transaction
from deltagrid.backupdb.entries import KIND_LINK, TYPE_BITS, with_times
from deltagrid.backupdb.sql import LIVE, bounds, insert_many, rows_in


class LiveEntry(NamedTuple):
    """A live version as the scanner compares it in full and the uploader ends or keeps it."""

    path: bytes
    id: int
    path_id: int
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


def _live(row: tuple[Any, ...]) -> LiveEntry:
    entry: LiveEntry = with_times(LiveEntry._make(row))
    return entry


_ENTRY_COLUMNS = ", ".join(f"v.{name}" for name in LiveEntry._fields[1:])
_ENTRIES = f"SELECT p.path, {_ENTRY_COLUMNS} FROM versions v JOIN paths p ON p.id = v.path_id"

# Live children come as short plain tuples: (path, st_mode, uid, gid, size, mtime_ns, ctime_ns,
# inode). An unchanged entry has exactly `row[STAT_KEY] == (st_mode, st_uid, st_gid, st_size,
# st_mtime_ns, st_ctime_ns, st_ino)` of its lstat; st_mode is the mode with its file-type bits,
# or -1 for a symlink (its target must be read) and for a version flagged `recheck`, so those
# never match and the scanner fetches the whole version by its path. (A device node's number
# cannot change without a new inode: mknod makes one.)
# A time past 64-bit ns comes as a BLOB (entries.time_to_db): it never matches either.
STAT_KEY = slice(1, 8)
_QUICK = {kind: bits for kind, bits in TYPE_BITS.items() if kind != KIND_LINK}
_LIVE_CHILDREN = f"""
SELECT p.path,
       CASE WHEN v.recheck THEN -1
            {" ".join(f"WHEN v.kind = '{k}' THEN v.mode | {b}" for k, b in _QUICK.items())}
            ELSE -1 END,
       v.uid, v.gid, v.size, v.mtime_ns, v.ctime_ns, v.inode
FROM paths d JOIN paths p ON p.parent_id = d.id JOIN versions v ON v.path_id = p.id
WHERE d.path = ? AND {LIVE}
"""


def live_children(conn: sqlite3.Connection, directory: bytes) -> dict[bytes, tuple[Any, ...]]:
    """Live versions of the direct children of a directory, by their path, as short tuples
    (above). The scanner's hot path: one query a directory, with only the columns an unchanged
    entry is compared on (each column more costs 0.08 s a million rows): the few that differ
    are fetched whole by path (`live_entry_at`)."""
    return {row[0]: row for row in conn.execute(_LIVE_CHILDREN, (directory,))}


def live_entry_at(conn: sqlite3.Connection, path: bytes) -> LiveEntry | None:
    """The live version of `path` (a root the scan starts from, or an entry that is not as
    `live_children` has it), if any."""
    row = conn.execute(f"{_ENTRIES} WHERE p.path = ? AND {LIVE}", (path,)).fetchone()
    return None if row is None else _live(row)


def live_versions(conn: sqlite3.Connection, paths: Iterable[bytes]) -> dict[bytes, LiveEntry]:
    """The live versions of many paths, by path: the uploader's batch of queue rows at once."""
    query = f"{_ENTRIES} WHERE p.path IN ({{}}) AND {LIVE}"
    return {row[0]: _live(row) for row in rows_in(conn, query, paths)}


def live_entries_below(conn: sqlite3.Connection, path: bytes) -> list[LiveEntry]:
    """Live versions strictly below `path` (a directory that is going away), in path order."""
    query = f"{_ENTRIES} WHERE p.path > ? AND p.path < ? AND {LIVE} ORDER BY p.path"
    return [_live(row) for row in conn.execute(query, bounds(path))]


# --- scans and the queue -------------------------------------------------------------------------


def begin_scan(conn: sqlite3.Connection, roots: list[str]) -> int:
    """Start a scan (its own transaction): abandon the rows of any scan that never finished."""
    unfinished = "SELECT id FROM scans WHERE finished_ns IS NULL"
    with transaction(conn):
        conn.execute(f"DELETE FROM queue WHERE scan_id IN ({unfinished}) AND done = 0")
        conn.execute("UPDATE scans SET finished_ns = 0 WHERE finished_ns IS NULL")
        cur = conn.execute(
            "INSERT INTO scans (started_ns, roots, errors) VALUES (?, ?, 0)",
            (time.time_ns(), json.dumps(roots)),
        )
    assert cur.lastrowid is not None
    return cur.lastrowid


# A queue row as `enqueue` takes it (done is 0).
QUEUE_COLUMNS = (
    "scan_id",
    "path",
    "reason",
    "kind",
    "size",
    "mtime_ns",
    "inode",
    "dev",
    "prev_version_id",
)


def enqueue(
    conn: sqlite3.Connection,
    scan_id: int,
    rows: Sequence[Sequence[Any]],
    errors: Sequence[tuple[bytes, str]],
) -> None:
    """Add a batch of queue rows (tuples of QUEUE_COLUMNS) and scan errors (one transaction),
    hundreds to a statement (insert_many says why)."""
    with transaction(conn):
        insert_many(conn, "queue", (*QUEUE_COLUMNS, "done"), [(*row, 0) for row in rows])
        insert_many(
            conn,
            "scan_errors",
            ("scan_id", "path", "message"),
            [(scan_id, path, message) for path, message in errors],
        )


def finish_scan(
    conn: sqlite3.Connection,
    scan_id: int,
    roots: Sequence[bytes],
    counts: dict[str, int],
    errors: int,
) -> None:
    """Complete a scan (one transaction): it supersedes the pending rows older scans left below
    its roots."""
    with transaction(conn):
        for root in roots:
            conn.execute(
                "DELETE FROM queue WHERE scan_id != ? AND done = 0 "
                "AND (path = ? OR (path > ? AND path < ?))",
                (scan_id, root, *bounds(root)),
            )
        conn.execute(
            "UPDATE scans SET finished_ns = ?, counts = ?, errors = ? WHERE id = ?",
            (time.time_ns(), json.dumps(counts), errors, scan_id),
        )


def scan_roots(conn: sqlite3.Connection, scan_id: int) -> set[bytes]:
    """The roots a scan walked."""
    row = conn.execute("SELECT roots FROM scans WHERE id = ?", (scan_id,)).fetchone()
    return set() if row is None else {os.fsencode(root) for root in json.loads(row[0])}


def interrupted_scan(conn: sqlite3.Connection) -> bool:
    """Whether the last scan never finished."""
    row = conn.execute("SELECT finished_ns FROM scans ORDER BY id DESC LIMIT 1").fetchone()
    return row is not None and row[0] is None


_LIVE_UNDER = f"""
SELECT EXISTS (SELECT 1 FROM paths p JOIN versions v ON v.path_id = p.id
WHERE (p.path = ? OR (p.path > ? AND p.path < ?)) AND {LIVE})
"""


def only_new(conn: sqlite3.Connection, roots: Sequence[bytes]) -> bool:
    """Whether a scan of `roots` can find only new entries, to upload in the order it finds them:
    no queue row waits for an upload, and no live version lies at or below a root, so none can
    be changed, deleted or moved (a new file that was one needs the scan's deletions first)."""
    if conn.execute("SELECT EXISTS (SELECT 1 FROM queue WHERE done = 0)").fetchone()[0]:
        return False
    return not any(conn.execute(_LIVE_UNDER, (r, *bounds(r))).fetchone()[0] for r in roots)


def pending_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(rows, bytes) still to upload."""
    rows, size = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM queue WHERE done = 0"
    ).fetchone()
    return rows, size


def pending_by_reason(conn: sqlite3.Connection) -> dict[str, int]:
    """Queue rows still to upload, by why they were queued (new, changed, meta, deleted)."""
    rows = conn.execute("SELECT reason, count(*) FROM queue WHERE done = 0 GROUP BY reason")
    return dict(rows.fetchall())
