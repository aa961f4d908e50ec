"""Readers against maintenance: a restore or a `verify --read-data` that is reading while
`forget` + `prune` run completes exactly.

The reader is a real process, and the overlap is made certain with real signals: once the reader
has begun (its catalog is pinned), it is stopped with SIGSTOP, forget and prune run against the
data it is about to read (snapshot 1, which forget drops and whose packs prune frees), and the
reader is continued with SIGCONT while prune waits for it, or after prune gave up waiting and
left the packs for the next run.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import describe, dg_started
from tests.reliability.conftest import Figures
from tests.test_maintenance import call, configure, ok, store_objects

FILES = 400  # about 40 MiB in 3 directories: a restore takes a fraction of a second


def write_tree(src: Path, seed: int) -> None:
    """Every file gets new random bytes: after a second backup, the first one's packs are
    needed by snapshot 1 alone."""
    rng = random.Random(seed)
    for i in range(FILES):
        path = src / f"d{i % 3}" / f"f{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1, 200_000)))
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A home with snapshot 1 (the tree as `expected` describes it) and snapshot 2 (every
    file rewritten)."""
    base = tmp_path_factory.mktemp("two-nights")
    home, src = base / "home", base / "src"
    # Small packs: a snapshot spans dozens, so a reader stopped once it has begun writing still
    # needs objects the store holds, however far its fetching ran ahead.
    configure(home, pack_size=1 << 20, piece_size=1 << 20)
    write_tree(src, 1)
    expected = describe(src)
    assert call(home, "backup", src).code == 0
    write_tree(src, 2)
    assert call(home, "backup", src).code == 0
    return home, src, expected


@pytest.fixture
def home_copy(two_nights: tuple[Path, Path, dict], tmp_path: Path) -> tuple[Path, Path, dict]:
    home, src, expected = two_nights
    copy = tmp_path / "home"
    shutil.copytree(home, copy, symlinks=True)
    config = copy / "config.toml"
    config.write_text(config.read_text().replace(str(home), str(copy)))  # its own store
    return copy, src, expected


def until(ready: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        assert proc.poll() is None, f"the reader ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after 30 s"
        time.sleep(0.002)


def reader_holds_lock(home: Path) -> bool:
    fd = os.open(home / "readers", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def stop_when(proc: subprocess.Popen[str], home: Path, begun: Callable[[], bool]) -> None:
    """Stop the reader once it holds the readers' lock and has read its catalog (`begun`)."""
    until(lambda: reader_holds_lock(home) and begun(), proc, "a reader at work")
    proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None


def forget_all_but_the_last(home: Path) -> set[str]:
    """Forget snapshot 1; the objects the store holds before prune."""
    assert ok(home, "forget", "--keep-last", "1")["forgotten"] == [1]
    return store_objects(home / "store")


def test_restore_of_a_forgotten_snapshot_completes_while_prune_waits_for_it(
    home_copy: tuple[Path, Path, dict], tmp_path: Path, figures: Figures
) -> None:
    home, src, expected = home_copy
    target = tmp_path / "restored"
    restore = dg_started(home, "restore", "--snapshot", "1", target)
    stop_when(restore, home, lambda: any(target.glob("**/.deltagrid-restore-*")))
    before = forget_all_but_the_last(home)
    prune = dg_started(home, "--json", "--wait", "60", "prune", "--delete-now")
    assert prune.stderr is not None
    waiting = prune.stderr.readline()  # prune has rewritten the catalog, and waits
    assert "waiting up to" in waiting and "readers" in waiting, waiting
    assert store_objects(home / "store") >= before  # nothing deleted while the reader reads
    time.sleep(0.3)  # prune goes on waiting for as long as the reader reads
    assert prune.poll() is None and store_objects(home / "store") >= before
    restore.send_signal(signal.SIGCONT)
    r_out, r_err = restore.communicate(timeout=120)
    p_out, p_err = prune.communicate(timeout=120)
    assert restore.returncode == 0, r_err
    assert prune.returncode == 0, waiting + p_err
    assert describe(target / src.relative_to("/")) == expected
    outcome = json.loads(p_out)
    assert outcome["objects_deleted"] > 0 and outcome["objects_kept"] == 0
    assert len(store_objects(home / "store")) < len(before)  # snapshot 1's packs are gone now
    figures.count("readers vs maintenance", "restores during forget + prune")


def test_verify_completes_while_prune_leaves_its_packs_to_the_next_run(
    home_copy: tuple[Path, Path, dict], figures: Figures
) -> None:
    home, _src, _expected = home_copy
    spool = home / "spool"
    verify = dg_started(home, "--json", "verify", "--read-data")
    stop_when(verify, home, lambda: spool.is_dir() and any(spool.glob("tmp*")))
    before = forget_all_but_the_last(home)
    pruned = call(home, "--json", "prune", "--delete-now")  # no --wait: no waiting for it
    assert pruned.code == 0, pruned.err
    assert "still reading" in pruned.err and "next prune deletes them" in pruned.err
    kept = pruned.json["objects_kept"]
    assert kept > 0 and pruned.json["objects_deleted"] == 0
    assert store_objects(home / "store") >= before
    verify.send_signal(signal.SIGCONT)
    v_out, v_err = verify.communicate(timeout=120)
    assert verify.returncode == 0, v_err
    assert not json.loads(v_out)["problems"]
    again = ok(home, "prune", "--delete-now")  # no reader now: the packs left behind go
    assert again["objects_deleted"] >= kept and again["objects_kept"] == 0
    assert ok(home, "verify", "--read-data")["problems"] == []
    figures.count("readers vs maintenance", "verify --read-data during forget + prune")
