"""The home never backs itself up, and a home is never made among the user's files.

`backup ~` with the default home (HOME pointed at a temporary tree) runs night after night: the
store grows by the night's new data, compressed, and nothing of the home (backupdb, WAL, sigs,
spool, state, lock, config, the embedded store) appears in any snapshot.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import zstandard

from tests.helpers import Run, describe, dg, restored_root, settle

SLACK = 16 << 10  # the backupdb export's delta, the root pointer: a few KiB a night


def _run(env_home: Path, *args: str | Path, **env: str) -> Run:
    """deltagrid with HOME (and nothing else) telling it where the home is."""
    environ = {k: v for k, v in os.environ.items() if k not in ("DELTAGRID_HOME", "XDG_DATA_HOME")}
    environ.update(HOME=str(env_home), **env)
    proc = subprocess.run(
        [sys.executable, "-m", "deltagrid", *map(str, args)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def _store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


def test_backup_of_home_leaves_the_home_out_night_after_night(tmp_path: Path) -> None:
    me = tmp_path / "me"
    (me / "docs").mkdir(parents=True)
    for i in range(20):
        (me / "docs" / f"note{i}.txt").write_text(f"note {i}\n" * 200)
    settle(me)
    dg_home = me / ".local" / "share" / "deltagrid"
    first = _run(me, "backup", me)  # what the shell makes of `deltagrid backup ~`
    assert first.code == 0, first.err
    assert first.err == ""
    said = [ln for ln in first.out.splitlines() if "deltagrid's own" in ln]
    assert said == [f"left out deltagrid's own home and store: {dg_home}"]
    store = dg_home / "store"
    for night in range(1, 5):
        new = os.urandom(30_000) + f"night {night}\n".encode() * 2000
        (me / "docs" / f"night{night}.bin").write_bytes(new)
        before = _store_bytes(store)
        run = _run(me, "--json", "backup", me)
        assert run.code == 0, run.err
        assert run.json["scan"]["own_excluded"] == [str(dg_home)]
        grown = _store_bytes(store) - before
        assert grown <= len(zstandard.compress(new)) + SLACK, (night, grown)
    listed = _run(me, "--json", "ls")
    assert listed.code == 0
    paths = [e["path"] for e in listed.json["entries"]]
    assert str(me / "docs" / "night4.bin") in paths
    assert not [p for p in paths if p == str(dg_home) or p.startswith(str(dg_home) + "/")]
    target = tmp_path / "r"
    assert _run(me, "restore", target).code == 0
    got = describe(restored_root(target, me) / "docs")
    assert got == describe(me / "docs")


def test_a_file_store_under_a_source_is_left_out(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    (src / "work").mkdir(parents=True)
    (src / "work" / "a").write_text("a")
    vault = src / "vault"
    assert dg(home, "init", "--store", f"file://{vault}").code == 0
    run = dg(home, "--json", "backup", src)
    assert run.code == 0, run.err
    assert run.json["scan"]["own_excluded"] == [str(vault)]
    listed = dg(home, "--json", "ls").json["entries"]
    assert sorted(e["path"] for e in listed) == [str(src), str(src / "work"), str(src / "work/a")]


def test_home_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    mine = tmp_path / "docs"
    mine.mkdir()
    (mine / "thesis.odt").write_text("chapter one")
    src = tmp_path / "src"
    src.mkdir()
    before = sorted(os.listdir(mine))
    for args in (["init"], ["backup", str(src)], ["scan", str(src)], ["prune"]):
        run = dg(mine, *args)
        assert run.code == 2, (args, run.err)
        assert "Traceback" not in run.err and len(run.err.splitlines()) == 1
        assert f"--home {mine} is a folder with other files in it" in run.err
    run = _run(tmp_path, "backup", src, DELTAGRID_HOME=str(mine))
    assert run.code == 2 and len(run.err.splitlines()) == 1
    assert sorted(os.listdir(mine)) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert dg(empty, "backup", src).code == 0
    assert dg(empty, "backup", src).code == 0  # and it is a home from then on
