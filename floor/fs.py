"""File-system helpers every stage shares: durable directory entries, a filesystem-wide sync,
the crash-safe write (temporary name, fsync, rename, fsync the directory), and a read that
tells whether the page cache held the bytes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from pathlib import Path

from deltagrid.floor import longpath
from deltagrid.floor.errors import naming


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()
# preadv2's RWF_NOWAIT (Linux 4.14): a read that fails with EAGAIN where it would wait for the
# disk. Elsewhere, and on a file system that does not take the flag, every read is a plain one.
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def read_cached(fd: int, n: int) -> tuple[bytes, bool]:
    """Up to `n` bytes of the open file `fd`, read at its position as os.read reads them, and
    whether they had to come from the disk: the page cache did not hold them. A read the page
    cache answers only in part comes back short, as from the cache."""
    if _NOWAIT:
        buffer = bytearray(n)
        try:
            got = os.preadv(fd, [buffer], -1, _NOWAIT)  # -1: at the position, moving it
        except BlockingIOError:
            return os.read(fd, n), True
        except OSError:  # a file the flag does not apply to: read as ever
            pass
        else:
            return bytes(memoryview(buffer)[:got]), False
    return os.read(fd, n), False


def open_to_read(path: bytes) -> int:
    """Open a source file to read its bytes: without following a symlink put in its place,
    without waiting for a writer if a FIFO is, and without setting its atime where we may
    (O_NOATIME needs ownership; a backup reads, it does not make the file look read)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        return longpath.open_file(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        return longpath.open_file(path, flags)


def fetch_ahead(path: bytes) -> bool:
    """Whether the start of the file at `path` was not in the page cache, in which case the
    kernel is asked to read the file in (posix_fadvise WILLNEED), without waiting for it: a
    later read finds it there. False where the system cannot tell; an error is left for the
    later read to meet."""
    if not _NOWAIT:
        return False
    try:
        fd = open_to_read(path)
    except OSError:
        return False
    try:
        os.preadv(fd, [bytearray(1)], 0, _NOWAIT)
        return False
    except BlockingIOError:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: bytes | str | Path) -> None:
    """Flush every write to the filesystem holding `path` (syncfs), e.g. after a whole restore."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc is None or _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` crash-safely: temporary name, fsync, rename, fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with naming(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_link(path: bytes) -> bytes:
    """A symlink's target: the one place deltagrid reads links (tests hook it to swap a link for
    a file at the worst moment)."""
    return longpath.readlink(path)
