"""Local cache of librsync signatures by content hash, in one SQLite file: sigs/signatures.sqlite.

Signatures are what deltas are computed against; they never go to the store (a 256 MB file's is
megabytes a night). A missing one is rebuilt from the store, so this is only a cache: WAL with
synchronous=NORMAL (no fsync per commit), and a file that is damaged or not SQLite is moved aside
and started again empty, silently. A row keeps its signature's BLAKE2b, and one that fails the
check reads as missing: a wrong signature would silently give a wrong delta.

One database and buffered puts, because a file per signature cost the uploader's main thread an
inode and a GIL round trip per syscall: `put` buffers, `flush` (after each uploader record) hands
the buffer to a thread of its own that writes it in one transaction while the upload goes on (on
the main thread, those writes were 6% of an initial backup's time). One write is in flight at a
time, and every other use of the database waits for it first, so the connection is never used
by two threads at once and a `get` sees every `put`; `wait` raises what the write raised. The
database opens at first use, not in the constructor (every command builds a Home), so only the
uploader, under the home's lock, opens it and imports the old layout: an `xx/<hex hash>` file per
signature, ending with its BLAKE2b.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from deltagrid.backupdb.connection import DAMAGE
from deltagrid.floor.pools import shut_down
from deltagrid.store.pack import digest

FLUSH_BYTES = 64 << 20  # a huge run's buffer is written before it grows past this
# A signature this big (a 56 MiB file's) is written and read in place (incremental blob I/O):
# bound as a parameter or read as a column, SQLite and the sqlite3 module each copy it whole,
# and at a 1 GiB file's 18 MiB those copies were the delta backup's peak memory.
_IN_PLACE = 1 << 20
_T = TypeVar("_T")
_INSERT = "INSERT OR REPLACE INTO sig VALUES (?, ?, ?)"  # hash, signature, its BLAKE2b
_SETUP = """
    PRAGMA busy_timeout=10000;
    PRAGMA journal_mode=WAL;
    PRAGMA synchronous=NORMAL;
    CREATE TABLE IF NOT EXISTS sig (hash BLOB PRIMARY KEY, sig BLOB NOT NULL, digest BLOB NOT NULL);
"""


class SigCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "signatures.sqlite"
        self.buffer: dict[bytes, bytes] = {}
        self.buffered = 0  # bytes in `buffer`
        self.conn: sqlite3.Connection | None = None
        self.writer: ThreadPoolExecutor | None = None  # made at the first flush
        self.writing: Future[None] | None = None

    def get(self, content_hash: bytes) -> bytes | None:
        if content_hash in self.buffer:
            return self.buffer[content_hash]
        self.wait()
        row = self._use(lambda conn: _read(conn, content_hash))
        return row[0] if row is not None and digest(row[0]) == row[1] else None

    def put(self, content_hash: bytes, sig: bytes) -> None:
        self.buffered += len(sig) - len(self.buffer.get(content_hash, b""))
        self.buffer[content_hash] = sig
        if self.buffered > FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Start writing every buffered put, in one transaction, on the writer thread."""
        if not self.buffer:
            return
        self.wait()
        puts, self.buffer, self.buffered = self.buffer, {}, 0
        if self.writer is None:
            self.writer = ThreadPoolExecutor(1, thread_name_prefix="dg-sigcache")
        self.writing = self.writer.submit(self._write_puts, puts)

    def wait(self) -> None:
        """Wait for the write under way, if any; raise what it raised."""
        writing, self.writing = self.writing, None
        if writing is not None:
            writing.result()

    def discard(self, content_hash: bytes) -> None:
        self.buffered -= len(self.buffer.pop(content_hash, b""))
        self.wait()
        self._use(lambda conn: _write(conn, "DELETE FROM sig WHERE hash = ?", [(content_hash,)]))

    def close(self) -> None:
        """Write what is buffered, then close: the writer thread stopped before the connection
        it uses, even when a signal lands on the way. A connection left open in a process that
        goes on (a test's, a library user's) holds SQLite's locks only until the process next
        closes any descriptor of the file, which POSIX locks do not survive."""
        try:
            self.flush()
            self.wait()
        finally:
            if self.writer is not None:
                shut_down(self.writer)
                self.writer = None
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    def _write_puts(self, puts: dict[bytes, bytes]) -> None:
        self._use(lambda conn: _put(conn, puts))

    def _use(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """`work` on the database; once more on a fresh one if this one is damaged."""
        try:
            return work(self._open())
        except DAMAGE as exc:
            if isinstance(exc, sqlite3.DatabaseError) and type(exc) is not sqlite3.DatabaseError:
                raise  # busy, full disk, I/O...: not damage
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.path.replace(self.path.with_name(self.path.name + ".damaged"))
        for extra in ("-wal", "-shm"):  # a stale WAL must not be replayed into the new file
            self.path.with_name(self.path.name + extra).unlink(missing_ok=True)
        return work(self._open())

    def _open(self) -> sqlite3.Connection:
        """The connection, opened at first use."""
        if self.conn is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, check_same_thread=False)  # one at a time
            self.conn.executescript(_SETUP)
            old = [d for d in self.root.iterdir() if len(d.name) == 2 and d.is_dir()]
            if old:
                _write(self.conn, _INSERT, _read_old(old))
                for d in old:
                    shutil.rmtree(d)
        return self.conn


def _write(conn: sqlite3.Connection, statement: str, rows: Iterable[tuple[bytes, ...]]) -> None:
    with conn:
        conn.executemany(statement, rows)


def _put(conn: sqlite3.Connection, puts: dict[bytes, bytes]) -> None:
    """Write `puts` in one transaction; a large signature into a zeroblob, in place."""
    small = [(h, s, digest(s)) for h, s in puts.items() if len(s) < _IN_PLACE]
    with conn:
        conn.executemany(_INSERT, small)
        for h, s in puts.items():
            if len(s) >= _IN_PLACE:
                row = conn.execute(
                    "INSERT OR REPLACE INTO sig VALUES (?, zeroblob(?), ?)", (h, len(s), digest(s))
                ).lastrowid
                assert row is not None
                with conn.blobopen("sig", "sig", row) as blob:
                    blob.write(s)


def _read(conn: sqlite3.Connection, content_hash: bytes) -> tuple[bytes, bytes] | None:
    """A row's (signature, its BLAKE2b); a large signature read in place."""
    query = "SELECT rowid, digest, CASE WHEN length(sig) < ? THEN sig END FROM sig WHERE hash = ?"
    row = conn.execute(query, (_IN_PLACE, content_hash)).fetchone()
    if row is None:
        return None
    rowid, check, small = row
    if small is not None:
        return small, check
    with conn.blobopen("sig", "sig", rowid, readonly=True) as blob:
        return blob.read(), check


def _read_old(dirs: list[Path]) -> Iterator[tuple[bytes, bytes, bytes]]:
    """The valid signatures of the old layout: files named by hash, each ending with its BLAKE2b."""
    for path in (p for d in dirs for p in d.iterdir()):
        try:
            content_hash, data = bytes.fromhex(path.name), path.read_bytes()
        except (ValueError, OSError):
            continue
        sig, check = data[:-32], data[-32:]
        if len(content_hash) == 32 and len(data) >= 32 and digest(sig) == check:
            yield content_hash, sig, check
