"""Fetching the blobs a restore needs in store order, each byte range once.

Restore first plans: every content it will rebuild, with its whole delta chain, becomes a list of
blob pieces. Pieces are grouped by pack and merged into spans (pieces less than `gap` apart share
one read), the spans are fetched in pack order by a few threads ahead of use, as far ahead as the
memory budget holds them (only a span needed at once beyond it waits in a temporary file), and
each span is dropped once the last piece in it has been read. On a grid, where one request costs
tens of milliseconds, this turns one GET per file into a few per pack; everywhere, memory stays
bounded by the budget, not by the size of the restore.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from restore.rebuild import DirectSource
from store.base import Store
from store.pack import decode_blob

GAP = 1 << 20  # pieces closer than this are read together
MAX_SPAN = 64 << 20
WORKERS = 4
AHEAD = 8  # spans fetched ahead of the one in use
MEMORY_BUDGET = 64 << 20  # at most this much of the spans is held in memory at once


@dataclass(frozen=True)
class Piece:
    blob_id: int  # blob ids grow with pack and offset: sorting by them is store order
    ref: str
    offset: int
    length: int
    raw_length: int
    hash: bytes

    @classmethod
    def from_row(cls, row: Any) -> Piece:
        return cls(row.id, row.ref, row.offset, row.length, row.raw_length, row.hash)


@dataclass
class Span:
    ref: str
    start: int
    end: int
    uses: int = 0
    future: Future[bytes | Path] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def plan_spans(
    pieces: Iterable[Piece], gap: int = GAP, max_span: int = MAX_SPAN
) -> tuple[list[Span], dict[Piece, Span]]:
    """Merge the pieces of each pack into spans, in store order; say which span holds each."""
    by_pack: dict[str, list[Piece]] = defaultdict(list)
    for p in set(pieces):
        by_pack[p.ref].append(p)
    spans: list[Span] = []
    where: dict[Piece, Span] = {}
    for ref in by_pack:
        current: Span | None = None
        for p in sorted(by_pack[ref], key=lambda p: p.offset):
            end = p.offset + p.length
            if (
                current is not None
                and p.offset - current.end <= gap
                and end - current.start <= max_span
            ):
                current.end = max(current.end, end)
            else:
                current = Span(ref, p.offset, end)
                spans.append(current)
            where[p] = current
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
        self.spans, self.index = plan_spans(reads)
        for p in reads:
            self.index[p].uses += 1
        first_use: dict[int, int] = {}
        for p in reads:
            first_use.setdefault(id(self.index[p]), len(first_use))
        self.spans.sort(key=lambda s: first_use[id(s)])
        self.order = {id(s): i for i, s in enumerate(self.spans)}
        self.pool = ThreadPoolExecutor(max_workers=WORKERS)
        self.next_to_start = 0
        self.held = 0  # bytes of spans kept in memory; the others wait in temporary files
        self.reserved = 0  # bytes of the spans started and not yet dropped
        largest = max((s.end - s.start for s in self.spans), default=0)
        self.budget = min(MEMORY_BUDGET, WORKERS * largest)  # what the workers fetch at once
        self.lock = threading.Lock()

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
        """Start fetching up to AHEAD spans past `position`, but ahead of need only what the
        budget holds in memory: a span spilled to a file is written and read once more."""
        with self.lock:
            while self.next_to_start < len(self.spans) and self.next_to_start <= position + AHEAD:
                span = self.spans[self.next_to_start]
                size = span.end - span.start
                if self.next_to_start > position and self.reserved + size > self.budget:
                    break
                self.reserved += size
                span.future = self.pool.submit(self._fetch, span)
                self.next_to_start += 1

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
        """The raw bytes of one piece, hash-checked unless told otherwise."""
        span = self.index[piece]
        with span.lock:
            unplanned = span.uses <= 0  # read more often than planned (a retry after an error)
        if unplanned:
            frame = self.store.get(piece.ref, piece.offset, piece.length)
            return decode_blob(frame, piece.raw_length, piece.hash, checked)
        self._start_through(self.order[id(span)])
        assert span.future is not None
        held = span.future.result()
        at = piece.offset - span.start
        if isinstance(held, bytes):
            frame = held[at : at + piece.length]
        else:
            with open(held, "rb") as f:
                f.seek(at)
                frame = f.read(piece.length)
        with span.lock:
            span.uses -= 1
            done = span.uses == 0
        if done:
            self._drop(span, held)
        return decode_blob(frame, piece.raw_length, piece.hash, checked)

    def _drop(self, span: Span, held: bytes | Path) -> None:
        """Forget a span whose last planned piece was read: its memory or its file."""
        span.future = None
        with self.lock:
            self.reserved -= span.end - span.start
        if isinstance(held, bytes):
            with self.lock:
                self.held -= len(held)
        else:
            held.unlink(missing_ok=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for span in self.spans:
            if span.future is not None and span.future.done() and not span.future.exception():
                held = span.future.result()
                if isinstance(held, Path):
                    held.unlink(missing_ok=True)
