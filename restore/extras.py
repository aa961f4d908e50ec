"""`restore --delete`: remove what the target holds under the restored directories that the
snapshot does not have, as rsync --delete and restic's restore --delete do.

Only below the restored roots, and never through a symlink: the walk holds each directory open
(O_NOFOLLOW, O_DIRECTORY) and works relative to it, so a symlink planted in the target, or an
entry swapped for one while we work, is removed as a name, never followed out of TARGET.
Another restore's temporaries, while it runs, are not ours to remove.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from deltagrid.restore import leftovers

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_below(target: bytes, root: bytes) -> int:
    """A descriptor of `root`, reached from `target` one component at a time, never following a
    symlink below `target` (which the user named, and may be one)."""
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in root[len(target) :].split(b"/"):
            if part:
                inner = os.open(part, OPEN_DIR, dir_fd=fd)
                os.close(fd)
                fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_extras(
    target: bytes,
    roots: list[bytes],
    expected: set[bytes],
    dirs: set[bytes],
    on_removed: Callable[[bytes], None],
    on_error: Callable[[bytes, OSError], None],
) -> None:
    """Remove every entry under each of `roots` (restored directories below `target`) whose
    path is not in `expected`; descend into the `dirs` the snapshot has as directories."""
    for root in roots:
        try:
            fd = _open_below(target, root)
        except OSError as exc:
            on_error(root, exc)
            continue
        try:
            _sweep(fd, root, expected, dirs, on_removed, on_error)
        finally:
            os.close(fd)


def _sweep(
    fd: int,
    path: bytes,
    expected: set[bytes],
    dirs: set[bytes],
    on_removed: Callable[[bytes], None],
    on_error: Callable[[bytes, OSError], None],
) -> None:
    with os.scandir(fd) as listing:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
    for name, is_dir in entries:
        child = path + b"/" + os.fsencode(name)
        try:
            if child not in expected and not leftovers.live(os.fsencode(name)):
                if is_dir:
                    shutil.rmtree(name, dir_fd=fd)  # fd-relative: never follows a symlink
                else:
                    os.unlink(name, dir_fd=fd)
                on_removed(child)
            elif is_dir and child in dirs:
                inner = os.open(name, OPEN_DIR, dir_fd=fd)
                try:
                    _sweep(inner, child, expected, dirs, on_removed, on_error)
                finally:
                    os.close(inner)
        except OSError as exc:
            on_error(child, exc)
