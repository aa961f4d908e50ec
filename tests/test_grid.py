"""deltagrid on a real local Tahoe-LAFS grid: 1 introducer, 4 storage servers, 1 client node.

Shares are 2-of-4 with happy = 3, so one storage server may be down for a backup and two for a
restore. The grid is started once for the session.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from deltagrid.store.tahoe_grid import LocalGrid
from tests import gridfixtures
from tests.helpers import describe, dg, restored_root, settle

pytestmark = gridfixtures.needs_tahoe
grid = gridfixtures.grid  # the session's grid, shared with the other grid tests
healthy = gridfixtures.healthy


def make_tree(root: Path, files: int = 60, seed: int = 0) -> None:
    (root / "docs" / "deep").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = root / "docs" / ("deep" if i % 3 else "")
        (sub / f"f{i:03}.txt").write_bytes(f"file {i} seed {seed}\n".encode() * (i * 7 + 1))
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "link").symlink_to("docs")
    settle(root)


def init_on_grid(cli, grid: LocalGrid) -> str:
    created = cli("--json", "init", "--store", grid.url)
    assert created.code == 0, created.err
    cap = created.json["cap"]
    assert cap.startswith("URI:MDMF:")
    return str(cap)


def test_backup_to_the_grid_restores_exactly(tmp_path: Path, cli, healthy: LocalGrid) -> None:
    src = tmp_path / "src"
    make_tree(src)
    init_on_grid(cli, healthy)
    first = cli("--json", "backup", src)
    assert first.code == 0, first.err
    assert first.json["packs"] == 1  # a night's small files travel in one pack object
    target = tmp_path / "r"
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)


def test_several_nights_on_the_grid_each_restore_exactly(
    tmp_path: Path, cli, healthy: LocalGrid
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    init_on_grid(cli, healthy)
    nights = []
    for night in range(3):
        if night:
            with open(src / "big.bin", "r+b") as f:
                f.seek(night * 100_000)
                f.write(b"edit" * 25)
            (src / "docs" / f"f{night * 3:03}.txt").unlink()
            (src / f"new{night}.txt").write_text(f"night {night}\n")
        result = cli("--json", "backup", src)
        assert result.code == 0, result.err
        nights.append(describe(src))
        if night:
            assert result.json["counts"]["deltas"] == 1
            assert result.json["bytes_uploaded"] < 50_000
    for night, expected in enumerate(nights, start=1):
        target = tmp_path / f"r{night}"
        assert cli("restore", "--snapshot", night, target).code == 0
        assert describe(restored_root(target, src)) == expected


def test_a_fresh_home_restores_and_continues_with_only_the_capability(
    tmp_path: Path, cli, healthy: LocalGrid
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    cap = init_on_grid(cli, healthy)
    assert cli("backup", src).code == 0
    other = tmp_path / "other-machine"
    attached = dg(other, "attach", "--store", healthy.url, "--cap", cap)
    assert attached.code == 0, attached.err
    assert (other / "config.toml").stat().st_mode & 0o077 == 0  # the writecap stays private
    target = tmp_path / "r"
    assert dg(other, "restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)
    (src / "docs" / "added.txt").write_text("from the other machine\n")
    more = dg(other, "backup", src)
    assert more.code == 0, more.err
    target2 = tmp_path / "r2"
    assert dg(other, "restore", target2).code == 0
    assert describe(restored_root(target2, src)) == describe(src)


def test_one_storage_server_down_during_backup_and_restore(
    tmp_path: Path, cli, healthy: LocalGrid
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    init_on_grid(cli, healthy)
    healthy.stop_node("storage3")
    backup = cli("backup", src)
    assert backup.code == 0, backup.err
    healthy.start()
    healthy.stop_node("storage0")
    target = tmp_path / "r"
    restored = cli("restore", target)
    assert restored.code == 0, restored.err
    assert describe(restored_root(target, src)) == describe(src)


def test_too_few_servers_is_a_clear_error_and_loses_nothing(
    tmp_path: Path, home: Path, cli, healthy: LocalGrid
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    init_on_grid(cli, healthy)
    assert cli("backup", src).code == 0
    (src / "docs" / "more.txt").write_bytes(os.urandom(100_000))
    healthy.stop_node("storage2")
    healthy.stop_node("storage3")
    failed = dg(home, "backup", src)
    assert failed.code == 1
    assert "Traceback" not in failed.err
    assert "shares" in failed.err or "not reachable" in failed.err
    healthy.start()
    done = cli("backup", src)
    assert done.code == 0, done.err
    target = tmp_path / "r"
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)


def packs_recorded(home: Path) -> int:
    """Packs the backupdb has recorded so far (read beside a running upload)."""
    db = sqlite3.connect(f"file:{home / 'backupdb.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT count(*) FROM packs").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        db.close()


def test_client_node_stopped_mid_upload_then_resume_completes(
    tmp_path: Path, home: Path, cli, healthy: LocalGrid
) -> None:
    src = tmp_path / "src"
    make_tree(src, files=30)
    for i in range(12):
        (src / f"chunk{i}.bin").write_bytes(os.urandom(1 << 20))
    init_on_grid(cli, healthy)
    with open(home / "config.toml", "a") as f:
        f.write("\n[upload]\npack_size = 1048576\n")
    assert cli("scan", src).code == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "deltagrid", "--home", str(home), "upload"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Stop the node once the first pack is recorded: the upload is then surely under way, with
    # about eleven packs still to put.
    deadline = time.monotonic() + 120
    while packs_recorded(home) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    healthy.stop_node("client")
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("deltagrid: error:")
    assert "not reachable" in err
    healthy.start()
    resumed = cli("--json", "upload")
    assert resumed.code == 0, resumed.err
    target = tmp_path / "r"
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)


_TIED_GRID = """
import sys, time
from pathlib import Path
from deltagrid.store.tahoe_grid import LocalGrid
grid = LocalGrid(Path(sys.argv[1]), tied=True)
grid.create(servers=1, needed=1, happy=1, total=1)
grid.start_node("introducer")
print(grid._load()["pids"]["introducer"], flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie left to be reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_tied_grids_nodes_end_with_the_process_that_started_them(tmp_path: Path) -> None:
    """The test grid's nodes read a pipe from the test run: a run killed outright (SIGKILL
    runs no cleanup) must not leave them holding ports and directories for the next one."""
    starter = subprocess.Popen(
        [sys.executable, "-c", _TIED_GRID, str(tmp_path / "grid")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout is not None
    node = int(starter.stdout.readline())
    assert running(node)
    starter.kill()
    starter.wait()
    deadline = time.monotonic() + 60
    while running(node) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(node)
