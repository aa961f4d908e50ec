"""The rdiff primitives deltagrid uses — signature, delta, and a patch that never trusts its
delta — in one place: every stage calls these, never librsync (floor/librsync.py) directly."""

from __future__ import annotations

import io
from typing import Any, BinaryIO

from deltagrid.floor import librsync
from deltagrid.floor.errors import CorruptData
from deltagrid.floor.librsync import DELTA_MAGIC, delta, signature, signature_args

__all__ = ["DELTA_MAGIC", "apply_delta", "delta", "signature", "signature_args"]


class _PaddedBasis:
    """The basis as librsync's patch reads it. For a COPY past the basis's end librsync would
    ask for the missing bytes again forever; zeros end that loop and mark the delta damaged."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.overran = False

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            self.overran = True
            data += bytes(n - len(data))
        return data


class _Capped(io.RawIOBase):
    """The patch's output: it stops the patch once the basis overran, or past `limit` (a few
    bytes of crafted COPY commands could otherwise write terabytes before the hash check)."""

    def __init__(self, f: BinaryIO, limit: int, basis: _PaddedBasis) -> None:
        self.f = f
        self.left = limit
        self.basis = basis

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.left -= len(data)
        if self.basis.overran:
            raise CorruptData("delta copies past the end of its basis")
        if self.left < 0:
            raise CorruptData("delta yields more bytes than recorded")
        return self.f.write(data)


def apply_delta(basis: BinaryIO, delta: BinaryIO, out: BinaryIO, limit: int) -> None:
    """Patch `basis` with an rdiff `delta` into `out`, writing at most `limit` bytes; a delta
    that does not parse, copies past its basis or grows too big raises CorruptData."""
    padded = _PaddedBasis(basis)
    try:
        librsync.patch(padded, delta, _Capped(out, limit, padded))
    except CorruptData:
        raise
    except Exception as exc:  # librsync reports a bad delta this way
        raise CorruptData(f"delta does not apply: {exc}") from None
    if padded.overran:
        raise CorruptData("delta copies past the end of its basis")
