"""What the fuzz tests share: byte mutations of valid inputs, and running a reader that may be C
code in a forked child, so a hang is killed after a timeout and a crash is seen as a signal."""

from __future__ import annotations

import os
import pickle
import select
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st


@dataclass
class Outcome:
    """How a call in the child ended: `error` is None when it returned `value`."""

    value: Any = None
    error: BaseException | None = None
    trace: str = ""


def in_child(fn: Callable[[], Any], seconds: float = 10.0) -> Outcome:
    """Call `fn` in a forked child; fail the test if it hangs past `seconds` or dies."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any of pytest's cleanup
        code = 0
        try:
            os.close(read_fd)
            try:
                outcome = Outcome(value=fn())
            except BaseException as exc:  # noqa: BLE001 - the parent judges it
                outcome = Outcome(error=exc, trace=traceback.format_exc())
            try:
                data = pickle.dumps(outcome)
            except Exception:  # noqa: BLE001 - an unpicklable value or error
                data = pickle.dumps(Outcome(error=RuntimeError(repr(outcome)), trace=outcome.trace))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(data)
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            while True:
                ready, _, _ = select.select([pipe], [], [], seconds)
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                    raise AssertionError(f"the reader hung for more than {seconds} s")
                chunk = os.read(pipe.fileno(), 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise AssertionError(f"the reader crashed with signal {os.WTERMSIG(status)}")
    assert os.WEXITSTATUS(status) == 0 and chunks, f"the child failed (status {status})"
    return pickle.loads(b"".join(chunks))


@st.composite
def mutated(draw: st.DrawFn, valid: bytes, max_edits: int = 4) -> bytes:
    """`valid` with a few edits: flipped bits, overwritten runs, cuts, inserts, a truncation."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["flip", "overwrite", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            run = draw(st.binary(min_size=1, max_size=64))
            data[at : at + len(run)] = run
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 512))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[at:]
    return bytes(data)


def fuzz_bytes(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or `valid` mutated: most inputs look almost right, some are noise."""
    return st.one_of(st.binary(max_size=2048), mutated(valid), mutated(valid, max_edits=1))
