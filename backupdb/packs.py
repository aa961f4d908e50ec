"""Packs on a plain sqlite3 connection: the few the store check probes."""

from __future__ import annotations

import sqlite3


def probe_sample(conn: sqlite3.Connection, newest: int, others: int) -> list[tuple[str, int]]:
    """(ref, size) of the `newest` packs recorded last and of `others` older ones drawn at
    random: the newest are what a rolled-back or emptied store lost first, the random ones
    cover a store that lost its older objects."""
    rows = conn.execute(
        "SELECT id, ref, size FROM packs ORDER BY id DESC LIMIT ?", (newest,)
    ).fetchall()
    if len(rows) == newest:
        rows += conn.execute(
            "SELECT id, ref, size FROM packs WHERE id < ? ORDER BY random() LIMIT ?",
            (rows[-1][0], others),
        ).fetchall()
    return [(ref, size) for _id, ref, size in rows]
