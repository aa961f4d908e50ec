"""Temporary names that say which process made them, so a later run can remove what a killed
one left, and never what a live one is still writing.

A restore writes its temporaries (staging trees, work directories, files before their rename)
where they are to land: in TARGET, in the directories below it, beside a mirror. SIGKILL or a
crash leaves them there, and nothing of the dead process can clean up. So each name is
`PREFIX-PID-RANDOM`: a later restore into the same place finds names of its own kind, asks
whether PID still runs, and removes those whose process is gone. Another restore at work in the
same place keeps its temporaries: its process runs. (A pid the kernel has since given to some
other program keeps a leftover until that program ends: never a live one's removed.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

# A work directory, then the entries being made (FIFOs and devices as "special").
KINDS = (b"restore", b"file", b"link", b"special", b"rebuild")
RESTORE_KINDS = tuple(b".deltagrid-" + kind for kind in KINDS)


def tagged(prefix: str) -> str:
    """`PREFIX-PID-`: how a name of this process's temporaries begins (a random part follows)."""
    return f"{prefix}-{os.getpid()}-"


def owner(name: bytes, prefixes: Iterable[bytes]) -> int | None:
    """The pid in `name` if it is a temporary's name with one of `prefixes`, else None."""
    for prefix in prefixes:
        if name.startswith(prefix + b"-"):
            pid, dash, rest = name[len(prefix) + 1 :].partition(b"-")
            if pid.isdigit() and dash and rest:
                return int(pid)
    return None


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    return True


def live(name: bytes) -> bool:
    """Whether `name` is a restore's temporary whose process still runs (not to be touched)."""
    pid = owner(name, RESTORE_KINDS)
    return pid is not None and running(pid)


def clear(directory: bytes, prefixes: Iterable[bytes] = RESTORE_KINDS) -> None:
    """Remove the temporaries in `directory` named with one of `prefixes` whose process is gone:
    a tree as a tree (never following a symlink), anything else as a name."""
    prefixes = tuple(prefixes)
    try:
        with os.scandir(directory) as entries:
            dead = [
                e
                for e in entries
                if (pid := owner(e.name, prefixes)) is not None and not running(pid)
            ]
    except OSError:
        return  # not there, or not ours to read: nothing of ours to remove either
    for entry in dead:
        with contextlib.suppress(OSError):  # gone already (another run cleared it), or not
            if entry.is_dir(follow_symlinks=False):  # ours to remove: no reason to stop a run
                remove_tree(Path(os.fsdecode(entry.path)))
            else:
                os.unlink(entry.path)


def remove_tree(path: Path) -> None:
    """Delete a tree we wrote, even one with read-only directories (as non-root)."""

    def writable_then_retry(func: Callable[[str], object], failed: str, _exc: object) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        func(failed)

    shutil.rmtree(path, onerror=writable_then_retry)
