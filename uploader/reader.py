"""Reading a source file so that its hash, signature and delta describe the same bytes.

Small files are read into memory once: every later step works on those bytes. Large files are
read again for the delta or the blobs, each pass re-hashed, unless the first pass did that work
too (uploader/bigfiles.py: cut into blobs, or its delta made, as read); if the file changed
under us (a different hash, or fstat moved), the work restarts from a private temporary copy.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from deltagrid.backupdb.entries import Meta
from deltagrid.floor import fs, rdiff, sparse, xattrs
from deltagrid.uploader.holes import read_runs

_CHUNK = 1 << 20
# A file is read at most this far past the size it had when opened: one that keeps growing (a
# busy log, a device-like file claiming a size it does not have) is caught by the check after
# the read, and flagged or copied as it stood, instead of read forever.
GROWTH = 1 << 20
# Tiny files: the read-ahead's main thread reads them itself (readahead.py), and their first
# read says whether it waited for the disk.
TINY = 4096


class ChangedWhileReading(Exception):
    """A later pass over a file saw other bytes than the first."""


class SourceError(Exception):
    """Reading the source failed; kept apart from OSErrors of the spool or the store."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


def _read(f: BinaryIO, n: int) -> bytes:
    try:
        return f.read(n)
    except OSError as exc:
        raise SourceError(exc) from exc


def _read_fd(fd: int, n: int) -> bytes:
    try:
        return os.read(fd, n)
    except OSError as exc:
        raise SourceError(exc) from exc


def _read_first(fd: int, size: int) -> tuple[bytes, bool]:
    """The first read of a file held in memory, one byte past its `size`, and for a tiny one
    whether it waited for the disk (fs.read_cached: the read-ahead then asks for the next ones
    ahead)."""
    if size > TINY:
        return _read_fd(fd, min(size + 1, _CHUNK)), False
    try:
        return fs.read_cached(fd, size + 1)
    except OSError as exc:
        raise SourceError(exc) from exc


class BackgroundHash:
    """BLAKE2b fed a run at a time to a one-thread executor, in order: a big file's hash is
    computed beside its librsync signature instead of before it (both release the GIL)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.hash = hashlib.blake2b(digest_size=32)
        self.run = bytearray()
        self.running: deque[Future[None]] = deque()

    def update(self, data: bytes) -> None:
        self.run += data
        if len(self.run) >= _CHUNK:
            self._hand_over()

    def digest(self) -> bytes:
        self._hand_over()
        while self.running:
            self.running.popleft().result()
        return self.hash.digest()

    def _hand_over(self) -> None:
        if self.run:
            run, self.run = self.run, bytearray()  # not touched again: no copy needed
            self.running.append(self.executor.submit(self.hash.update, run))
        while len(self.running) > 2:
            self.running.popleft().result()


class HashingReader(io.RawIOBase):
    """A file wrapper that hashes each byte once, even when librsync seeks back, and hands each
    byte once, in order, to `on_bytes` if given. `hash_on`: where to hash (BackgroundHash)."""

    def __init__(
        self,
        f: BinaryIO,
        on_bytes: Callable[[bytes], None] | None = None,
        hash_on: Executor | None = None,
        limit: int | None = None,
    ) -> None:
        """`limit`: bytes past which the file reads as ended (GROWTH says why)."""
        self.f = f
        self.limit = limit
        self.on_bytes = on_bytes
        self.hash: Any = (
            hashlib.blake2b(digest_size=32) if hash_on is None else BackgroundHash(hash_on)
        )
        self.pos = 0
        self.hashed = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = (
            len(buffer) if self.limit is None else max(0, min(len(buffer), self.limit - self.pos))
        )
        data = _read(self.f, want) if want else b""
        n = len(data)
        buffer[:n] = data
        self.took(data)
        return n

    def took(self, data: bytes) -> None:
        """`data` was read at the current position: hash and hand on what is new."""
        n = len(data)
        if self.pos + n > self.hashed:
            new = data[self.hashed - self.pos :]  # all of it: the same object, no copy
            self.hash.update(new)
            if self.on_bytes is not None:
                self.on_bytes(new)
            self.hashed = self.pos + n
        self.pos += n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = self.f.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def digest(self) -> bytes:
        return self.hash.digest()


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def signature_args(size: int, block_max: int) -> tuple[int, int, int]:
    magic, block, strong = rdiff.signature_args(size)
    return magic, min(block, block_max), strong


def sign(f: BinaryIO | io.RawIOBase, out: BinaryIO, size: int, block_max: int) -> None:
    """Write the librsync signature of `f`, a file of `size` bytes, to `out`."""
    magic, block, strong = signature_args(size, block_max)
    rdiff.signature(f, out, strong, magic, block)


@dataclass(slots=True)
class Source:
    """One consistent reading of a file: its bytes in memory, or a path to reopen."""

    meta: Meta
    digest: bytes
    changed: bool  # the file moved on while read: the next scan must look again
    data: bytes | None = None
    path: Path | None = None  # the original, or a private temporary copy
    temporary: bool = False
    attributes: bool = False  # meta.xattrs was read (on the descriptor read), not left unread
    waited: bool = False  # tiny, and its read waited for the disk (readahead.py)

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        if self.temporary:
            return open(self.path, "rb", buffering=_CHUNK)  # noqa: SIM115 - caller closes
        return os.fdopen(open_source(os.fsencode(self.path))[0], "rb", buffering=_CHUNK)

    def check(self, reader: HashingReader) -> None:
        """After a full pass through `reader`: were these the bytes of the first pass?"""
        if self.data is None and not self.temporary and reader.digest() != self.digest:
            raise ChangedWhileReading

    @property
    def size(self) -> int:
        """The content's length: the file's, or a sparse file's data (floor/sparse.py)."""
        extents = self.meta.extents
        return self.meta.size if extents is None else sparse.data_length(extents)

    def cleanup(self) -> None:
        if self.temporary and self.path is not None:
            self.path.unlink(missing_ok=True)


