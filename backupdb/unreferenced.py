"""Store objects waiting to be deleted: recorded by prune and compact in the catalog transaction
that stops naming them, stamped once a root publishing that catalog is in place, deleted by a
later run once `delete_after` has passed since the stamp. Plain sqlite3, in the caller's
transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from deltagrid.backupdb.sql import chunks


def record(conn: sqlite3.Connection, refs: Iterable[str]) -> None:
    """Add `refs`, unstamped; a ref already waiting keeps its stamp."""
    conn.executemany(
        "INSERT OR IGNORE INTO unreferenced (ref) VALUES (?)", ((ref,) for ref in sorted(refs))
    )


def stamp(conn: sqlite3.Connection, published_ns: int) -> None:
    """Start the grace period of the refs recorded before the root that now stands."""
    conn.execute("UPDATE unreferenced SET since_ns = ? WHERE since_ns IS NULL", (published_ns,))


def due(conn: sqlite3.Connection, cutoff_ns: int) -> list[str]:
    """The refs unreferenced since `cutoff_ns` or earlier."""
    rows = conn.execute(
        "SELECT ref FROM unreferenced WHERE since_ns <= ? ORDER BY ref", (cutoff_ns,)
    )
    return [row[0] for row in rows]


def waiting(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT ref FROM unreferenced")}


def drop(conn: sqlite3.Connection, refs: Iterable[str]) -> None:
    """Forget `refs`: deleted from the store, or named by the catalog or the root again."""
    for chunk in chunks(refs):
        marks = ", ".join("?" * len(chunk))
        conn.execute(f"DELETE FROM unreferenced WHERE ref IN ({marks})", chunk)
