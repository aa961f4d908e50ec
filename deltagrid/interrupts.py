"""SIGINT, SIGTERM and SIGHUP turned into an exception in the main thread, so a run stops cleanly.

Python runs a signal handler in the main thread, between two bytecodes; raising `Interrupted`
there unwinds the command through its `finally` blocks, as any error does: the spool pack and
restore temporaries go, worker pools are shut down, an open SQLite transaction rolls back, the
lock is released. The handler itself cleans nothing up, and nothing is written in a new order:
for the store and the backupdb an interruption is a kill at that moment, which the crash-safe
ordering already makes harmless, followed by the cleanup a kill cannot do.

Python may run the handler inside a finalizer (`__del__`, a weakref or garbage-collection
callback), where an exception cannot propagate: Python prints "Exception ignored" and goes on.
Such a swallowed `Interrupted` is caught by `sys.unraisablehook` and the signal delivered again
a moment later, from a thread of its own, so the handler runs once the finalizer and the hook
have returned: the run stops, as it would anywhere else.

A second signal while the first is being handled ends the process at once, as a kill would
(the user pressed Ctrl-C twice, or a supervisor lost patience). A signal the process was started
with ignored (`nohup`, a background job) stays ignored.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from deltagrid.floor.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _State:
    armed = False
    received: int | None = None
    previous: dict[int, Any] = {}
    unraisable: Any = None  # sys.unraisablehook before `arm`
    in_hook = False


def arm() -> None:
    """From now on, the first of SIGNALS raises `Interrupted` in the main thread."""
    _State.armed, _State.received = True, None
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if previous != signal.SIG_IGN:
            _State.previous[signum] = previous
            signal.signal(signum, _handler)
    if _State.unraisable is None:
        _State.unraisable = sys.unraisablehook
        sys.unraisablehook = _swallowed


def disarm() -> None:
    """The command is done: a signal from now on is noted and interrupts nothing, so its
    result stands and its history row is written."""
    _State.armed = False


def restore() -> None:
    """Put back the handlers `arm` replaced (the CLI may run inside another program: tests)."""
    for signum, previous in _State.previous.items():
        signal.signal(signum, previous)
    _State.previous = {}
    if _State.unraisable is not None:
        sys.unraisablehook, _State.unraisable = _State.unraisable, None


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _State.received is not None:  # a second one: stop now, the way the signal would
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _State.in_hook:  # too early, inside `_swallowed`: later again
        _again(signum)
        return
    _State.received = signum
    if _State.armed:
        raise Interrupted(signum, signal.Signals(signum).name)


def _swallowed(unraisable: Any) -> None:
    """An exception a finalizer could not raise: ours is delivered again (see above)."""
    signum = _State.received
    if isinstance(unraisable.exc_value, Interrupted) and signum is not None and _State.armed:
        _State.received, _State.in_hook = None, True  # not a second signal: the first again
        try:
            _again(signum)
        finally:
            _State.in_hook = False
        return
    _State.unraisable(unraisable)


def _again(signum: int) -> None:
    """The signal once more, from another thread a moment later, once the hook has returned:
    the handler must not raise inside the hook, where it would be swallowed again."""

    def later() -> None:
        time.sleep(0.01)
        _thread.interrupt_main(signal.Signals(signum))

    threading.Thread(target=later, daemon=True).start()
