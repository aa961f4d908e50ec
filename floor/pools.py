"""Stopping a thread pool so that no thread of it outlives the caller's clean-up.

A thread join is interruptible: a signal landing while `shutdown` waits raises in the main
thread and the clean-up after it (removing a temporary tree, closing a database) would run
while a worker still writes. So the wait is made again before the exception goes on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def shut_down(pool: ThreadPoolExecutor, cancel: bool = True) -> None:
    """Drop the pool's tasks not yet started (unless `cancel` is False) and wait for the
    running ones; a signal landing while we wait: wait again, then raise."""
    try:
        pool.shutdown(cancel_futures=cancel)
    except BaseException:
        pool.shutdown(cancel_futures=cancel)
        raise
