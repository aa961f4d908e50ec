"""Filling spool packs: blobs go into one open pack until it reaches the pack size; then it is
finished and handed back whole, to be put to the store and recorded.

The upload's small files, the big-file thread's side packs and maintenance's rebuilt keyframes
and moved blobs all fill packs this way. A finished pack is put before anything refers to it,
so a kill leaves at most an orphan object (prune removes it) or a spool file (the next writer's
`spool.clear_leftovers` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from deltagrid.store.base import Store, check_stored
from deltagrid.store.pack import LEVEL, IndexEntry, PackWriter
from deltagrid.uploader.spool import new_pack


@dataclass(eq=False)
class PendingBlob:
    """A blob in a spool pack; it gets its id when the pack is recorded."""

    entry: IndexEntry
    id: int | None = None


class FinishedPack(NamedTuple):
    """A pack whose file is whole and fsynced, not yet in the store."""

    writer: PackWriter
    size: int
    blobs: list[PendingBlob]

    def put(self, store: Store) -> str:
        """Move the pack's file into `store`; its ref, checked to hold all of it."""
        ref = store.move_file(self.writer.path, self.writer.digest())
        return check_stored(store, ref, self.size)


class Packer:
    """The open spool pack, and the blobs in it by hash (a blob added twice is stored once)."""

    def __init__(self, spool: Path, pack_size: int, level: int = LEVEL) -> None:
        self.spool = spool
        self.pack_size = pack_size
        self.level = level
        self.writer: PackWriter | None = None
        self.blobs: list[PendingBlob] = []
        self.by_hash: dict[bytes, PendingBlob] = {}

    def find(self, raw_hash: bytes) -> PendingBlob | None:
        return self.by_hash.get(raw_hash)

    def add(self, raw: bytes, raw_hash: bytes) -> PendingBlob:
        return self._append(self._open().add(raw, raw_hash))

    def add_frame(self, frame: bytes, raw_length: int, raw_hash: bytes) -> PendingBlob:
        """A blob already compressed (on a reader thread): its frame is appended as it is."""
        return self._append(self._open().add_frame(frame, raw_length, raw_hash))

    @property
    def full(self) -> bool:
        return self.writer is not None and self.writer.size >= self.pack_size

    def finish(self) -> FinishedPack | None:
        """The open pack, finished; a new one opens with the next blob. None: nothing added."""
        writer = self.writer
        if writer is None:
            return None
        pack = FinishedPack(writer, writer.finish(), self.blobs)
        self.writer, self.blobs, self.by_hash = None, [], {}
        return pack

    def discard(self) -> None:
        """Drop the open pack (the run is ending without it)."""
        if self.writer is not None:
            self.writer.discard()
        self.writer, self.blobs, self.by_hash = None, [], {}

    def _open(self) -> PackWriter:
        if self.writer is None:
            self.writer = new_pack(self.spool, self.level)
        return self.writer

    def _append(self, entry: IndexEntry) -> PendingBlob:
        blob = PendingBlob(entry)
        self.blobs.append(blob)
        self.by_hash[entry.hash] = blob
        return blob
