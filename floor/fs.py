"""File-system helpers every stage shares: durable directory entries, a filesystem-wide sync,
and the crash-safe write (temporary name, fsync, rename, fsync the directory)."""

from __future__ import annotations

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
