"""Sparse files: where a file's data lies, and the map of it a version records.

A sparse file is stored as its data alone: the version records its data runs (the *extents*:
offset and length of each), and its content is the bytes of those runs one after the other. So
a 2 GiB file holding 16 KiB is read, hashed, signed, diffed and stored as 16 KiB, the content
hash covers bytes that were really read (dedup and verify work as for any content), and restore
lays the runs out again at their offsets in a file truncated to the version's size, leaving the
holes unallocated. The runs come from SEEK_DATA/SEEK_HOLE: no hole is ever read.

Encoding: each run is two unsigned 64-bit little-endian integers, offset then length, in
increasing offset order, runs neither overlapping nor touching. An empty map is a file that is
all hole.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

_RUN = struct.Struct("<QQ")
_BLOCK = 512  # st_blocks counts these


def may_have_holes(st: os.stat_result) -> bool:
    """Whether a regular file allocates less than its size, so may have holes: the cheap test
    before `data_runs`. A file system that compresses says so for dense files too."""
    return stat.S_ISREG(st.st_mode) and st.st_blocks * _BLOCK < st.st_size


def data_runs(fd: int, size: int) -> list[tuple[int, int]] | None:
    """The (offset, length) runs of data in the first `size` bytes of `fd`, or None when that
    span holds no hole or the file system cannot say. Leaves the offset at 0."""
    runs: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nothing but hole from pos on
                    raise
                break
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            runs.append((start, end - start))
            pos = end
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:  # EINVAL: no SEEK_DATA here
        return None
    return None if runs == [(0, size)] or size == 0 else runs


def encode(runs: list[tuple[int, int]]) -> bytes:
    return b"".join(_RUN.pack(offset, length) for offset, length in runs)


def decode(extents: bytes, size: int) -> list[tuple[int, int]]:
    """The runs of an encoded map, checked to be in order and within `size` (the version's):
    a map that is not is damage, and restore would write where it should not."""
    if len(extents) % _RUN.size:
        raise ValueError("sparse map of a length that is not whole runs")
    runs = list(_RUN.iter_unpack(extents))
    end = 0
    for offset, length in runs:
        if offset < end or length == 0 or offset + length > size:
            raise ValueError("sparse map out of order or past the file's size")
        end = offset + length + 1
    return runs


def data_length(extents: bytes) -> int:
    """The bytes of data an encoded map covers: the length of the version's content."""
    return sum(length for _offset, length in _RUN.iter_unpack(extents))
