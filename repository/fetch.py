"""Rebuilding the backupdb export a root pointer names, from its full export and deltas.

Each step is written to a file, its delta applied from the file before, so memory holds one
object's compressed frame and a few buffers, not the export: at a million files the export is
212 MiB, and rebuilding it in memory took 335 MiB.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from deltagrid.floor.errors import CorruptData
from deltagrid.floor.rdiff import apply_delta
from deltagrid.repository.root import MAX_OBJECT
from deltagrid.store.base import Store
from deltagrid.store.pack import digest_file

_FEED = 32 << 10  # compressed bytes decompressed at a time (a few times that come out)


def fetch_export(store: Store, root: dict[str, Any], dest: Path) -> None:
    """Rebuild the newest backupdb export named by `root` into `dest`, checking every hash."""
    other = dest.with_name(dest.name + ".step")  # the two files take turns
    have: Path | None = None  # the export rebuilt so far
    have_hash = ""
    try:
        for entry in root["backupdb"]:
            frame = store.get(entry["ref"])
            target = other if have == dest else dest
            if entry["type"] == "full":
                with open(target, "wb") as out:
                    _decompress(frame, out, entry["ref"])
            else:
                if have is None or have_hash != entry.get("base"):
                    raise CorruptData("backupdb delta chain is broken (base mismatch)")
                with tempfile.TemporaryFile(dir=dest.parent) as delta:
                    _decompress(frame, delta, entry["ref"])
                    delta.seek(0)
                    with open(have, "rb") as basis, open(target, "wb") as out:
                        try:
                            apply_delta(basis, delta, out, MAX_OBJECT)
                        except CorruptData as exc:
                            raise CorruptData(f"backupdb {exc}") from None
            del frame
            have, have_hash = target, digest_file(target).hex()
            if have_hash != entry["hash"]:
                raise CorruptData("backupdb export does not match its recorded hash")
        if have is None:
            raise CorruptData("the root names no backupdb export")
        if have != dest:
            os.replace(have, dest)
        with open(dest, "rb+") as f:
            os.fsync(f.fileno())
    finally:
        other.unlink(missing_ok=True)


def _decompress(frame: bytes, out: BinaryIO, ref: str) -> None:
    """Write the one zstd frame `frame` holds to `out`, a slice of it at a time; a frame that
    is damaged, cut short or larger than any export raises CorruptData."""
    try:
        if zstandard.frame_content_size(frame) > MAX_OBJECT:  # a damaged header's claim
            raise zstandard.ZstdError("its frame claims more than any export holds")
        stream = zstandard.ZstdDecompressor().decompressobj()
        view, written = memoryview(frame), 0
        for at in range(0, len(view), _FEED):
            chunk = stream.decompress(view[at : at + _FEED])
            written += len(chunk)
            if written > MAX_OBJECT:
                raise zstandard.ZstdError("it holds more than any export")
            out.write(chunk)
        if not stream.eof:
            raise zstandard.ZstdError("it is cut short")
    except (zstandard.ZstdError, MemoryError):  # MemoryError: a buffer a damaged frame asked for
        raise CorruptData(f"backupdb object {ref} does not decompress") from None
