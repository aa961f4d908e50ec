"""Snapshots on a plain sqlite3 connection: the newest one, and recording one at commit."""

from __future__ import annotations

import json
import sqlite3
import time

from deltagrid.backupdb.connection import transaction
from deltagrid.backupdb.sql import LIVE_AT


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
            f"SELECT count(*) FROM versions v WHERE v.kind = 'f' AND {LIVE_AT}",
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
