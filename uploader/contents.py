"""Finding or storing a file's content: reused when the catalog or this run has it already, else
an rdiff delta against the previous version (or where the file moved from), or a keyframe when
the chain would grow past its bounds. Blobs go into the open spool pack."""

from __future__ import annotations

import io
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

from deltagrid.backupdb import upload_queries
from deltagrid.backupdb.entries import KIND_FILE, Meta
from deltagrid.backupdb.scan_queries import LiveEntry
from deltagrid.backupdb.upload_queries import Content, QueueRow
from deltagrid.floor import rdiff
from deltagrid.floor.errors import CorruptData, StoreError
from deltagrid.store.base import Store
from deltagrid.store.pack import digest
from deltagrid.uploader.catalog import CatalogCache
from deltagrid.uploader.packing import Packer, PendingBlob
from deltagrid.uploader.pieces import Squeezer
from deltagrid.uploader.readahead import Prepared
from deltagrid.uploader.reader import HashingReader, Source, sign
from deltagrid.uploader.recording import PendingContent
from deltagrid.uploader.result import UploadResult
from deltagrid.uploader.settings import UploadSettings
from deltagrid.uploader.sigcache import SigCache


def previous_content(live: LiveEntry | None) -> int | None:
    """The content of the path's previous version, if that was a file."""
    return live.content_id if live is not None and live.kind == KIND_FILE else None


class Contents:
    """The contents of one upload run. `on_full` puts and records the open pack once it is full
    (the upload's, as it records the finished entries with it)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        store: Store,
        sigcache: SigCache,
        settings: UploadSettings,
        catalog: CatalogCache,
        packer: Packer,
        squeezer: Squeezer,
        workdir: Path,
        result: UploadResult,
        warn: Callable[[str], None],
        on_full: Callable[[], None],
    ) -> None:
        self.conn = conn
        self.store = store
        self.sigcache = sigcache
        self.settings = settings
        self.catalog = catalog
        self.packer = packer
        self.squeezer = squeezer
        self.workdir = workdir
        self.result = result
        self.warn = warn
        self.on_full = on_full
        self.pending: dict[bytes, PendingContent] = {}  # stored by this run, not yet recorded
        self.deleting_scans: dict[int, bool] = {}  # scan: did it find files gone?

    def recorded(self) -> None:
        """The finished entries were recorded: their new contents are the catalog's now."""
        self.pending = {h: c for h, c in self.pending.items() if c.id is None}

    def content(
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
        known = self.pending.get(source.digest)
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
        self.pending[source.digest] = content
        return content

    def moved_from(self, scan_id: int, seen: QueueRow | Meta) -> int | None:
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
        basis_id = previous_content(live)
        if basis_id is None:
            basis_id = self.moved_from(row.scan_id, source.meta)
        return None if basis_id is None else upload_queries.delta_basis(self.conn, basis_id)

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

    def may_delta(self, size: int, basis: Content) -> bool:
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
        if not self.may_delta(size, basis):
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

    def _blob(self, raw: bytes, done: tuple[bytes, bytes] | None = None) -> PendingBlob | int:
        """A blob of these bytes: one the open pack or the catalog holds, or a new one in the
        open pack (put once full). `done`: its hash and compressed frame, if a reader thread
        made them."""
        h = digest(raw) if done is None else done[0]
        known = self.packer.find(h)
        if known is not None:
            return known
        found = self.catalog.blob(h)
        if found is not None:
            return found
        if done is None:
            blob = self.packer.add(raw, h)
        else:
            blob = self.packer.add_frame(done[1], len(raw), h)
        if self.packer.full:
            self.on_full()
        return blob
