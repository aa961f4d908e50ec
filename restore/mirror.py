"""Publishing a restored tree atomically: readers see the whole old tree or the whole new one.

The tree is restored into a staging directory beside DIR (same filesystem) and synced; then one
rename puts it in place when DIR is absent, or one renameat2(RENAME_EXCHANGE) swaps it with the
existing DIR. Where the kernel or filesystem cannot exchange, we say so; two plain renames (a
moment with no DIR at all) happen only when the user asks for them with --swap=rename.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from deltagrid.floor.errors import DeltagridError, UsageError
from deltagrid.floor.fs import fsync_dir
from deltagrid.restore import leftovers
from deltagrid.restore.leftovers import remove_tree

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _load_renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> None:
    """Atomically swap the names `a` and `b` (both must exist)."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if _renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _beside(dest: Path, role: str) -> Path:
    """A name beside `dest` for this run's staging or old tree. The pid in it tells a later run
    whether the tree is a leftover of a killed run or another restore's work in progress."""
    return dest.parent / (leftovers.tagged(f".{dest.name}.deltagrid-{role}") + os.urandom(4).hex())


def clear_leftovers(dest: Path) -> None:
    """Remove the staging and old trees that killed runs left beside `dest` (their process is
    gone): a half-written new tree, or after the swap the old tree that was to be removed."""
    roles = (f".{dest.name}.deltagrid-{role}" for role in ("staging", "old"))
    leftovers.clear(os.fsencode(dest.parent), [os.fsencode(r) for r in roles])


def staging_for(dest: Path) -> Path:
    """A fresh staging directory beside `dest`, on the same filesystem."""
    dest = dest.absolute()
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent} does not exist")
    clear_leftovers(dest)
    staging = _beside(dest, "staging")
    staging.mkdir(mode=0o700)
    return staging


def publish(staging: Path, dest: Path, swap: str | None, keep_old: str | None) -> str:
    """Put `staging` in place as `dest`; return how ('renamed', 'exchanged', 'renamed twice')."""
    dest = dest.absolute()
    parent = dest.parent
    if keep_old is not None and ("/" in keep_old or keep_old in ("", ".", "..")):
        raise UsageError(f"--keep-old takes a plain name beside {dest.name}, not {keep_old!r}")
    if keep_old is not None and os.path.lexists(parent / keep_old):
        raise UsageError(f"{parent / keep_old} already exists")
    if not os.path.lexists(dest):
        os.rename(staging, dest)
        fsync_dir(parent)
        return "renamed"
    if swap is None:
        raise UsageError(f"{dest} exists: pass --swap to replace it atomically")
    if swap == "exchange":
        try:
            exchange(staging, dest)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise DeltagridError(
                    f"this system cannot exchange {dest} atomically (renameat2 "
                    "RENAME_EXCHANGE: " + (exc.strerror or "unsupported") + "); "
                    "--swap=rename replaces it with two renames, leaving a moment without it"
                ) from None
            raise
        how = "exchanged"
    else:
        old = _beside(dest, "old")
        os.rename(dest, old)
        os.rename(staging, dest)
        os.rename(old, staging)
        how = "renamed twice"
    fsync_dir(parent)
    if keep_old is not None:
        os.rename(staging, parent / keep_old)
        fsync_dir(parent)
    elif stat.S_ISDIR(os.lstat(staging).st_mode):
        remove_tree(staging)
    else:
        os.unlink(staging)  # DIR was a symlink or a file: the name is replaced, not its target
    return how
