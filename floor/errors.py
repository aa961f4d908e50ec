"""The one exception hierarchy: each class carries its exit code and a one-line message.

The CLI catches `DeltagridError` at the top, so a user mistake never ends in a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREADABLE = 23
EXIT_VANISHED = 24
EXIT_LOCKED = 75  # EX_TEMPFAIL: another process holds the home's lock; try again later
EXIT_SIGNAL = 128  # + the signal's number: 130 SIGINT, 143 SIGTERM, 129 SIGHUP (the shell's rule)


class DeltagridError(Exception):
    """Base class: `str(err)` is the one-line message shown to the user."""

    exit_code = EXIT_ERROR


class UsageError(DeltagridError):
    """The command line asks for something that cannot be: wrong option, missing source."""

    exit_code = EXIT_USAGE


class NotInitialised(DeltagridError):
    """The home has no repository yet."""


class StoreError(DeltagridError):
    """The store cannot be reached or refused an operation."""


class ObjectMissing(StoreError):
    """An object the backupdb names is not in the store."""


class NoStore(StoreError):
    """Where the store should be there is none (an empty directory, a disk not mounted)."""

    def __init__(self, where: str) -> None:
        super().__init__(f"no deltagrid store at {where} (run 'deltagrid init')")
        self.where = where


class WrongStore(StoreError):
    """The store is not the one the catalog was written against: another repository, one that
    is behind (rolled back) or ahead of the home, or one that lost objects. Nothing was written."""


class StorePruned(StoreError):
    """Objects a reader's catalog names were deleted by a prune (on another machine, or longer
    ago than `delete_after`): not damage; reading again from the store's current catalog works."""


class CorruptData(DeltagridError):
    """Bytes from the store or disk do not decode or do not match their recorded hash."""


class BackupDBError(DeltagridError):
    """The local backupdb cannot be opened or is damaged."""


class LibrsyncNotFound(DeltagridError):
    """No librsync 2 library could be loaded: the one system package to install is named."""


class Locked(DeltagridError):
    """Another deltagrid process holds the home's lock: nothing was done, try again later."""

    exit_code = EXIT_LOCKED


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: raised in the main thread, so the run unwinds through
    its `finally` blocks. A KeyboardInterrupt, so what already cleans up after Ctrl-C (and no
    `except Exception`) sees it."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"interrupted by {name}")
        self.exit_code = EXIT_SIGNAL + signum


@contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError with no file name (a write or fsync: a full disk, an I/O error) raised again
    naming `path`, so that the one-line message says which disk."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
