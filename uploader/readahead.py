"""Bounded read-ahead: reader threads open, read, hash, sign and compress the next small files.

The upload is CPU-bound on one thread (BLAKE2b, librsync signatures, zstd), and all three release
the GIL on large buffers. Two workers prepare the next queue entries, a run of them a task, while
the main thread still decides and records strictly in queue order; runs of tiny files, whose
work holds the GIL, the main thread prepares itself when it reaches them. Once such a run finds
files that had to come from the disk, the main thread asks the kernel to read the next runs in
before it reaches them, until it finds them cached. The window is bounded by bytes, so memory
stays flat; files too large to hold in memory are read elsewhere (bigfiles.py).
"""

from __future__ import annotations

import io
import itertools
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
from deltagrid.floor import fs, longpath
from deltagrid.floor.pools import shut_down
from deltagrid.uploader import reader
from deltagrid.uploader.packing import PendingBlob
from deltagrid.uploader.reader import Source, SourceError, read_opened
from deltagrid.uploader.settings import UploadSettings

_WORKERS = 2
_WINDOW_BYTES = 16 << 20  # prepared bytes held, at most: past that, no faster
_WINDOW_TASKS = 48
# A task is a run of files: a task and a future per 15-byte file (submit, a lock, a condition
# waited on and notified) cost the main thread more than the file's reading. A run ends at
# _RUN_BYTES too, so larger files still go to both workers.
_RUN_FILES = 64
_RUN_BYTES = 1 << 20
# Files this small are prepared by the main thread itself, a run at a time as it reaches them:
# their hashing and compression are too short to release the GIL for long, so a reader thread
# only adds GIL hand-overs (each of a file's six system calls): 5% more CPU and wall time.
_INLINE_MAX = reader.TINY  # one size: up to it, a read says whether it waited for the disk
# Tiny files not in the page cache: a first backup of a tree nobody read lately (a million tiny
# files are 4 GB of page cache, which the system reclaims). Read one at a time, each read waits
# for the disk; asked for a run at a time (floor/fs.py fetch_ahead), the kernel reads them side by
# side. A run with _COLD_FILES files read from the disk starts that, for the run at hand and the
# next ones, _WARMED in all, until a run it is asked for is found cached.
_COLD_FILES = 2
_WARMED = 3


@dataclass(slots=True)
class Prepared:
    """One queue entry as a worker found it: its stat, and for a regular file its reading."""

    st: os.stat_result
    start_ns: int = 0
    source: Source | None = None
    signature: BinaryIO | None = None
    frame: bytes | None = None  # the whole file as one compressed blob, if it is likely needed
    spooled: list[PendingBlob | int] | None = None  # a big file's pieces: in side packs, or stored
    delta: tuple[int, BinaryIO] | None = None  # a big file's: (basis content id, rdiff delta)


# What the main thread takes for a queue row: its preparation, or what preparing it raised.
Taken = Prepared | Exception
Run = tuple[int, bytes, int, bool]  # a file to prepare: queue row, path, size, compress it


