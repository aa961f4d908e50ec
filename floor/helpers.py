"""Helper processes of ours: started with this deltagrid importable, fed length-prefixed
messages on a pipe, and gone when their parent is.

The upload's recorder reads its input until it ends: the parent closes it when done, or the
kernel does when the parent dies; the scan beside a first backup's upload is given its plan and
ends with its scan, or is killed by the parent that no longer needs it. On Linux a helper also
asks to be killed when its parent dies (`as_helper`), so a parent killed outright leaves nothing
of it writing: what it was doing is then cut short as the parent's own work would have been.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from deltagrid.floor.errors import BackupDBError

# Where `deltagrid` is imported from (this is deltagrid/floor/helpers.py, through the path it was
# found by, symlinks and all), so a helper runs the very same code.
_PACKAGES = Path(os.path.abspath(__file__)).parents[2]
_PR_SET_PDEATHSIG = 1


def start(module: str, *args: str) -> subprocess.Popen[bytes] | None:
    """`python -m module args...` with a pipe each way, once it has said it is ready (`ready`);
    its stderr goes nowhere (a helper that fails shows it by its answers). Signals from the
    terminal are the parent's to handle. None if it cannot be started or ends before it is
    ready: an interpreter we may not run again (one started by root that then dropped its
    rights), a deltagrid it cannot import, a backupdb it cannot open. The caller then does
    the work itself."""
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_PACKAGES), path])))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(os.getpid()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    except OSError:
        return None
    assert proc.stdout is not None
    try:
        said = read(proc.stdout)
    except BaseException:
        stop(proc, timeout=0)
        raise
    if said is None:
        stop(proc, timeout=0)
        return None
    return proc


def ready(out: IO[bytes]) -> None:
    """In a helper, once it can work: what `start` waits for."""
    write(out, b"ready")


def as_helper(parent: int) -> None:
    """In a helper, first: ignore the terminal's signals (the parent stops us by closing our
    input) and die with the parent, if it is not already gone."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the end of our input still stops us
        pass
    if os.getppid() != parent:
        os._exit(0)


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Close a helper's input and wait for it to finish what it holds and exit; killed if that
    takes longer than `timeout`, or if a signal lands while we wait."""
    assert proc.stdin is not None
    with contextlib.suppress(OSError):  # gone already: its input's last bytes had nowhere to go
        proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def write(f: IO[bytes], payload: bytes) -> None:
    """Send one message: its length, then its bytes."""
    f.write(len(payload).to_bytes(8, "little") + payload)
    f.flush()


def send(f: IO[bytes], message: object) -> None:
    """Send `message` pickled. An error that does not pickle goes as its words (a
    BackupDBError: our helpers work on the backupdb)."""
    try:
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    except Exception:
        payload = pickle.dumps(BackupDBError(str(message)), pickle.HIGHEST_PROTOCOL)
    write(f, payload)


def read(f: IO[bytes]) -> bytes | None:
    """The next message; None once the input has ended (or ended inside a message)."""
    head = f.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "little")
    payload = f.read(n)
    return payload if len(payload) == n else None
