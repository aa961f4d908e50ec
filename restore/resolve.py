"""Choosing a snapshot: by id, by `--at TIME`, or the latest published one."""

from __future__ import annotations

import re
import sqlite3
import time
from datetime import datetime

from deltagrid.backupdb import restore_queries
from deltagrid.floor.errors import DeltagridError, UsageError
from deltagrid.floor.units import path_text

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float | None = None) -> int:
    """`3d`, `12h`, ... before now, or an ISO date/time (local time unless it has an offset).

    An ISO time without a fraction names a whole second, and covers all of it: the time
    `snapshots` prints for a snapshot (to the second) selects that snapshot.
    """
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.strip())
    if m:
        return int((now - int(m.group(1)) * _UNIT[m.group(2)]) * 1e9)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"cannot read time {text!r} (use ISO like 2026-11-20T02:30 or 3d)"
        ) from None
    ns = int(when.replace(microsecond=0).timestamp()) * 1_000_000_000 + when.microsecond * 1000
    if "." not in text and "," not in text:
        ns += 999_999_999
    return ns


def resolve(
    conn: sqlite3.Connection, published: int, snapshot_id: int | None = None, at: str | None = None
) -> restore_queries.Snapshot:
    """The snapshot row asked for; only snapshots the root pointer has published count."""
    if published == 0:
        raise DeltagridError("the repository has no snapshot yet")
    if snapshot_id is not None:
        row = restore_queries.snapshot(conn, snapshot_id) if snapshot_id <= published else None
        if row is None:
            raise UsageError(f"no snapshot {snapshot_id} (see 'deltagrid snapshots')")
        return row
    if at is not None:
        row = restore_queries.snapshot_at(conn, parse_time(at), published)
        if row is None:
            raise DeltagridError(f"no snapshot was committed at or before {at}")
        return row
    row = restore_queries.snapshot(conn, published)
    if row is None:
        raise DeltagridError(
            f"the store names snapshot {published}, which the local backupdb lacks; "
            "run 'deltagrid attach'"
        )
    return row


def require_paths(conn: sqlite3.Connection, snapshot_id: int, paths: list[bytes]) -> None:
    """Refuse a path the snapshot does not hold (a typo would otherwise restore "0 files")."""
    for path in paths:
        if next(restore_queries.versions_at(conn, snapshot_id, [path]), None) is None:
            raise DeltagridError(f"snapshot {snapshot_id} has nothing at {path_text(path)}")
