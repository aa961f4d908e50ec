"""Rebuilding a file's bytes from the store: its keyframe, then each delta patched in turn.

Every step is checked: each blob against its hash, each intermediate version against the
content hash recorded for it, so damage is named where it is, never passed on as a wrong file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pyrsync
from sqlalchemy import Connection

from backupdb import queries
from deltagrid.errors import CorruptData
from store.base import Store
from store.pack import decode_blob

_CHUNK = 1 << 20


def load_chains(conn: Connection, content_ids: set[int]) -> dict[int, Any]:
    """The content rows of these contents and of every basis below them, in few queries."""
    rows: dict[int, Any] = {}
    wanted = set(content_ids)
    while wanted:
        found = queries.contents_by_ids(conn, wanted)
        rows.update(found)
        wanted = {r.basis_id for r in found.values() if r.basis_id is not None} - rows.keys()
    return rows


def chain_ids(rows: dict[int, Any], content_id: int) -> list[int]:
    """The ids from the keyframe up to `content_id`, from rows `load_chains` loaded."""
    chain: list[int] = []
    current: int | None = content_id
    while current is not None:
        if current not in rows or len(chain) > 10_000:
            raise CorruptData(f"content {content_id} has a broken delta chain")
        chain.append(current)
        current = rows[current].basis_id
    chain.reverse()
    return chain


def chain_of(conn: Connection, content_id: int) -> list[Any]:
    """The contents from the keyframe up to `content_id`, keyframe first."""
    chain = []
    current: int | None = content_id
    while current is not None:
        row = queries.content_by_id(conn, current)
        chain.append(row)
        current = row.basis_id
        if len(chain) > 10_000:
            raise CorruptData(f"content {content_id} has a delta chain that loops")
    chain.reverse()
    return chain


class BlobSource(Protocol):
    """Where rebuilding gets a content's decoded blobs from, in order."""

    def blobs(self, conn: Connection, content_id: int) -> Iterator[bytes]: ...


class DirectSource:
    """Straight from the store, one read per run of adjacent blobs: for a few contents."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def blobs(self, conn: Connection, content_id: int) -> Iterator[bytes]:
        pieces = queries.content_pieces(conn, content_id)
        i = 0
        while i < len(pieces):
            j = i + 1
            while (
                j < len(pieces)
                and pieces[j].ref == pieces[i].ref
                and pieces[j].offset == pieces[j - 1].offset + pieces[j - 1].length
                and pieces[j].offset + pieces[j].length - pieces[i].offset <= 64 << 20
            ):
                j += 1
            start = pieces[i].offset
            end = pieces[j - 1].offset + pieces[j - 1].length
            data = self.store.get(pieces[i].ref, start, end - start)
            for piece in pieces[i:j]:
                frame = data[piece.offset - start : piece.offset - start + piece.length]
                yield decode_blob(frame, piece.raw_length, piece.hash)
            i = j


def _write(source: BlobSource, conn: Connection, content_id: int, out: BinaryIO) -> None:
    for raw in source.blobs(conn, content_id):
        out.write(raw)


def hash_file(path: Path) -> bytes:
    """BLAKE2b-256 of a file's bytes, read in chunks."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


class _Hashing(io.RawIOBase):
    """A file wrapper that hashes what is written through it (librsync writes patches here)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.hash = hashlib.blake2b(digest_size=32)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hash.update(data)
        return self.f.write(data)


def materialize(
    conn: Connection,
    source: BlobSource,
    content_id: int,
    workdir: Path,
    chain: list[Any] | None = None,
) -> Path:
    """Rebuild a content into a new temporary file under `workdir`; the caller owns it.

    `chain` (keyframe first) saves the queries when the caller loaded it already. Each step is
    hashed as it is written and checked against the hash recorded for it.
    """
    chain = chain if chain is not None else chain_of(conn, content_id)
    current: Path | None = None
    nxt: Path | None = None
    try:
        for row in chain:
            fd, name = tempfile.mkstemp(dir=workdir, prefix="rebuild-")
            nxt = Path(name)
            with os.fdopen(fd, "wb") as raw_out:
                out = _Hashing(raw_out)
                if row.basis_id is None:
                    _write(source, conn, row.id, out)  # type: ignore[arg-type]
                else:
                    assert current is not None
                    with tempfile.TemporaryFile(dir=workdir) as delta:
                        _write(source, conn, row.id, delta)
                        delta.seek(0)
                        with open(current, "rb") as basis:
                            try:
                                pyrsync.patch(basis, delta, out)
                            except Exception as exc:  # librsync reports a bad delta this way
                                raise CorruptData(f"delta does not apply: {exc}") from None
            if current is not None:
                current.unlink()
            current = nxt
            if out.hash.digest() != row.hash:
                raise CorruptData(f"rebuilt bytes do not match content {row.hash.hex()[:16]}")
    except BaseException:
        for leftover in (current, nxt):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        raise
    assert current is not None
    return current
