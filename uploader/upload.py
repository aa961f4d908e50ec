"""The resumable uploader: drain the queue into packs, record where every blob lives.

Per file: one consistent read gives the content hash and the new signature; known content is
reused (renames and copies upload nothing); otherwise an rdiff delta against the previous
version's signature is stored, or a keyframe when the chain would grow past its bound. Blobs go
to a local spool pack; when it is full it is put to the store and, in one transaction, the pack,
its blobs, the finished files' versions and their queue rows' done marks are recorded. A kill at
any point loses at most the pack in flight.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

from deltagrid.backupdb import scan_queries, snapshots, upload_queries
from deltagrid.backupdb.connection import transaction
from deltagrid.backupdb.entries import KIND_DIR, KIND_FILE, KIND_LINK, Meta, kind_of
from deltagrid.backupdb.scan_queries import LiveEntry
from deltagrid.backupdb.upload_queries import Content, QueueRow
from deltagrid.floor import fs, longpath, rdiff
from deltagrid.floor.errors import CorruptData, StoreError, naming
from deltagrid.store.base import Store, check_stored
from deltagrid.store.pack import PackWriter, digest
from deltagrid.uploader.bigfiles import BigReader
from deltagrid.uploader.catalog import CatalogCache
from deltagrid.uploader.pieces import Squeezer
from deltagrid.uploader.readahead import Prepared, ReadAhead, discard
from deltagrid.uploader.reader import (
    ChangedWhileReading,
    HashingReader,
    Source,
    SourceError,
    copy_source,
    read_source,
    sign,
)
from deltagrid.uploader.result import UploadResult
from deltagrid.uploader.settings import UploadSettings
from deltagrid.uploader.sigcache import SigCache
from deltagrid.uploader.spool import WORK_PREFIX, PendingBlob, clear_leftovers, new_pack

_VANISHED = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO}
_BATCH = 256
_PACK_ENTRIES = 20_000  # a pack of tiny files is put early: each entry waiting costs ~2 KB
_DEFERRED = 64  # big files read ahead of the main thread, at most
_BIG_AHEAD = 4  # big files started beyond the batch at hand, at most...
_LOOK_AHEAD = 4096  # ...among this many queue rows beyond it


@dataclass(eq=False)
class PendingContent:
    digest: bytes
    size: int
    basis_id: int | None
    depth: int
    chain_bytes: int
    blobs: list[PendingBlob | int]
    id: int | None = None


@dataclass
class Record:
    """What one queue row changes in the backupdb, written when its blobs are safe."""

    qid: int
    outcome: str
    path: bytes
    end: int | None = None  # version that stops being live
    meta: Meta | None = None  # new version, if any
    content: PendingContent | int | None = None
    recheck: bool = False
    end_below: list[int] = field(default_factory=list)  # a directory gone: what was inside it


class Uploader:
    """Drains the queue on a plain sqlite3 connection to the backupdb (no transaction open)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        store: Store,
        spool: Path,
        sigcache: SigCache,
        settings: UploadSettings,
        on_progress: Callable[[int], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.conn = conn
        self.store = store
        self.spool = spool
        self.sigcache = sigcache
        self.settings = settings
        self.on_progress = on_progress or (lambda _n: None)
        self.warn = warn or (lambda _m: None)
        self.writer: PackWriter | None = None
        self.spool_blobs: list[PendingBlob] = []
        self.blob_index: dict[bytes, PendingBlob] = {}
        self.pending_contents: dict[bytes, PendingContent] = {}
        self.records: list[Record] = []
        self.ended_contents: set[int] = set()  # their signatures may go once the run is done
        self.ended: set[int] = set()  # versions this run ends: a version ends once
        self.gone_dirs: set[bytes] = set()  # directories the scan saw that this run found gone
        self.prepared: Future[Prepared] | None = None  # the current row's read-ahead
        self.deleting_scans: dict[int, bool] = {}  # scan: did it find files gone?
        self.scan_roots: dict[int, set[bytes]] = {}  # scan: its roots, when asked
        self.big_reads: dict[int, Future[Prepared]] = {}  # by queue row, until the row comes
        self.big_seen = 0  # queue rows up to this one were looked at for big files
        self.deferred: deque[tuple[QueueRow, LiveEntry | None, Future[Prepared]]] = deque()

    # --- the drain -----------------------------------------------------------------------------

    def run(self) -> UploadResult:
        """Drain the queue. An OSError naming no file comes from writing a temporary file of
        the spool's (a signature, a delta, a private copy: anonymous files), so it names the
        spool: on a full disk the message says which one."""
        with naming(self.spool):
            return self._run()

    def _run(self) -> UploadResult:
        clear_leftovers(self.spool)
        self.workdir = Path(tempfile.mkdtemp(dir=self.spool, prefix=WORK_PREFIX))
        self.ahead = ReadAhead(self.settings, self.workdir)
        self.squeezer = Squeezer(self.settings.zstd_level)
        db = self.conn.execute("PRAGMA database_list").fetchone()[2]
        self.big = BigReader(self.settings, self.squeezer, self.spool, self.workdir, db)
        self.catalog = CatalogCache(self.conn, self.ahead.ready_digests)
        try:
            conn = self.conn
            self.result = UploadResult(snapshots.last_snapshot_id(conn) + 1)
            after = 0
            while rows := upload_queries.pending(conn, after, _BATCH):
                lives = scan_queries.live_versions(conn, [row.path for row in rows])
                self.ahead.feed(rows, lives)
                self._feed_big(rows, lives)
                self._look_ahead_big(rows[-1].id)
                for row in rows:
                    self._settle()
                    big = self.big_reads.pop(row.id, None)
                    if big is not None:
                        self.deferred.append((row, lives.get(row.path), big))
                    else:
                        self.prepared = self.ahead.take(row.id)
                        self._process_prepared(row, lives.get(row.path))
                    after = row.id
                if self.writer is None and len(self.records) >= 1000:
                    self._record()
                elif len(self.records) >= _PACK_ENTRIES:
                    self._flush_pack()
            self._settle(everything=True)
            self._flush_pack()
            for unused in upload_queries.unused_contents(conn, self.ended_contents):
                self.sigcache.discard(unused)
            self.sigcache.wait()
        finally:
            self.big.close()
            self.ahead.close()
            self.squeezer.close()
            if self.writer is not None:
                self.writer.discard()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.result

    def _process_prepared(self, row: QueueRow, live: LiveEntry | None) -> None:
        self._process(row, live)
        if self.prepared is not None:  # not used: the entry went another way
            discard(self.prepared)
            self.prepared = None

    # --- big files, read on their own thread ---------------------------------------------------

    def _feed_big(self, rows: list[QueueRow], lives: dict[bytes, LiveEntry]) -> None:
        """Start reading the files too large for the read-ahead; those with nothing to delta
        against (new, not moved here: as the scan saw them) are cut into pieces as read, the
        others' delta is made as read."""
        big = self.settings.piece_size
        for row in rows:
            if row.id in self.big_reads:  # started by the look-ahead
                continue
            if row.reason != "deleted" and row.kind == KIND_FILE and row.size > big:
                basis_id = _previous_content(lives.get(row.path))
                if basis_id is None:
                    basis_id = self._moved_from(row.scan_id, row)
                against = None
                if basis_id is not None:
                    basis = upload_queries.content_by_id(self.conn, basis_id)
                    signature = self.sigcache.get(basis.hash)  # a lost one is rebuilt later
                    if signature is not None and self._may_delta(row.size, basis):
                        against = (basis.id, signature)
                self.big_reads[row.id] = self.big.submit(row.path, basis_id is None, against)

    def _look_ahead_big(self, after: int) -> None:
        """Start a few big files of the queue rows beyond this batch too: the big-file thread
        then goes from one to the next instead of waiting for the main thread to reach each
        one's batch, while the second core has room (the stdlib's 45 MiB libpython.a was read
        a second and a half after the 256 MiB file, alone)."""
        room = _BIG_AHEAD - len(self.big_reads)
        start, horizon = max(after, self.big_seen), after + _LOOK_AHEAD
        if room <= 0 or start >= horizon:
            return
        rows = upload_queries.pending_big(self.conn, start, horizon, self.settings.piece_size, room)
        self.big_seen = rows[-1].id if len(rows) == room else horizon
        self._feed_big(rows, scan_queries.live_versions(self.conn, [row.path for row in rows]))

    def _settle(self, everything: bool = False) -> None:
        """Take up the big files whose pass is done, in queue order; wait for all of them, or
        for the oldest while too many wait. Out of queue order is safe: a path has at most one
        pending row (a finished scan supersedes older ones below its roots), and nothing below
        a file is queued after it."""
        while self.deferred:
            row, live, future = self.deferred[0]
            if not (everything or future.done() or len(self.deferred) > _DEFERRED):
                break
            self.deferred.popleft()
            self._adopt_side_packs(future)
            self.prepared = future
            self._process_prepared(row, live)
        self._adopt_side_packs(None)

    def _adopt_side_packs(self, wanted: Future[Prepared] | None) -> None:
        """Put and record the side packs finished so far: all of `wanted`'s, once it is done."""
        if wanted is not None:
            wait([wanted])
        for pack in self.big.side_packs():
            hashes = [blob.entry.hash for blob in pack.blobs]
            stored = self.catalog.stored_blobs(hashes)
            if len(stored) == len(set(hashes)):  # a copy of what the store has: not put again
                pack.writer.path.unlink()
                for blob in pack.blobs:
                    blob.id = stored[blob.entry.hash]
                continue
            try:
                self._put_pack(pack.writer, pack.size, pack.blobs, with_entries=False)
            except BaseException:
                pack.writer.discard()
                raise

    def _process(self, row: QueueRow, live: LiveEntry | None) -> None:
        if live is not None and live.id in self.ended:
            live = None
        if live is not None and live.content_id is not None:
            self.ended_contents.add(live.content_id)
        end = live.id if live is not None else None
        if row.reason == "deleted":
            self.result.counts["deleted"] += 1 if live is not None else 0
            self._add(Record(row.id, "deleted", row.path, end=end))
            return
        try:
            if self._below_gone(row.path):  # what is there now came after the scan
                raise SourceError(OSError(errno.ENOENT, "its directory went away", row.path))
            record = self._entry(row, live)
        except SourceError as exc:
            if exc.error.errno in _VANISHED:
                self.result.counts["vanished"] += 1
                self.result.vanished.append(row.path)
                self._add(Record(row.id, "vanished", row.path, end=end))
                self._end_below(self.records[-1], row, live)
            else:
                self.result.counts["unreadable"] += 1
                self.result.unreadable.append((row.path, str(exc)))
                self.warn(f"cannot read {os.fsdecode(row.path)}: {exc}")
                self.records.append(Record(row.id, "unreadable", row.path))
            return
        self.on_progress(row.size)
        self._add(record)
        if record.meta is not None and record.meta.kind != KIND_DIR:
            self._end_below(record, row, live)

    def _end_below(self, record: Record, row: QueueRow, live: LiveEntry | None) -> None:
        """A directory vanished or became a file or symlink after the scan: what the catalog has
        below it ends too (the scan queued only what it saw change), and what the scan queued
        below it has vanished, or the snapshot would hold entries below a file or no directory."""
        if row.kind == KIND_DIR:
            self.gone_dirs.add(row.path)
        if live is not None and live.kind == KIND_DIR:
            below = [v.id for v in scan_queries.live_entries_below(self.conn, record.path)]
            record.end_below = [v for v in below if v not in self.ended]
            self.ended.update(below)

    def _add(self, record: Record) -> None:
        self.records.append(record)
        if record.end is not None:
            self.ended.add(record.end)

    def _entry(self, row: QueueRow, live: LiveEntry | None) -> Record:
        """The record for a new, changed or metadata-only entry, read as it is now."""
        prepared = self._take_prepared()
        if prepared is not None:
            st = prepared.st
        else:
            try:
                st = longpath.lstat(row.path)
                if row.kind == KIND_DIR and stat.S_ISLNK(st.st_mode) and self._is_root(row):
                    st = os.stat(row.path)  # a source that links to a directory: its tree
            except OSError as exc:
                raise SourceError(exc) from exc
        kind = kind_of(st.st_mode)
        end = live.id if live is not None else None
        if kind is None:  # became a socket or device: it leaves the backup
            raise SourceError(OSError(errno.ENXIO, "no longer a file, directory or symlink"))
        content: PendingContent | int | None = None
        recheck = False
        if kind == KIND_FILE:  # even a chmod'ed file is re-read: only its hash proves its bytes
            meta, content, recheck = self._file(row, live, prepared, st)
        else:
            target = None
            if kind == KIND_LINK:
                try:
                    target = fs.read_link(row.path)
                except OSError as exc:
                    raise SourceError(exc) from exc
            meta = Meta.from_stat(st, target)
        if (
            live is not None
            and not live.recheck
            and not recheck
            and Meta.from_row(live) == meta
            and live.content_id == content
        ):
            self.result.counts["unchanged"] += 1
            return Record(row.id, "unchanged", row.path)
        self.result.counts[{"f": "files", "d": "dirs", "l": "symlinks"}[kind]] += 1
        return Record(row.id, "stored", row.path, end, meta, content, recheck)

    def _is_root(self, row: QueueRow) -> bool:
        """Whether the row is a root of its scan (which may be a symlink to a directory)."""
        if row.scan_id not in self.scan_roots:
            self.scan_roots[row.scan_id] = scan_queries.scan_roots(self.conn, row.scan_id)
        return row.path in self.scan_roots[row.scan_id]

    def _below_gone(self, path: bytes) -> bool:
        while self.gone_dirs and (parent := os.path.dirname(path)) != path:
            if parent in self.gone_dirs:
                return True
            path = parent
        return False

    # --- one file ------------------------------------------------------------------------------

    def _take_prepared(self) -> Prepared | None:
        """What a reader thread prepared for the current row; its SourceError is raised here."""
        future, self.prepared = self.prepared, None
        return future.result() if future is not None else None

    def _file(
        self, row: QueueRow, live: LiveEntry | None, prepared: Prepared | None, st: os.stat_result
    ) -> tuple[Meta, PendingContent | int, bool]:
        ahead = None  # what a reader thread made of this file
        with ExitStack() as stack:
            sig_out: BinaryIO | None
            if prepared is not None and prepared.source is not None:
                ahead = prepared
                start_ns, source, sig_out = prepared.start_ns, prepared.source, prepared.signature
                if sig_out is not None:
                    stack.enter_context(sig_out)
                if prepared.delta is not None:
                    stack.enter_context(prepared.delta[1])
            else:  # not read ahead: it was no regular file when scanned
                start_ns = time.time_ns()
                # No temporary file for a small file's (unwanted) signature: one a file adds up.
                sig_out = (
                    stack.enter_context(tempfile.TemporaryFile(dir=self.workdir))
                    if self.settings.takes_deltas(st.st_size)
                    else None
                )
                source = read_source(
                    row.path,
                    self.settings.piece_size,
                    sig_out,
                    self.settings.block_max,
                    self.workdir,
                )
            try:
                self.result.bytes_read += source.size
                try:
                    content = self._content(row, live, source, sig_out, ahead)
                except ChangedWhileReading:
                    source.cleanup()
                    source = copy_source(
                        row.path, None, sig_out, self.settings.block_max, self.workdir
                    )
                    content = self._content(row, live, source, sig_out)
            finally:
                source.cleanup()
        recheck = source.changed or source.meta.mtime_ns >= start_ns - 1_000_000_000
        return source.meta, content, recheck

    def _content(
        self,
        row: QueueRow,
        live: LiveEntry | None,
        source: Source,
        sig: BinaryIO | None,
        ahead: Prepared | None = None,
    ) -> PendingContent | int:
        """Find or store the content `source` describes; `ahead`: what a reader thread made of
        it besides (a compressed frame, pieces in side packs, a delta)."""
        signature = b""
        if sig is not None and self.settings.takes_deltas(source.size):
            sig.seek(0)
            signature = sig.read()
        known = self.pending_contents.get(source.digest)
        if known is None:
            found = self.catalog.content(source.digest)
            if found is not None:
                if signature and self.sigcache.get(source.digest) is None:
                    self.sigcache.put(source.digest, signature)
                if live is None or live.content_id != found:
                    self.result.counts["deduplicated"] += 1
                return found
        else:
            return known
        content = self._delta(row, live, source, ahead.delta if ahead else None) or self._keyframe(
            source, ahead
        )
        if signature:
            self.sigcache.put(source.digest, signature)
        self.pending_contents[source.digest] = content
        return content

    def _moved_from(self, scan_id: int, seen: QueueRow | Meta) -> int | None:
        """The content of a file deleted in the same scan that a new one seen so likely came
        from (rename, then edit). Asked only of a scan that found files gone: a query a file
        costs a GIL handover, 0.1 ms, on a first backup."""
        if scan_id not in self.deleting_scans:
            self.deleting_scans[scan_id] = upload_queries.deletes_files(self.conn, scan_id)
        if not self.deleting_scans[scan_id]:
            return None
        return upload_queries.move_basis(
            self.conn, scan_id, seen.inode, seen.dev, seen.size, seen.mtime_ns
        )

    def _basis(self, row: QueueRow, live: LiveEntry | None, source: Source) -> Content | None:
        """The content to delta against: the path's previous version, or where it moved from."""
        basis_id = _previous_content(live)
        if basis_id is None:
            basis_id = self._moved_from(row.scan_id, source.meta)
        return None if basis_id is None else upload_queries.content_by_id(self.conn, basis_id)

    def _basis_signature(self, basis: Content) -> bytes | None:
        cached = self.sigcache.get(basis.hash)
        if cached is not None:
            return cached
        try:  # e.g. after attach on a new machine: rebuild the basis from the store
            rebuilt = self._rebuild(basis.id)
        except (CorruptData, StoreError) as exc:
            self.warn(f"cannot rebuild delta basis {basis.hash.hex()[:16]}: {exc}")
            return None
        try:
            out = io.BytesIO()
            with open(rebuilt, "rb") as f:
                sign(f, out, basis.size, self.settings.block_max)
        finally:
            rebuilt.unlink()
        self.sigcache.put(basis.hash, out.getvalue())
        return out.getvalue()

    def _rebuild(self, content_id: int) -> Path:
        """A content's bytes from the store, in a file under the workdir. Rare (a signature lost
        or never made here), so restore's rebuild is imported only then."""
        from deltagrid.restore.rebuild import DirectSource, materialize

        return materialize(self.conn, DirectSource(self.store), content_id, self.workdir)

    def _may_delta(self, size: int, basis: Content) -> bool:
        """Whether a file of `size` may be stored as a delta against `basis`, as far as the
        sizes and the chain's length tell (its bytes are checked once the delta is made)."""
        s = self.settings
        return s.takes_deltas(size) and s.takes_deltas(basis.size) and basis.depth < s.max_chain

    def _delta(
        self,
        row: QueueRow,
        live: LiveEntry | None,
        source: Source,
        made: tuple[int, BinaryIO] | None = None,
    ) -> PendingContent | None:
        """`made`: (basis content id, delta file), as the big file's pass made it."""
        size = source.size
        if not self.settings.takes_deltas(size):
            return None
        basis = self._basis(row, live, source)
        if basis is None or not self.settings.takes_deltas(basis.size):
            return None
        if not self._may_delta(size, basis):
            self.result.counts["keyframes_by_bound"] += 1
            return None
        with ExitStack() as stack:
            if made is not None and made[0] == basis.id:
                delta = made[1]
                delta.seek(0, io.SEEK_END)
            else:
                basis_sig = self._basis_signature(basis)
                if basis_sig is None:
                    return None
                delta = stack.enter_context(tempfile.TemporaryFile(dir=self.workdir))
                # Past the size read first, the bytes differ: no further (reader.GROWTH)
                reader = HashingReader(stack.enter_context(source.open()), limit=source.size + 1)
                rdiff.delta(reader, io.BytesIO(basis_sig), delta)
                source.check(reader)
            delta_size = delta.tell()
            if basis.chain_bytes + delta_size > self.settings.max_chain_ratio * size:
                self.result.counts["keyframes_by_bound"] += 1
                return None
            delta.seek(0)
            blobs = self._pieces(delta)
        self.result.counts["deltas"] += 1
        return PendingContent(
            source.digest, size, basis.id, basis.depth + 1, basis.chain_bytes + delta_size, blobs
        )

    def _keyframe(self, source: Source, ahead: Prepared | None) -> PendingContent:
        """Store `source` whole, from its pieces in side packs or its compressed frame if a
        reader thread made them."""
        data = source.data
        blobs: list[PendingBlob | int]
        if ahead is not None and ahead.spooled is not None:
            blobs = list(ahead.spooled)
        elif (
            ahead is not None
            and ahead.frame is not None
            and data
            and len(data) <= self.settings.piece_size  # not grown past a blob while read
        ):
            blobs = [self._blob(data, (source.digest, ahead.frame))]
        else:
            with source.open() as f:
                reader = HashingReader(f, limit=source.size + 1)
                blobs = self._pieces(reader)
                source.check(reader)
        self.result.counts["keyframes"] += 1
        return PendingContent(source.digest, source.size, None, 0, 0, blobs)

    def _pieces(self, f: Any) -> list[PendingBlob | int]:
        size = self.settings.piece_size
        return [self._blob(raw, done) for raw, done in self.squeezer.pieces(lambda: f.read(size))]

    # --- blobs and packs -----------------------------------------------------------------------

    def _blob(self, raw: bytes, done: tuple[bytes, bytes] | None = None) -> PendingBlob | int:
        """`done`: the blob's hash and compressed frame, when a reader thread made them."""
        h = digest(raw) if done is None else done[0]
        known = self.blob_index.get(h)
        if known is not None:
            return known
        found = self.catalog.blob(h)
        if found is not None:
            return found
        if self.writer is None:
            self.writer = new_pack(self.spool, self.settings.zstd_level)
        if done is None:
            blob = PendingBlob(self.writer.add(raw, h))
        else:
            blob = PendingBlob(self.writer.add_frame(done[1], len(raw), h))
        self.spool_blobs.append(blob)
        self.blob_index[h] = blob
        if self.writer.size >= self.settings.pack_size:
            self._flush_pack()
        return blob

    def _flush_pack(self) -> None:
        """Put the spool pack to the store, then record it and every finished entry."""
        writer = self.writer
        if writer is None:
            self._record()
            return
        self._put_pack(writer, writer.finish(), self.spool_blobs, with_entries=True)
        self.writer = None  # not before: if the put fails, the run's end discards the file
        self.spool_blobs = []
        self.blob_index = {}

    def _put_pack(
        self, writer: PackWriter, size: int, blobs: list[PendingBlob], with_entries: bool
    ) -> None:
        """Put a finished pack to the store, then record it and its blobs, and with them every
        finished entry if `with_entries`."""
        ref = check_stored(self.store, self.store.move_file(writer.path, writer.digest()), size)
        self._record((ref, size, blobs), with_entries)
        self.result.packs += 1
        self.result.bytes_uploaded += size

    def _record(
        self, pack: tuple[str, int, list[PendingBlob]] | None = None, with_entries: bool = True
    ) -> None:
        """Record the pack put (if any) and every finished entry: one transaction."""
        with transaction(self.conn) as conn:
            snapshot_id = self.result.snapshot_id
            if pack is not None:
                ref, size, blobs = pack
                pack_id = upload_queries.add_pack(conn, ref, size, snapshot_id)
                entries = [
                    (e.offset, e.length, e.raw_length, e.hash) for e in (b.entry for b in blobs)
                ]
                ids = upload_queries.add_blobs(conn, pack_id, entries)
                for blob, blob_id in zip(blobs, ids, strict=True):
                    blob.id = blob_id
            new = self._record_entries(conn, snapshot_id) if with_entries else []
        if pack is not None:  # now committed: the catalog cache may count on them
            self.catalog.added_blobs((b.entry.hash, b.id) for b in pack[2] if b.id is not None)
        self.catalog.added_contents((c.digest, c.id) for c in new if c.id is not None)
        if with_entries:
            self.records = []
            self.sigcache.flush()
            self.pending_contents = {h: c for h, c in self.pending_contents.items() if c.id is None}

    def _record_entries(self, conn: sqlite3.Connection, snapshot_id: int) -> list[PendingContent]:
        """Record the finished entries; the new contents they brought (now with ids)."""
        new = self._add_contents()
        stored = [r.path for r in self.records if r.meta is not None]
        path_ids = upload_queries.ensure_paths(conn, stored)
        new_versions = []
        for rec in self.records:
            if rec.meta is not None:
                content = rec.content
                content_id = content.id if isinstance(content, PendingContent) else content
                columns = rec.meta.columns()
                new_versions.append(
                    upload_queries.version_row(
                        path_ids[rec.path], snapshot_id, columns, content_id, rec.recheck
                    )
                )
        ends = [r.end for r in self.records if r.end is not None]
        upload_queries.end_versions(
            conn, ends + [v for r in self.records for v in r.end_below], snapshot_id
        )
        upload_queries.add_versions(conn, new_versions)
        upload_queries.mark_done(conn, [(rec.qid, rec.outcome) for rec in self.records])
        return new

    def _add_contents(self) -> list[PendingContent]:
        """Insert the new contents the finished entries use; their blobs all have ids now."""
        new = list(
            {id(r.content): r.content for r in self.records if _unrecorded(r.content)}.values()
        )
        rows = []
        for content in new:
            blob_ids = []
            for b in content.blobs:
                if isinstance(b, PendingBlob):
                    assert b.id is not None, "a finished file's blob is still in the spool"
                    blob_ids.append(b.id)
                else:
                    blob_ids.append(b)
            rows.append(
                upload_queries.NewContent(
                    content.digest,
                    content.size,
                    content.basis_id,
                    content.depth,
                    content.chain_bytes,
                    blob_ids,
                )
            )
        for content, content_id in zip(
            new, upload_queries.add_contents(self.conn, rows), strict=True
        ):
            content.id = content_id
        return new


def _previous_content(live: LiveEntry | None) -> int | None:
    """The content of the path's previous version, if that was a file."""
    return live.content_id if live is not None and live.kind == KIND_FILE else None


def _unrecorded(content: PendingContent | int | None) -> TypeGuard[PendingContent]:
    return isinstance(content, PendingContent) and content.id is None