def open_source(path: bytes) -> tuple[int, os.stat_result]:
    """Open a source file for reading without following a symlink put in its place; the fd and
    its fstat. A directory put in its place opens too; it is refused here, as no longer a
    regular file (os.fdopen would refuse it later with an error that is not a SourceError)."""
    try:
        fd = fs.open_to_read(path)
    except OSError as exc:
        raise SourceError(exc) from exc
    try:
        return fd, _fstat(fd)
    except SourceError:
        os.close(fd)
        raise


def _fstat(fd: int) -> os.stat_result:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise SourceError(exc) from exc
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(OSError(errno.ENXIO, "no longer a regular file"))
    return st


def _attributes(fd: int) -> bytes | None:
    try:
        return xattrs.read_fd(fd)
    except OSError as exc:
        raise SourceError(exc) from exc


def read_source(
    path: bytes,
    memory_limit: int,
    sig_out: BinaryIO | None,
    block_max: int,
    workdir: Path,
) -> Source:
    """`read_opened` of `path`, opened here."""
    fd, before = open_source(path)
    return read_opened(fd, before, path, memory_limit, sig_out, block_max, workdir)


def read_opened(
    fd: int,
    before: os.stat_result,
    path: bytes,
    memory_limit: int,
    sig_out: BinaryIO | None,
    block_max: int,
    workdir: Path,
    on_bytes: Callable[[bytes], None] | None = None,
    hash_on: Executor | None = None,
    attributes: bool = False,
) -> Source:
    """Read `path`, open as `fd` (closed here) with fstat `before`, once, hashing it and, when
    `sig_out` is given, writing its signature there. A file above `memory_limit` is also handed
    to `on_bytes` as read; if it moved on meanwhile, the Source returned is a temporary copy and
    those bytes are not its own. Such a file is hashed on `hash_on` if given (BackgroundHash).
    A sparse file's data alone is read (`read_sparse`); neither `on_bytes` nor `hash_on` sees it.
    With `attributes`, a file held in memory (or sparse) has its extended attributes in its meta
    too, read on `fd` before the last fstat: a change to them after that read moves the ctime
    it checks.
    """
    if sparse.may_have_holes(before):
        runs = sparse.data_runs(fd, before.st_size)
        if runs is not None:
            return read_sparse(
                fd, before, runs, memory_limit, sig_out, block_max, workdir, attributes
            )
    limit = before.st_size + GROWTH
    if before.st_size > memory_limit:
        with os.fdopen(fd, "rb", buffering=0) as f:
            reader = HashingReader(f, on_bytes, hash_on, limit)
            if sig_out is not None:
                sign(reader, sig_out, before.st_size, block_max)
            else:  # in pieces, which a Cutter takes as they are (no copy into its buffer)
                while chunk := _read(f, min(memory_limit, limit - reader.pos)):
                    reader.took(chunk)
            after = _fstat(fd)
            if stat_key(before) == stat_key(after) and reader.hashed < limit:
                return Source(
                    Meta.from_stat(after), reader.digest(), False, path=Path(os.fsdecode(path))
                )
            return copy_source(path, f, sig_out, block_max, workdir)
    # A small file is read on the bare fd: each system call hands the GIL over and waits to
    # take it back, and a file object adds an fstat of its own. Most files take one read, where
    # reading to EOF takes two; a larger one, or one grown or shrunk since the fstat, is read
    # on to the end, or to GROWTH past its size.
    try:
        first, waited = _read_first(fd, before.st_size)
        chunks = [first]
        if len(first) != before.st_size:
            read = len(chunks[0])
            while read < limit and (chunk := _read_fd(fd, min(_CHUNK, limit - read))):
                chunks.append(chunk)
                read += len(chunk)
        found = _attributes(fd) if attributes else None
        after = _fstat(fd)
    finally:
        os.close(fd)
    data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
    if sig_out is not None:
        sign(io.BytesIO(data), sig_out, len(data), block_max)
    meta = Meta.from_stat(after)
    if meta.size != len(data) or found is not None:  # dataclasses.replace costs 6 µs a file
        meta = replace(meta, size=len(data), xattrs=found)
    return Source(
        meta=meta,
        digest=hashlib.blake2b(data, digest_size=32).digest(),
        changed=stat_key(before) != stat_key(after) or len(data) == limit,
        data=data,
        attributes=attributes,
        waited=waited,
    )


