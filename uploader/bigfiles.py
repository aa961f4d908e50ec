"""Files too large for the read-ahead, read on a thread of their own while small files go on.

A big file takes one pass: its hash and librsync signature and, when it has nothing to delta
against (new, not moved here), its pieces, hashed and compressed on the way into packs of its
own ("side packs"). Until this thread, that pass ran on the uploader's main thread, and about
half of an initial backup of a tree with one 256 MiB file was small files waiting for it.

The main thread keeps the store and the backupdb's writes to itself: it puts and records each side
pack it is handed (`side_packs`), and takes up a big file's queue row once its pass is done. A
file's last side pack is handed over before its pass reports done, so by then every piece has an
id. A kill loses only what is in the spool, as before. This thread only reads the backupdb, on a
read-only connection of its own: a piece the catalog has a blob for (a copy of a stored file,
edited) is not put into a side pack again.
"""

from __future__ import annotations

import io
import os
import sqlite3
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from contextlib import closing
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import BinaryIO

from deltagrid.backupdb import connection, upload_queries
from deltagrid.floor import rdiff
from deltagrid.floor.pools import shut_down
from deltagrid.uploader.catalog import CatalogCache
from deltagrid.uploader.delta_feed import ByteStream
from deltagrid.uploader.packing import FinishedPack, Packer, PendingBlob
from deltagrid.uploader.pieces import Cutter, Pieces, Squeezer
from deltagrid.uploader.readahead import Prepared, begin
from deltagrid.uploader.reader import Source, read_opened, sign, signature_args
from deltagrid.uploader.settings import UploadSettings

_SIGNING = 2  # pieces being signed at a time, beyond the one awaited
_SIG_HEADER = 12  # a librsync signature's magic, block length and strong sum length
_DELTA_WAITING = 8 << 20  # bytes read and not yet taken by the delta, at most
_SIGNATURES_HELD = 64 << 20  # basis signatures handed to passes not yet done, at most


class Stopped(Exception):
    """The upload is ending (an error or Ctrl-C on the main thread): drop the file under way."""


