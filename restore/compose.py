"""Applying a whole delta chain in one pass, by composing its rdiff deltas first.

Patching a chain one delta at a time writes and reads the whole file once per delta: a 256 MiB
file sixteen deltas from its keyframe costs 4 GiB of I/O. An rdiff delta is a list of commands,
copy `length` bytes of the basis from `offset`, or insert literal bytes, so a chain folds into one
list of segments, each a range of the keyframe or a run of some delta's literal bytes, and the
file is written once. Only the last version is checked against its hash here; restore falls back
to patching step by step (which checks every version) when that check fails, so damage is still
named where it is, and a fault in this module can cost time but never a wrong file.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from deltagrid.floor.errors import CorruptData

DELTA_MAGIC = b"rs\x026"
_OP_END = 0x00
_OP_LITERAL_LAST_INLINE = 0x40  # 0x01..0x40: a literal of that many bytes
_OP_LITERAL_N1 = 0x41  # 0x41..0x44: literal, length in 1, 2, 4 or 8 bytes
_OP_COPY_N1_N1 = 0x45  # 0x45..0x54: copy, offset and length each in 1, 2, 4 or 8 bytes
_OP_COPY_LAST = 0x54
_WIDTHS = (1, 2, 4, 8)
_UINT = {w: struct.Struct(">" + code) for w, code in zip(_WIDTHS, "BHIQ", strict=True)}


class Segment(NamedTuple):
    """`length` bytes of the version at `start`: from the keyframe at `source`, or `literal`."""

    start: int
    length: int
    source: int
    literal: memoryview | None


def keyframe_map(size: int) -> list[Segment]:
    return [Segment(0, size, 0, None)] if size else []


def size_of(segments: list[Segment]) -> int:
    return segments[-1].start + segments[-1].length if segments else 0


def _uint(delta: memoryview, at: int, width: int) -> int:
    if at + width > len(delta):
        raise CorruptData("delta ends inside a command")
    return int(_UINT[width].unpack_from(delta, at)[0])


def commands(delta: memoryview) -> Iterable[tuple[int, int] | memoryview]:
    """The delta's commands in order: (offset, length) for a copy, the bytes of a literal."""
    if bytes(delta[:4]) != DELTA_MAGIC:
        raise CorruptData("not an rdiff delta")
    at = 4
    while True:
        if at >= len(delta):
            raise CorruptData("delta ends without its end command")
        op = delta[at]
        at += 1
        if op == _OP_END:
            if at != len(delta):
                raise CorruptData("bytes after the delta's end command")
            return
        if op < _OP_COPY_N1_N1:
            if op <= _OP_LITERAL_LAST_INLINE:
                length = op
            else:
                width = _WIDTHS[op - _OP_LITERAL_N1]
                length = _uint(delta, at, width)
                at += width
            if at + length > len(delta):
                raise CorruptData("delta ends inside a literal")
            yield delta[at : at + length]
            at += length
        elif op <= _OP_COPY_LAST:
            offset_width = _WIDTHS[(op - _OP_COPY_N1_N1) // 4]
            length_width = _WIDTHS[(op - _OP_COPY_N1_N1) % 4]
            offset = _uint(delta, at, offset_width)
            length = _uint(delta, at + offset_width, length_width)
            at += offset_width + length_width
            if not length:
                raise CorruptData("delta copies nothing")  # librsync refuses it too
            yield offset, length
        else:
            raise CorruptData(f"unknown delta command {op:#x}")


def compose(basis: list[Segment], delta: memoryview, limit: int) -> list[Segment]:
    """The map of the version `delta` makes from the version `basis` maps; at most `limit` bytes."""
    starts = [s.start for s in basis]
    basis_size = size_of(basis)
    out: list[Segment] = []
    pos = 0

    def add(length: int, source: int, literal: memoryview | None) -> None:
        last = out[-1] if out else None
        if (
            literal is None
            and last is not None
            and last.literal is None
            and last.source + last.length == source
        ):
            out[-1] = last._replace(length=last.length + length)  # a keyframe range continued
        else:
            out.append(Segment(pos, length, source, literal))

    for command in commands(delta):
        if isinstance(command, memoryview):
            if command:
                add(len(command), 0, command)
                pos += len(command)
        else:
            offset, length = command
            if offset + length > basis_size:
                raise CorruptData("delta copies past the end of its basis")
            i = bisect.bisect_right(starts, offset) - 1
            while length:
                seg = basis[i]
                skip = offset - seg.start
                take = min(seg.length - skip, length)
                if seg.literal is None:
                    add(take, seg.source + skip, None)
                else:
                    add(take, 0, seg.literal[skip : skip + take])
                pos += take
                offset += take
                length -= take
                i += 1
        if pos > limit:
            raise CorruptData("delta yields more bytes than recorded")
    return out


def write_version(
    segments: list[Segment],
    read_keyframe: Callable[[int, int], bytes | memoryview],
    write: Callable[[bytes | memoryview], object],
) -> None:
    """Emit the bytes `segments` map, reading keyframe ranges in pieces of at most 8 MiB."""
    step = 8 << 20
    for seg in segments:
        if seg.literal is not None:
            write(seg.literal)
            continue
        done = 0
        while done < seg.length:
            n = min(step, seg.length - done)
            data = read_keyframe(seg.source + done, n)
            if len(data) != n:
                raise CorruptData("keyframe shorter than its map")
            write(data)
            done += n


def in_order(segments: list[Segment]) -> bool:
    """Whether the map reads its keyframe ranges front to back, never going back."""
    end = 0
    for seg in segments:
        if seg.literal is None:
            if seg.source < end:
                return False
            end = seg.source + seg.length
    return True


class InOrder:
    """A keyframe read from its decoded blobs, in order, holding only the current blob: for a
    map that is `in_order`, so a 256 MiB keyframe is never written out or held whole."""

    def __init__(self, blobs: Iterator[bytes]) -> None:
        self.blobs = blobs
        self.start = 0  # where `current` lies in the keyframe
        self.current = b""

    def read(self, offset: int, n: int) -> bytes | memoryview:
        if offset < self.start:
            raise ValueError("keyframe read out of order")
        parts: list[memoryview] = []
        while n:
            at = offset - self.start
            if at >= len(self.current):
                self.start += len(self.current)
                nxt = next(self.blobs, None)
                if nxt is None:
                    raise CorruptData("keyframe shorter than its map")
                self.current = nxt
                continue
            take = min(n, len(self.current) - at)
            parts.append(memoryview(self.current)[at : at + take])
            offset += take
            n -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def drain(self) -> None:
        for _ in self.blobs:
            pass
