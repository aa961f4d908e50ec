"""Paths longer than PATH_MAX (4096 bytes), which the kernel refuses whole (ENAMETOOLONG).

Such a path is reached through directory descriptors: its directories are opened in runs
shorter than PATH_MAX, each relative to the last (openat), and the last name is used relative
to its directory's descriptor. Each call here tries the whole path first, so an ordinary path
costs nothing more; depth and length are then limited by the file system alone.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
RUN = 3072  # bytes of path opened at a time: well inside PATH_MAX
NEAR = 4096 - 256  # a directory whose entries' paths may not fit PATH_MAX (with NAME_MAX names)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def open_dir(path: bytes) -> int:
    """A descriptor on the directory `path`, however long: symlinks on the way are followed, as
    they are in a whole path."""
    if len(path) < RUN:
        return os.open(path, _DIR)
    fd = os.open(b"/" if path.startswith(b"/") else b".", _DIR)
    run = b""
    try:
        for part in path.split(b"/"):
            if not part:
                continue
            if run and len(run) + 1 + len(part) >= RUN:
                fd = _step(fd, run)
                run = b""
            run = run + b"/" + part if run else part
        if run:
            fd = _step(fd, run)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _step(fd: int, run: bytes) -> int:
    try:
        return os.open(run, _DIR, dir_fd=fd)
    finally:
        os.close(fd)


def at(path: bytes, call: Callable[[bytes, int | None], T]) -> T:
    """`call(path, None)`; if the path is too long for the kernel, `call(name, fd)` with `fd`
    its directory's descriptor (open_dir) and `name` its last component."""
    try:
        return call(path, None)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    head, _, name = path.rpartition(b"/")
    fd = open_dir(head or b"/")
    try:
        return call(name, fd)
    finally:
        os.close(fd)


def lstat(path: bytes) -> os.stat_result:
    return at(path, lambda p, fd: os.stat(p, dir_fd=fd, follow_symlinks=False))


def stat(path: bytes) -> os.stat_result:
    return at(path, lambda p, fd: os.stat(p, dir_fd=fd))


def open_file(path: bytes, flags: int) -> int:
    return at(path, lambda p, fd: os.open(p, flags, dir_fd=fd))


def readlink(path: bytes) -> bytes:
    return at(path, lambda p, fd: os.readlink(p, dir_fd=fd))
