"""The rdiff primitives deltagrid uses — signature, delta, patch — in one place.

Every stage calls these, never librsync directly, so the binding behind them can change
without touching a caller, and a store written through one binding is read through another.
"""

from __future__ import annotations

import ctypes
import io
import sys
from typing import Any, BinaryIO

import pyrsync

from deltagrid.floor.errors import CorruptData

DELTA_MAGIC = pyrsync.RS_DELTA_MAGIC
_RS_LOG_CRIT = 2

# librsync prints its own errors on stderr; a bad delta is reported as CorruptData instead.
ctypes.CDLL(sys.modules[pyrsync.patch.__module__].__file__).rs_trace_set_level(_RS_LOG_CRIT)


def signature_args(size: int) -> tuple[int, int, int]:
    """librsync's recommended (magic, block length, strong sum length) for a file of `size`."""
    magic, block, strong = pyrsync.get_signature_args(size)
    return magic, block, strong


def signature(src: Any, out: Any, strong: int, magic: int, block: int) -> None:
    """Write the signature of the bytes read from `src` to `out`."""
    pyrsync.signature(src, out, strong, magic, block)


def delta(new: Any, sig: Any, out: Any) -> None:
    """Write to `out` the rdiff delta that turns the signed basis into the bytes of `new`."""
    pyrsync.delta(new, sig, out)


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
        pyrsync.patch(padded, delta, _Capped(out, limit, padded))
    except CorruptData:
        raise
    except Exception as exc:  # librsync reports a bad delta this way
        raise CorruptData(f"delta does not apply: {exc}") from None
    if padded.overran:
        raise CorruptData("delta copies past the end of its basis")
