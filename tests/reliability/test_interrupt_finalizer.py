"""A signal whose handler Python runs inside a finalizer still stops the run.

An exception raised in `__del__` (or a weakref or garbage-collection callback) cannot
propagate: Python prints "Exception ignored" and goes on. A SIGTERM landing there used to be
lost that way (seen about twice in 200 runs); now it is delivered again and lands outside.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
import weakref

import pytest

from deltagrid import interrupts
from deltagrid.floor.errors import Interrupted


@pytest.fixture
def armed():
    interrupts.arm()
    try:
        yield
    finally:
        interrupts.disarm()
        interrupts.restore()


class Finalized:
    """Sends the signal from its finalizer, then runs bytecodes there, where the handler runs."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        for _ in range(10_000):
            pass


def _spin() -> None:
    """Run bytecodes for up to 10 s: the signal delivered again lands here."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pass


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_handled_inside_del_stops_the_run(armed, capfd, signum):
    with pytest.raises(Interrupted) as caught:
        Finalized(signum)  # dropped at once: its __del__ runs here
        _spin()
    assert caught.value.exit_code == 128 + signum
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_signal_handled_inside_a_gc_callback_stops_the_run(armed, capfd):
    class Node:
        pass

    def callback(_ref: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):
            pass

    with pytest.raises(Interrupted) as caught:
        node = Node()
        node.cycle = node  # type: ignore[attr-defined]  # only the collector frees it
        ref = weakref.ref(node, callback)
        del node
        gc.collect()
        _spin()
    assert ref() is None
    assert caught.value.exit_code == 128 + signal.SIGTERM
    assert "Exception ignored" not in capfd.readouterr().err


def test_other_unraisable_errors_still_reach_the_hook_before(monkeypatch):
    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))

    class Broken:
        def __del__(self) -> None:
            raise ValueError("a finalizer's own error")

    interrupts.arm()
    try:
        Broken()
    finally:
        interrupts.disarm()
        interrupts.restore()
    assert [type(e) for e in seen] == [ValueError]
    assert sys.unraisablehook is not interrupts._swallowed
