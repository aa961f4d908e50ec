"""The resumable uploader: drain the queue into packs, record where every blob lives.

Per file: one consistent read gives the content hash and the new signature; known content is
reused (renames and copies upload nothing); otherwise an rdiff delta against the previous
version's signature is stored, or a keyframe when the chain would grow past its bound. Blobs go
to a local spool pack; when it is full it is put to the store and, in one transaction, the pack,
its blobs, the finished files' versions and their queue rows' done marks are recorded (by the
recorder process, on a large upload: recorder.py). A kill at any point loses at most the two
packs put and not yet recorded.
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from deltagrid.backupdb import scan_queries, snapshots, upload_queries
from deltagrid.backupdb.entries import KIND_DIR, KIND_FILE, KIND_LINK, Meta, kind_of
from deltagrid.backupdb.scan_queries import LiveEntry
from deltagrid.backupdb.upload_queries import QueueRow
from deltagrid.floor import fs, longpath, xattrs
from deltagrid.floor.errors import naming
from deltagrid.store.base import Store
from deltagrid.uploader.bigfiles import BigReader
from deltagrid.uploader.catalog import CatalogCache
from deltagrid.uploader.contents import Contents, previous_content
from deltagrid.uploader.packing import FinishedPack, Packer
from deltagrid.uploader.pieces import Squeezer
from deltagrid.uploader.readahead import Prepared, ReadAhead, Taken, discard
from deltagrid.uploader.reader import (
    ChangedWhileReading,
    Source,
    SourceError,
    copy_source,
    read_source,
)
from deltagrid.uploader.recorder import Recorder
from deltagrid.uploader.recording import PendingContent, PutPack, Record
from deltagrid.uploader.result import UploadResult
from deltagrid.uploader.settings import UploadSettings
from deltagrid.uploader.sigcache import SigCache
from deltagrid.uploader.spool import WORK_PREFIX, clear_leftovers

_VANISHED = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO}
_BATCH = 256
_COUNTED = {KIND_FILE: "files", KIND_DIR: "dirs", KIND_LINK: "symlinks"}  # else "specials"
_FED_AHEAD = 8  # queue batches fed to the read-ahead beyond the one at hand
# A pack of tiny files is put early: each entry waiting costs ~2 KB, and the last transaction,
# which nothing overlaps, is short (5,000 tiny files: 0.92x the wall time of 20,000, 0.7x the RSS).
_PACK_ENTRIES = 5_000
_DEFERRED = 64  # big files read ahead of the main thread, at most
_BIG_AHEAD = 4  # big files started beyond the batch at hand, at most...
_LOOK_AHEAD = 4096  # ...among this many queue rows beyond it


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
        scanning: Callable[[bool], bool] | None = None,
    ) -> None:
        """`scanning(wait)`: whether a scan beside the upload may still queue rows (with
        `wait`, once it has queued more or ended); None when the scan has finished. A scan
        beside the upload finds only new entries (scanner/beside.py): none has a live version."""
        self.conn = conn
        self.store = store
        self.spool = spool
        self.sigcache = sigcache
        self.settings = settings
        self.on_progress = on_progress or (lambda _n: None)
        self.warn = warn or (lambda _m: None)
        self.scanning = scanning or (lambda _wait: False)
        self.only_new = scanning is not None
        self.packer = Packer(spool, settings.pack_size, settings.zstd_level)
        self.records: list[Record] = []
        self.ended_contents: set[int] = set()  # their signatures may go once the run is done
        self.ended: set[int] = set()  # versions this run ends: a version ends once
        self.gone_dirs: set[bytes] = set()  # directories the scan saw that this run found gone
        self.prepared: Future[Prepared] | Taken | None = None  # the current row's read-ahead
        self.scan_roots: dict[int, set[bytes]] = {}  # scan: its roots, when asked
        self.big_reads: dict[int, Future[Prepared]] = {}  # by queue row, until the row comes
        self.big_seen = 0  # queue rows up to this one were looked at for big files
        self.deferred: deque[tuple[QueueRow, LiveEntry | None, Future[Prepared]]] = deque()

    # --- the drain -----------------------------------------------------------------------------

    def run(self) -> UploadResult:
        """Drain the queue. An OSError naming no file comes from writing a temporary file of
        the spool's (a signature, a delta, a private copy: anonymous files), so it names the
        spool: on a full disk the message says which one."""
        with naming(self.spool), rare_full_collections():
            return self._run()

    def _run(self) -> UploadResult:
        clear_leftovers(self.spool)
        # Each part is closed or removed from the moment it exists: a signal may land while
        # the next is being set up, and nothing of the spool may be left.
        with ExitStack() as parts:
            # Last, once every thread has stopped: whatever this run left in the spool (a
            # pack a signal caught between two steps) goes, as the next writer would drop it.
            parts.callback(clear_leftovers, self.spool)
            parts.callback(self.sigcache.close)  # its last puts written, its connection closed
            self.workdir = Path(tempfile.mkdtemp(dir=self.spool, prefix=WORK_PREFIX))
            parts.callback(shutil.rmtree, self.workdir, ignore_errors=True)
            parts.callback(self.packer.discard)
            self.squeezer = Squeezer(self.settings.zstd_level)
            parts.callback(self.squeezer.close)
            self.ahead = ReadAhead(self.settings, self.workdir)
            parts.callback(self.ahead.close)
            self.catalog = CatalogCache(self.conn, self.ahead.ready_digests)
            db = self.conn.execute("PRAGMA database_list").fetchone()[2]
            self.big = BigReader(
                self.settings, self.squeezer, self.spool, self.workdir, db, self.catalog
            )
            parts.callback(self.big.close)
            self.recorder = Recorder(self.conn, Path(db), self._recorded)
            parts.callback(self.recorder.close)
            self._drain()
        return self.result

    def _batches(self) -> Iterator[tuple[list[QueueRow], dict[bytes, LiveEntry]]]:
        """The queue's rows a batch at a time, with their paths' live versions. Each batch's
        small files are fed to the read-ahead `_FED_AHEAD` batches before the main thread
        reaches them: the reader threads, idle while it records, are then still ahead after.
        Beside a scan, the queue ends only once the scan has: until then a read that finds no
        row waits for the scan's next batch, unless there are rows at hand to go on with."""
        fed: deque[tuple[list[QueueRow], dict[bytes, LiveEntry]]] = deque()
        after: int | None = 0
        while True:
            while after is not None and len(fed) <= _FED_AHEAD:
                scanning = self.scanning(False)  # asked first: a scan ended is all in the read
                rows = upload_queries.pending(self.conn, after, _BATCH)
                if not rows:
                    if not scanning:
                        after = None
                    elif not fed:
                        self.scanning(True)
                        continue
                    break
                lives = (
                    {}
                    if self.only_new
                    else scan_queries.live_versions(self.conn, [row.path for row in rows])
                )
                self.ahead.feed(rows, lives)
                fed.append((rows, lives))
                after = rows[-1].id
            if not fed:
                return
            yield fed.popleft()

    def _drain(self) -> None:
        """Every pending queue row, in order; then the last pack, and the signatures to drop."""
        conn = self.conn
        self.result = UploadResult(snapshots.last_snapshot_id(conn) + 1)
        self.contents = self._contents()
        for rows, lives in self._batches():
            self._feed_big(rows, lives)
            self._look_ahead_big(rows[-1].id)
            for row in rows:
                if self.deferred or self.big_reads:  # else no big file's pass is under way
                    self._settle()
                big = self.big_reads.pop(row.id, None)
                if big is not None:
                    self.deferred.append((row, lives.get(row.path), big))
                else:
                    self.prepared = self.ahead.take(row.id)
                    self._process_prepared(row, lives.get(row.path))
            if self.packer.writer is None and len(self.records) >= 1000:
                self._record()
            elif len(self.records) >= _PACK_ENTRIES:
                self._flush_pack()
        self._settle(everything=True)
        self._flush_pack()
        self.recorder.wait()
        self.catalog.build_indexes()
        for unused in upload_queries.unused_contents(conn, self.ended_contents):
            self.sigcache.discard(unused)

    def _contents(self) -> Contents:
        return Contents(
            self.conn,
            self.store,
            self.sigcache,
            self.settings,
            self.catalog,
            self.packer,
            self.squeezer,
            self.workdir,
            self.result,
            self.warn,
            on_full=self._flush_pack,
        )

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
                basis_id = previous_content(lives.get(row.path))
                if basis_id is None:
                    basis_id = self.contents.moved_from(row.scan_id, row)
                against = None
                basis = (
                    None if basis_id is None else upload_queries.delta_basis(self.conn, basis_id)
                )
                if basis is not None:
                    signature = self.sigcache.get(basis.hash)  # a lost one is rebuilt later
                    if signature is not None and self.contents.may_delta(row.size, basis):
                        against = (basis.id, signature)
                self.big_reads[row.id] = self.big.submit(row.path, basis is None, against)

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
        """Put and record the side packs finished so far: all of `wanted`'s, once it is done.
        Those handed over and not yet put when an error or a signal stops this leave the spool
        (the big-file thread no longer holds them, so its close would not remove them)."""
        if wanted is not None:
            wait([wanted])
        packs = deque(self.big.side_packs())
        try:
            while packs:
                pack = packs[0]
                hashes = [blob.entry.hash for blob in pack.blobs]
                stored = self.catalog.stored_blobs(hashes)
                if len(stored) == len(set(hashes)):  # a copy of what the store has: not put
                    pack.writer.path.unlink()
                    for blob in pack.blobs:
                        blob.id = stored[blob.entry.hash]
                else:
                    self._put_pack(pack, with_entries=False)  # moved out of the spool
                packs.popleft()
        finally:
            for pack in packs:
                pack.writer.path.unlink(missing_ok=True)

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
        if kind is None:  # became a socket: it leaves the backup
            raise SourceError(OSError(errno.ENXIO, "now a socket, which is not backed up"))
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
            meta = with_attributes(Meta.from_stat(st, target), row.path)
        if (
            live is not None
            and not live.recheck
            and not recheck
            and Meta.from_row(live) == meta
            and live.content_id == content
        ):
            self.result.counts["unchanged"] += 1
            return Record(row.id, "unchanged", row.path)
        self.result.counts[_COUNTED.get(kind, "specials")] += 1
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
        taken, self.prepared = self.prepared, None
        if isinstance(taken, Future):
            return taken.result()
        if isinstance(taken, Exception):
            raise taken
        return taken

    def _file(
        self, row: QueueRow, live: LiveEntry | None, prepared: Prepared | None, st: os.stat_result
    ) -> tuple[Meta, PendingContent | int, bool]:
        if prepared is not None and prepared.source is not None:  # read by a reader thread
            start_ns = prepared.start_ns
            try:
                source, content = self._content(
                    row, live, prepared.source, prepared.signature, prepared
                )
            finally:  # closed here, with no ExitStack: it costs a small file 5% of its time
                if prepared.signature is not None:
                    prepared.signature.close()
                if prepared.delta is not None:
                    prepared.delta[1].close()
        else:  # not read ahead: it was no regular file when scanned
            start_ns = time.time_ns()
            with ExitStack() as stack:
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
                source, content = self._content(row, live, source, sig_out, None)
        recheck = source.changed or _same_second(source.meta, start_ns)
        meta = source.meta if source.attributes else with_attributes(source.meta, row.path)
        return meta, content, recheck

    def _content(
        self,
        row: QueueRow,
        live: LiveEntry | None,
        source: Source,
        sig_out: BinaryIO | None,
        ahead: Prepared | None,
    ) -> tuple[Source, PendingContent | int]:
        """The content `source` describes (Contents.content); if a later pass over the file
        found other bytes, the content of a private copy, and that copy's Source."""
        try:
            self.result.bytes_read += source.size
            try:
                return source, self.contents.content(row, live, source, sig_out, ahead)
            except ChangedWhileReading:
                source.cleanup()
                source = copy_source(row.path, None, sig_out, self.settings.block_max, self.workdir)
                return source, self.contents.content(row, live, source, sig_out)
        finally:
            source.cleanup()

    # --- blobs and packs -----------------------------------------------------------------------

    def _flush_pack(self) -> None:
        """Put the open spool pack to the store, then record it and every finished entry."""
        pack = self.packer.finish()
        if pack is None:
            self._record()
        else:
            self._put_pack(pack, with_entries=True)

    def _put_pack(self, pack: FinishedPack, with_entries: bool) -> None:
        """Put a finished pack to the store, then record it and its blobs, and with them every
        finished entry if `with_entries`. A pack that is not put is dropped from the spool."""
        try:
            ref = pack.put(self.store)
        except BaseException:
            pack.writer.discard()
            raise
        self.result.packs += 1  # counted once put: an interrupted run's log says so
        self.result.bytes_uploaded += pack.size
        self._record((ref, pack.size, pack.blobs), with_entries)

    def _record(self, pack: PutPack | None = None, with_entries: bool = True) -> None:
        """Record the pack put (if any) and every finished entry: one transaction, written by
        the recorder while this thread goes on. A side pack's blobs have their ids before the
        big file's content names them."""
        records: list[Record] = []
        if with_entries:
            records, self.records = self.records, []
        self.recorder.submit(pack, records, self.result.snapshot_id, self.catalog.complete)
        if not with_entries:
            self.recorder.wait()

    def _recorded(self, pack: PutPack | None, new: list[PendingContent]) -> None:
        """A transaction committed: the catalog cache may count on what it added."""
        if pack is not None:
            self.catalog.added_blobs((b.entry.hash, b.id) for b in pack[2] if b.id is not None)
        self.catalog.added_contents((c.digest, c.id) for c in new if c.id is not None)
        self.sigcache.flush()
        self.contents.recorded()


