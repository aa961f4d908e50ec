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
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import BinaryIO, NamedTuple

from deltagrid.backupdb import upload_queries
from deltagrid.floor import rdiff
from deltagrid.store.pack import PackWriter
from deltagrid.uploader.delta_feed import ByteStream
from deltagrid.uploader.pieces import Cutter, Pieces, Squeezer
from deltagrid.uploader.readahead import Prepared, begin
from deltagrid.uploader.reader import read_opened, sign, signature_args
from deltagrid.uploader.settings import UploadSettings
from deltagrid.uploader.spool import PendingBlob, new_pack

_SIGNING = 2  # pieces being signed at a time, beyond the one awaited
_SIG_HEADER = 12  # a librsync signature's magic, block length and strong sum length
_DELTA_WAITING = 8 << 20  # bytes read and not yet taken by the delta, at most
_SIGNATURES_HELD = 64 << 20  # basis signatures handed to passes not yet done, at most


class SidePack(NamedTuple):
    """A finished pack of big files' pieces, for the main thread to put and record."""

    writer: PackWriter
    size: int
    blobs: list[PendingBlob]


class Stopped(Exception):
    """The upload is ending (an error or Ctrl-C on the main thread): drop the file under way."""


class BigReader:
    def __init__(
        self, settings: UploadSettings, squeezer: Squeezer, spool: Path, workdir: Path, db: str
    ) -> None:
        """`db`: the backupdb's file, read on this thread."""
        self.settings = settings
        self.db = db
        self.conn: sqlite3.Connection | None = None  # opened by the first big file's pass
        self.squeezer = squeezer
        self.spool = spool
        self.workdir = workdir
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="dg-big")
        self.hashing = ThreadPoolExecutor(1, thread_name_prefix="dg-big-hash")
        self.deltas = ThreadPoolExecutor(1, thread_name_prefix="dg-big-delta")
        self.finished: SimpleQueue[SidePack] = SimpleQueue()
        self.stopping = False
        self.holding = 0  # bytes of basis signatures handed over, their passes not yet done
        self.lock = threading.Lock()
        self.writer: PackWriter | None = None  # only this thread's pass touches the two
        self.blobs: list[PendingBlob] = []

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

    def side_packs(self) -> list[SidePack]:
        """The side packs finished since the last call."""
        packs = []
        while True:
            try:
                packs.append(self.finished.get_nowait())
            except Empty:
                return packs

    def close(self) -> None:
        self.stopping = True
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.hashing.shutdown(wait=True)
        self.deltas.shutdown(wait=True)
        if self.conn is not None:
            self.conn.close()
        self._drop_writer()
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
        st = prepared.st
        s = self.settings
        sig: BinaryIO | None = None
        delta: PassDelta | None = None
        try:
            if s.takes_deltas(st.st_size):
                sig = prepared.signature = tempfile.TemporaryFile(dir=self.workdir)  # noqa: SIM115 - the uploader closes it
                if against is not None and not cut:
                    delta = PassDelta(self.deltas, self.workdir, *against)
        except BaseException:
            os.close(fd)
            if sig is not None:
                sig.close()
            raise
        pieces: list[PendingBlob | int] = []
        signer = None
        args = signature_args(st.st_size, s.block_max)
        if sig is not None and s.piece_size % args[1] == 0:
            signer = PieceSigner(self.squeezer.pool, sig, args)
        cutter = Cutter(self.squeezer, s.piece_size, self._taker(pieces, signer)) if cut else None
        # Pieces for the signer alone, when the file is not cut (the cutter hands it its own).
        split = Pieces(s.piece_size, signer.add) if signer is not None and not cut else None

        def on_bytes(data: bytes) -> None:
            if self.stopping:
                raise Stopped
            if cutter is not None:
                cutter.add(data)
            if split is not None:
                split.add(data)
            if delta is not None:
                delta.add(data)

        try:
            source = read_opened(
                fd,
                st,
                path,
                s.piece_size,
                None if signer is not None else sig,
                s.block_max,
                self.workdir,
                on_bytes,
                self.hashing,
            )
        except BaseException:
            _cancel(cutter, signer, delta)
            self._drop_writer()
            if sig is not None:
                sig.close()
            raise
        prepared.source = source
        if source.temporary or source.data is not None:  # moved on, shrank, or sparse
            _cancel(cutter, signer, delta)
            self._drop_writer()  # pieces handed over before are left unused
            if signer is not None and sig is not None:  # what was signed is not this source
                sig.seek(0)
                sig.truncate()
                with source.open() as f:
                    sign(f, sig, source.size, s.block_max)
            return prepared
        try:
            if cutter is not None:
                cutter.finish()
            if split is not None:
                split.finish()
            if signer is not None:
                signer.finish()
        except BaseException:
            _cancel(delta)  # else its thread waits for bytes that never come
            raise
        if delta is not None:
            prepared.delta = delta.finish()
        if cutter is not None:
            self._hand_over()
            prepared.spooled = pieces
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
                if self.writer is None:
                    self.writer = new_pack(self.spool, self.settings.zstd_level)
                blob = PendingBlob(self.writer.add_frame(done[1], len(raw), done[0]))
                self.blobs.append(blob)
                if self.writer.size >= self.settings.pack_size:
                    self._hand_over()
            seen[done[0]] = blob
            pieces.append(blob)

        return take

    def _stored_blob(self, digest: bytes) -> int | None:
        if self.conn is None:
            self.conn = sqlite3.connect(
                Path(self.db).as_uri() + "?mode=ro", uri=True, check_same_thread=False
            )
        return upload_queries.blobs_by_hash(self.conn, [digest]).get(digest)

    def _hand_over(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            self.finished.put(SidePack(writer, writer.finish(), self.blobs))
            self.blobs = []

    def _drop_writer(self) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
            self.blobs = []


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
