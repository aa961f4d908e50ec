"""Helper processes of ours: started with this deltagrid importable, fed length-prefixed
messages on a pipe, and gone when their parent is.

A helper (the upload's recorder) reads its input until it ends: the parent closes it when done,
or the kernel does when the parent dies. On Linux a helper also asks to be killed when its parent
dies (`as_helper`), so a parent killed outright leaves nothing of it writing: what it was doing
is then cut short as the parent's own work would have been.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

# Where `deltagrid` is imported from (this is deltagrid/floor/helpers.py, through the path it was
# found by, symlinks and all), so a helper runs the very same code.
_PACKAGES = Path(os.path.abspath(__file__)).parents[2]
_PR_SET_PDEATHSIG = 1


def start(module: str, *args: str) -> subprocess.Popen[bytes] | None:
    """`python -m module args...` with a pipe each way; its stderr goes nowhere (a helper that
    fails shows it by its answers). Signals from the terminal are the parent's to handle. None
    if it cannot be started: an interpreter we may not run again (one started by root that
    then dropped its rights), no process left to have."""
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_PACKAGES), path])))
    try:
        return subprocess.Popen(
            [sys.executable, "-m", module, str(os.getpid()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    except OSError:
        return None


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


def read(f: IO[bytes]) -> bytes | None:
    """The next message; None once the input has ended (or ended inside a message)."""
    head = f.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "little")
    payload = f.read(n)
    return payload if len(payload) == n else None
