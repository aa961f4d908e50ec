"""Rebuilding the backupdb export a root pointer names, from its full export and deltas."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import zstandard

from deltagrid.floor.errors import CorruptData
from deltagrid.floor.rdiff import apply_delta
from deltagrid.repository.root import MAX_OBJECT
from deltagrid.store.base import Store
from deltagrid.store.pack import digest


def fetch_export(store: Store, root: dict[str, Any], dest: Path) -> None:
    """Rebuild the newest backupdb export named by `root` into `dest`, checking every hash."""
    data = b""
    for entry in root["backupdb"]:
        frame = store.get(entry["ref"])
        try:
            if zstandard.frame_content_size(frame) > MAX_OBJECT:  # a damaged header's claim
                raise zstandard.ZstdError("its frame claims more than any export holds")
            raw = zstandard.ZstdDecompressor().decompress(frame, max_output_size=MAX_OBJECT)
        except (zstandard.ZstdError, MemoryError):  # MemoryError: the buffer a header asked for
            raise CorruptData(f"backupdb object {entry['ref']} does not decompress") from None
        if entry["type"] == "full":
            data = raw
        else:
            if digest(data).hex() != entry.get("base"):
                raise CorruptData("backupdb delta chain is broken (base mismatch)")
            out = io.BytesIO()
            try:
                apply_delta(io.BytesIO(data), io.BytesIO(raw), out, MAX_OBJECT)
            except CorruptData as exc:
                raise CorruptData(f"backupdb {exc}") from None
            data = out.getvalue()
        if digest(data).hex() != entry["hash"]:
            raise CorruptData("backupdb export does not match its recorded hash")
    dest.write_bytes(data)
    with open(dest, "rb+") as f:
        os.fsync(f.fileno())
