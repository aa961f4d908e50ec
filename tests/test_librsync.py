"""The librsync binding: byte-identical to pyrsync (python-rsync's own librsync) and safe to
share by threads.

deltagrid loads python-rsync's copy of librsync where that wheel is installed and the system's
librsync.so.2 elsewhere (floor/librsync.py), so a store written through one path must be read
through the other. These tests run the binding on the system's library (or the one
DELTAGRID_LIBRSYNC names) and compare it with pyrsync on its own: the two paths. The comparisons
are skipped where pyrsync does not install (CPython 3.13 and later).

Deltas are compared byte for byte when both librsyncs are 2.3.3 or later, or both older: 2.3.3
raised the longest LITERAL command from 32768 to 65533 bytes, so a run of new bytes longer than
32 KiB is cut differently by, e.g., Debian 12's 2.3.2 and python-rsync's 2.3.5 (every other
byte is the same, which these tests check, and each side applies the other's deltas).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import io
import os
import queue
import random
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deltagrid.floor import librsync as rdiff
from deltagrid.floor.errors import LibrsyncNotFound


def _system_library() -> tuple[ctypes.CDLL, str] | None:
    """The library the binding loads where python-rsync is not installed."""
    chosen = os.environ.get("DELTAGRID_LIBRSYNC")
    names = [chosen] if chosen else ["librsync.so.2", ctypes.util.find_library("rsync") or ""]
    try:
        return rdiff._open([n for n in names if n])
    except LibrsyncNotFound:
        return None


SYSTEM = _system_library()
pytestmark = pytest.mark.skipif(SYSTEM is None, reason="no system librsync 2 to test against")


@pytest.fixture(autouse=True, scope="module")
def _through_the_system_library() -> Iterator[None]:
    """This module's calls go through the system's library, then the binding is put back."""
    saved = rdiff._lib, rdiff.LIBRSYNC_PATH, rdiff.LIBRSYNC_VERSION
    assert SYSTEM is not None
    rdiff._lib, rdiff.LIBRSYNC_PATH = SYSTEM
    rdiff.LIBRSYNC_VERSION = rdiff._version(rdiff._lib)
    rdiff.quiet()
    try:
        yield
    finally:
        rdiff._lib, rdiff.LIBRSYNC_PATH, rdiff.LIBRSYNC_VERSION = saved


try:
    import pyrsync
except ImportError:  # no wheel for this Python
    pyrsync = None


def _literal_split(version: str) -> int:
    major, minor, patch = (int(n) for n in version.split()[-1].split(".")[:3])
    return 65533 if (major, minor, patch) >= (2, 3, 3) else 32768


def _pyrsync_librsync() -> str:
    spec = importlib.util.find_spec("pyrsync")
    assert spec and spec.submodule_search_locations
    where = spec.submodule_search_locations[0]
    path = next(c for c in rdiff._candidates() if c.startswith(where))
    return rdiff._version(ctypes.CDLL(path))


if pyrsync is not None:  # its own copy of librsync prints each error on stderr
    ctypes.CDLL(sys.modules[pyrsync.patch.__module__].__file__).rs_trace_set_level(2)

SAME_SPLIT = (
    pyrsync is None
    or SYSTEM is None
    or _literal_split(rdiff._version(SYSTEM[0])) == _literal_split(_pyrsync_librsync())
)

needs_pyrsync = pytest.mark.skipif(
    pyrsync is None, reason="pyrsync (python-rsync) has wheels for CPython 3.10-3.12 only"
)

MAGICS = {
    "rk-blake2": rdiff.RK_BLAKE2_SIG_MAGIC,
    "blake2": rdiff.BLAKE2_SIG_MAGIC,
    "rk-md4": rdiff.RK_MD4_SIG_MAGIC,
    "md4": rdiff.MD4_SIG_MAGIC,
}


def _edited(data: bytes, seed: int, edits: int = 30) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(max(1, len(out) - 100))
        out[at : at + 100] = rng.randbytes(100)
    at = len(out) // 3
    out[at:at] = b"inserted bytes shift all that follows"
    del out[2 * len(out) // 3 : 2 * len(out) // 3 + 5000]
    return bytes(out)


def _cases() -> Iterator[Any]:
    rng = random.Random(2024)
    yield pytest.param(b"", b"", id="empty-to-empty")
    yield pytest.param(b"", b"x", id="empty-to-1")
    yield pytest.param(b"x", b"", id="1-to-empty")
    yield pytest.param(b"x", b"y", id="1-to-other-1")
    yield pytest.param(b"x", b"x", id="1-same")
    for size in (255, 256, 257, 2047, 2048, 2049, 4096, 4097, 65536):
        old = rng.randbytes(size)
        middle = bytes([old[size // 2] ^ 0xFF])
        yield pytest.param(old, old, id=f"{size}-same")
        yield pytest.param(old, old + b"z", id=f"{size}-append-1")
        yield pytest.param(old, old[:-1], id=f"{size}-truncate-1")
        yield pytest.param(
            old, old[: size // 2] + middle + old[size // 2 + 1 :], id=f"{size}-flip-1"
        )
    big = random.Random(5).randbytes(5 << 20)
    yield pytest.param(big, big, id="5M-same")
    yield pytest.param(big, _edited(big, 1), id="5M-edits")
    yield pytest.param(big, big + rng.randbytes(300_000), id="5M-append")
    yield pytest.param(big, big[:3_000_001], id="5M-truncate")
    yield pytest.param(big, b"new header" + big, id="5M-prepend")
    yield pytest.param(big, big[1_000_000:], id="5M-cut-head")
    yield pytest.param(big, random.Random(6).randbytes(5 << 20), id="5M-unrelated")


CASES = list(_cases())
SMALL = [c for c in CASES if not str(c.id).startswith("5M")]


def _sig_rdiff(old: bytes, strong: int, magic: int, block: int) -> bytes:
    out = io.BytesIO()
    rdiff.signature(io.BytesIO(old), out, strong, magic, block)
    return out.getvalue()


def _delta_rdiff(new: bytes, sig: bytes) -> bytes:
    out = io.BytesIO()
    rdiff.delta(io.BytesIO(new), io.BytesIO(sig), out)
    return out.getvalue()


def _patch_rdiff(old: bytes, delta: bytes) -> bytes:
    out = io.BytesIO()
    rdiff.patch(io.BytesIO(old), io.BytesIO(delta), out)
    return out.getvalue()


def _sig_py(old: bytes, strong: int, magic: int, block: int) -> bytes:
    out = io.BytesIO()
    pyrsync.signature(io.BytesIO(old), out, strong, magic, block)
    return out.getvalue()


def _delta_py(new: bytes, sig: bytes) -> bytes:
    out = io.BytesIO()
    pyrsync.delta(io.BytesIO(new), io.BytesIO(sig), out)
    return out.getvalue()


def _patch_py(old: bytes, delta: bytes) -> bytes:
    out = io.BytesIO()
    pyrsync.patch(io.BytesIO(old), io.BytesIO(delta), out)
    return out.getvalue()


# --- byte-identical to pyrsync -----------------------------------------------------------


@needs_pyrsync
@pytest.mark.parametrize(
    "size", [-1, 0, 1, 255, 65536, 65537, 10**6, 5 << 20, 10**9, 1 << 40, (1 << 62) + 3]
)
@pytest.mark.parametrize("magic", [0, *MAGICS.values()])
@pytest.mark.parametrize("block", [0, 2048, 1000])
@pytest.mark.parametrize("strong", [0, 8, 16])
def test_signature_args_are_pyrsyncs(size: int, magic: int, block: int, strong: int) -> None:
    assert rdiff.signature_args(size, magic, block, strong) == pyrsync.get_signature_args(
        size, magic, block, strong
    )


@needs_pyrsync
def test_signature_args_errors_are_pyrsyncs() -> None:
    from pyrsync.backends.cython._rsync import LibrsyncError as PyError

    for args in [(100, 0x1234), (100, rdiff.MD4_SIG_MAGIC, 0, 17), (100, 0, 0, 33)]:
        with pytest.raises(PyError) as theirs:
            pyrsync.get_signature_args(*args)
        with pytest.raises(rdiff.LibrsyncError) as ours:
            rdiff.signature_args(*args)
        assert (ours.value.code, str(ours.value)) == (theirs.value.code, str(theirs.value))


def test_signature_args_defaults_and_minimum() -> None:
    assert rdiff.signature_args(0) == (rdiff.RK_BLAKE2_SIG_MAGIC, 256, 32)
    assert rdiff.signature_args(10**9) == (rdiff.RK_BLAKE2_SIG_MAGIC, 31616, 32)
    assert rdiff.signature_args(-1) == (rdiff.RK_BLAKE2_SIG_MAGIC, 2048, 32)
    magic, block, strong = rdiff.signature_args(10**9, strong_len=-1)
    assert (magic, block) == (rdiff.RK_BLAKE2_SIG_MAGIC, 31616)
    assert 8 <= strong < 16
    assert all(type(v) is int for v in rdiff.signature_args(5))
    assert rdiff.DELTA_MAGIC == 0x72730236
    if pyrsync is not None:
        assert rdiff.DELTA_MAGIC == pyrsync.RS_DELTA_MAGIC
        assert rdiff.RK_BLAKE2_SIG_MAGIC == pyrsync.RS_RK_BLAKE2_SIG_MAGIC
        assert rdiff.MD4_SIG_MAGIC == pyrsync.RS_MD4_SIG_MAGIC


@needs_pyrsync
@pytest.mark.parametrize(("old", "new"), CASES)
def test_identical_to_pyrsync_with_recommended_args(old: bytes, new: bytes) -> None:
    magic, block, strong = rdiff.signature_args(len(old))
    _same_both_ways(old, new, strong, magic, block)


@needs_pyrsync
@pytest.mark.parametrize(("old", "new"), [c for c in CASES if c.id in ("5M-edits",)] + SMALL)
@pytest.mark.parametrize("magic", MAGICS.values(), ids=MAGICS.keys())
@pytest.mark.parametrize("strong", ["max", "min", 8])
@pytest.mark.parametrize("block", [256, 2048])
def test_identical_to_pyrsync_for_each_kind(
    old: bytes, new: bytes, magic: int, strong: Any, block: int
) -> None:
    if strong == "max":
        strong = 0
    elif strong == "min":
        strong = rdiff.signature_args(len(old), magic, block, -1)[2]
    _same_both_ways(old, new, strong, magic, block)


def _same_both_ways(old: bytes, new: bytes, strong: int, magic: int, block: int) -> None:
    sig = _sig_rdiff(old, strong, magic, block)
    assert sig == _sig_py(old, strong, magic, block)
    delta = _delta_rdiff(new, sig)
    _assert_same_delta(delta, _delta_py(new, sig))
    assert delta[:4] == struct.pack(">I", rdiff.DELTA_MAGIC)
    assert _patch_rdiff(old, delta) == new
    assert _patch_py(old, delta) == new  # our delta, their patch
    assert _patch_rdiff(old, _delta_py(new, sig)) == new  # their delta, our patch


def _assert_same_delta(ours: bytes, theirs: bytes) -> None:
    commands = _commands(ours)
    if SAME_SPLIT or all(len(c[1]) <= 32768 for c in commands if c[0] == "literal"):
        assert ours == theirs
    else:  # only where a LITERAL command is cut may they differ
        assert commands == _commands(theirs)


def _commands(delta: bytes) -> list[tuple[Any, ...]]:
    """A delta's commands (librsync's prototab), adjacent literals joined."""
    assert delta[:4] == struct.pack(">I", rdiff.DELTA_MAGIC)
    out: list[tuple[Any, ...]] = []
    at = 4
    while True:
        op = delta[at]
        at += 1
        if op == 0:
            assert at == len(delta)
            return out
        if op <= 0x44:
            width = 0 if op <= 0x40 else 1 << (op - 0x41)
            n = op if op <= 0x40 else int.from_bytes(delta[at : at + width], "big")
            at += width
            if out and out[-1][0] == "literal":
                out[-1] = ("literal", out[-1][1] + delta[at : at + n])
            else:
                out.append(("literal", delta[at : at + n]))
            at += n
        else:
            w1, w2 = 1 << ((op - 0x45) // 4), 1 << ((op - 0x45) % 4)
            pos = int.from_bytes(delta[at : at + w1], "big")
            n = int.from_bytes(delta[at + w1 : at + w1 + w2], "big")
            at += w1 + w2
            out.append(("copy", pos, n))


@needs_pyrsync
def test_where_python_rsync_is_installed_its_librsync_is_bound_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So a machine that backed up through python-rsync goes on making the same bytes."""
    monkeypatch.delenv("DELTAGRID_LIBRSYNC", raising=False)
    spec = importlib.util.find_spec("pyrsync")
    assert spec and spec.submodule_search_locations
    candidates = list(rdiff._candidates())
    bundled = [c for c in candidates if spec.submodule_search_locations[0] in c]
    assert bundled and candidates[0] == bundled[0]
    fresh = _fresh_rdiff()
    fresh._lib, fresh.LIBRSYNC_PATH = fresh._open(bundled)
    fresh.quiet()
    assert fresh.LIBRSYNC_PATH in bundled
    old = random.Random(9).randbytes(300_000)
    new = _edited(old, 2, edits=5)
    out = io.BytesIO()
    fresh.signature(io.BytesIO(old), out, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 1024)
    sig = out.getvalue()
    assert sig == _sig_rdiff(old, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 1024)
    out = io.BytesIO()
    fresh.delta(io.BytesIO(new), io.BytesIO(sig), out)
    assert out.getvalue() == _delta_py(new, sig)
    patched = io.BytesIO()
    fresh.patch(io.BytesIO(old), io.BytesIO(out.getvalue()), patched)
    assert patched.getvalue() == new


