"""A signal landing while a run cleans up. A clean-up that fails then: the run still says it was
interrupted (exit 128 + the signal) and names what the clean-up met, instead of reporting that
error as if it were the run's own (CI once saw a prune stopped by SIGTERM end "error: Bad file
descriptor", exit 1). A clean-up step the signal interrupts: the steps after it still run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from deltagrid.commands import snapshots
from deltagrid.restore.fetch import Fetcher


def test_a_clean_up_failing_after_a_signal_still_reports_the_signal(
    tmp_path: Path, cli_in, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    home = tmp_path / "home"
    assert cli_in(home, "backup", src).code == 0
    never_open = 1 << 30  # no descriptor has this number: closing it fails with EBADF

    def run(*_args: object) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled between bytecodes
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pass
            return 0
        finally:
            os.close(never_open)  # a clean-up that fails as the signal unwinds the run

    monkeypatch.setattr(snapshots, "run", run)
    stopped = cli_in(home, "snapshots")
    assert stopped.code == 128 + signal.SIGTERM
    assert stopped.err == (
        "deltagrid: interrupted by SIGTERM; run the command again to finish "
        "(stopping, it met: Bad file descriptor)\n"
    )
    monkeypatch.undo()
    assert cli_in(home, "snapshots").code == 0  # nothing else is left behind


@pytest.mark.parametrize("into", [False, True])
def test_a_signal_landing_in_a_restores_clean_up_leaves_no_work_directory(
    tmp_path: Path, cli_in, monkeypatch: pytest.MonkeyPatch, into: bool
) -> None:
    """SIGTERM arriving while the restore closes its fetcher, the files all written (CI saw a
    restore SIGTERM'd at that moment leave its `.deltagrid-restore-*` directory in TARGET):
    nothing of the restore's own is left, in TARGET or beside the mirror."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(1000))
    home = tmp_path / "home"
    assert cli_in(home, "backup", src).code == 0
    close = Fetcher.close

    def signalled_close(self: Fetcher) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: inside the close
        close(self)

    monkeypatch.setattr(Fetcher, "close", signalled_close)
    target = tmp_path / "target"
    args = ("--path", src, "--into", target / "mirror") if into else (target,)
    target.mkdir()
    stopped = cli_in(home, "restore", *args)
    assert stopped.code == 128 + signal.SIGTERM, stopped.err
    left = [p.name for p in tmp_path.rglob("*") if ".deltagrid-" in p.name]
    assert left == [], left
