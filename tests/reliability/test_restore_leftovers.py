"""What a restore killed with SIGKILL leaves in its target, the next restore there removes; what a
live restore is writing, no other restore touches.

A killed restore cleans nothing up: its work directory at the top of TARGET, a small file's
temporary beside the file it was to become, a large file's rebuilt version waiting for its
rename. Each name carries the writing process's pid (restore/leftovers.py); a later restore
removes those whose process is gone, in the directories it restores into. Real processes, real
signals: the restore is SIGKILLed at a moment when all three kinds exist, or SIGSTOPped there
while another restore runs through the same target.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deltagrid.restore.rebuild import IN_MEMORY
from tests.helpers import describe, dg, restored_root, settle
from tests.reliability.conftest import Figures

# The large file is rebuilt on restore's background thread; hold it just before its rename, and
# hold the small files' writer just before the rename of its Nth file; when both are held, do
# `sys.argv[1]` to this process (KILL: SIGKILL; STOP: SIGSTOP, and finish when continued). The
# signal goes to the holding thread itself (pthread_kill): sent to the process, another thread
# could take it while this one runs on and releases the large file.
_HOLD_THEN_SIGNAL = """
import os, signal, sys, threading
from deltagrid.restore.restore import Restorer
real, small, held, go = Restorer._install, [0], threading.Event(), threading.Event()
signum, after = getattr(signal, "SIG" + sys.argv[1]), int(sys.argv[2])
def _install(self, tmp, dest):
    if b".deltagrid-rebuild-" in tmp:
        held.set()
        go.wait()
    elif b".deltagrid-file-" in tmp:
        small[0] += 1
        if small[0] == after:
            assert held.wait(120), "the large file never reached its rename"
            signal.pthread_kill(threading.get_ident(), signum)
            go.set()
    real(self, tmp, dest)
Restorer._install = _install
from deltagrid.cli import main
sys.exit(main(sys.argv[3:]))
"""

SMALL_FILES = 120


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A home whose snapshot has one file too large to rebuild in memory, stored first (so it
    is restored first, on the background thread), and small files in a few directories."""
    base = tmp_path_factory.mktemp("leftovers")
    home, src = base / "home", base / "src"
    (src / "big").mkdir(parents=True)
    (src / "big" / "large").write_bytes(os.urandom(IN_MEMORY + (1 << 20)))
    settle(src)
    assert dg(home, "backup", src).code == 0
    rng = __import__("random").Random(18)
    for i in range(SMALL_FILES):
        path = src / f"d{i % 4}" / f"f{i:03d}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(1, 9000)))
    settle(src)
    assert dg(home, "backup", src).code == 0
    return home, src


def start(home: Path, signal_name: str, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _HOLD_THEN_SIGNAL, signal_name, str(SMALL_FILES // 3)]
        + ["--home", str(home), "restore", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def temporaries(target: Path) -> dict[str, list[Path]]:
    """Every name of a restore's own under `target`, by kind."""
    found: dict[str, list[Path]] = {}
    for path in target.rglob("*"):
        if path.name.startswith(".deltagrid-") or "rebuild-" in path.name:
            found.setdefault(path.name.split("-")[1], []).append(path)
    return found


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


def test_a_rerun_removes_what_a_killed_restore_left(
    backed_up: tuple[Path, Path], tmp_path: Path, figures: Figures
) -> None:
    home, src = backed_up
    target = tmp_path / "target"
    killed = start(home, "KILL", target)
    _out, err = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, err
    left = temporaries(target)
    pid = str(killed.pid)
    assert {kind: all(f"-{pid}-" in p.name for p in paths) for kind, paths in left.items()} == {
        "restore": True,  # the work directory, at the top of TARGET
        "file": True,  # a small file's temporary, beside where it goes
        "rebuild": True,  # the large file's rebuilt version, beside it
    }
    assert [p.parent for p in left["restore"]] == [target]
    root = restored_root(target, src)
    # The user's own files that only look like ours stay: no pid in their names.
    mine = [target / ".deltagrid-file-notes", root.parent / "rebuild-2024.txt"]
    for path in mine:
        path.write_text("the user's")

    rerun = dg(home, "restore", target)

    assert rerun.code == 0, rerun.err
    assert sorted(p for paths in temporaries(target).values() for p in paths) == sorted(mine)
    assert all(path.read_text() == "the user's" for path in mine)
    assert describe(root) == describe(src)
    figures.count(
        "restore leftovers", "killed restores' temporaries removed", sum(map(len, left.values()))
    )


def test_a_live_restores_temporaries_survive_another_restore(
    backed_up: tuple[Path, Path], tmp_path: Path, figures: Figures
) -> None:
    """A restore stopped (SIGSTOP) with its temporaries in place, while another restores the
    same snapshot into the same target with --delete; continued, the first finishes exactly."""
    home, src = backed_up
    target = tmp_path / "target"
    live = start(home, "STOP", target)
    try:
        deadline = time.monotonic() + 120
        while not stopped(live.pid):
            assert live.poll() is None and time.monotonic() < deadline, live.communicate()
            time.sleep(0.01)
        held = temporaries(target)
        assert set(held) == {"restore", "file", "rebuild"}, held

        other = dg(home, "restore", "--delete", target)

        assert other.code == 0, other.err
        assert temporaries(target) == held
        restored = describe(restored_root(target, src))
        assert {p: d for p, d in restored.items() if b"/.deltagrid-" not in p} == describe(src)
    finally:
        live.send_signal(signal.SIGCONT)
    _out, err = live.communicate(timeout=300)
    assert live.returncode == 0, err
    assert temporaries(target) == {}
    assert describe(restored_root(target, src)) == describe(src)
    figures.count(
        "restore leftovers", "live restores' temporaries kept", sum(map(len, held.values()))
    )
