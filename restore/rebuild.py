"""Rebuilding a file's bytes from the store: its keyframe, then each delta patched in turn.

Every step is checked: each blob against its hash, each intermediate version against the
content hash recorded for it, so damage is named where it is, never passed on as a wrong file.
A content that is one blob recorded with the content's own hash is checked once, as that blob.
Restore takes the faster `rebuild_in_one_pass`, which composes the chain first and checks the
result, and comes back here only when that check fails. The backupdb is read on a plain sqlite3
connection (backupdb/restore_queries.py); a caller holding a SQLAlchemy one passes
`queries.driver(conn)`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from sqlite3 import Connection
from typing import Any, BinaryIO, Protocol

from deltagrid.backupdb import restore_queries, upload_queries
from deltagrid.floor.errors import CorruptData
from deltagrid.floor.rdiff import apply_delta
from deltagrid.restore import compose
from deltagrid.restore.leftovers import tagged
from deltagrid.store.base import Store
from deltagrid.store.pack import decode_blob, digest

IN_MEMORY = 16 << 20  # versions and deltas up to this size are rebuilt in memory
COMPOSE_BUDGET = 64 << 20  # a chain's deltas are composed in memory up to this many bytes


def load_chains(conn: Connection, content_ids: set[int]) -> dict[int, Any]:
    """The content rows of these contents and of every basis below them, in few queries."""
    rows: dict[int, Any] = {}
    wanted = set(content_ids)
    while wanted:
        found = restore_queries.contents_by_ids(conn, wanted)
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
        row = upload_queries.content_by_id(conn, current)
        chain.append(row)
        current = row.basis_id
        if len(chain) > 10_000:
            raise CorruptData(f"content {content_id} has a delta chain that loops")
    chain.reverse()
    return chain


class BlobSource(Protocol):
    """Where rebuilding gets a content's decoded blobs from, in order."""

    def blobs(self, conn: Connection, content_id: int, checked: bool = True) -> Iterator[bytes]:
        """Decoded in order; each checked against its hash unless `checked` is False (for a
        caller that checks a hash over all the bytes they become)."""
        ...

    def sole_blob_hash(self, content_id: int) -> bytes | None:
        """The hash `blobs` checks when the content is exactly one blob, else None."""
        ...


class DirectSource:
    """Straight from the store, one read per run of adjacent blobs: for a few contents."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def sole_blob_hash(self, content_id: int) -> bytes | None:
        return None  # unknown before the query: the content is hashed whole

    def blobs(self, conn: Connection, content_id: int, checked: bool = True) -> Iterator[bytes]:
        pieces = restore_queries.content_pieces(conn, content_id)
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
            yield from self._run(pieces[i:j], checked)
            i = j

    def _run(self, run: list[Any], checked: bool) -> Iterator[bytes]:
        """Adjacent blobs of one pack, in one read."""
        for piece, frame in self._frames(run):
            yield decode_blob(frame, piece.raw_length, piece.hash, checked)

    def _frames(self, run: list[Any]) -> Iterator[tuple[Any, bytes]]:
        """Each blob of `run` with its bytes, read from the store now in one request."""
        start = run[0].offset
        data = self.store.get(run[0].ref, start, run[-1].offset + run[-1].length - start)
        return ((p, data[p.offset - start : p.offset - start + p.length]) for p in run)


def _temporary(workdir: Path) -> tuple[int, str]:
    """A new file for a version: restore makes it beside the file it becomes, under a name that
    a later restore removes if this process is killed (restore/leftovers.py)."""
    return tempfile.mkstemp(dir=workdir, prefix=tagged(".deltagrid-rebuild"))


def _write(source: BlobSource, conn: Connection, content_id: int, out: BinaryIO) -> None:
    for raw in source.blobs(conn, content_id):
        out.write(raw)


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


def _gather(blobs: Iterator[bytes], workdir: Path) -> BinaryIO:
    """A delta's bytes, ready to patch from: in memory, spilled to a temporary file when big."""
    buf: BinaryIO = io.BytesIO()
    in_memory = True
    for raw in blobs:
        if in_memory and buf.tell() + len(raw) > IN_MEMORY:
            spill = tempfile.TemporaryFile(dir=workdir)  # noqa: SIM115 - returned
            spill.write(buf.getvalue())  # type: ignore[attr-defined]
            buf, in_memory = spill, False
        buf.write(raw)
    buf.seek(0)
    return buf


def _reader(basis: bytes | Path) -> BinaryIO:
    return io.BytesIO(basis) if isinstance(basis, bytes) else open(basis, "rb")  # noqa: SIM115


def _check(digest_: bytes, row: Any) -> None:
    if digest_ != row.hash:
        raise CorruptData(f"rebuilt bytes do not match content {row.hash.hex()[:16]}")


