"""Run deltagrid and SIGKILL it at a chosen moment: `python killpoint.py SIDEFILE WHEN ARGS...`.

A *step* is a call or line event in deltagrid's own packages (sys.settrace, every thread), so any
statement of ours can be the last one to run. WHEN is either a step number N — at step N the
process writes `file:line function` to SIDEFILE and kills itself with SIGKILL (not catchable:
nothing of ours runs after it) — or `@SECONDS`: a timer, no tracing, so real I/O interleavings
are hit; when it fires, the innermost frame of ours on the main thread is written instead.

`counting()` runs the same tracer in the test's own process without killing: how many steps an
uninterrupted run takes, and at which steps the commit-critical functions are entered (`marks`),
so kills can be aimed across the whole run and at its commits.
"""

from __future__ import annotations

import importlib
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "deltagrid"  # its rooms are symlinks to the folders at the root
OURS = (f"{PACKAGE}{os.sep}",)
# Entering these is worth aiming at: packs put and recorded, the export put, the root flipped,
# objects deleted, a tree swapped into place.
MARKS = frozenset(
    {
        "put_file",
        "move_file",
        "put_bytes",
        "replace_root",
        "delete",
        "_flush_pack",
        "_record",
        "_flush",
        "_rewrite_catalog",
        "publish",
        "commit",
        "exchange",
        "remove_tree",
    }
)


def where(frame: FrameType) -> str:
    path = os.path.relpath(frame.f_code.co_filename, REPO)
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


def die(sidefile: str, frame: FrameType) -> None:
    with open(sidefile, "w") as f:
        f.write(where(frame))
    os.kill(os.getpid(), signal.SIGKILL)


class Steps:
    """Counts steps of our code; at step `kill_at` (0: never) records where and dies."""

    def __init__(self, sidefile: str = "", kill_at: int = 0) -> None:
        self.sidefile = sidefile
        self.kill_at = kill_at
        self.counter = itertools.count(1)  # next() is atomic under the GIL: safe across threads
        self.count = 0
        self.marks: list[tuple[int, str]] = []
        self.ours: dict[Any, bool] = {}

    def step(self, frame: FrameType) -> None:
        self.count = n = next(self.counter)
        if n == self.kill_at:
            die(self.sidefile, frame)

    def on_call(self, frame: FrameType, event: str, _arg: Any) -> Any:
        code = frame.f_code
        ours = self.ours.get(code)
        if ours is None:
            ours = self.ours[code] = code.co_filename.startswith(OURS)
        if not ours:
            return None
        self.step(frame)
        if code.co_name in MARKS:
            self.marks.append((self.count, code.co_name))
        return self.on_line

    def on_line(self, frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "line":
            self.step(frame)
        return self.on_line


@contextmanager
def counting() -> Iterator[Steps]:
    """Count the steps of whatever runs inside (this thread and threads started inside)."""
    import_ours()
    steps = Steps()
    threading.settrace(steps.on_call)
    sys.settrace(steps.on_call)
    try:
        yield steps
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]


def kill_later(sidefile: str, seconds: float) -> None:
    """A timer thread: after `seconds`, record the main thread's innermost frame of ours, die."""
    main_id = threading.main_thread().ident

    def fire() -> None:
        time.sleep(seconds)
        frame = sys._current_frames().get(main_id)  # type: ignore[arg-type]
        innermost = frame
        while frame is not None and not frame.f_code.co_filename.startswith(OURS):
            frame = frame.f_back
        die(sidefile, frame or innermost)  # type: ignore[arg-type]

    threading.Thread(target=fire, daemon=True).start()


def import_ours() -> None:
    """Import every module of ours up front, as the test's process already has: then step N here
    is step N of the counting run there, not a step of some module's first import."""
    for folder, _dirs, files in os.walk(PACKAGE, followlinks=True):
        for name in sorted(files):
            if name.endswith(".py") and name != "__main__.py":
                parts = (Path(folder) / name).relative_to(REPO).with_suffix("").parts
                importlib.import_module(".".join(parts).removesuffix(".__init__"))


def main() -> int:
    sidefile, when, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    import_ours()
    from deltagrid.cli import main as deltagrid

    if when.startswith("@"):
        kill_later(sidefile, float(when[1:]))
        return deltagrid(args)
    steps = Steps(sidefile, int(when))
    threading.settrace(steps.on_call)
    sys.settrace(steps.on_call)
    return deltagrid(args)


if __name__ == "__main__":
    sys.exit(main())
