"""rdiff signatures, deltas and patches through librsync 2, by ctypes.

A binding that needs no wheel per Python version (python-rsync's stop at CPython 3.12): the same
stream formats as pyrsync's, from any CPython 3 that has librsync 2.x. The library it loads is,
in order: the one DELTAGRID_LIBRSYNC names (and then only it); the copy linked into
python-rsync's extension, where that wheel is installed (today's bytes and speed on 3.11 and
3.12); the system's librsync.so.2 (Debian/Ubuntu librsync2, Fedora librsync, Homebrew).

Every librsync call goes through ctypes.CDLL, which releases the GIL for the whole call, and the
streams are handed over in CHUNK-sized pieces, so several threads can sign, delta and patch at
once on several cores. Streams need only what is used of them: `read(n)` for inputs, `write(b)`
for outputs, and `seek(pos)` with `read(n)` (or `readinto(b)`) for a patch's basis.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from deltagrid.floor.errors import LibrsyncNotFound

__all__ = [
    "BLAKE2_SIG_MAGIC",
    "CHUNK",
    "DELTA_MAGIC",
    "LIBRSYNC_PATH",
    "LIBRSYNC_VERSION",
    "MD4_SIG_MAGIC",
    "RK_BLAKE2_SIG_MAGIC",
    "RK_MD4_SIG_MAGIC",
    "LibrsyncError",
    "delta",
    "patch",
    "quiet",
    "signature",
    "signature_args",
]

# rs_magic_number (librsync.h): the first 4 bytes, big-endian, of each kind of stream.
DELTA_MAGIC = 0x72730236
MD4_SIG_MAGIC = 0x72730136
BLAKE2_SIG_MAGIC = 0x72730137
RK_MD4_SIG_MAGIC = 0x72730146
RK_BLAKE2_SIG_MAGIC = 0x72730147  # what librsync recommends, and signature_args() picks

CHUNK = 256 << 10
"""Bytes read, and output buffer size, per librsync call: big enough that the Python side of the
loop costs little next to the C side, small enough that a chunk read from the stream is still in
the processor's cache when librsync reads it (with 1 MiB chunks a 4 MiB piece's signature took
20% longer than python-rsync's; with 256 KiB, 2-4% on 64 MiB, within noise)."""

# rs_result (librsync.h)
_RS_DONE = 0
_RS_BLOCKED = 1
_RS_IO_ERROR = 100
_RS_MEM_ERROR = 102
_RS_INPUT_ENDED = 103
_RS_INTERNAL_ERROR = 107
_RS_PARAM_ERROR = 108
_RESULT_NAMES = {
    2: "RS_RUNNING",
    77: "RS_TEST_SKIPPED",
    100: "RS_IO_ERROR",
    101: "RS_SYNTAX_ERROR",
    102: "RS_MEM_ERROR",
    103: "RS_INPUT_ENDED",
    104: "RS_BAD_MAGIC",
    105: "RS_UNIMPLEMENTED",
    106: "RS_CORRUPT",
    107: "RS_INTERNAL_ERROR",
    108: "RS_PARAM_ERROR",
}
_RS_LOG_CRIT = 2  # rs_loglevel: errors are RS_LOG_ERR (3), so they are not printed
_RS_LOG_INFO = 6  # librsync's own default
_MAX_BLOCK = (1 << 31) - 1  # librsync keeps block_len in an int
_MAX_STRONG = 32  # RS_MAX_STRONG_SUM_LENGTH


class LibrsyncError(ValueError):
    """librsync rejected a stream (bad magic, truncated, corrupt) or its arguments.

    `code` is librsync's rs_result and str() is its name ("RS_CORRUPT"), as pyrsync's own
    LibrsyncError gives them. Unlike pyrsync's, it is a ValueError: bad input, not a failed
    system call, and so `except ValueError` around a restore catches it too.
    """

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, *([detail] if detail else []))
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        name = _RESULT_NAMES.get(self.code, f"rs_result {self.code}")
        return f"{name}: {self.detail}" if self.detail else name


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Basis(Protocol):
    def seek(self, offset: int, /) -> object: ...

    def read(self, size: int, /) -> bytes: ...


class _Buffers(ctypes.Structure):
    """rs_buffers_t: the window of input and output that one rs_job_iter call works on."""

    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_size_t),
        ("eof_in", ctypes.c_int),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_size_t),
    ]


# rs_long_t is intmax_t: 64 bits on every platform librsync builds for.
_rs_long = ctypes.c_int64
_copy_cb = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    _rs_long,
    ctypes.POINTER(ctypes.c_size_t),
    ctypes.POINTER(ctypes.c_void_p),
)


