"""Helpers for SQL on a plain sqlite3 connection: values in chunks, many rows a statement, ids
given rather than returned, path prefixes as ranges, and the liveness rule of a version."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

_CHUNK = 900  # values a statement takes at once, well under SQLite's limit on parameters
_ROWS = 500  # rows an insert_many statement takes at once, at most


def chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    """`values`, without duplicates and sorted, a statement's worth at a time."""
    ordered = sorted(set(values))
    for i in range(0, len(ordered), _CHUNK):
        yield ordered[i : i + _CHUNK]


def rows_in(conn: sqlite3.Connection, query: str, values: Iterable[Any]) -> Iterator[Any]:
    """The rows of `query` for each of `values` (no duplicates), which its `IN ({})` takes a
    chunk at a time. Each chunk's rows are fetched whole: a `yield from` the cursor would close
    it when the generator is closed, and one left suspended by a signal's exception is closed
    when that exception's traceback goes, after the connection: an error printed on exit."""
    for chunk in chunks(values):
        yield from conn.execute(query.format(", ".join("?" * len(chunk))), chunk).fetchall()


# A hash's index holds its first bytes only (schema.py): a third of the pages.
_KEY_BYTES = 8
HASH_KEY = f"substr(hash, 1, {_KEY_BYTES})"


def rows_by_hash(
    conn: sqlite3.Connection, query: str, digests: Iterable[bytes], at: int = 0
) -> Iterator[Any]:
    """The rows of `query` whose hash (column `at`) is one of `digests`: its `HASH_KEY IN ({})`
    asks the index for their first bytes, and the rows of a hash that merely shares them are
    left out here."""
    wanted = set(digests)
    for row in rows_in(conn, query, {digest[:_KEY_BYTES] for digest in wanted}):
        if row[at] in wanted:
            yield row


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
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    sort_on: int | None = None,
) -> list[int]:
    """insert_many with ids: each row gets the id SQLite would give it (the largest plus one, in
    order), so no row needs a statement of its own for its lastrowid. Inside a write
    transaction only. Their ids, in order.

    With `sort_on` (a column's place in `columns`), the numbered rows are inserted in that
    column's order: an index on a random key (a hash) is then walked once, page after page,
    instead of at a random page a row."""
    first = int(conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0])
    numbered = [(first + n, *row) for n, row in enumerate(rows)]
    if sort_on is not None:
        numbered.sort(key=itemgetter(sort_on + 1))
    insert_many(conn, table, ("id", *columns), numbered)
    return list(range(first, first + len(rows)))


def bounds(prefix: bytes) -> tuple[bytes, bytes]:
    """Paths strictly below `prefix` are those with lo < path < hi."""
    if prefix == b"/":
        return b"/", b"0"
    return prefix + b"/", prefix + b"0"


# The liveness rule, in SQL on the version `v`. A version is live from snapshot valid_from on,
# until the snapshot its version_ends row names (valid_until), if it has one.
# Live now: no end recorded yet.
LIVE = "NOT EXISTS (SELECT 1 FROM version_ends e WHERE e.version_id = v.id)"
# Live in the snapshot bound to :s.
LIVE_AT = (
    "v.valid_from <= :s AND NOT EXISTS "
    "(SELECT 1 FROM version_ends e WHERE e.version_id = v.id AND e.valid_until <= :s)"
)
