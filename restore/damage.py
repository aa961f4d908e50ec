"""Naming the damaged blobs behind a failed rebuild, and recording them in the backupdb.

A rebuild that fails says which file it could not make, not which blob is at fault: a blob may
belong to a delta several steps down the chain, and blobs are shared between files. So every
blob of the failed contents' chains is read straight from the store and checked on its own; a
pack that is missing, or cut short, names every blob it no longer holds.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from deltagrid.backupdb import connection, damage, restore_queries
from deltagrid.backupdb.damage import Damage
from deltagrid.floor.errors import CorruptData, DeltagridError, ObjectMissing
from deltagrid.restore.rebuild import DirectSource, load_chains
from deltagrid.store.base import Store
from deltagrid.store.pack import decode_blob

RECORD_WAIT_MS = 2000  # a reader records its findings only if the writer lets it that soon


def pack_damage(conn: sqlite3.Connection, ref: str, size: int | None) -> list[Damage]:
    """The blobs of pack `ref` that a store holding `size` bytes of it (None: nothing) lost."""
    return [
        Damage(b.id, b.hash, ref, damage.MISSING if size is None else damage.TRUNCATED)
        for b in damage.blobs_of_pack(conn, ref)
        if size is None or b.offset + b.length > size
    ]


def locate(conn: sqlite3.Connection, store: Store, content_ids: Iterable[int]) -> list[Damage]:
    """The damaged blobs of these contents and of every content below them on their chains. A
    store that cannot be asked (unreachable, a timeout) names nothing: only what it says is
    gone, or gives wrong twice, is damage."""
    chains = load_chains(conn, set(content_ids))
    by_ref: dict[str, dict[int, restore_queries.BlobPiece]] = {}
    for of_content in restore_queries.pieces_of_contents(conn, chains).values():
        for piece in of_content:
            by_ref.setdefault(piece.ref, {})[piece.id] = piece
    found: list[Damage] = []
    for ref, in_pack in by_ref.items():
        try:
            size: int | None = store.size(ref)
        except ObjectMissing:
            size = None
        except DeltagridError:
            continue
        for p in in_pack.values():
            how = _check_blob(store, p, size)
            if how is not None:
                found.append(Damage(p.id, p.hash, ref, how))
    return found


def _check_blob(store: Store, p: restore_queries.BlobPiece, size: int | None) -> str | None:
    """How a blob is damaged, if it is: read twice before calling wrong bytes damage."""
    if size is None:
        return damage.MISSING
    if p.offset + p.length > size:
        return damage.TRUNCATED
    for _attempt in range(2):
        try:
            decode_blob(store.get(p.ref, p.offset, p.length), p.raw_length, p.hash)
            return None
        except ObjectMissing:
            return damage.MISSING
        except CorruptData:
            continue
        except DeltagridError:
            return None
    return damage.MISMATCH


def record(db_path: Path, found: list[Damage]) -> tuple[int, str | None]:
    """Record findings from a reader (restore, verify), which holds no lock on the home: one
    short write transaction of its own, waiting at most RECORD_WAIT_MS for a writer (SQLite's
    lock orders the two; a finding only adds a row). A read-only or busy backupdb is not an
    error: the findings are reported, and the next verify records them. Returns how many were
    new, and why none could be recorded."""
    if not found:
        return 0, None
    try:
        with (
            closing(connection.connect(db_path, busy_ms=RECORD_WAIT_MS)) as conn,
            connection.transaction(conn),
        ):
            return damage.record(conn, found, time.time_ns()), None
    except sqlite3.Error as exc:
        return 0, f"could not record the damage in {db_path} ({exc})"


class NamingSource(DirectSource):
    """Straight from the store, as DirectSource, noting which blob a rebuild found damaged: a
    check that names the blob at fault with no read of its own (verify reads each blob once).
    Adjacent blobs are read in one request, as DirectSource does: a blob whose bytes are wrong
    is named from that read; only a run the store cannot give whole (its pack cut short) is
    read again blob by blob, to name the first one it lost."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.found: list[Damage] = []

    def _run(self, run: list[Any], checked: bool) -> Iterator[bytes]:
        try:
            frames = self._frames(run)
        except (ObjectMissing, CorruptData) as exc:
            if isinstance(exc, ObjectMissing) or len(run) == 1:
                self._name(run[0], exc)
                raise
            for piece in run:
                yield from self._run([piece], checked)
            return
        for piece, frame in frames:
            try:
                raw = decode_blob(frame, piece.raw_length, piece.hash, checked)
            except CorruptData as exc:
                self._name(piece, exc)
                raise
            yield raw

    def _name(self, p: restore_queries.BlobPiece, exc: Exception) -> None:
        how = damage.MISSING if isinstance(exc, ObjectMissing) else damage.MISMATCH
        self.found.append(Damage(p.id, p.hash, p.ref, how))
