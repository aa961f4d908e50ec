"""Packs on a plain sqlite3 connection: the few the store check probes."""

from __future__ import annotations

import sqlite3

_UNHARMED = (
    "NOT EXISTS (SELECT 1 FROM blobs b JOIN damaged_blobs d ON d.blob_id = b.id "
    "WHERE b.pack_id = p.id)"
)


def probe_sample(conn: sqlite3.Connection, newest: int, others: int) -> list[tuple[str, int]]:
    """(ref, size) of the `newest` packs recorded last and of `others` older ones drawn at
    random: the newest are what a rolled-back or emptied store lost first, the random ones
    cover a store that lost its older objects. Packs already known damaged (damaged_blobs:
    verify or repair found them, repair reported what could not be stored again) are not
    probed: the loss to find is the one nobody has seen yet."""
    rows = conn.execute(
        f"SELECT id, ref, size FROM packs p WHERE {_UNHARMED} ORDER BY id DESC LIMIT ?", (newest,)
    ).fetchall()
    if len(rows) == newest:
        rows += conn.execute(
            f"SELECT id, ref, size FROM packs p WHERE id < ? AND {_UNHARMED} "
            "ORDER BY random() LIMIT ?",
            (rows[-1][0], others),
        ).fetchall()
    return [(ref, size) for _id, ref, size in rows]
