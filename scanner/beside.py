"""A scan that can find only new entries, run by a process of its own while the upload takes
its rows as they are committed.

On a first backup of many small files the scan was a fifth of the run, and the upload waited
for all of it on the same core. When the scan can find only new entries (scan_queries.only_new:
no queue row waits, nothing is live under the sources), the order it queues them in is the
order they are uploaded in, and nothing it finds later changes how an earlier one is stored:
so a second process walks and queues, committing a batch at a time, and the upload drains each
batch as it lands. Any other scan runs first and whole, as ever: a new file may be a moved one,
whose basis is among the scan's deletions, found anywhere in the tree.

Nothing new is on disk: the scan writes the rows the in-process scan writes. A kill of the
backup kills the process (floor/helpers.py), its open batch rolling back; the scan stays
unfinished, and the next scan drops its rows not uploaded. The snapshot is committed only once
the scan has finished.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deltagrid.backupdb.connection import connect
from deltagrid.floor import helpers
from deltagrid.floor.errors import BackupDBError
from deltagrid.scanner.scan import Scanner, ScanResult

_ENDED = None  # the reader thread's last message: the process's output has ended


class ScanBeside:
    """The scan process, seen from the upload: `scanning` says whether more rows may come and
    hands on its warnings; `result` is the scan's once it has finished."""

    def __init__(self, db: Path, warn: Callable[[str], None]) -> None:
        self.db = db
        self.warn = warn
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.news: queue.Queue[Any] = queue.Queue()
        self.result: ScanResult | None = None

    def start(self, roots: list[bytes], options: dict[str, Any]) -> bool:
        """Start scanning `roots` with Scanner's `options`; False if the process could not
        start (an interpreter it may not run, a deltagrid it cannot import, a backupdb it
        cannot open): the caller then scans on its own, as before."""
        proc = helpers.start(__name__, os.fspath(self.db))
        if proc is None:
            return False
        assert proc.stdin is not None
        try:
            helpers.send(proc.stdin, (roots, options))
        except OSError:  # it ended since it said it was ready
            helpers.stop(proc, timeout=0)
            return False
        except BaseException:
            helpers.stop(proc, timeout=0)
            raise
        self.proc = proc
        self.reader = threading.Thread(target=self._read, name="dg-scan-news", daemon=True)
        self.reader.start()
        return True

    def scanning(self, wait: bool) -> bool:
        """Whether the scan may still queue rows, its news taken; with `wait`, once it has
        committed more rows or ended. Raises what ended it otherwise."""
        while self.result is None:
            try:
                news = self.news.get(timeout=1) if wait else self.news.get_nowait()
            except queue.Empty:
                if wait:
                    continue
                return True
            if news is _ENDED:
                raise self._gone()
            if isinstance(news, BaseException):
                raise news
            kind, value = news
            if kind == "warn":
                self.warn(value)
            elif kind == "done":
                self.result = value
            elif wait:
                return True
        return False

    def close(self) -> None:
        """End the process: a scan not finished is cut short, its open batch rolled back."""
        if self.proc is None:
            return
        if self.result is None:
            self.proc.kill()
        helpers.stop(self.proc, timeout=60)
        assert self.reader is not None
        self.reader.join()

    def _read(self) -> None:
        """On a thread: the process's messages, in order, onto `news`."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            with contextlib.suppress(OSError, ValueError):
                while (frame := helpers.read(self.proc.stdout)) is not None:
                    try:
                        news = pickle.loads(frame)
                    except Exception as exc:  # an error of the process's that does not load
                        news = BackupDBError(f"the scan process failed: {exc}")
                    self.news.put(news)
        finally:  # whatever happens here, the upload waiting for news is told
            self.news.put(_ENDED)

    def _gone(self) -> BackupDBError:
        return BackupDBError(
            f"the process scanning into backupdb {self.db} ended unexpectedly; run the command "
            "again to finish"
        )


def _serve(db: Path) -> None:
    """The process: the scan it is given, each batch of rows announced once committed, then
    its result (or what it raised)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def send(news: object) -> None:
        helpers.send(stdout, news)

    with contextlib.closing(connect(db)) as conn:
        helpers.ready(stdout)
        frame = helpers.read(stdin)
        if frame is None:
            return
        roots, options = pickle.loads(frame)
        scanner = Scanner(
            conn,
            warn=lambda text: send(("warn", text)),
            on_flushed=lambda: send(("rows", None)),
            **options,
        )
        try:
            result = scanner.run(roots)
        except Exception as exc:
            send(exc)
            return
        send(("done", result))


if __name__ == "__main__":
    helpers.as_helper(int(sys.argv[1]))
    with contextlib.suppress(OSError):  # the backup is gone: nothing to tell
        _serve(Path(sys.argv[2]))