def read_sparse(
    fd: int,
    before: os.stat_result,
    runs: list[tuple[int, int]],
    memory_limit: int,
    sig_out: BinaryIO | None,
    block_max: int,
    workdir: Path,
    attributes: bool = False,
) -> Source:
    """Read the data `runs` of a sparse file open as `fd` (closed here), never its holes: the
    content is their bytes one after the other, in memory or a private copy (uploader/holes.py).
    The version's size is the size the runs were mapped in: nothing past it is read. With
    `attributes`, its extended attributes too (as `read_opened`)."""
    try:
        try:
            data, digest, got = read_runs(fd, runs, memory_limit, workdir)
        except OSError as exc:
            raise SourceError(exc) from exc
        found = _attributes(fd) if attributes else None
        after = _fstat(fd)
    finally:
        os.close(fd)
    meta = replace(
        Meta.from_stat(after, extents=sparse.encode(got)), size=before.st_size, xattrs=found
    )
    changed = stat_key(before) != stat_key(after) or got != runs
    if isinstance(data, bytes):
        source = Source(meta, digest, changed, data=data, attributes=attributes)
    else:
        source = Source(meta, digest, changed, path=data, temporary=True, attributes=attributes)
    if sig_out is not None:
        with source.open() as f:
            sign(f, sig_out, source.size, block_max)
    return source


def copy_source(
    path: bytes, f: BinaryIO | None, sig_out: BinaryIO | None, block_max: int, workdir: Path
) -> Source:
    """Take a private copy of a file that changed while read and describe the copy."""
    if sig_out is not None:
        sig_out.seek(0)
        sig_out.truncate()
    own = f is None
    if f is None:
        f = os.fdopen(open_source(path)[0], "rb", buffering=0)
    try:
        limit = os.fstat(f.fileno()).st_size + GROWTH  # the copy stops too (GROWTH)
        f.seek(0)
        fd, name = tempfile.mkstemp(dir=workdir, prefix="copy-")
        copy = Path(name)
        h = hashlib.blake2b(digest_size=32)
        copied = 0
        with os.fdopen(fd, "wb") as out:
            while copied < limit and (chunk := _read(f, min(_CHUNK, limit - copied))):
                h.update(chunk)
                out.write(chunk)
                copied += len(chunk)
        meta = replace(Meta.from_stat(_fstat(f.fileno())), size=copied)
    finally:
        if own:
            f.close()
    source = Source(meta, h.digest(), True, path=copy, temporary=True)
    if sig_out is not None:
        with open(copy, "rb") as src:
            sign(src, sig_out, meta.size, block_max)
    return source
