"""Bytes handed from one thread to a reader on another, as a file.

A big file's pass reads each byte once; librsync's delta against the previous version's
signature reads them on a thread of its own through this stream, so the delta costs no second
read of the file and runs beside its hash and its new signature. At most `limit` bytes wait, so
memory stays flat: the producer waits for the reader, never the other way round for long.
"""

from __future__ import annotations

import io
import threading
from collections import deque


class ByteStream(io.RawIOBase):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.waiting = 0  # bytes in `chunks`
        self.changed = threading.Condition()
        self.ended = False
        self.abandoned = False  # the reader stopped: what is put is dropped
        self.current = b""  # the chunk being read, kept whole so a read can be stepped back
        self.offset = 0
        self.pos = 0

    # --- the producing thread ------------------------------------------------------------------

    def put(self, data: bytes) -> None:
        """Hand `data` on, once fewer than `limit` bytes wait."""
        with self.changed:
            while self.waiting >= self.limit and not self.abandoned:
                self.changed.wait()
            if not self.abandoned:
                self.chunks.append(data)
                self.waiting += len(data)
                self.changed.notify_all()

    def end(self) -> None:
        """No more bytes: the reader sees the end of the stream once it has read the rest."""
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    # --- the reading thread --------------------------------------------------------------------

    def abandon(self) -> None:
        """The reader stops here: the producer is not kept waiting for it."""
        with self.changed:
            self.abandoned = True
            self.chunks.clear()
            self.changed.notify_all()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes, from one chunk; b"" at the end of the stream."""
        if self.offset == len(self.current):
            with self.changed:
                while not self.chunks and not self.ended:
                    self.changed.wait()
                if not self.chunks:
                    return b""
                self.current = self.chunks.popleft()
                self.waiting -= len(self.current)
                self.offset = 0
                self.changed.notify_all()
        left = len(self.current) - self.offset
        n = left if size is None or size < 0 else min(size, left)
        data = self.current[self.offset : self.offset + n]
        self.offset += n
        self.pos += n
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Only back into the chunk being read (librsync steps back over what it did not
        take), or where it is."""
        back = self.pos - offset
        if whence != io.SEEK_SET or not 0 <= back <= self.offset:
            raise io.UnsupportedOperation("a ByteStream only steps back within its last chunk")
        self.offset -= back
        self.pos = offset
        return offset
