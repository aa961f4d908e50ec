"""A home that cannot be written (a backup disk mounted read-only, recovery media, file modes)
serves every reader, and every writer says that the home is read-only, changing nothing.

Two ways to make one: file modes, run as an unprivileged user (root ignores them), and a
read-only bind mount, where this machine lets the test mount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import Run, dg, one_error, settle, unprivileged

READERS = [
    ["snapshots"],
    ["ls", "1"],
    ["diff", "1", "2"],
    ["restore", "TARGET"],
    ["verify"],
    ["verify", "--read-data"],
    ["log"],
    ["report"],
    ["status"],
    ["config", "show"],
]
WRITERS = [["backup", "SRC"], ["scan", "SRC"], ["upload"], ["forget", "--keep-last", "1"],
           ["prune"], ["compact"], ["init"], ["attach"]]  # fmt: skip


def state(home: Path) -> dict[str, tuple[int, int]]:
    """Every file of the home with its size and mtime: what a writer must leave as it was."""
    return {
        os.path.join(d, n): (
            os.lstat(os.path.join(d, n)).st_size,
            os.lstat(os.path.join(d, n)).st_mtime_ns,
        )
        for d, _dirs, names in os.walk(home)
        for n in names
    }


def check_home(run: Callable[..., Run], home: Path, src: Path, target: Path) -> None:
    """Readers work on the read-only `home`; writers refuse, naming it; nothing changes."""
    before = state(home)
    for args in READERS:
        args = [str(target) if a == "TARGET" else a for a in args]
        result = run(home, *args)
        assert result.code == 0 and result.err == "", (args, result.err)
    assert (Path(str(target) + str(src)) / "a.txt").read_text() == "two\n"
    for args in WRITERS:
        args = [str(src) if a == "SRC" else a for a in args]
        one_error(run(home, *args), 1, f"the home {home} is read-only")
    assert state(home) == before


def two_snapshots(run: Callable[..., Run], home: Path, src: Path) -> None:
    for text in ("one\n", "two\n"):
        (src / "a.txt").write_text(text)
        settle(src)
        assert run(home, "backup", src).code == 0


def test_a_home_of_read_only_files_serves_readers() -> None:
    with unprivileged() as (work, run):
        src = work / "src"
        src.mkdir()
        home = work / "home"
        two_snapshots(run, home, src)
        target = work / "restored"
        target.mkdir()
        os.chmod(target, 0o777)
        for dirpath, _dirs, names in os.walk(home):
            for name in names:
                os.chmod(os.path.join(dirpath, name), 0o444)
            os.chmod(dirpath, 0o555)
        check_home(run, home, src, target)


@contextmanager
def read_only_mount(source: Path, where: Path) -> Iterator[None]:
    """`source` bound read-only at `where`, or a skip saying why the machine does not allow it."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root and mount(8)")
    bound = subprocess.run(["mount", "--bind", source, where], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"this machine refuses a bind mount: {bound.stderr.strip()}")
    try:
        ro = ["mount", "-o", "remount,ro,bind", where]
        remounted = subprocess.run(ro, capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(f"this machine refuses a read-only remount: {remounted.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", where], check=True)


def test_a_home_on_a_read_only_mount_serves_readers(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    store = tmp_path / "store"  # beside the home: the mount makes the home alone read-only
    assert dg(home, "init", "--store", f"file://{store}").code == 0
    two_snapshots(dg, home, src)
    mounted = tmp_path / "mounted"
    with read_only_mount(home, mounted):
        check_home(dg, mounted, src, tmp_path / "restored")
