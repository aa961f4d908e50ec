"""The pack: many small blobs in one immutable object, so a night travels in a few large puts.

Layout (all integers little-endian):

    header   8 bytes   b"DGPACK01"
    blobs    each one zstd frame of one blob's raw bytes, back to back
    index    zstd frame of N entries, 52 bytes each: offset u64, length u32, raw_length u64,
             BLAKE2b-256 of the raw bytes (32 bytes)
    trailer  20 bytes  index offset u64, index length u32, b"DGPKIDX1"

The backupdb records each blob's pack, offset and length, so restore reads only the ranges it
needs; the index makes a pack self-describing for verify and repair.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard

from deltagrid.floor.errors import CorruptData, naming
from deltagrid.floor.pools import shut_down

HEADER = b"DGPACK01"
TRAILER_MAGIC = b"DGPKIDX1"
_ENTRY = struct.Struct("<QIQ32s")
_TRAILER = struct.Struct("<QI8s")
_RUN = 1 << 20  # bytes a pack is hashed and written in at a time
LEVEL = 3  # zstd level of a pack whose writer names none (maintenance's rebuilt keyframes)


def digest(data: bytes) -> bytes:
    """The hash deltagrid uses everywhere: BLAKE2b with a 32-byte digest."""
    return hashlib.blake2b(data, digest_size=32).digest()


def digest_file(path: Path) -> bytes:
    """`digest` of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=32)).digest()


@dataclass(frozen=True)
class IndexEntry:
    offset: int
    length: int
    raw_length: int
    hash: bytes


class PackWriter:
    """Appends compressed blobs to a local spool file that becomes one pack.

    The pack is hashed and written on a thread of its own, in runs of about `_RUN` bytes (BLAKE2b
    and write release the GIL on such buffers), so the uploader's thread only appends.
    """

    def __init__(self, path: Path, level: int = LEVEL) -> None:
        self.path = path
        self.file = open(path, "wb", buffering=0)  # noqa: SIM115 - lives until finish()
        self.hash = hashlib.blake2b(digest_size=32)  # the pack's own: the store need not re-read
        self.size = 0
        self.entries: list[IndexEntry] = []
        self.compressor = zstandard.ZstdCompressor(level=level)
        self.run = bytearray()  # appended, not yet handed to the thread
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="dg-pack")
        self.error: BaseException | None = None  # the thread's first, raised on the next call
        self._write(HEADER)

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        if len(data) >= _RUN:  # a big file's piece: handed over as it is, not copied
            self._hand_over()
            self._submit(data)
            return
        self.run += data
        if len(self.run) >= _RUN:
            self._hand_over()

    def _hand_over(self) -> None:
        if self.run:
            run, self.run = self.run, bytearray()
            self._submit(run)

    def _submit(self, data: bytes | bytearray) -> None:
        if self.error is not None:
            raise self.error
        self.thread.submit(self._out, data)

    def _out(self, data: bytes | bytearray) -> None:
        if self.error is not None:
            return
        try:
            self.hash.update(data)
            with memoryview(data) as view, naming(self.path):
                done = 0
                while done < len(view):
                    done += self.file.write(view[done:]) or 0
        except BaseException as exc:  # noqa: BLE001 - raised in the uploader's thread
            self.error = exc

    def add(self, raw: bytes, raw_hash: bytes) -> IndexEntry:
        return self.add_frame(self.compressor.compress(raw), len(raw), raw_hash)

    def add_frame(self, frame: bytes, raw_length: int, raw_hash: bytes) -> IndexEntry:
        """Append an already compressed blob (repacking: no need to decompress it)."""
        entry = IndexEntry(self.size, len(frame), raw_length, raw_hash)
        self._write(frame)
        self.entries.append(entry)
        return entry

    def finish(self) -> int:
        """Write index and trailer, fsync, close; return the pack's size (its BLAKE2b-256 is
        then `digest()`)."""
        index = self.compressor.compress(
            b"".join(_ENTRY.pack(e.offset, e.length, e.raw_length, e.hash) for e in self.entries)
        )
        index_offset = self.size
        self._write(index)
        self._write(_TRAILER.pack(index_offset, len(index), TRAILER_MAGIC))
        self._hand_over()
        shut_down(self.thread, cancel=False)
        if self.error is not None:
            raise self.error
        with naming(self.path):
            os.fsync(self.file.fileno())
            self.file.close()
        return self.size

    def digest(self) -> bytes:
        return self.hash.digest()

    def discard(self) -> None:
        shut_down(self.thread)
        self.file.close()
        self.path.unlink(missing_ok=True)


_decoders = threading.local()  # a decompressor per thread: making one costs 40 times a small blob


def _decompressor() -> zstandard.ZstdDecompressor:
    decoder: zstandard.ZstdDecompressor | None = getattr(_decoders, "zstd", None)
    if decoder is None:
        decoder = _decoders.zstd = zstandard.ZstdDecompressor()
    return decoder


def decode_blob(frame: bytes, raw_length: int, raw_hash: bytes, check: bool = True) -> bytes:
    """Decompress one blob and check it against its recorded hash (unless the caller checks a
    hash over the bytes the blob goes into)."""
    try:
        raw = _decompressor().decompress(frame, max_output_size=raw_length)
    except zstandard.ZstdError as exc:
        raise CorruptData(f"blob does not decompress: {exc}") from None
    except (MemoryError, OverflowError):  # a frame without its size gets raw_length up front;
        # a damaged index can record a length no buffer can have (2**63)
        raise CorruptData(f"blob does not decompress into {raw_length:,} bytes") from None
    if len(raw) != raw_length or (check and digest(raw) != raw_hash):
        raise CorruptData("blob does not match its recorded hash")
    return raw


def read_index(pack: bytes) -> list[IndexEntry]:
    """Parse a whole pack's index, checking its framing."""
    if len(pack) < len(HEADER) + _TRAILER.size or not pack.startswith(HEADER):
        raise CorruptData("not a deltagrid pack")
    offset, length, magic = _TRAILER.unpack(pack[-_TRAILER.size :])
    if magic != TRAILER_MAGIC or offset + length + _TRAILER.size != len(pack):
        raise CorruptData("pack trailer is damaged")
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            pack[offset : offset + length], max_output_size=64 << 20
        )
    except zstandard.ZstdError as exc:
        raise CorruptData(f"pack index does not decompress: {exc}") from None
    if len(raw) % _ENTRY.size:
        raise CorruptData("pack index has a torn entry")
    entries = [IndexEntry(*_ENTRY.unpack_from(raw, i)) for i in range(0, len(raw), _ENTRY.size)]
    for e in entries:
        if e.offset < len(HEADER) or e.offset + e.length > offset:
            raise CorruptData("pack index points outside the pack")
    return entries