def _same_second(meta: Meta, start_ns: int) -> bool:
    """Whether the file may have changed after its read in the same timestamp tick. Its ctime is
    the kernel's clock at its last change, so a ctime older than a second before the read
    rules that out; the mtime, which a program may set to any date, only lets more through
    (a file dated ahead of the clock is not read again every night for its date alone)."""
    return min(meta.mtime_ns, meta.ctime_ns) >= start_ns - 1_000_000_000


def with_attributes(meta: Meta, path: bytes) -> Meta:
    """`meta` with the entry's extended attributes, read by path: part of its metadata, so a
    change to them is a version. A reader thread reads a small file's on its descriptor."""
    try:
        found = xattrs.read(path)
    except OSError as exc:
        raise SourceError(exc) from exc
    return meta if found is None else replace(meta, xattrs=found)


@contextmanager
def rare_full_collections() -> Iterator[None]:
    """Let the garbage collector walk every object a hundred times less often while the queue
    drains. A file leaves half a dozen objects (its record, meta, content, blob) until its pack
    is recorded, and the collector's full passes rescanned all of them: 17 passes, a second of
    CPU in 9, at 100,000 tiny files. Young objects are collected as before, and full passes
    still come, every few million allocations."""
    threshold = gc.get_threshold()
    gc.set_threshold(threshold[0], threshold[1], threshold[2] * 100)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