def _candidates() -> Iterator[str]:
    """Where to look for librsync, in the order the module docstring gives."""
    chosen = os.environ.get("DELTAGRID_LIBRSYNC")
    if chosen:
        yield chosen
        return
    spec = importlib.util.find_spec("pyrsync")  # finds without importing it
    for where in (spec.submodule_search_locations or []) if spec else []:
        for backend in ("cython", "cffi"):
            yield from sorted(str(p) for p in Path(where, "backends", backend).glob("_rsync*.*"))
    yield "librsync.so.2"
    found = ctypes.util.find_library("rsync")
    if found:
        yield found
    if sys.platform == "darwin":
        yield from ("/opt/homebrew/lib/librsync.dylib", "/usr/local/lib/librsync.dylib")


def _open(candidates: Iterator[str] | list[str]) -> tuple[ctypes.CDLL, str]:
    """The first candidate that loads and has librsync 2's job API, with its path, declared."""
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(lib, "rs_job_iter") and hasattr(lib, "rs_sig_args"):
            break
    else:
        raise LibrsyncNotFound(
            "librsync 2 not found: install librsync2 (Debian/Ubuntu; librsync2t64 on Debian 13),"
            " librsync (Fedora) or `brew install librsync` (macOS)"
            + (
                f"; DELTAGRID_LIBRSYNC names {os.environ['DELTAGRID_LIBRSYNC']}"
                if os.environ.get("DELTAGRID_LIBRSYNC")
                else ""
            )
        )
    c_int, c_size_t, c_void_p = ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p
    size_p = ctypes.POINTER(c_size_t)
    for fn, res, args in [
        ("rs_sig_args", c_int, [_rs_long, ctypes.POINTER(ctypes.c_uint), size_p, size_p]),
        ("rs_sig_begin", c_void_p, [c_size_t, c_size_t, ctypes.c_uint]),
        ("rs_loadsig_begin", c_void_p, [ctypes.POINTER(c_void_p)]),
        ("rs_build_hash_table", c_int, [c_void_p]),
        ("rs_delta_begin", c_void_p, [c_void_p]),
        ("rs_patch_begin", c_void_p, [_copy_cb, c_void_p]),
        ("rs_job_iter", c_int, [c_void_p, ctypes.POINTER(_Buffers)]),
        ("rs_job_free", c_int, [c_void_p]),
        ("rs_free_sumset", None, [c_void_p]),
        ("rs_trace_set_level", None, [c_int]),
    ]:
        getattr(lib, fn).restype = res
        getattr(lib, fn).argtypes = args
    return lib, name


def _version(lib: ctypes.CDLL) -> str:
    at = ctypes.addressof(ctypes.c_char.in_dll(lib, "rs_librsync_version"))  # a char[]
    return ctypes.string_at(at).decode()


_lib, LIBRSYNC_PATH = _open(_candidates())
LIBRSYNC_VERSION = _version(_lib)
"""E.g. "librsync 2.3.2". Signatures are the same bytes from 2.3.2 as from 2.3.5, deltas all but
one way: from 2.3.3 on a LITERAL command holds up to 65533 bytes, before it 32768, so a run of
over 32 KiB of new bytes is cut up differently. Each version applies the other's deltas."""


def quiet(on: bool = True) -> None:
    """Stop (or restart) librsync printing its errors on stderr, process-wide.

    Done on import: every error it would print also comes back as a LibrsyncError.
    """
    _lib.rs_trace_set_level(_RS_LOG_CRIT if on else _RS_LOG_INFO)


quiet()


def signature_args(
    size: int, magic: int = 0, block_len: int = 0, strong_len: int = 0
) -> tuple[int, int, int]:
    """librsync's recommended `(magic, block_len, strong_len)` for a basis of `size` bytes
    (-1: unknown), as pyrsync.get_signature_args gives them: each 0 argument is filled in;
    strong_len 0 is the longest sum, -1 the shortest that is safe for this size."""
    c_magic = ctypes.c_uint(magic)
    c_block = ctypes.c_size_t(block_len)
    c_strong = ctypes.c_size_t(strong_len)  # -1 wraps to SIZE_MAX, librsync's "minimum"
    result = _lib.rs_sig_args(
        size, ctypes.byref(c_magic), ctypes.byref(c_block), ctypes.byref(c_strong)
    )
    if result != _RS_DONE:
        raise LibrsyncError(result)
    return c_magic.value, c_block.value, c_strong.value


def signature(src: Readable, out: Writable, strong: int, magic: int, block: int = 2048) -> None:
    """Write to `out` the signature of everything `src` reads, in `block`-byte blocks with
    `strong`-byte sums (0: the longest) of kind `magic`."""
    # The system librsync is built with its assertions on: a bad size would abort the process.
    if not 0 <= block <= _MAX_BLOCK or not 0 <= strong <= _MAX_STRONG:
        raise ValueError(f"bad signature parameters: block={block} strong={strong}")
    job = _job(_lib.rs_sig_begin(block, strong, magic))
    try:
        _drive(job, src, out)
    finally:
        _lib.rs_job_free(job)


