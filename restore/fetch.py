"""Fetching the blobs a restore needs in the order it reads them, each byte range once.

Restore first plans: every content it will rebuild, with its whole delta chain, becomes a list of
blob pieces. Pieces of a pack read at about the same time are merged into spans (pieces less than
`gap` apart share one read), the spans are fetched in the order they are first read by a few
threads ahead of use, as far ahead as the memory budget holds them (only a span needed at once
beyond it waits in a temporary file), and each span is dropped once the last piece in it has been
read. On a grid, where one request costs tens of milliseconds, this turns one GET per file into a
few per pack; everywhere, memory stays bounded by the budget, not by the size of the restore.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from sqlite3 import Connection
from typing import Any, NamedTuple

from deltagrid.floor.errors import DeltagridError
from deltagrid.floor.pools import shut_down
from deltagrid.restore.rebuild import DirectSource
from deltagrid.store.base import Store
from deltagrid.store.pack import decode_blob

GAP = 1 << 20  # pieces closer than this are read together
MAX_SPAN = 64 << 20
WORKERS = 4
AHEAD = 8  # spans fetched ahead of the one in use
MEMORY_BUDGET = 64 << 20  # at most this much of the spans is held in memory at once


class RestoreStopped(DeltagridError):
    """A read after the restore was interrupted."""


class Piece(NamedTuple):
    """One blob a content reads; a tuple, as a piece is made, hashed and looked up a few times
    for every file restored."""

    blob_id: int  # blob ids grow with pack and offset: sorting by them is store order
    ref: str
    offset: int
    length: int
    raw_length: int
    hash: bytes

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Piece:
        """From a row of `restore_queries.pieces_of_contents`: content id, blob id, offset,
        length, raw length, hash, pack."""
        _content, blob_id, offset, length, raw_length, hash_, ref = row
        return cls(blob_id, ref, offset, length, raw_length, hash_)


@dataclass
class Span:
    ref: str
    start: int
    end: int
    uses: int = 0
    started: bool = False
    future: Future[bytes | Path] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _budget(reads: list[Piece]) -> int:
    """What the workers fetch at once: each the largest span a pack can give, within the
    memory budget."""
    extents: dict[str, tuple[int, int]] = {}
    for p in reads:
        lo, hi = extents.get(p.ref, (p.offset, p.offset))
        extents[p.ref] = (min(lo, p.offset), max(hi, p.offset + p.length))
    largest = max((hi - lo for lo, hi in extents.values()), default=0)
    return min(MEMORY_BUDGET, WORKERS * min(largest, MAX_SPAN))


def plan_spans(
    reads: list[Piece], window: int, gap: int = GAP, max_span: int = MAX_SPAN
) -> tuple[list[Span], dict[Piece, Span]]:
    """Merge the pieces of each pack into spans, in the order they are read; say which span
    holds each. A piece joins its pack's latest span if it lies within `gap` of it and that span
    was last joined at most `window` bytes of reading ago (half the budget, so it fits in memory
    with what is read meanwhile): a pack read early for a few pieces
    (the delta of a file whose keyframe lies in an older pack) and late for the rest gives two
    spans, so the first is not held in memory in between."""
    spans: list[Span] = []
    where: dict[Piece, Span] = {}
    latest: dict[str, tuple[Span, int]] = {}  # pack -> its newest span, when it was last joined
    read = 0
    for p in reads:
        read += p.length
        if p in where:
            continue  # read again later: it stays in the span that holds it
        end = p.offset + p.length
        span, joined = latest.get(p.ref, (None, 0))
        if (
            span is not None
            and read - joined <= window
            and p.offset <= span.end + gap
            and end >= span.start - gap
            and max(end, span.end) - min(p.offset, span.start) <= max_span
        ):
            span.start = min(span.start, p.offset)
            span.end = max(span.end, end)
        else:
            span = Span(p.ref, p.offset, end)
            spans.append(span)
        latest[p.ref] = (span, read)
        where[p] = span
    return spans, where


class Fetcher:
    """Serves blob pieces from spans fetched ahead of use; used by one restore.

    `plan` maps each content to its pieces; `order` lists the contents in the order they will be
    read, once per read. A content outside the plan is read straight from the store.
    """

    def __init__(
        self, store: Store, workdir: Path, plan: dict[int, list[Piece]], order: list[int]
    ) -> None:
        self.store = store
        self.workdir = workdir
        self.plan = plan
        self.direct = DirectSource(store)
        reads = [p for content_id in order for p in plan[content_id]]
        self.budget = _budget(reads)
        self.spans, self.index = plan_spans(reads, window=self.budget // 2)
        for p in reads:
            self.index[p].uses += 1
        self.order = {id(s): i for i, s in enumerate(self.spans)}
        self.pool = ThreadPoolExecutor(max_workers=WORKERS)
        self.stopped = False
        self.held = 0  # bytes of spans kept in memory; the others wait in temporary files
        self.reserved = 0  # bytes of the spans started and not yet dropped
        self.lock = threading.Lock()
        self.reader = threading.local()  # the span each reading thread is in

    def _fetch(self, span: Span) -> bytes | Path:
        data = self.store.get(span.ref, span.start, span.end - span.start)
        with self.lock:
            in_memory = self.held + len(data) <= self.budget
            if in_memory:
                self.held += len(data)
        if in_memory:
            return data
        fd, name = tempfile.mkstemp(dir=self.workdir, prefix="span-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return Path(name)

    def _start_through(self, position: int) -> None:
        """Start fetching the span at `position` if it is not yet, and up to AHEAD spans past it,
        but ahead of need only what the budget holds in memory: a span spilled to a file is
        written and read once more. Each reader (restore rebuilds a large file on a thread of its
        own) reads ahead of where it is, not of where the other is: asked as it enters a span."""
        with self.lock:
            self._start(self.spans[position])
            for span in self.spans[position + 1 : position + 1 + AHEAD]:
                if not span.started:
                    if self.reserved + span.end - span.start > self.budget:
                        break
                    self._start(span)

    def _start(self, span: Span) -> None:
        if not span.started:
            span.started = True
            self.reserved += span.end - span.start
            span.future = self.pool.submit(self._fetch, span)

    def blobs(self, conn: Connection, content_id: int, checked: bool = True) -> Iterator[bytes]:
        """A content's decoded blobs, in order (the BlobSource of restore)."""
        if content_id not in self.plan:
            yield from self.direct.blobs(conn, content_id, checked)
            return
        for piece in self.plan[content_id]:
            yield self.read(piece, checked)

    def sole_blob_hash(self, content_id: int) -> bytes | None:
        pieces = self.plan.get(content_id)
        return pieces[0].hash if pieces is not None and len(pieces) == 1 else None

    def read(self, piece: Piece, checked: bool = True) -> bytes:
        """The raw bytes of one piece, hash-checked unless told otherwise. Safe from several
        threads: a piece read more often than planned (a retry after an error), or after its
        span was dropped, is read straight from the store."""
        if self.stopped:
            raise RestoreStopped("the restore was stopped")
        span = self.index[piece]
        position = self.order[id(span)]
        if getattr(self.reader, "at", None) != position:  # this thread's first piece of the span
            self.reader.at = position
            self._start_through(position)
        future = span.future
        held = future.result() if future is not None else None
        frame = None
        with span.lock:
            if held is not None and span.future is future and span.uses > 0:
                frame = self._frame(held, piece.offset - span.start, piece.length)
                span.uses -= 1
                if span.uses == 0:
                    self._drop(span, held)
        if frame is None:
            frame = self.store.get(piece.ref, piece.offset, piece.length)
        return decode_blob(frame, piece.raw_length, piece.hash, checked)

    @staticmethod
    def _frame(held: bytes | Path, at: int, length: int) -> bytes:
        if isinstance(held, bytes):
            return held[at : at + length]
        with open(held, "rb") as f:
            f.seek(at)
            return f.read(length)

    def _drop(self, span: Span, held: bytes | Path) -> None:
        """Forget a span whose last planned piece was read (under its lock): its memory or its
        file."""
        span.future = None
        with self.lock:
            self.reserved -= span.end - span.start
        if isinstance(held, bytes):
            with self.lock:
                self.held -= len(held)
        else:
            held.unlink(missing_ok=True)

    def stop(self) -> None:
        """Make every later read fail: the restore is being interrupted."""
        self.stopped = True

    def close(self) -> None:
        shut_down(self.pool)
        for span in self.spans:
            future = span.future
            if (
                future is not None
                and future.done()
                and not future.cancelled()
                and not future.exception()
            ):
                held = future.result()
                if isinstance(held, Path):
                    held.unlink(missing_ok=True)