def _fresh_rdiff() -> Any:
    spec = importlib.util.spec_from_file_location("rdiff_copy", rdiff.__file__)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- round trips, streams, errors (no pyrsync needed) ----------------------------------------


@pytest.mark.parametrize(("old", "new"), CASES)
def test_patch_rebuilds_the_new_file(old: bytes, new: bytes) -> None:
    magic, block, strong = rdiff.signature_args(len(old))
    delta = _delta_rdiff(new, _sig_rdiff(old, strong, magic, block))
    assert _patch_rdiff(old, delta) == new


def test_a_delta_of_the_same_bytes_is_small_and_of_new_bytes_is_literal() -> None:
    old = random.Random(3).randbytes(1 << 20)
    sig = _sig_rdiff(old, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 2048)
    assert len(_delta_rdiff(old, sig)) < 100
    assert len(_delta_rdiff(random.Random(4).randbytes(1 << 20), sig)) > 1 << 20


class ReadOnly:
    """Only read(n), and short reads of at most `most` bytes: like a pipe or a socket."""

    def __init__(self, data: bytes, most: int = 1 << 30) -> None:
        self.data, self.at, self.most = data, 0, most

    def read(self, n: int) -> bytes:
        part = self.data[self.at : self.at + min(n, self.most)]
        self.at += len(part)
        return part


