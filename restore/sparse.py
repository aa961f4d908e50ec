"""Restoring a sparse file: its content's bytes laid out at the offsets of its data runs, in a
file truncated to its size, so the holes stay holes (floor/sparse.py has the format)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from deltagrid.floor import sparse
from deltagrid.floor.errors import CorruptData

_CHUNK = 1 << 20


def _runs(extents: bytes, size: int, length: int) -> list[tuple[int, int]]:
    """The runs of a version's map, checked against its size and its content's length."""
    try:
        runs = sparse.decode(extents, size)
    except ValueError as exc:
        raise CorruptData(str(exc)) from None
    if sum(n for _offset, n in runs) != length:
        raise CorruptData("sparse map does not cover the content's bytes")
    return runs


def lay_out(fd: int, content: bytes | Path, extents: bytes, size: int) -> None:
    """Write a sparse version into `fd`, a new empty file: the file is sized first, then each
    run written at its offset, so nothing is written into a hole."""
    length = len(content) if isinstance(content, bytes) else content.stat().st_size
    runs = _runs(extents, size, length)
    os.ftruncate(fd, size)
    if isinstance(content, bytes):
        at = 0
        with memoryview(content) as view:
            for offset, n in runs:
                _pwrite_all(fd, view[at : at + n], offset)
                at += n
        return
    with open(content, "rb") as f:
        for offset, n in runs:
            done = 0
            while done < n:
                data = f.read(min(_CHUNK, n - done))
                if not data:
                    raise CorruptData("sparse content shorter than its map")
                _pwrite_all(fd, data, offset + done)
                done += len(data)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


def same_file(path: bytes, extents: bytes, size: int, content_hash: bytes | None) -> bool:
    """Whether the file at `path` (of `size` bytes, as checked) has exactly these data runs
    holding bytes of this hash: --link-dest for a sparse version, which reads no hole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        runs = sparse.data_runs(fd, size)
        if runs is None or sparse.encode(runs) != extents:
            return False
        h = hashlib.blake2b(digest_size=32)
        for offset, n in runs:
            done = 0
            while done < n:
                data = os.pread(fd, min(_CHUNK, n - done), offset + done)
                if not data:
                    return False
                h.update(data)
                done += len(data)
        return h.digest() == content_hash
    finally:
        os.close(fd)
