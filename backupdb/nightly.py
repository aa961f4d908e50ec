"""The queries of a nightly run's scan and commit, in SQL on a plain sqlite3 connection.

A night never imports SQLAlchemy (connection.py says why): the scan and the commit run these,
the upload these and uploading.py's. Code that holds a SQLAlchemy connection may run them on the
one under it (queries.driver), in the same transaction (reads only: the writers here begin and
commit their own). Everything else is in queries.py.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from backupdb.connection import transaction

_CHUNK = 900  # values a statement takes at once, well under SQLite's limit on parameters
_ROWS = 500  # rows an insert_many statement takes at once, at most


def chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    """`values`, without duplicates and sorted, a statement's worth at a time."""
    ordered = sorted(set(values))
    for i in range(0, len(ordered), _CHUNK):
        yield ordered[i : i + _CHUNK]


def rows_in(conn: sqlite3.Connection, query: str, values: Iterable[Any]) -> Iterator[Any]:
    """The rows of `query` for each of `values` (no duplicates), which its `IN ({})` takes a
    chunk at a time."""
    for chunk in chunks(values):
        yield from conn.execute(query.format(", ".join("?" * len(chunk))), chunk)


def insert_many(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert `rows` hundreds to a statement. executemany steps SQLite once a row, and every step
    hands the GIL over and waits to get it back: with the uploader's reader threads busy, that
    doubled the time of recording a pack."""
    width = len(columns)
    per = max(1, min(_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    one = f"({', '.join('?' * width)})"
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        conn.execute(head + ", ".join([one] * len(chunk)), [v for row in chunk for v in row])


def insert_numbered(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> list[int]:
    """insert_many with ids: each row gets the id SQLite would give it (the largest plus one, in
    order), so no row needs a statement of its own for its lastrowid. Inside a write
    transaction only. Their ids, in order."""
    first = int(conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0])
    insert_many(conn, table, ("id", *columns), [(first + n, *row) for n, row in enumerate(rows)])
    return list(range(first, first + len(rows)))


def bounds(prefix: bytes) -> tuple[bytes, bytes]:
    """Paths strictly below `prefix` are those with lo < path < hi."""
    if prefix == b"/":
        return b"/", b"0"
    return prefix + b"/", prefix + b"0"


# --- live versions, as the scanner compares them -------------------------------------------------


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


_ENTRY_COLUMNS = ", ".join(f"v.{name}" for name in LiveEntry._fields[1:])
# SQL condition: the version `v` is live now (no end recorded yet).
LIVE = "NOT EXISTS (SELECT 1 FROM version_ends e WHERE e.version_id = v.id)"
_ENTRIES = f"SELECT p.path, {_ENTRY_COLUMNS} FROM versions v JOIN paths p ON p.id = v.path_id"

# Live children come as short plain tuples: (path, version id, path id, st_mode, uid, gid,
# size, mtime_ns, ctime_ns, inode). An unchanged file or directory has exactly `row[STAT_KEY] ==
# (st_mode, st_uid, st_gid, st_size, st_mtime_ns, st_ctime_ns, st_ino)` of its lstat; st_mode
# is the mode with its file-type bits, or -1 for a symlink (its target must be read) and for a
# version flagged `recheck`, so those never match and the scanner fetches the whole version.
STAT_KEY = slice(3, 10)
_LIVE_CHILDREN = f"""
SELECT p.path, v.id, v.path_id,
       CASE WHEN v.recheck THEN -1
            WHEN v.kind = 'f' THEN v.mode | {stat.S_IFREG}
            WHEN v.kind = 'd' THEN v.mode | {stat.S_IFDIR}
            ELSE -1 END,
       v.uid, v.gid, v.size, v.mtime_ns, v.ctime_ns, v.inode
FROM paths p JOIN versions v ON v.path_id = p.id
WHERE p.parent_id = ? AND {LIVE}
"""


def live_children(conn: sqlite3.Connection, parent_id: int) -> dict[bytes, tuple[Any, ...]]:
    """Live versions of the direct children of a directory, by their path, as short tuples
    (above). The scanner's hot path: one query a directory, with only the columns an unchanged
    entry is compared on."""
    return {row[0]: row for row in conn.execute(_LIVE_CHILDREN, (parent_id,))}


def live_entry(conn: sqlite3.Connection, version_id: int) -> LiveEntry:
    """The whole of a version `live_children` gave, for the full comparison."""
    return LiveEntry._make(conn.execute(f"{_ENTRIES} WHERE v.id = ?", (version_id,)).fetchone())


def live_entry_at(conn: sqlite3.Connection, path: bytes) -> LiveEntry | None:
    """The live version of `path` (a root the scan starts from), if any."""
    row = conn.execute(f"{_ENTRIES} WHERE p.path = ? AND {LIVE}", (path,)).fetchone()
    return None if row is None else LiveEntry._make(row)


def live_versions(conn: sqlite3.Connection, paths: Iterable[bytes]) -> dict[bytes, LiveEntry]:
    """The live versions of many paths, by path: the uploader's batch of queue rows at once."""
    query = f"{_ENTRIES} WHERE p.path IN ({{}}) AND {LIVE}"
    return {row[0]: LiveEntry._make(row) for row in rows_in(conn, query, paths)}


def live_entries_below(conn: sqlite3.Connection, path: bytes) -> list[LiveEntry]:
    """Live versions strictly below `path` (a directory that is going away), in path order."""
    query = f"{_ENTRIES} WHERE p.path > ? AND p.path < ? AND {LIVE} ORDER BY p.path"
    return [LiveEntry._make(row) for row in conn.execute(query, bounds(path))]


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


_ENQUEUE = """
INSERT INTO queue (scan_id, path, reason, kind, size, mtime_ns, inode, dev, prev_version_id, done)
VALUES (:scan_id, :path, :reason, :kind, :size, :mtime_ns, :inode, :dev, :prev_version_id, 0)
"""


def enqueue(
    conn: sqlite3.Connection,
    scan_id: int,
    rows: list[dict[str, Any]],
    errors: Sequence[tuple[bytes, str]],
) -> None:
    """Add a batch of queue rows and scan errors (one transaction)."""
    with transaction(conn):
        conn.executemany(_ENQUEUE, rows)
        conn.executemany(
            "INSERT INTO scan_errors (scan_id, path, message) VALUES (?, ?, ?)",
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


def interrupted_scan(conn: sqlite3.Connection) -> bool:
    """Whether the last scan never finished."""
    row = conn.execute("SELECT finished_ns FROM scans ORDER BY id DESC LIMIT 1").fetchone()
    return row is not None and row[0] is None


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


# --- snapshots -----------------------------------------------------------------------------------


def last_snapshot_id(conn: sqlite3.Connection) -> int:
    """The newest snapshot recorded locally, 0 when there is none."""
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM snapshots").fetchone()[0])


_NOT_FORGOTTEN = "NOT EXISTS (SELECT 1 FROM forgotten f WHERE f.snapshot_id = s.id)"


def snapshot_figures(conn: sqlite3.Connection, snapshot_id: int) -> tuple[int, int] | None:
    """(committed_ns, files) of a snapshot that was not forgotten."""
    row = conn.execute(
        f"SELECT committed_ns, files FROM snapshots s WHERE id = ? AND {_NOT_FORGOTTEN}",
        (snapshot_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def commit_snapshot(
    conn: sqlite3.Connection,
    snapshot_id: int,
    started_ns: int,
    hostname: str,
    stats: dict[str, int],
) -> None:
    """Record snapshot `snapshot_id` and forget the finished queue rows (one transaction).

    Its sources are the roots of the scans finished since the previous snapshot; its figures
    the regular files live in it and the pack bytes its upload put.
    """
    with transaction(conn):
        previous = snapshot_figures(conn, snapshot_id - 1)
        sources: list[str] = []
        for (raw,) in conn.execute(
            "SELECT roots FROM scans WHERE finished_ns >= ? ORDER BY id",
            (previous[0] if previous else 1,),
        ):
            for root in json.loads(raw):
                if root not in sources:
                    sources.append(root)
        (files,) = conn.execute(
            "SELECT count(*) FROM versions v WHERE v.kind = 'f' AND v.valid_from <= :s "
            "AND NOT EXISTS (SELECT 1 FROM version_ends e "
            "WHERE e.version_id = v.id AND e.valid_until <= :s)",
            {"s": snapshot_id},
        ).fetchone()
        (added,) = conn.execute(
            "SELECT coalesce(sum(size), 0) FROM packs WHERE snapshot_id = ?", (snapshot_id,)
        ).fetchone()
        conn.execute(
            "INSERT INTO snapshots (id, started_ns, committed_ns, hostname, sources, files, "
            "bytes_added, stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                snapshot_id,
                started_ns,
                time.time_ns(),
                hostname,
                json.dumps(sources),
                files,
                added,
                json.dumps(stats),
            ),
        )
        conn.execute("DELETE FROM queue WHERE done = 1")


# --- the history of runs -------------------------------------------------------------------------


def add_run(conn: sqlite3.Connection, values: dict[str, Any]) -> None:
    """Record one finished writer run (a row of the local `runs` table), with the pack bytes
    the catalog references after it (the store's size, less the small backupdb objects)."""
    with transaction(conn):
        (values["store_bytes"],) = conn.execute(
            "SELECT coalesce(sum(size), 0) FROM packs"
        ).fetchone()
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        conn.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", values)
