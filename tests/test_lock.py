"""The home's write lock: every writer takes it, readers never do; a refused writer exits 75 and
names the holder; --wait waits; a killed holder's lock is released by the kernel and taken over;
two backups started together leave one valid store."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from tests.helpers import describe, dg, one_error, restored_root

HOLD = """
import sys, time
from pathlib import Path
from deltagrid.home import Home
home = Home(Path(sys.argv[1]), command="deltagrid backup")
with home.lock():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@contextmanager
def holder(home: Path, seconds: float = 60) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the home's lock (as a backup would) for `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(home), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def repo(tmp_path: Path, cli) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    assert cli("backup", src).code == 0
    return src


def test_a_refused_writer_exits_75_naming_the_holder(home: Path, repo: Path) -> None:
    with holder(home) as proc:
        started = time.monotonic()
        line = one_error(dg(home, "backup", repo), 75, f"held by pid {proc.pid} (deltagrid backup)")
        assert time.monotonic() - started < 10  # at once: no waiting without --wait
        assert "another deltagrid process is writing" in line and "since 20" in line
        assert "--wait SECONDS" in line
        record = json.loads((home / "lock").read_text())
        assert record["pid"] == proc.pid and record["command"] == "deltagrid backup"
        refused = dg(home, "--json", "upload")
        assert refused.code == 75 and refused.json["exit_code"] == 75


def test_wait_gives_up_after_the_time_given(home: Path, repo: Path) -> None:
    with holder(home):
        started = time.monotonic()
        one_error(dg(home, "--wait", "1.5", "scan", repo), 75, "(waited 1.5 s)")
        assert time.monotonic() - started >= 1.5


def test_wait_outlasts_a_holder_that_finishes(home: Path, repo: Path) -> None:
    (repo / "new.txt").write_text("new\n")
    with holder(home, seconds=2):
        started = time.monotonic()
        done = dg(home, "--wait", "60", "backup", repo)
        assert done.code == 0, done.err
        assert time.monotonic() - started > 1  # it did wait for the holder
    assert (home / "lock").read_text() == ""  # released, and no stale holder left behind


def test_a_killed_holders_lock_is_taken_over(home: Path, repo: Path) -> None:
    with holder(home) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The dead holder's record is still in the file, but the kernel dropped its flock.
        assert json.loads((home / "lock").read_text())["pid"] == proc.pid
        (repo / "after.txt").write_text("after the kill\n")
        done = dg(home, "--json", "backup", repo)
        assert done.code == 0, done.err
    assert "after.txt" in {Path(e["path"]).name for e in dg(home, "--json", "ls").json["entries"]}


@pytest.mark.parametrize(
    "args",
    [
        ["scan", "SRC"],
        ["upload"],
        ["backup", "SRC"],
        ["init"],
        ["attach"],
        ["forget", "--keep-last", "1"],
        ["prune"],
        ["compact"],
    ],
)
def test_every_writer_takes_the_lock(home: Path, cli, repo: Path, args: list[str]) -> None:
    args = [str(repo) if a == "SRC" else a for a in args]
    fd = os.open(home / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held through another open file: Home.lock must fail
        one_error(cli(*args), 75, "another deltagrid process is writing")
    finally:
        os.close(fd)


def test_readers_work_while_a_writer_holds_the_lock(tmp_path: Path, home: Path, repo: Path) -> None:
    (repo / "a.txt").write_text("second\n")
    assert dg(home, "backup", repo).code == 0
    with holder(home) as proc:
        for args in (
            ["snapshots"],
            ["ls", "1"],
            ["diff", "1", "2"],
            ["status"],
            ["verify"],
            ["log"],
            ["report"],
            ["config", "show"],
        ):
            done = dg(home, *args)
            assert done.code == 0, (args, done.err)
        target = tmp_path / "restored"
        assert dg(home, "restore", target).code == 0
        assert describe(restored_root(target, repo)) == describe(repo)
        writer = dg(home, "--json", "status").json["writer"]
        assert writer["pid"] == proc.pid and writer["command"] == "deltagrid backup"
    assert dg(home, "--json", "status").json["writer"] is None


def test_two_backups_started_together_one_runs_the_other_exits_75(
    tmp_path: Path, home: Path, cli
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(64):  # enough work that the first still holds the lock when the second comes
        (src / f"f{i}.bin").write_bytes(os.urandom(1 << 20))
    assert cli("init").code == 0
    first = subprocess.Popen(
        [sys.executable, "-m", "deltagrid", "--home", str(home), "--json", "backup", str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while f'"pid": {first.pid}' not in (home / "lock").read_text():  # it holds the lock
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.02)
    second = dg(home, "backup", src)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    # refused at once, naming the first: it ran while the first held the lock
    one_error(second, 75, f"held by pid {first.pid} (deltagrid backup)")
    assert json.loads(out)["snapshot_id"] == 1
    assert [s["id"] for s in cli("--json", "snapshots").json["snapshots"]] == [1]
    verified = cli("--json", "verify", "--read-data")
    assert verified.code == 0 and verified.json["problems"] == []
    target = tmp_path / "restored"
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)


def test_a_backup_after_init_was_killed_before_its_config_starts_again(
    tmp_path: Path, home: Path
) -> None:
    """A kill between creating the backupdb and writing config.toml leaves an empty backupdb (and
    maybe its WAL) and no store: the next backup must initialise, not refuse or fail."""
    kill = (
        "import os, sys\n"
        "from backupdb import connection\n"
        "conn = connection.create(__import__('pathlib').Path(sys.argv[1]))\n"
        "os._exit(9)\n"  # killed with the backupdb open: its WAL may stay behind
    )
    home.mkdir(parents=True)
    run = subprocess.run([sys.executable, "-c", kill, str(home / "backupdb.sqlite")])
    assert run.returncode == 9 and (home / "backupdb.sqlite").exists()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")

    assert dg(home, "backup", src).code == 0
    assert dg(home, "restore", tmp_path / "r").code == 0
    assert describe(restored_root(tmp_path / "r", src)) == describe(src)


def test_a_backupdb_with_snapshots_but_no_store_in_the_config_is_never_replaced(
    tmp_path: Path, home: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    assert dg(home, "backup", src).code == 0
    config = home / "config.toml"
    kept = [line for line in config.read_text().splitlines() if not line.startswith("store")]
    config.write_text("\n".join(kept) + "\n")
    db = home / "backupdb.sqlite"
    before = db.stat().st_ino, snapshot_rows(db)
    assert before[1] == [(1,)]

    for args in (("backup", src), ("init",)):
        run = dg(home, *args)
        assert run.code != 0 and run.err.count("\n") == 1, run.err
        assert "deltagrid: error:" in run.err and "Traceback" not in run.err
    assert (db.stat().st_ino, snapshot_rows(db)) == before  # the failed runs only logged


def snapshot_rows(db: Path) -> list[tuple[int]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT id FROM snapshots").fetchall()