class BigReader:
    def __init__(
        self,
        settings: UploadSettings,
        squeezer: Squeezer,
        spool: Path,
        workdir: Path,
        db: str,
        catalog: CatalogCache,
    ) -> None:
        """`db`: the backupdb's file, read on this thread when `catalog` does not know."""
        self.settings = settings
        self.db = db
        self.catalog = catalog
        self.conn: sqlite3.Connection | None = None  # opened by the first big file's pass
        self.squeezer = squeezer
        self.spool = spool
        self.workdir = workdir
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="dg-big")
        self.hashing = ThreadPoolExecutor(1, thread_name_prefix="dg-big-hash")
        self.deltas = ThreadPoolExecutor(1, thread_name_prefix="dg-big-delta")
        self.finished: SimpleQueue[FinishedPack] = SimpleQueue()
        self.stopping = False
        self.holding = 0  # bytes of basis signatures handed over, their passes not yet done
        self.lock = threading.Lock()
        # Side packs: only this thread's pass touches the open one.
        self.packer = Packer(spool, settings.pack_size, settings.zstd_level)

    def submit(
        self, path: bytes, cut: bool, against: tuple[int, bytes] | None = None
    ) -> Future[Prepared]:
        """Read `path` in one pass; `cut`: into pieces too, as it will be stored whole;
        `against`: (content id, signature) of the version to make an rdiff delta against. The
        signature is dropped (the delta is then made the usual way) if the passes waiting hold
        `_SIGNATURES_HELD` bytes of others: a huge file's runs to hundreds of MB."""
        if against is not None:
            with self.lock:
                if self.holding and self.holding + len(against[1]) > _SIGNATURES_HELD:
                    against = None
                else:
                    self.holding += len(against[1])
        return self.pool.submit(self._pass, path, cut, against)

    def side_packs(self) -> list[FinishedPack]:
        """The side packs finished since the last call."""
        packs = []
        while True:
            try:
                packs.append(self.finished.get_nowait())
            except Empty:
                return packs

    def close(self) -> None:
        self.stopping = True
        shut_down(self.pool)
        shut_down(self.hashing, cancel=False)
        shut_down(self.deltas, cancel=False)
        if self.conn is not None:
            self.conn.close()
        self.packer.discard()
        for pack in self.side_packs():
            pack.writer.path.unlink(missing_ok=True)

    def _pass(self, path: bytes, cut: bool, against: tuple[int, bytes] | None) -> Prepared:
        try:
            return self._prepare(path, cut, against)
        finally:
            if against is not None:
                with self.lock:
                    self.holding -= len(against[1])

    def _prepare(self, path: bytes, cut: bool, against: tuple[int, bytes] | None) -> Prepared:
        prepared, fd = begin(path)
        if fd is None:
            return prepared
        s = self.settings
        try:
            feed = PassFeed(self, prepared, cut, against)
        except BaseException:
            os.close(fd)
            raise
        try:
            source = read_opened(
                fd,
                prepared.st,
                path,
                s.piece_size,
                None if feed.signer is not None else prepared.signature,
                s.block_max,
                self.workdir,
                feed.add,
                self.hashing,
            )
        except BaseException:
            feed.cancel()
            self.packer.discard()
            if prepared.signature is not None:
                prepared.signature.close()
            raise
        prepared.source = source
        if source.temporary or source.data is not None:  # moved on, shrank, or sparse
            feed.cancel()
            self.packer.discard()  # pieces handed over before are left unused
            feed.sign_again(source)
            return prepared
        prepared.delta = feed.finish()
        if cut:
            self._hand_over()
            prepared.spooled = feed.pieces
        return prepared

    def _taker(
        self, pieces: list[PendingBlob | int], signer: PieceSigner | None
    ) -> Callable[[bytes, tuple[bytes, bytes]], None]:
        """Where the cutter puts a file's pieces (and, with `signer`, has them signed): a piece
        seen before in this file, or stored before, is reused."""
        seen: dict[bytes, PendingBlob | int] = {}

        def take(raw: bytes, done: tuple[bytes, bytes]) -> None:
            if signer is not None:
                signer.add(raw)
            blob = seen.get(done[0])
            if blob is None:
                blob = self._stored_blob(done[0])
            if blob is None:
                blob = self.packer.add_frame(done[1], len(raw), done[0])
                if self.packer.full:
                    self._hand_over()
            seen[done[0]] = blob
            pieces.append(blob)

        return take

    def _stored_blob(self, digest: bytes) -> int | None:
        known, blob_id = self.catalog.blob_if_known(digest)
        if known:
            return blob_id
        if self.conn is None:
            self.conn = sqlite3.connect(
                Path(self.db).as_uri() + "?mode=ro", uri=True, check_same_thread=False
            )
        if not connection.hash_indexes_built(self.conn):  # a first backup's: build them
            with closing(connection.connect(Path(self.db))) as conn:
                connection.build_hash_indexes(conn)
        return upload_queries.blobs_by_hash(self.conn, [digest]).get(digest)

    def _hand_over(self) -> None:
        pack = self.packer.finish()
        if pack is not None:
            self.finished.put(pack)


