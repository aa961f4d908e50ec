"""Hashing and compressing a large file's blobs on a worker thread, in order, a few ahead.

A file too large for the read-ahead is cut into pieces on the main thread: read piece by piece
(`pieces`), or, for a new file, pushed as librsync's signature pass reads it (`Cutter`). BLAKE2b
and zstd both release the GIL, so while the main thread reads the next piece, the worker hashes
and compresses the ones before it: the second core works on the big files too. At most `_AHEAD`
pieces wait, so memory stays flat.

One worker, not two: a big file's pass already keeps a reading thread and a hashing thread busy,
and a second worker only took the cores from the small files' readers, who then finished alone
on one core, held back by the GIL (initial backups of a source tree with a 256 MiB file, and of
four 256 MiB files, were both 4-7% faster with one).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import zstandard

from deltagrid.floor.pools import shut_down
from deltagrid.store.pack import digest

_WORKERS = 1
_AHEAD = 2

Squeezed = tuple[bytes, tuple[bytes, bytes]]  # raw, (hash, frame)


class Squeezer:
    def __init__(self, level: int) -> None:
        self.level = level
        self.pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="dg-squeeze")
        self.local = threading.local()

    def pieces(self, read: Callable[[], bytes]) -> Iterator[Squeezed]:
        """(raw, (hash, frame)) for each piece `read` returns, in order, until it returns b""."""
        feed = self.feed()
        try:
            while raw := read():
                yield from feed.push(raw)
            yield from feed.drain()
        finally:
            feed.cancel()

    def feed(self) -> Feed:
        """Pieces pushed one by one, for a caller that is itself called with the bytes."""
        return Feed(self)

    def close(self) -> None:
        shut_down(self.pool)

    def squeeze(self, raw: bytes) -> tuple[bytes, bytes]:
        return digest(raw), self._compressor().compress(raw)

    def _compressor(self) -> Any:
        """One per worker thread: a compressor is not safe to share."""
        if not hasattr(self.local, "compressor"):
            self.local.compressor = zstandard.ZstdCompressor(level=self.level)
        return self.local.compressor


class Feed:
    """Pieces on their way through a Squeezer: at most `_AHEAD` wait, the rest come back."""

    def __init__(self, squeezer: Squeezer) -> None:
        self.squeezer = squeezer
        self.waiting: deque[tuple[bytes, Future[tuple[bytes, bytes]]]] = deque()

    def push(self, raw: bytes) -> list[Squeezed]:
        """Start on `raw`; return the pieces done beyond the window, in order."""
        self.waiting.append((raw, self.squeezer.pool.submit(self.squeezer.squeeze, raw)))
        done = []
        while len(self.waiting) > _AHEAD:
            piece, future = self.waiting.popleft()
            done.append((piece, future.result()))
        return done

    def drain(self) -> list[Squeezed]:
        done = [(piece, future.result()) for piece, future in self.waiting]
        self.waiting.clear()
        return done

    def cancel(self) -> None:
        """What is under way is not wanted (a failed read)."""
        for _raw, future in self.waiting:
            future.cancel()
        self.waiting.clear()


class Pieces:
    """Bytes in as they are read, pieces of exactly `size` (the last one shorter) out to `out`,
    in order, whatever the reads returned."""

    def __init__(self, size: int, out: Callable[[bytes], object]) -> None:
        self.size = size
        self.out = out
        self.buffer = bytearray()

    def add(self, data: bytes) -> None:
        if not self.buffer and len(data) == self.size:
            self.out(data)
            return
        self.buffer += data
        while len(self.buffer) >= self.size:
            self.out(bytes(self.buffer[: self.size]))
            del self.buffer[: self.size]

    def finish(self) -> None:
        if self.buffer:
            self.out(bytes(self.buffer))
            self.buffer.clear()


class Cutter:
    """Bytes in as they are read, pieces of `size` out through a Feed to `take`, in order: the
    same pieces `Squeezer.pieces` cuts from a file read `size` bytes at a time."""

    def __init__(
        self, squeezer: Squeezer, size: int, take: Callable[[bytes, tuple[bytes, bytes]], object]
    ) -> None:
        self.feed = squeezer.feed()
        self.take = take
        self.pieces = Pieces(size, self._push)

    def add(self, data: bytes) -> None:
        self.pieces.add(data)

    def finish(self) -> None:
        self.pieces.finish()
        for raw, done in self.feed.drain():
            self.take(raw, done)

    def cancel(self) -> None:
        self.feed.cancel()

    def _push(self, piece: bytes) -> None:
        for raw, done in self.feed.push(piece):
            self.take(raw, done)
