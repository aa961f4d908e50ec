"""Bounded read-ahead: reader threads open, read, hash, sign and compress the next small files.

The upload is CPU-bound on one thread (BLAKE2b, librsync signatures, zstd), and all three release
the GIL on large buffers. Two workers prepare the next queue entries while the main thread still
decides and records strictly in queue order. The window is bounded by bytes, so memory stays flat;
files too large to hold in memory are read on the main thread as before.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from deltagrid.backupdb.entries import KIND_FILE
from deltagrid.floor import longpath
from deltagrid.uploader import reader
from deltagrid.uploader.packing import PendingBlob
from deltagrid.uploader.reader import Source, SourceError, read_opened
from deltagrid.uploader.settings import UploadSettings

_WORKERS = 2
_WINDOW_BYTES = 64 << 20
_WINDOW_ROWS = 64


@dataclass
class Prepared:
    """One queue entry as a worker found it: its stat, and for a regular file its reading."""

    st: os.stat_result
    start_ns: int = 0
    source: Source | None = None
    signature: BinaryIO | None = None
    frame: bytes | None = None  # the whole file as one compressed blob, if it is likely needed
    spooled: list[PendingBlob | int] | None = None  # a big file's pieces: in side packs, or stored
    delta: tuple[int, BinaryIO] | None = None  # a big file's: (basis content id, rdiff delta)


class ReadAhead:
    def __init__(self, settings: UploadSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="dg-read")
        self.local = threading.local()
        self.waiting: deque[tuple[Any, bool]] = deque()  # (row, compress) not yet submitted
        self.submitted: deque[tuple[int, int, Future[Prepared]]] = deque()  # (qid, size, fut)
        self.buffered = 0
        self.ready: deque[bytes] = deque()  # appended by the workers, drained by ready_digests

    def feed(self, rows: Iterable[Any], lives: dict[bytes, Any]) -> None:
        """Queue the rows worth preparing: small files. A file with no previous content is
        compressed ahead too, as it is most likely stored whole."""
        for row in rows:
            small = row.size <= self.settings.piece_size
            if row.reason != "deleted" and row.kind == KIND_FILE and small:
                live = lives.get(row.path)
                self.waiting.append((row, live is None or live.content_id is None))
        self._fill()

    def take(self, qid: int) -> Future[Prepared] | None:
        """The prepared entry for queue row `qid`, if any; entries before it are dropped."""
        while self.waiting and self.waiting[0][0].id < qid:
            self.waiting.popleft()
        found = None
        while self.submitted and self.submitted[0][0] <= qid:
            row_id, size, future = self.submitted.popleft()
            self.buffered -= size
            if row_id == qid:
                found = future
            else:
                discard(future)
        self._fill()
        return found

    def ready_digests(self) -> list[bytes]:
        """The content hashes of the files prepared since the last call."""
        ready = []
        while self.ready:
            ready.append(self.ready.popleft())
        return ready

    def close(self) -> None:
        self.waiting.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for _qid, _size, future in self.submitted:
            if not future.cancelled():
                discard(future)
        self.submitted.clear()

    def _fill(self) -> None:
        while self.waiting and len(self.submitted) < _WINDOW_ROWS:
            row, compress = self.waiting[0]
            if self.submitted and self.buffered + row.size > _WINDOW_BYTES:
                return
            self.waiting.popleft()
            future = self.pool.submit(self._prepare, row.path, row.size, compress)
            self.submitted.append((row.id, row.size, future))
            self.buffered += row.size

    def _prepare(self, path: bytes, size: int, compress: bool) -> Prepared:
        prepared, fd = begin(path)
        if fd is None:
            return prepared
        if self.settings.takes_deltas(size):
            prepared.signature = io.BytesIO()
        s = self.settings
        prepared.source = read_opened(
            fd, prepared.st, path, s.piece_size, prepared.signature, s.block_max, self.workdir
        )
        self.ready.append(prepared.source.digest)
        data = prepared.source.data
        if compress and data:
            prepared.frame = self._compressor().compress(data)
        return prepared

    def _compressor(self) -> zstandard.ZstdCompressor:
        """One per worker thread: a compressor is not safe to share."""
        if not hasattr(self.local, "compressor"):
            self.local.compressor = zstandard.ZstdCompressor(level=self.settings.zstd_level)
        compressor: zstandard.ZstdCompressor = self.local.compressor
        return compressor


def begin(path: bytes) -> tuple[Prepared, int | None]:
    """An entry as a worker finds it, and an fd open on it if it is a regular file; if not,
    the main thread handles what it became. The file is opened straight away, without an lstat
    first: nearly every entry is still the regular file the scan saw."""
    start_ns = time.time_ns()
    try:
        fd, st = reader.open_source(path)
    except SourceError:  # a symlink, a directory... now, or gone or unreadable
        try:
            st = longpath.lstat(path)
        except OSError as exc:
            raise SourceError(exc) from exc
        if stat.S_ISREG(st.st_mode):
            raise
        return Prepared(st, start_ns), None
    return Prepared(st, start_ns), fd


def discard(future: Future[Prepared]) -> None:
    """Drop a prepared entry nobody will use: remove its private copy once it is done."""

    def cleanup(done: Future[Prepared]) -> None:
        if not done.cancelled() and done.exception() is None:
            prepared = done.result()
            if prepared.source is not None:
                prepared.source.cleanup()
            if prepared.signature is not None:
                prepared.signature.close()
            if prepared.delta is not None:
                prepared.delta[1].close()

    future.add_done_callback(cleanup)