class WriteOnly:
    """Only write(b), taking at most `most` bytes per call, as a raw stream may."""

    def __init__(self, most: int = 1 << 30) -> None:
        self.parts: list[bytes] = []
        self.most = most

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data[: self.most]))
        return len(self.parts[-1])

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class SeekRead:
    """A basis with seek() and read() only (no readinto, no tell)."""

    def __init__(self, data: bytes) -> None:
        self.f = io.BytesIO(data)

    def seek(self, pos: int) -> int:
        return self.f.seek(pos)

    def read(self, n: int) -> bytes:
        return self.f.read(n)


@pytest.mark.parametrize("most", [1, 777, 65535, 1 << 30])
def test_streams_with_only_read_and_write(most: int) -> None:
    old = random.Random(7).randbytes(200_000 if most == 1 else 3 << 20)
    new = _edited(old, 8)
    sig_out = WriteOnly(most)
    rdiff.signature(ReadOnly(old, most), sig_out, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 2048)
    sig = sig_out.getvalue()
    assert sig == _sig_rdiff(old, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 2048)
    delta_out = WriteOnly(most)
    rdiff.delta(ReadOnly(new, most), ReadOnly(sig, most), delta_out)
    delta = delta_out.getvalue()
    assert delta == _delta_rdiff(new, sig)
    out = WriteOnly(most)
    rdiff.patch(SeekRead(old), ReadOnly(delta, most), out)
    assert out.getvalue() == new