def delta(new: Readable, sig: Readable, out: Writable) -> None:
    """Write to `out` the delta that turns the file that `sig` is the signature of into
    everything that `new` reads."""
    sumset = ctypes.c_void_p()
    job = _job(_lib.rs_loadsig_begin(ctypes.byref(sumset)))  # allocates the sumset at once
    try:
        try:
            _drive(job, sig, None)
        finally:
            _lib.rs_job_free(job)
        result = _lib.rs_build_hash_table(sumset)
        if result != _RS_DONE:
            raise LibrsyncError(result)
        job = _job(_lib.rs_delta_begin(sumset))
        try:
            _drive(job, new, out)
        finally:
            _lib.rs_job_free(job)
    finally:
        _lib.rs_free_sumset(sumset)


def patch(basis: Basis, delta: Readable, out: Writable) -> None:
    """Write to `out` the file that applying `delta` to `basis` makes.

    librsync asks for basis bytes by offset, so `basis` is read with seek() then readinto()
    (or read()). A delta that copies from past the end of `basis` raises LibrsyncError
    (RS_INPUT_ENDED) -- pyrsync hangs there -- and whatever `basis` raises is raised as is.
    """
    failure: list[BaseException] = []
    readinto: Callable[[memoryview], int | None] | None = getattr(basis, "readinto", None)

    def copy(
        _opaque: object,
        pos: int,
        length: ctypes._Pointer[ctypes.c_size_t],
        buf: ctypes._Pointer[ctypes.c_void_p],
    ) -> int:
        # Called by librsync inside rs_job_iter, with the GIL retaken by ctypes. Nothing may
        # escape into C: an exception is kept, and raised again once rs_job_iter returns.
        try:
            want, to = length[0], buf[0]
            basis.seek(pos)
            if readinto is not None:
                got = readinto(memoryview((ctypes.c_ubyte * want).from_address(to)).cast("B"))
                got = got or 0
            else:
                data = basis.read(want)
                got = min(len(data), want)
                ctypes.memmove(to, data, got)
            if got <= 0:
                raise LibrsyncError(_RS_INPUT_ENDED, "delta copies past the end of its basis")
            length[0] = got
            return _RS_DONE
        except BaseException as exc:  # raised again by _drive
            failure.append(exc)
            return _RS_IO_ERROR

    callback = _copy_cb(copy)  # referenced until the job is freed
    job = _job(_lib.rs_patch_begin(callback, None))
    try:
        _drive(job, delta, out, failure)
    finally:
        _lib.rs_job_free(job)


def _job(ptr: int | None) -> int:
    if not ptr:  # librsync aborts on a failed malloc first; this is for a broken library
        raise MemoryError("librsync could not start a job")
    return ptr


def _drive(
    job: int,
    src: Readable,
    out: Writable | None,
    failure: list[BaseException] | None = None,
) -> None:
    """Run `job` to its end: feed it `src` a CHUNK at a time, write out what it makes."""
    out_size = CHUNK if out is not None else 64
    outbuf = ctypes.create_string_buffer(out_size)
    out_at = ctypes.addressof(outbuf)
    buffers = _Buffers()
    data = b""  # the input librsync points into: kept alive here until it is consumed
    eof = False
    want_input = True
    idle = 0
    while True:
        if want_input and not eof:
            chunk = src.read(CHUNK)
            if chunk is None:
                raise BlockingIOError("a non-blocking stream has no data for librsync")
            if not chunk:
                eof = True
            else:
                left = buffers.avail_in  # librsync wants more than the rest of the last chunk
                data = data[len(data) - left :] + chunk if left else bytes(chunk)
                buffers.next_in = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
                buffers.avail_in = len(data)
        buffers.eof_in = eof
        buffers.next_out = out_at
        buffers.avail_out = out_size
        result = _lib.rs_job_iter(job, ctypes.byref(buffers))
        if failure:
            raise failure[0]
        made = out_size - buffers.avail_out
        if made and out is not None:
            _write_all(out, ctypes.string_at(out_at, made))
        if result == _RS_DONE:
            return
        if result != _RS_BLOCKED:
            raise LibrsyncError(result)
        # Blocked: on a full output buffer (go on with the same input), or for more input.
        want_input = made < out_size or not buffers.avail_in
        idle = idle + 1 if not made and eof else 0
        if idle > 2:  # librsync answers an ended input with RS_INPUT_ENDED, never this
            raise LibrsyncError(_RS_INTERNAL_ERROR, "librsync is blocked on ended input")


def _write_all(out: Writable, data: bytes) -> None:
    """Write all of `data`, also to a raw stream that takes only part of it per call."""
    while data:
        n = out.write(data)
        if not isinstance(n, int) or n >= len(data):
            return
        if n <= 0:
            raise OSError(f"{out!r} took none of {len(data)} bytes")
        data = data[n:]
