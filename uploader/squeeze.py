"""Hashing and compressing a large file's blobs on worker threads, in order, a few ahead.

A file too large for the read-ahead is cut into pieces on the main thread. BLAKE2b and zstd both
release the GIL, so while the main thread reads (and re-hashes) the next piece, workers hash and
compress the ones before it: the second core works on the big files too. At most `_AHEAD` pieces
wait, so memory stays flat.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import zstandard

from store.pack import digest

_WORKERS = 2
_AHEAD = 2


class Squeezer:
    def __init__(self, level: int) -> None:
        self.level = level
        self.pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="dg-squeeze")
        self.local = threading.local()

    def pieces(self, read: Callable[[], bytes]) -> Iterator[tuple[bytes, tuple[bytes, bytes]]]:
        """(raw, (hash, frame)) for each piece `read` returns, in order, until it returns b""."""
        waiting: deque[tuple[bytes, Future[tuple[bytes, bytes]]]] = deque()
        try:
            while raw := read():
                waiting.append((raw, self.pool.submit(self._squeeze, raw)))
                if len(waiting) > _AHEAD:
                    done, future = waiting.popleft()
                    yield done, future.result()
            while waiting:
                done, future = waiting.popleft()
                yield done, future.result()
        finally:
            for _raw, future in waiting:  # a failed read: what is under way is not wanted
                future.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _squeeze(self, raw: bytes) -> tuple[bytes, bytes]:
        return digest(raw), self._compressor().compress(raw)

    def _compressor(self) -> Any:
        """One per worker thread: a compressor is not safe to share."""
        if not hasattr(self.local, "compressor"):
            self.local.compressor = zstandard.ZstdCompressor(level=self.level)
        return self.local.compressor