@pytest.mark.parametrize("chunk", [1, 100, 2049, 65535])
def test_the_chunk_size_changes_no_byte(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    old = random.Random(8).randbytes(150_000 if chunk == 1 else 2 << 20)
    new = _edited(old, 9)
    sig = _sig_rdiff(old, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 512)
    delta = _delta_rdiff(new, sig)
    monkeypatch.setattr(rdiff, "CHUNK", chunk)
    assert _sig_rdiff(old, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 512) == sig
    assert _delta_rdiff(new, sig) == delta
    assert _patch_rdiff(old, delta) == new


class BoundedStream:
    """A producer/consumer pipe with room for `limit` bytes, read with read(n) only."""

    def __init__(self, limit: int) -> None:
        self.q: queue.Queue[bytes] = queue.Queue(maxsize=max(1, limit // 65536))
        self.rest = b""

    def put(self, data: bytes) -> None:
        self.q.put(data)

    def end(self) -> None:
        self.q.put(b"")

    def read(self, n: int) -> bytes:
        if not self.rest:
            self.rest = self.q.get()
        part, self.rest = self.rest[:n], self.rest[n:]
        return part


def test_a_delta_read_from_a_producer_on_another_thread() -> None:
    rng = random.Random(10)
    old = rng.randbytes(4 << 20)
    new = _edited(old, 11)
    sig = _sig_rdiff(old, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 2048)
    stream = BoundedStream(limit=200_000)
    out = io.BytesIO()
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(rdiff.delta, stream, io.BytesIO(sig), out)
        at = 0
        while at < len(new):
            n = rng.randrange(1, 100_000)
            stream.put(new[at : at + n])
            at += n
        stream.end()
        job.result(timeout=60)
    assert out.getvalue() == _delta_rdiff(new, sig)


def test_a_file_on_disk(tmp_path: Path) -> None:
    old = random.Random(12).randbytes(3 << 20)
    new = _edited(old, 13)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    with open(tmp_path / "old", "rb") as f, open(tmp_path / "sig", "wb") as out:
        rdiff.signature(f, out, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 2048)
    with (
        open(tmp_path / "new", "rb") as f,
        open(tmp_path / "sig", "rb") as sig,
        open(tmp_path / "delta", "wb") as out,
    ):
        rdiff.delta(f, sig, out)
    with (
        open(tmp_path / "old", "rb") as f,
        open(tmp_path / "delta", "rb") as d,
        open(tmp_path / "rebuilt", "wb") as out,
    ):
        rdiff.patch(f, d, out)
    assert (tmp_path / "rebuilt").read_bytes() == new


def _valid_delta() -> tuple[bytes, bytes, bytes]:
    old = random.Random(14).randbytes(100_000)
    new = _edited(old, 15, edits=3)
    return old, new, _delta_rdiff(new, _sig_rdiff(old, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 512))


def _corruptions() -> Iterator[Any]:
    old, _, delta = _valid_delta()
    yield pytest.param(old, b"", 103, id="empty")  # RS_INPUT_ENDED
    yield pytest.param(old, b"garbage!", 104, id="bad-magic")  # RS_BAD_MAGIC
    yield pytest.param(old, delta[:-1], 103, id="no-end-command")
    yield pytest.param(old, delta[: len(delta) // 2], 103, id="truncated")
    yield pytest.param(old, delta[:4] + b"\x55", 106, id="bogus-command")  # RS_CORRUPT
    copy_at_0 = struct.pack(">BBI", 0x47, 0, 0)  # COPY, 1-byte position, 4-byte length 0
    yield pytest.param(old, delta[:4] + copy_at_0, 106, id="zero-length-copy")
    literal_0 = struct.pack(">BI", 0x43, 0)  # LITERAL with a 4-byte length of 0
    yield pytest.param(old, delta[:4] + literal_0 + b"\x00", 106, id="zero-length-literal")


@pytest.mark.parametrize(("old", "delta", "code"), list(_corruptions()))
def test_a_corrupt_delta_raises_librsync_error(old: bytes, delta: bytes, code: int) -> None:
    with pytest.raises(rdiff.LibrsyncError) as caught:
        _patch_rdiff(old, delta)
    assert caught.value.code == code
    assert isinstance(caught.value, ValueError)
    if pyrsync is not None:  # the same code, and the same message, as pyrsync's
        with pytest.raises(Exception) as theirs:
            _patch_py(old, delta)
        assert (theirs.value.code, str(theirs.value)) == (code, str(caught.value))  # type: ignore[attr-defined]


def test_a_delta_copying_past_the_basis_raises_where_pyrsync_hangs() -> None:
    old, _, delta = _valid_delta()
    with pytest.raises(rdiff.LibrsyncError) as caught:
        _patch_rdiff(old[:1000], delta)
    assert caught.value.code == 103
    assert "past the end of its basis" in str(caught.value)


def test_a_corrupt_signature_raises_librsync_error() -> None:
    sig = _sig_rdiff(b"abc" * 1000, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 256)
    for bad, code in [
        (b"", 103),
        (b"nons" + sig[4:], 104),
        (sig[:4] + struct.pack(">i", 0) + sig[8:], 106),  # block length 0
        (sig[:8] + struct.pack(">i", 99) + sig[12:], 106),  # strong sum 99 bytes
        (sig[:-1], 103),
    ]:
        with pytest.raises(rdiff.LibrsyncError) as caught:
            _delta_rdiff(b"new", bad)
        assert caught.value.code == code
        if pyrsync is not None:
            with pytest.raises(Exception) as theirs:
                _delta_py(b"new", bad)
            assert theirs.value.code == code  # type: ignore[attr-defined]


def test_fuzzed_deltas_fail_cleanly_and_as_pyrsync_does() -> None:
    """Random damage never crashes the process (Debian builds librsync with its assertions on)
    nor hangs, and gives pyrsync's result: the same bytes or the same error."""
    old, _, delta = _valid_delta()
    rng = random.Random(16)
    for _ in range(400):
        bad = bytearray(delta)
        for _ in range(rng.randrange(1, 4)):
            bad[rng.randrange(4, len(bad))] = rng.randrange(256)
        ours = _outcome(rdiff.patch, old, bytes(bad))
        if pyrsync is not None:
            assert ours == _outcome(pyrsync.patch, old, bytes(bad))


class TooBig(Exception):
    pass


def _outcome(patch: Callable[..., None], old: bytes, delta: bytes) -> object:
    """A patch's output or error, with the basis padded and the output capped as deltagrid's
    restore does (so that a delta can neither read past its basis nor write terabytes)."""

    class Padded(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            data = super().read(n)
            return data + bytes((n or 0) - len(data))

    class Capped(io.BytesIO):
        def write(self, data: Any) -> int:
            if self.tell() + len(data) > 1 << 20:
                raise TooBig
            return super().write(data)

    out = Capped()
    try:
        patch(Padded(old), io.BytesIO(delta), out)
    except TooBig:
        return "too big"
    except Exception as exc:
        return getattr(exc, "code", type(exc).__name__)
    return out.getvalue()


def test_errors_of_the_basis_and_the_output_come_back_as_they_were() -> None:
    old, new, delta = _valid_delta()

    class Broken(SeekRead):
        def read(self, n: int) -> bytes:
            raise KeyError("basis")

    with pytest.raises(KeyError, match="basis"):
        rdiff.patch(Broken(old), io.BytesIO(delta), io.BytesIO())

    class Full(WriteOnly):
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        rdiff.patch(io.BytesIO(old), io.BytesIO(delta), Full())
    with pytest.raises(OSError, match="No space"):
        rdiff.signature(io.BytesIO(old), Full(), 0, rdiff.RK_BLAKE2_SIG_MAGIC, 2048)
    assert _patch_rdiff(old, delta) == new  # and nothing is left in a bad state


def test_bad_signature_parameters_raise_instead_of_aborting() -> None:
    for strong, block in [(-1, 2048), (33, 2048), (0, -1), (0, 1 << 31)]:
        with pytest.raises(ValueError):
            rdiff.signature(io.BytesIO(b"abc"), io.BytesIO(), strong, rdiff.MD4_SIG_MAGIC, block)
    with pytest.raises(rdiff.LibrsyncError) as caught:
        rdiff.signature(io.BytesIO(b"abc"), io.BytesIO(), 20, rdiff.MD4_SIG_MAGIC, 2048)
    assert caught.value.code == 108  # RS_PARAM_ERROR: MD4 sums are 16 bytes at most
    with pytest.raises(rdiff.LibrsyncError) as caught:
        rdiff.signature(io.BytesIO(b"abc"), io.BytesIO(), 0, 0x1234, 2048)
    assert caught.value.code == 104


def test_without_librsync_a_command_says_in_one_line_what_to_install(tmp_path: Path) -> None:
    """A real `deltagrid backup` on a machine whose librsync cannot be loaded: exit 1, one
    line naming the package on each system, no traceback, nothing created but the home."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    env = {**os.environ, "DELTAGRID_LIBRSYNC": str(tmp_path / "no" / "librsync.so.2")}
    proc = subprocess.run(
        [sys.executable, "-m", "deltagrid", "--home", str(tmp_path / "home"), "backup", str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    for package in ("librsync2", "librsync2t64", "librsync (Fedora)", "brew install librsync"):
        assert package in line
    assert not (tmp_path / "home" / "store").exists() or not any(
        (tmp_path / "home" / "store").rglob("objects/*/*")
    )


def test_quiet_is_on_after_import_and_can_be_undone(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(rdiff.LibrsyncError):
        _patch_rdiff(b"", b"garbage!")
    assert "librsync" not in capfd.readouterr().err
    rdiff.quiet(False)
    try:
        with pytest.raises(rdiff.LibrsyncError):
            _patch_rdiff(b"", b"garbage!")
        assert "bad magic" in capfd.readouterr().err
    finally:
        rdiff.quiet()


# --- threads ---------------------------------------------------------------------------------


def test_four_threads_at_once_get_what_one_gets() -> None:
    rng = random.Random(17)
    pairs = []
    for i in range(8):
        old = rng.randbytes((2 << 20) + i * 1000)
        pairs.append((old, _edited(old, i)))

    def roundtrip(pair: tuple[bytes, bytes]) -> tuple[bytes, bytes, bytes]:
        old, new = pair
        sig = _sig_rdiff(old, 0, rdiff.RK_BLAKE2_SIG_MAGIC, 2048)
        delta = _delta_rdiff(new, sig)
        return sig, delta, _patch_rdiff(old, delta)

    alone = [roundtrip(p) for p in pairs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(roundtrip, pairs)) == alone
    for (_, new), (_, _, rebuilt) in zip(pairs, alone, strict=True):
        assert rebuilt == new


def test_the_gil_is_let_go_during_a_librsync_call() -> None:
    """One rs_job_iter call over 64 MiB (a source that hands it all at once): a Python thread
    keeps ticking all through it, which it could not if the call held the GIL."""
    data = random.Random(18).randbytes(64 << 20)

    class AllAtOnce:
        def __init__(self) -> None:
            self.done = False

        def read(self, n: int) -> bytes:
            if self.done:
                return b""
            self.done = True
            return data

    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        ticker.start()
        time.sleep(0.05)
        start = time.perf_counter()
        rdiff.signature(AllAtOnce(), io.BytesIO(), 0, rdiff.RK_BLAKE2_SIG_MAGIC, 65536)
        end = time.perf_counter()
    finally:
        stop.set()
        ticker.join()
        sys.setswitchinterval(old_interval)
    during = [t for t in ticks if start <= t <= end]
    gaps = [b - a for a, b in zip([start, *during], [*during, end], strict=True)]
    print(f"\none call: {end - start:.3f}s, {len(during)} ticks, longest gap {max(gaps):.4f}s")
    assert max(gaps) < (end - start) / 2


def test_report_two_threads_signing_against_one() -> None:
    """Reported, not asserted (timings on a shared box): two threads each signing 50 MB take
    about as long as one thread signing 50 MB when two cores are free. Best of 3."""
    blobs = [random.Random(s).randbytes(50 << 20) for s in (19, 20)]

    def sign(blob: bytes) -> None:
        rdiff.signature(io.BytesIO(blob), io.BytesIO(), 0, rdiff.RK_BLAKE2_SIG_MAGIC, 2048)

    ones, twos = [], []
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(sign, blobs))  # warm up: threads started, pages touched
        for _ in range(3):
            start = time.perf_counter()
            sign(blobs[0])
            ones.append(time.perf_counter() - start)
            start = time.perf_counter()
            list(pool.map(sign, blobs))
            twos.append(time.perf_counter() - start)
    one, two = min(ones), min(twos)
    print(f"\n1 thread x 50 MB: {one:.3f}s; 2 threads x 50 MB each: {two:.3f}s ({two / one:.2f}x)")


def test_the_binding_matches_the_header() -> None:
    """rs_buffers_t as librsync.h lays it out (offsets checked against gcc's on x86-64)."""
    layout = [(f[0], getattr(rdiff._Buffers, f[0]).offset) for f in rdiff._Buffers._fields_]
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert layout == [
            ("next_in", 0),
            ("avail_in", 8),
            ("eof_in", 16),
            ("next_out", 24),
            ("avail_out", 32),
        ]
        assert ctypes.sizeof(rdiff._Buffers) == 40
    assert rdiff.LIBRSYNC_VERSION.startswith("librsync 2.")