def _version(
    conn: Connection, source: BlobSource, row: Any, basis: bytes | Path | None, workdir: Path
) -> bytes | Path:
    """One version of a chain, from its blobs (a keyframe) or by patching `basis`: in memory up
    to IN_MEMORY bytes, else in a new temporary file under `workdir`. Checked against its hash."""
    if row.size <= IN_MEMORY:
        if row.basis_id is None:
            data = b"".join(source.blobs(conn, row.id))
            if source.sole_blob_hash(row.id) == row.hash:
                return data  # its one blob was just checked against this very hash
        else:
            assert basis is not None
            out = io.BytesIO()
            with _gather(source.blobs(conn, row.id), workdir) as delta, _reader(basis) as b:
                apply_delta(b, delta, out, row.size)
            data = out.getvalue()
        _check(digest(data), row)
        return data

    def fill(out: _Hashing) -> None:
        if row.basis_id is None:
            _write(source, conn, row.id, out)  # type: ignore[arg-type]
        else:
            assert basis is not None
            with _gather(source.blobs(conn, row.id), workdir) as delta, _reader(basis) as b:
                apply_delta(b, delta, out, row.size)  # type: ignore[arg-type]

    return _checked_file(workdir, row, fill)


def _checked_file(workdir: Path, row: Any, fill: Callable[[_Hashing], None]) -> Path:
    """A new temporary file under `workdir` that `fill` writes, checked against `row`'s hash as
    it is written; removed again if anything fails."""
    fd, name = _temporary(workdir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw_out:
            hashing = _Hashing(raw_out)
            fill(hashing)
        _check(hashing.hash.digest(), row)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def rebuild(
    conn: Connection,
    source: BlobSource,
    content_id: int,
    workdir: Path,
    chain: list[Any] | None = None,
) -> bytes | Path:
    """A content's bytes: in memory when small, else a new temporary file under `workdir` that
    the caller owns. `chain` (keyframe first) saves the queries when the caller loaded it."""
    chain = chain if chain is not None else chain_of(conn, content_id)
    current: bytes | Path | None = None
    try:
        for row in chain:
            nxt = _version(conn, source, row, current, workdir)
            if isinstance(current, Path):
                current.unlink()
            current = nxt
    except BaseException:
        if isinstance(current, Path):
            current.unlink(missing_ok=True)
        raise
    assert current is not None
    return current


def composes(chain: list[Any]) -> bool:
    """Whether `rebuild_in_one_pass` composes this chain (keyframe first): it has deltas, and
    they fit the budget. Such a chain's deltas are read before its keyframe."""
    return len(chain) > 1 and chain[-1].chain_bytes <= COMPOSE_BUDGET


def rebuild_in_one_pass(
    conn: Connection,
    source: BlobSource,
    content_id: int,
    workdir: Path,
    chain: list[Any] | None = None,
) -> bytes | Path:
    """As `rebuild`, but a chain's deltas are composed and the file written once
    (restore/compose.py), checked by its hash alone: that covers every byte of the keyframe and
    deltas it is made of. When it fails, the chain is patched step by step instead, which names
    the damaged version or, if the composition erred, still restores the file."""
    chain = chain if chain is not None else chain_of(conn, content_id)
    if not composes(chain):
        return rebuild(conn, source, content_id, workdir, chain)
    try:
        segments = compose.keyframe_map(chain[0].size)
        for row in chain[1:]:
            delta = memoryview(b"".join(source.blobs(conn, row.id, checked=False)))
            segments = compose.compose(segments, delta, row.size)
            if compose.size_of(segments) != row.size:
                raise CorruptData(f"delta of content {row.hash.hex()[:16]} yields the wrong size")
        return _emit(conn, source, chain, segments, workdir)
    except CorruptData:
        return rebuild(conn, source, content_id, workdir, chain)


def _emit(
    conn: Connection,
    source: BlobSource,
    chain: list[Any],
    segments: list[compose.Segment],
    workdir: Path,
) -> bytes | Path:
    """The version `segments` map, checked against the chain's last hash: bytes or a new
    temporary file. The keyframe streams from its blobs when the map reads it in order, else it
    is written out to a temporary file first."""
    row = chain[-1]
    with contextlib.ExitStack() as stack:
        blobs = source.blobs(conn, chain[0].id, checked=False)
        read: Callable[[int, int], bytes | memoryview]
        if compose.in_order(segments):
            keyframe = compose.InOrder(blobs)
            stack.callback(keyframe.drain)  # the blobs past the map's last range, read as planned
            read = keyframe.read
        else:
            fd, name = _temporary(workdir)
            stack.callback(os.unlink, name)
            spill = stack.enter_context(os.fdopen(fd, "w+b"))
            for raw in blobs:
                spill.write(raw)  # buffered: whole, where os.write may write part
            spill.flush()
            read = functools.partial(_pread, fd)

        if row.size <= IN_MEMORY:
            parts: list[bytes | memoryview] = []
            compose.write_version(segments, read, parts.append)
            data = b"".join(parts)
            _check(digest(data), row)
            return data
        return _checked_file(
            workdir, row, lambda out: compose.write_version(segments, read, out.write)
        )


def _pread(fd: int, offset: int, n: int) -> bytes:
    return os.pread(fd, n, offset)


def materialize(
    conn: Connection,
    source: BlobSource,
    content_id: int,
    workdir: Path,
    chain: list[Any] | None = None,
) -> Path:
    """Rebuild a content into a new temporary file under `workdir`; the caller owns it."""
    rebuilt = rebuild(conn, source, content_id, workdir, chain)
    if isinstance(rebuilt, Path):
        return rebuilt
    fd, name = _temporary(workdir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(rebuilt)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)
