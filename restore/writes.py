"""The thread that writes restored small files, a batch at a time.

Giving a small file its place is a handful of system calls (create, write, owner, mode, times,
close, rename), each of which lets go of the GIL: on a thread of their own they overlap the main
thread rebuilding the next files (fetching, decompressing, hashing, judging what is in the
target). One task carries many files: a future and a wake-up a file would cost the main thread
more than writing a 15-byte file does (measured so when small files first left the main thread).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from deltagrid.floor.pools import shut_down

BATCH_FILES = 128
BATCH_BYTES = 4 << 20
IN_FLIGHT = 4  # batches queued or being written at most; the main thread waits beyond that,
IN_FLIGHT_BYTES = 16 << 20  # or beyond this many bytes in them (a batch may hold a 16 MiB file)

Job = tuple[Any, bytes, bytes, bytes]  # entry, its directory, where it goes, its bytes
Outcome = tuple[Any, Exception | None]


class Writes:
    """Files handed over with `add`, written by `write` on one thread in the order given; the
    outcome of each is reported on the caller's thread (`on_done`, or `on_error`, which returns
    False for an error that is not the entry's and is raised)."""

    def __init__(
        self,
        write: Callable[[Any, bytes, bytes, bytes], None],
        on_done: Callable[[Any, bool], None],
        on_error: Callable[[Any, BaseException], bool],
    ) -> None:
        self.write = write
        self.on_done = on_done
        self.on_error = on_error
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-write")
        self.batch: list[Job] = []
        self.batch_bytes = 0
        self.pending: deque[tuple[Future[list[Outcome]], int]] = deque()  # and their bytes
        self.pending_bytes = 0

    def add(self, entry: Any, parent: bytes, dest: bytes, data: bytes) -> None:
        self.batch.append((entry, parent, dest, data))
        self.batch_bytes += len(data)
        if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        """Hand the batch over; report the batches done, waiting while too many are queued."""
        if self.batch:
            self.pending.append((self.pool.submit(self._write_batch, self.batch), self.batch_bytes))
            self.pending_bytes += self.batch_bytes
            self.batch, self.batch_bytes = [], 0
        while self.pending and (
            len(self.pending) > IN_FLIGHT
            or self.pending_bytes > IN_FLIGHT_BYTES
            or self.pending[0][0].done()
        ):
            self._report()

    def _write_batch(self, batch: list[Job]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for entry, parent, dest, data in batch:
            try:
                self.write(entry, parent, dest, data)
            except Exception as exc:  # the entry's (reported), or raised on the caller's thread
                outcomes.append((entry, exc))
            else:
                outcomes.append((entry, None))
        return outcomes

    def _report(self) -> None:
        """Wait for the oldest batch and report its files."""
        future, size = self.pending.popleft()
        self.pending_bytes -= size
        for entry, exc in future.result():
            if exc is None:
                self.on_done(entry, False)
            elif not self.on_error(entry, exc):
                raise exc

    def finish(self) -> None:
        """Write what is left and report every file."""
        self._submit()
        while self.pending:
            self._report()

    def close(self) -> None:
        """Drop what has not started; wait for the batch being written."""
        shut_down(self.pool)
