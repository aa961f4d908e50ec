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
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyrsync
from sqlalchemy import Connection, Engine

from backupdb import queries
from backupdb.records import KIND_FILE, KIND_LINK, Meta, kind_of
from deltagrid.errors import CorruptData, StoreError
from restore.rebuild import DirectSource, materialize
from store.base import Store
from store.pack import IndexEntry, PackWriter, digest
from uploader.reader import (
    ChangedWhileReading,
    HashingReader,
    Source,
    SourceError,
    copy_source,
    read_source,
    signature_args,
)
from uploader.settings import UploadSettings
from uploader.sigcache import SigCache

_VANISHED = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO}
_BATCH = 256


@dataclass(eq=False)
class PendingBlob:
    """A blob in the spool pack; it gets its id when the pack is recorded."""

    entry: IndexEntry
    id: int | None = None


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


@dataclass
class UploadResult:
    snapshot_id: int
    counts: Counter[str] = field(default_factory=Counter)
    bytes_read: int = 0
    bytes_uploaded: int = 0
    packs: int = 0
    vanished: list[bytes] = field(default_factory=list)
    unreadable: list[tuple[bytes, str]] = field(default_factory=list)


class Uploader:
    def __init__(
        self,
        engine: Engine,
        store: Store,
        spool: Path,
        sigcache: SigCache,
        settings: UploadSettings,
        on_progress: Callable[[int], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
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
        self.dir_ids: dict[bytes, int] = {}  # path ids, cached while recording
        self.ended_contents: set[int] = set()  # their signatures may go once the run is done

    # --- the drain -----------------------------------------------------------------------------

    def run(self) -> UploadResult:
        self.spool.mkdir(parents=True, exist_ok=True)
        for leftover in self.spool.iterdir():  # a killed run's spool: its files are re-read
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        self.workdir = Path(tempfile.mkdtemp(dir=self.spool, prefix="work-"))
        try:
            with self.engine.connect() as conn:
                self.conn = conn
                self.result = UploadResult(queries.last_snapshot_id(conn) + 1)
                conn.commit()
                after = 0
                while rows := queries.pending(conn, after, _BATCH):
                    for row in rows:
                        self._process(row)
                        after = row.id
                    if self.writer is None and len(self.records) >= 1000:
                        self._record(None)
                self._flush_pack()
                for unused in queries.unused_contents(conn, self.ended_contents):
                    self.sigcache.discard(unused)
                conn.commit()
        finally:
            if self.writer is not None:
                self.writer.discard()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.result

    def _process(self, row: Any) -> None:
        live = queries.live_version(self.conn, row.path)
        if live is not None and live.content_id is not None:
            self.ended_contents.add(live.content_id)
        end = live.id if live is not None else None
        if row.reason == "deleted":
            self.result.counts["deleted"] += 1 if live is not None else 0
            self.records.append(Record(row.id, "deleted", row.path, end=end))
            return
        try:
            record = self._entry(row, live)
        except SourceError as exc:
            if exc.error.errno in _VANISHED:
                self.result.counts["vanished"] += 1
                self.result.vanished.append(row.path)
                self.records.append(Record(row.id, "vanished", row.path, end=end))
            else:
                self.result.counts["unreadable"] += 1
                self.result.unreadable.append((row.path, str(exc)))
                self.warn(f"cannot read {os.fsdecode(row.path)}: {exc}")
                self.records.append(Record(row.id, "unreadable", row.path))
            return
        self.on_progress(row.size)
        self.records.append(record)

    def _entry(self, row: Any, live: Any) -> Record:
        """The record for a new, changed or metadata-only entry, read as it is now."""
        try:
            st = os.lstat(row.path)
        except OSError as exc:
            raise SourceError(exc) from exc
        kind = kind_of(st.st_mode)
        end = live.id if live is not None else None
        if kind is None:  # became a socket or device: it leaves the backup
            raise SourceError(OSError(errno.ENXIO, "no longer a file, directory or symlink"))
        content: PendingContent | int | None = None
        recheck = False
        if kind == KIND_FILE:  # even a chmod'ed file is re-read: only its hash proves its bytes
            meta, content, recheck = self._file(row, live)
        else:
            target = None
            if kind == KIND_LINK:
                try:
                    target = os.readlink(row.path)
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

    # --- one file ------------------------------------------------------------------------------

    def _file(self, row: Any, live: Any) -> tuple[Meta, PendingContent | int, bool]:
        want_sig = row.size >= self.settings.delta_min_size
        start_ns = time.time_ns()
        with ExitStack() as stack:
            # No temporary file for a small file's (unwanted) signature: one a file adds up.
            sig_out = (
                stack.enter_context(tempfile.TemporaryFile(dir=self.workdir)) if want_sig else None
            )
            source = read_source(
                row.path, self.settings.piece_size, sig_out, self.settings.block_max, self.workdir
            )
            try:
                self.result.bytes_read += source.meta.size
                try:
                    content = self._content(row, live, source, sig_out)
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
        self, row: Any, live: Any, source: Source, sig: BinaryIO | None
    ) -> PendingContent | int:
        """Find or store the content `source` describes."""
        signature = b""
        if sig is not None and source.meta.size >= self.settings.delta_min_size:
            sig.seek(0)
            signature = sig.read()
        known = self.pending_contents.get(source.digest)
        if known is None:
            found = queries.content_by_hash(self.conn, source.digest)
            if found is not None:
                if signature and self.sigcache.get(source.digest) is None:
                    self.sigcache.put(source.digest, signature)
                if live is None or live.content_id != found.id:
                    self.result.counts["deduplicated"] += 1
                return int(found.id)
        else:
            return known
        content = self._delta(row, live, source) or self._keyframe(source)
        if signature:
            self.sigcache.put(source.digest, signature)
        self.pending_contents[source.digest] = content
        return content

    def _basis(self, row: Any, live: Any, source: Source) -> Any:
        """The content to delta against: the path's previous version, or where it moved from."""
        if live is not None and live.kind == KIND_FILE and live.content_id is not None:
            basis_id = live.content_id
        else:
            moved = queries.move_basis(
                self.conn,
                row.scan_id,
                source.meta.inode,
                source.meta.dev,
                source.meta.size,
                source.meta.mtime_ns,
            )
            if moved is None:
                return None
            basis_id = moved.content_id
        return queries.content_by_id(self.conn, basis_id)

    def _basis_signature(self, basis: Any) -> bytes | None:
        cached = self.sigcache.get(basis.hash)
        if cached is not None:
            return cached
        try:  # e.g. after attach on a new machine: rebuild the basis from the store
            rebuilt = materialize(self.conn, DirectSource(self.store), basis.id, self.workdir)
        except (CorruptData, StoreError) as exc:
            self.warn(f"cannot rebuild delta basis {basis.hash.hex()[:16]}: {exc}")
            return None
        try:
            out = io.BytesIO()
            with open(rebuilt, "rb") as f:
                magic, block, strong = signature_args(basis.size, self.settings.block_max)
                pyrsync.signature(f, out, strong, magic, block)
        finally:
            rebuilt.unlink()
        self.sigcache.put(basis.hash, out.getvalue())
        return out.getvalue()

    def _delta(self, row: Any, live: Any, source: Source) -> PendingContent | None:
        size = source.meta.size
        if size < self.settings.delta_min_size:
            return None
        basis = self._basis(row, live, source)
        if basis is None or basis.size < self.settings.delta_min_size:
            return None
        if basis.depth + 1 > self.settings.max_chain:
            self.result.counts["keyframes_by_bound"] += 1
            return None
        basis_sig = self._basis_signature(basis)
        if basis_sig is None:
            return None
        with tempfile.TemporaryFile(dir=self.workdir) as delta, source.open() as f:
            reader = HashingReader(f)
            pyrsync.delta(reader, io.BytesIO(basis_sig), delta)
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

    def _keyframe(self, source: Source) -> PendingContent:
        with source.open() as f:
            reader = HashingReader(f)
            blobs = self._pieces(reader)
            source.check(reader)
        self.result.counts["keyframes"] += 1
        return PendingContent(source.digest, source.meta.size, None, 0, 0, blobs)

    def _pieces(self, f: Any) -> list[PendingBlob | int]:
        blobs: list[PendingBlob | int] = []
        while True:
            raw = f.read(self.settings.piece_size)
            if not raw:
                return blobs
            blobs.append(self._blob(raw))

    # --- blobs and packs -----------------------------------------------------------------------

    def _blob(self, raw: bytes) -> PendingBlob | int:
        h = digest(raw)
        known = self.blob_index.get(h)
        if known is not None:
            return known
        found = queries.blob_by_hash(self.conn, h)
        if found is not None:
            return int(found)
        if self.writer is None:
            fd, name = tempfile.mkstemp(dir=self.spool, prefix="pack-")
            os.close(fd)
            self.writer = PackWriter(Path(name), self.settings.zstd_level)
        blob = PendingBlob(self.writer.add(raw, h))
        self.spool_blobs.append(blob)
        self.blob_index[h] = blob
        if self.writer.size >= self.settings.pack_size:
            self._flush_pack()
        return blob

    def _flush_pack(self) -> None:
        """Put the spool pack to the store, then record it and every finished entry."""
        if self.writer is None:
            self._record(None)
            return
        writer = self.writer
        size = writer.finish()
        ref = self.store.put_file(writer.path)
        self._record((ref, size))
        writer.path.unlink()
        self.writer = None
        self.result.packs += 1
        self.result.bytes_uploaded += size

    def _record(self, pack: tuple[str, int] | None) -> None:
        conn: Connection = self.conn
        snapshot_id = self.result.snapshot_id
        if pack is not None:
            pack_id = queries.add_pack(conn, pack[0], pack[1], snapshot_id)
            for blob in self.spool_blobs:
                e = blob.entry
                blob.id = queries.add_blob(conn, pack_id, e.offset, e.length, e.raw_length, e.hash)
        new_versions = []
        for rec in self.records:
            content_id = self._content_id(rec.content)
            if rec.meta is not None:
                path_id = queries.ensure_path(conn, rec.path, self.dir_ids)
                new_versions.append(
                    queries.version_row(
                        path_id, snapshot_id, rec.meta.columns(), content_id, rec.recheck
                    )
                )
        queries.end_versions(conn, [r.end for r in self.records if r.end is not None], snapshot_id)
        queries.add_versions(conn, new_versions)
        queries.mark_done(conn, [(rec.qid, rec.outcome) for rec in self.records])
        conn.commit()
        self.records = []
        if pack is not None:
            self.spool_blobs = []
            self.blob_index = {}
        self.pending_contents = {h: c for h, c in self.pending_contents.items() if c.id is None}

    def _content_id(self, content: PendingContent | int | None) -> int | None:
        if content is None or isinstance(content, int):
            return content
        if content.id is None:
            blob_ids = []
            for b in content.blobs:
                if isinstance(b, PendingBlob):
                    assert b.id is not None, "a finished file's blob is still in the spool"
                    blob_ids.append(b.id)
                else:
                    blob_ids.append(b)
            content.id = queries.add_content(
                self.conn,
                content.digest,
                content.size,
                content.basis_id,
                content.depth,
                content.chain_bytes,
                blob_ids,
            )
        return content.id