class PassFeed:
    """What one pass feeds with the bytes it reads: the cutter (the pieces of a file stored
    whole), the piece signer and the splitter that serves it (the new signature), and the delta
    against the previous version's signature."""

    def __init__(
        self, reader: BigReader, prepared: Prepared, cut: bool, against: tuple[int, bytes] | None
    ) -> None:
        s, st = reader.settings, prepared.st
        self.reader = reader
        self.prepared = prepared
        self.pieces: list[PendingBlob | int] = []
        self.stopping = lambda: reader.stopping
        sig = None
        self.delta: PassDelta | None = None
        try:
            if s.takes_deltas(st.st_size):
                sig = prepared.signature = tempfile.TemporaryFile(dir=reader.workdir)  # noqa: SIM115 - the uploader closes it
                if against is not None and not cut:
                    self.delta = PassDelta(reader.deltas, reader.workdir, *against)
        except BaseException:
            if sig is not None:
                sig.close()
            raise
        args = signature_args(st.st_size, s.block_max)
        self.signer = None
        if sig is not None and s.piece_size % args[1] == 0:
            self.signer = PieceSigner(reader.squeezer.pool, sig, args)
        self.cutter = (
            Cutter(reader.squeezer, s.piece_size, reader._taker(self.pieces, self.signer))
            if cut
            else None
        )
        # Pieces for the signer alone, when the file is not cut (the cutter hands it its own).
        self.split = (
            Pieces(s.piece_size, self.signer.add) if self.signer is not None and not cut else None
        )

    def add(self, data: bytes) -> None:
        if self.stopping():
            raise Stopped
        if self.cutter is not None:
            self.cutter.add(data)
        if self.split is not None:
            self.split.add(data)
        if self.delta is not None:
            self.delta.add(data)

    def finish(self) -> tuple[int, BinaryIO] | None:
        """Wait for the pieces and the signature; the delta made, if any."""
        try:
            for part in (self.cutter, self.split, self.signer):
                if part is not None:
                    part.finish()
        except BaseException:
            _cancel(self.delta)  # else its thread waits for bytes that never come
            raise
        return self.delta.finish() if self.delta is not None else None

    def cancel(self) -> None:
        _cancel(self.cutter, self.signer, self.delta)

    def sign_again(self, source: Source) -> None:
        """The pass read another file than the source kept (a copy taken as it changed): what
        was signed piece by piece is not this source's, so it is signed afresh."""
        sig = self.prepared.signature
        if self.signer is not None and sig is not None:
            sig.seek(0)
            sig.truncate()
            with source.open() as f:
                sign(f, sig, source.size, self.reader.settings.block_max)


def _cancel(*parts: Cutter | PieceSigner | PassDelta | None) -> None:
    """Stop what a failed or superseded pass started."""
    for part in parts:
        if part is not None:
            part.cancel()


class PassDelta:
    """The rdiff delta of a big file against its previous version, made on a thread of its own
    from the bytes the pass reads (a ByteStream), instead of in a second read on the main
    thread once the pass is done."""

    def __init__(self, pool: Executor, workdir: Path, basis: int, signature: bytes) -> None:
        self.basis = basis
        self.stream = ByteStream(_DELTA_WAITING)
        self.out = tempfile.TemporaryFile(dir=workdir)  # noqa: SIM115 - closed by the uploader or cancel
        self.job = pool.submit(self._run, signature)

    def add(self, data: bytes) -> None:
        self.stream.put(data)

    def finish(self) -> tuple[int, BinaryIO] | None:
        """(basis content id, the delta file); None if it failed (librsync refused the basis's
        signature, the disk is full...): the uploader then makes it the usual way, and meets
        such an error itself."""
        self.stream.end()
        try:
            self.job.result()
        except Exception:
            self.out.close()
            return None
        return self.basis, self.out

    def cancel(self) -> None:
        self.stream.end()
        wait([self.job])
        self.out.close()

    def _run(self, signature: bytes) -> None:
        try:
            rdiff.delta(self.stream, io.BytesIO(signature), self.out)
        finally:
            self.stream.abandon()


class PieceSigner:
    """A big file's librsync signature made a piece at a time on the squeezer's thread, so the
    reading thread does not compute it alone. librsync signs each block on its own: the
    signatures of block-aligned pieces, less the header of all but the first, are the file's
    (tests/test_bigfiles.py checks it)."""

    def __init__(self, pool: Executor, out: BinaryIO, args: tuple[int, int, int]) -> None:
        self.pool = pool
        self.out = out
        self.magic, self.block, self.strong = args
        self.waiting: deque[Future[bytes]] = deque()
        self.header = True

    def add(self, piece: bytes) -> None:
        self.waiting.append(self.pool.submit(self._sign, piece))
        while len(self.waiting) > _SIGNING:
            self._write(self.waiting.popleft().result())

    def finish(self) -> None:
        while self.waiting:
            self._write(self.waiting.popleft().result())

    def cancel(self) -> None:
        for future in self.waiting:
            future.cancel()
        self.waiting.clear()

    def _sign(self, piece: bytes) -> bytes:
        out = io.BytesIO()
        rdiff.signature(io.BytesIO(piece), out, self.strong, self.magic, self.block)
        return out.getvalue()

    def _write(self, signature: bytes) -> None:
        self.out.write(signature if self.header else signature[_SIG_HEADER:])
        self.header = False
