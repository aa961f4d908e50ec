"""The upload's recorder: its transactions (recording.py) written by a process of its own while
the upload reads and packs the next files.

On a tree of small files a third of the upload's main thread went to recording: each file's
rows built, bound and inserted (content, blob, path, version, done mark). A thread could not take
that from it (most of it holds the GIL); a process takes it to the other core, and the main
thread only encodes each transaction as plain values. A small upload records on its own
connection, as starting the process costs a tenth of a second: the process starts with the
first transaction of `_PROCESS_FROM` entries.

One transaction is in flight at a time: the next is encoded and sent once the answer to the one
before is taken, so every id it names is known. A kill of the upload kills the process
(floor/helpers.py), whose open transaction then rolls back: the packs put and not recorded are
at most the one in flight and the one being filled, which prune removes. A signal stops the
upload as ever; the process finishes the transaction at hand and ends when its input does.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from deltagrid.backupdb.connection import connect
from deltagrid.floor import helpers
from deltagrid.floor.errors import BackupDBError
from deltagrid.uploader.recording import (
    Answer,
    PendingContent,
    PutPack,
    Record,
    apply,
    encode,
)

_PROCESS_FROM = 1000  # entries in one transaction
# SQLite's page cache here (its default is 2 MiB). Each transaction inserts thousands of keys at
# random places of the blobs' and contents' hash indexes, ~20 MiB each at a million files: with
# them cached, 4.4 s less system CPU on a million-file first backup (pages not read again), on
# the core the recorder shares with the scan. A first backup now builds those indexes at its end
# (catalog.py); a large upload into a catalog that has them still inserts into them.
_CACHE_KIB = 64 << 10


class Recorder:
    """Records transactions in order, on `conn` or in the recorder process; `then(pack, new)`
    is called on this thread once each is committed, its pack's blobs and new contents with
    their ids."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        db: Path,
        then: Callable[[PutPack | None, list[PendingContent]], None],
    ) -> None:
        self.conn = conn
        self.db = db
        self.then = then
        self.proc: subprocess.Popen[bytes] | None = None
        self.sent: tuple[PutPack | None, list[PendingContent]] | None = None  # answer awaited
        self.may_start = True

    def submit(
        self, pack: PutPack | None, records: list[Record], snapshot_id: int, fresh: bool
    ) -> None:
        """Record `pack` (if any) and `records` once the transaction before is committed;
        `fresh`: their new contents cannot be in the catalog (recording.py)."""
        self.wait()
        message, new = encode(snapshot_id, fresh, pack, records)
        if self.proc is None and self.may_start and len(records) >= _PROCESS_FROM:
            self._start()
        if self.proc is None:
            self._took(apply(self.conn, message), pack, new)
            return
        assert self.proc.stdin is not None
        try:
            helpers.send(self.proc.stdin, message)
        except OSError:
            raise self._gone() from None
        self.sent = (pack, new)

    def wait(self) -> None:
        """Take the answer to the transaction in flight, if any: raise what it met."""
        if self.sent is None:
            return
        assert self.proc is not None and self.proc.stdout is not None
        pack, new = self.sent
        self.sent = None
        frame = helpers.read(self.proc.stdout)
        if frame is None:
            raise self._gone()
        answer: Answer | BaseException = pickle.loads(frame)
        if isinstance(answer, BaseException):
            raise answer
        self._took(answer, pack, new)

    def close(self) -> None:
        """End the process: it commits what it was given (or rolls it back, if a signal makes
        us kill it) before the upload goes on to anything else."""
        if self.proc is not None:
            helpers.stop(self.proc, timeout=60)

    def _start(self) -> None:
        """Start the process (helpers.start). One that cannot start is not used: this run
        records on its own connection, as a small one does."""
        self.may_start = False
        self.proc = helpers.start(__name__, os.fspath(self.db))

    def _took(self, answer: Answer, pack: PutPack | None, new: list[PendingContent]) -> None:
        blob_ids, content_ids = answer
        if pack is not None:
            for blob, blob_id in zip(pack[2], blob_ids, strict=True):
                blob.id = blob_id
        for content, content_id in zip(new, content_ids, strict=True):
            content.id = content_id
        self.then(pack, new)

    def _gone(self) -> BackupDBError:
        return BackupDBError(
            f"the process recording into backupdb {self.db} ended unexpectedly; run the "
            "command again to finish"
        )


def _serve(db: Path) -> None:
    """The process: a transaction a message, each answered with its ids or what it raised."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    with contextlib.closing(connect(db)) as conn:
        conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        helpers.ready(stdout)
        while (frame := helpers.read(stdin)) is not None:
            try:
                answer: object = apply(conn, pickle.loads(frame))
            except Exception as exc:
                answer = exc
            helpers.send(stdout, answer)


if __name__ == "__main__":
    helpers.as_helper(int(sys.argv[1]))
    with contextlib.suppress(OSError):  # the upload is gone: nothing to answer
        _serve(Path(sys.argv[2]))