class ReadAhead:
    def __init__(self, settings: UploadSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="dg-read")
        self.cold = False  # the tiny files are on the disk, not in the page cache
        self.warmed = -1  # the first queue row of the last run of them asked for ahead
        self.local = threading.local()
        self.waiting: deque[tuple[Any, bool]] = deque()  # (row, compress) not yet submitted
        # Runs in queue order: (their first queue row, their bytes, the future of their entries
        # or, for a run of tiny files, the run itself, prepared when it is reached).
        self.submitted: deque[tuple[int, int, Future[list[tuple[int, Taken]]] | list[Run]]] = (
            deque()
        )
        self.done: deque[tuple[int, Taken]] = deque()  # the oldest run's entries not yet taken
        self.buffered = 0
        # Appended as files are prepared, drained by ready_digests: on a first backup the
        # catalog is never asked, so only the latest are kept (a million would be ~70 MiB).
        self.ready: deque[bytes] = deque(maxlen=_WINDOW_TASKS * _RUN_FILES)

    def feed(self, rows: Iterable[Any], lives: dict[bytes, Any]) -> None:
        """Queue the rows worth preparing: small files. A file with no previous content is
        compressed ahead too, as it is most likely stored whole."""
        piece_size = self.settings.piece_size
        for row in rows:
            if row.kind == KIND_FILE and row.size <= piece_size and row.reason != "deleted":
                live = lives.get(row.path)
                self.waiting.append((row, live is None or live.content_id is None))
        self._fill()

    def take(self, qid: int) -> Taken | None:
        """The prepared entry for queue row `qid`, if any; entries before it are dropped."""
        waiting = self.waiting
        while waiting and waiting[0][0].id < qid:
            waiting.popleft()
        done = self.done
        while True:
            while done:
                row_id, taken = done[0]
                if row_id > qid:
                    return None
                done.popleft()
                if row_id == qid:
                    return taken
                discard(taken)
            if not self.submitted or self.submitted[0][0] > qid:
                return None
            if self.cold:
                self._fetch_ahead()
            _first, size, work = self.submitted.popleft()
            if isinstance(work, list):
                self._fill()
                done.extend(self._prepare_run(work))
            else:
                self.buffered -= size
                self._fill()
                done.extend(work.result())

    def ready_digests(self) -> list[bytes]:
        """The content hashes of the files prepared since the last call."""
        ready = []
        while self.ready:
            ready.append(self.ready.popleft())
        return ready

    def close(self) -> None:
        self.waiting.clear()
        shut_down(self.pool)
        for _qid, _size, work in self.submitted:
            if isinstance(work, Future) and not work.cancelled():
                discard(work)
        self.submitted.clear()
        while self.done:
            discard(self.done.popleft()[1])

    def _fill(self) -> None:
        waiting = self.waiting
        while waiting and len(self.submitted) < _WINDOW_TASKS:
            run: list[Run] = []
            size = 0
            inline = waiting[0][0].size <= _INLINE_MAX
            while waiting and len(run) < _RUN_FILES:
                row, compress = waiting[0]
                if run and (size + row.size > _RUN_BYTES or (row.size <= _INLINE_MAX) != inline):
                    break
                held = self.buffered + size  # by reader threads' runs: one at least may go
                if not inline and held and held + row.size > _WINDOW_BYTES:
                    break
                waiting.popleft()
                run.append((row.id, row.path, row.size, compress))
                size += row.size
            if not run:
                return
            if inline:
                self.submitted.append((run[0][0], size, run))
            else:
                future = self.pool.submit(self._prepare_run, run)
                self.submitted.append((run[0][0], size, future))
                self.buffered += size

    def _fetch_ahead(self) -> None:
        """Ask the kernel to read in the next runs of tiny files, the one at hand first; stop
        asking once a run is found cached."""
        for first, _size, work in itertools.islice(self.submitted, _WARMED):
            if not isinstance(work, list):
                return
            if first > self.warmed:
                self.warmed = first
                self.cold = (
                    sum(fs.fetch_ahead(path) for _qid, path, _size, _c in work) >= _COLD_FILES
                )
                if not self.cold:
                    return

    def _prepare_run(self, run: list[Run]) -> list[tuple[int, Taken]]:
        """Each file of a run prepared, or what preparing it raised (the main thread raises it
        when it reaches the file). A run of tiny files says whether the page cache held them."""
        compressor = self._compressor()
        out: list[tuple[int, Taken]] = []
        waited = 0
        for qid, path, size, compress in run:
            try:
                prepared = self._prepare(path, size, compressor if compress else None)
            except Exception as exc:
                out.append((qid, exc))
                continue
            waited += prepared.source is not None and prepared.source.waited
            out.append((qid, prepared))
        if waited >= _COLD_FILES:
            self.cold = True
        return out

    def _prepare(
        self, path: bytes, size: int, compressor: zstandard.ZstdCompressor | None
    ) -> Prepared:
        prepared, fd = begin(path)
        if fd is None:
            return prepared
        if self.settings.takes_deltas(size):
            prepared.signature = io.BytesIO()
        s = self.settings
        source = read_opened(
            fd,
            prepared.st,
            path,
            s.piece_size,
            prepared.signature,
            s.block_max,
            self.workdir,
            attributes=True,
        )
        prepared.source = source
        self.ready.append(source.digest)
        data = source.data
        if compressor is not None and data:
            prepared.frame = compressor.compress(data)
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


def discard(taken: Future[Any] | Taken | list[tuple[int, Taken]]) -> None:
    """Drop what was prepared and will not be used: remove its private copy, at once or once
    its future is done."""
    if isinstance(taken, Future):
        taken.add_done_callback(
            lambda done: None if done.cancelled() or done.exception() else discard(done.result())
        )
    elif isinstance(taken, list):
        for _qid, each in taken:
            discard(each)
    elif isinstance(taken, Prepared):
        if taken.source is not None:
            taken.source.cleanup()
        if taken.signature is not None:
            taken.signature.close()
        if taken.delta is not None:
            taken.delta[1].close()
