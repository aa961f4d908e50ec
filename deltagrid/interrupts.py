"""SIGINT, SIGTERM and SIGHUP turned into an exception in the main thread, so a run stops cleanly.

Python runs a signal handler in the main thread, between two bytecodes; raising `Interrupted`
there unwinds the command through its `finally` blocks, as any error does: the spool pack and
restore temporaries go, worker pools are shut down, an open SQLite transaction rolls back, the
lock is released. The handler itself cleans nothing up, and nothing is written in a new order:
for the store and the backupdb an interruption is a kill at that moment, which the crash-safe
ordering already makes harmless, followed by the cleanup a kill cannot do.

A second signal while the first is being handled ends the process at once, as a kill would
(the user pressed Ctrl-C twice, or a supervisor lost patience). A signal the process was started
with ignored (`nohup`, a background job) stays ignored.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

from deltagrid.floor.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _State:
    armed = False
    received: int | None = None
    previous: dict[int, Any] = {}


def arm() -> None:
    """From now on, the first of SIGNALS raises `Interrupted` in the main thread."""
    _State.armed, _State.received = True, None
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if previous != signal.SIG_IGN:
            _State.previous[signum] = previous
            signal.signal(signum, _handler)


def disarm() -> None:
    """The command is done: a signal from now on is noted and interrupts nothing, so its
    result stands and its history row is written."""
    _State.armed = False


def restore() -> None:
    """Put back the handlers `arm` replaced (the CLI may run inside another program: tests)."""
    for signum, previous in _State.previous.items():
        signal.signal(signum, previous)
    _State.previous = {}


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _State.received is not None:  # a second one: stop now, the way the signal would
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _State.received = signum
    if _State.armed:
        raise Interrupted(signum, signal.Signals(signum).name)
