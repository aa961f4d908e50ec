"""The thread restore hands large files to, so that the small files after one need not wait.

A large file is rebuilt through a temporary file: hundreds of MiB decompressed, hashed and
written, work that mostly releases the GIL. Small files are rebuilt on the main thread and
written in batches by restore/writes.py: a task a file was measured slower, far slower on ext4,
where every create can wait on the journal and each wake-up costs a GIL hand-over.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from queue import SimpleQueue
from typing import Any

from deltagrid.floor.pools import shut_down


class Background:
    """Files rebuilt on one thread of their own; `settle` reports each one done (and whether it
    was linked rather than written) or failed, on the caller's thread."""

    def __init__(
        self,
        on_done: Callable[[Any, bool], None],
        on_error: Callable[[Any, BaseException], bool],
    ) -> None:
        self.on_done = on_done
        self.on_error = on_error  # False: not an entry's error, raise it
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-large")
        self.pending: dict[Future[bool], Any] = {}
        self.finished: SimpleQueue[Future[bool]] = SimpleQueue()  # in the order they finish

    def submit(self, entry: Any, fn: Callable[..., bool], *args: Any) -> None:
        future = self.pool.submit(fn, *args)
        self.pending[future] = entry
        future.add_done_callback(self.finished.put)

    def settle(self, wait_all: bool = False) -> None:
        """Report what is done; with `wait_all`, wait for everything first."""
        ready = list(wait(self.pending, return_when=ALL_COMPLETED).done) if wait_all else []
        while not self.finished.empty():
            ready.append(self.finished.get())
        for future in ready:
            entry = self.pending.pop(future, None)
            if entry is None:
                continue  # reported already: wait() saw it done before its callback ran
            exc = future.exception()
            if exc is None:
                self.on_done(entry, future.result())
            elif not self.on_error(entry, exc):
                raise exc

    def close(self) -> None:
        """Drop what has not started; wait for what has."""
        shut_down(self.pool)
