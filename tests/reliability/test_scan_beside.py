"""A first backup's scan, run by a process of its own while the upload takes its rows
(scanner/beside.py). Real backups of thousands of files, the process found in /proc, real
SIGKILL and SIGTERM: what was uploaded as the scan went restores exactly, the process never
outlives the backup, a scan process that dies stops the backup in one line, and the next run
finishes it."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import Run, dg, dg_started, one_error
from tests.reliability.test_recorder import gone, helpers_of, home_with_tree, started_with, tree
from tests.reliability.test_resources import FULL, MiB, Tmpfs, fill, tmpfs  # noqa: F401
from tests.reliability.test_signals import assert_restores
from tests.test_maintenance import ok, query

SCANNER = b"deltagrid.scanner.beside"


def stopped_scanning(home: Path, pid: int) -> None:
    """Stop the scan process (SIGSTOP) at a moment its scan has begun and not finished."""
    while True:
        os.kill(pid, signal.SIGSTOP)
        scans = query(home, "SELECT finished_ns FROM scans ORDER BY id DESC LIMIT 1")
        if scans and scans[0][0] is None:
            return
        assert not scans, "the scan finished before it could be stopped"
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, Path]:
    """A home, and a tree whose scan takes a few batches (1,000 rows, doubling)."""
    return home_with_tree(tmp_path, 12_000)


def test_a_first_backup_is_scanned_beside_its_upload_and_restores_exactly(
    big: tuple[Path, Path], tmp_path: Path
) -> None:
    home, src = big
    proc, _pid = started_with(home, SCANNER, "--json", src)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert gone(home, SCANNER)
    doc = json.loads(out)
    assert doc["scan"]["queued"]["new"] == 12_000 + 24 + 3 + 1  # files, dirs, links, the root
    assert doc["counts"]["files"] == 12_000
    assert_restores(home, src, tmp_path / "restored")
    assert ok(home, "verify", "--read-data")["problems"] == []
    again = ok(home, "backup", src)  # everything was recorded, and the scan was finished
    assert again["scan"]["queued"] == {"new": 0, "changed": 0, "meta": 0, "deleted": 0}
    assert again["counts"].get("files", 0) == 0


def test_a_second_source_is_scanned_beside_and_a_known_one_is_not(
    big: tuple[Path, Path], tmp_path: Path
) -> None:
    """A source with nothing live below it is scanned beside, even in a home that holds
    another; one with live entries is scanned first, whole (it may find moves)."""
    home, src = big
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("a\n")
    assert dg(home, "backup", small).code == 0
    proc, _pid = started_with(home, SCANNER, src)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (src / "d000" / "f00000").write_text("changed\n")
    proc = dg_started(home, "backup", src)
    seen = False
    while proc.poll() is None:
        seen = seen or bool(helpers_of(home, SCANNER))
    assert proc.returncode == 0, proc.communicate()
    assert not seen, "a scan that may find changes ran beside its upload"
    assert_restores(home, src, tmp_path / "restored")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_backup_stopped_while_it_scans_beside_leaves_no_process_and_the_rerun_finishes(
    big: tuple[Path, Path], tmp_path: Path, signum: int
) -> None:
    """SIGKILL: the scan process dies with the backup, its open batch rolled back. SIGTERM:
    the backup stops cleanly and ends the process. Either way no snapshot is committed, and
    the next run (a whole scan: entries are live now) finishes it exactly."""
    home, src = big
    proc, _pid = started_with(home, SCANNER, src)
    time.sleep(random.uniform(0.05, 0.4))
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=300)
    assert gone(home, SCANNER), "a scan process outlived its backup"
    if proc.returncode == 0:
        pytest.skip("the backup finished before the signal")  # a fast machine
    assert proc.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 143), err
    if signum == signal.SIGTERM:
        assert len(err.splitlines()) == 1 and "run the command again to finish" in err, err
    assert ok(home, "snapshots")["snapshots"] == []
    rerun = dg(home, "--json", "backup", src)
    assert rerun.code == 0, rerun.err
    assert_restores(home, src, tmp_path / "restored")
    assert ok(home, "backup", src)["counts"].get("files", 0) == 0


def test_a_scan_process_that_dies_stops_the_backup_in_one_line_and_the_rerun_finishes(
    big: tuple[Path, Path], tmp_path: Path
) -> None:
    home, src = big
    proc, pid = started_with(home, SCANNER, src)
    stopped_scanning(home, pid)
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert gone(home, SCANNER)
    one_error(Run(proc.returncode, out, err), 1, "the process scanning into backupdb", "ended")
    assert ok(home, "snapshots")["snapshots"] == []
    assert dg(home, "backup", src).code == 0
    assert_restores(home, src, tmp_path / "restored")


def test_a_missing_source_is_warned_about_by_a_scan_beside(
    big: tuple[Path, Path], tmp_path: Path
) -> None:
    """The scan process's warnings reach the terminal, once, and the exit code; the sources
    that are there are committed."""
    home, src = big
    missing = tmp_path / "unplugged"
    missing.mkdir()
    config = home / "config.toml"
    config.write_text(f"sources = {json.dumps([str(src), str(missing)])}\n{config.read_text()}")
    missing.rmdir()
    proc, _pid = started_with(home, SCANNER)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 23, err
    assert err == f"deltagrid: warning: cannot read {missing}: No such file or directory\n"
    assert_restores(home, src, tmp_path / "restored")


def test_a_full_disk_met_by_the_scan_process_fails_in_one_line_and_the_rerun_finishes(
    tmp_path: Path,
    cli_in,
    tmpfs: Tmpfs,  # noqa: F811 - the fixture, imported above
) -> None:
    """A home on a small tmpfs, filled so that a little is left: the scan process's batches
    meet the full disk (SQLite rolls the batch back) before the upload has anything to write;
    the backup says so in one line naming the backupdb and publishes nothing; with room
    again it finishes. Each try a fresh home: only a first backup scans in the process."""
    src = tmp_path / "src"
    tree(src, 12_000)
    for n, leave in enumerate((128 << 10, 256 << 10, 512 << 10, 1 << 20)):
        home = tmpfs.mount(tmp_path / f"home{n}", 64 * MiB)
        assert cli_in(home, "init").code == 0
        filler = fill(home, leave)
        run = cli_in(home, "backup", src)
        filler.unlink()
        assert gone(home, SCANNER)
        assert ok(home, "snapshots")["snapshots"] == []
        if f"error: backupdb {home / 'backupdb.sqlite'}: " in run.err:
            break
    else:
        pytest.fail("no full disk met the scan process")
    line = one_error(run, 1)
    assert any(why in line for why in FULL), line
    final = cli_in(home, "backup", src)
    assert final.code == 0, final.err
    assert_restores(home, src, tmp_path / "restored")
