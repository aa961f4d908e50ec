"""The one exception hierarchy: each class carries its exit code and a one-line message.

The CLI catches `DeltagridError` at the top, so a user mistake never ends in a traceback.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREADABLE = 23
EXIT_VANISHED = 24
EXIT_LOCKED = 75  # EX_TEMPFAIL: another process holds the home's lock; try again later


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


class CorruptData(DeltagridError):
    """Bytes from the store or disk do not decode or do not match their recorded hash."""


class BackupDBError(DeltagridError):
    """The local backupdb cannot be opened or is damaged."""


class Locked(DeltagridError):
    """Another deltagrid process holds the home's lock: nothing was done, try again later."""

    exit_code = EXIT_LOCKED
