"""Resources a nightly backup must live within: a full disk, a spool shared with readers, and
memory that does not grow with a file's size.

A full disk is a real one: a small tmpfs mounted (we run as root) on the spool, on the store or
on the whole home, filled with a filler file to leave exactly the space a case wants; it is
unmounted when the test ends. Memory is each `python -m deltagrid` child's own peak RSS
(os.wait4's ru_maxrss), measured for a backup, a delta backup after edits and a restore of one
big file, at two sizes.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltagrid.restore.fetch import WORKERS
from tests.helpers import Run, describe, one_error, restored_root

MiB = 1 << 20


# --- a small tmpfs ---------------------------------------------------------------------------


class Tmpfs:
    """tmpfs mounts made by one test, all unmounted when it ends."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def mount(self, where: Path, size: int) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted.append(where)
        return where

    def resize(self, where: Path, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)

    def unmount_all(self) -> None:
        for where in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def tmpfs() -> Iterator[Tmpfs]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounts = Tmpfs()
    try:
        yield mounts
    finally:
        mounts.unmount_all()


def fill(where: Path, leave: int) -> Path:
    """Write a filler file so that only `leave` bytes stay free on `where`'s filesystem."""
    filler = where / "filler"
    free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\xa5" * max(0, free - leave))
    return filler


def write_tree(src: Path, seed: int, files: int, size: int) -> None:
    rng = random.Random(seed)
    for i in range(files):
        d = src / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{seed}-{i:03}.bin").write_bytes(rng.randbytes(rng.randrange(size)))


def snapshot_ids(run) -> list[int]:
    return [s["id"] for s in run("--json", "snapshots").json["snapshots"]]


def spool_leftovers(home: Path) -> list[str]:
    spool = home / "spool"
    return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


def assert_restores(run, src: Path, expected: dict, target: Path, *args: str) -> None:
    restored = run("restore", *args, target)
    assert restored.code == 0, restored.err
    assert describe(restored_root(target, src)) == expected


# --- disk full -------------------------------------------------------------------------------


def test_spool_full_fails_cleanly_then_the_next_run_completes(
    tmp_path: Path, home: Path, cli, tmpfs: Tmpfs, figures
) -> None:
    run = cli
    src = tmp_path / "src"
    write_tree(src, 1, 40, 200_000)
    assert run("backup", src).code == 0
    first = describe(src)
    write_tree(src, 2, 30, 400_000)  # ~6 MB new: the spool pack outgrows 1 MiB
    spool = tmpfs.mount(home / "spool", 1 * MiB)

    full = run("backup", src)
    one_error(full, 1, "No space left on device", str(spool))  # which disk
    assert snapshot_ids(run) == [1]
    status = run("--json", "status").json
    assert status["unpublished_snapshot"] is None
    assert status["queue"]["entries"] > 0  # the scan's work waits for the next run
    assert spool_leftovers(home) == []  # the failed run took its pack and work files away
    assert_restores(run, src, first, tmp_path / "r1")

    tmpfs.resize(spool, 64 * MiB)  # space returns
    again = run("--json", "backup", src)
    assert again.code == 0, again.err
    assert snapshot_ids(run) == [1, 2]
    assert_restores(run, src, describe(src), tmp_path / "r2")
    assert_restores(run, src, first, tmp_path / "r1-again", "--snapshot", "1")
    assert run("verify", "--read-data").code == 0
    figures.count("resources", "disk full: spool, failed cleanly")


def test_store_full_fails_cleanly_then_the_next_run_completes(
    tmp_path: Path, home: Path, cli, tmpfs: Tmpfs, figures
) -> None:
    run = cli
    disk = tmpfs.mount(tmp_path / "disk", 32 * MiB)
    store = disk / "store"
    assert run("init", "--store", f"file://{store}").code == 0
    src = tmp_path / "src"
    write_tree(src, 1, 40, 200_000)
    assert run("backup", src).code == 0
    first = describe(src)
    root = (store / "root.json").read_bytes()
    objects = sorted(p.name for p in (store / "objects").rglob("*") if p.is_file())
    write_tree(src, 2, 30, 400_000)
    filler = fill(disk, 512 << 10)

    full = run("backup", src)
    one_error(full, 1, "No space left on device", str(store))  # which disk
    assert (store / "root.json").read_bytes() == root  # nothing was published
    assert sorted(p.name for p in (store / "objects").rglob("*") if p.is_file()) == objects
    assert snapshot_ids(run) == [1]
    assert spool_leftovers(home) == []
    assert_restores(run, src, first, tmp_path / "r1")

    filler.unlink()
    again = run("--json", "backup", src)
    assert again.code == 0, again.err
    assert snapshot_ids(run) == [1, 2]
    assert_restores(run, src, describe(src), tmp_path / "r2")
    assert run("verify", "--read-data").code == 0
    figures.count("resources", "disk full: store, failed cleanly")


# Free space left on a home that holds everything (backupdb, spool, signatures, store): with
# none, the scan cannot write its queue; with a little, the spool, the store or the backupdb's
# commit runs out, depending on what comes first.
LEAVE = [0, 32 << 10, 256 << 10, 1 * MiB]
FULL = ("No space left on device", "database or disk is full", "is its disk full?")


def test_home_full_at_any_point_never_half_commits_and_converges(
    tmp_path: Path, cli_in, tmpfs: Tmpfs, figures
) -> None:
    home = tmpfs.mount(tmp_path / "home", 48 * MiB)

    def run(*args: str | Path) -> Run:
        return cli_in(home, *args)

    src = tmp_path / "src"
    write_tree(src, 1, 60, 100_000)
    assert run("backup", src).code == 0
    failed = 0
    for night, leave in enumerate(LEAVE, start=2):
        write_tree(src, night, 20, 100_000)
        for p in sorted(src.rglob("f1-*.bin"))[night::7]:
            with open(p, "ab") as f:
                f.write(os.urandom(5000))
        before = snapshot_ids(run)
        filler = fill(home, leave)
        night_run = run("backup", src)
        filler.unlink()
        if night_run.code == 0:
            assert snapshot_ids(run) == before + [before[-1] + 1]
            continue
        failed += 1
        line = one_error(night_run, 1, str(home))  # which disk
        assert any(why in line for why in FULL), line
        assert snapshot_ids(run) == before  # no snapshot half-published
        figures.count("resources", "disk full: home, failed cleanly")
    assert failed >= 2, "the fullest cases must fail"

    status = run("--json", "status")
    assert status.code == 0, status.err  # the backupdb survived every full disk
    assert status.json["unpublished_snapshot"] is None
    final = run("--json", "backup", src)
    assert final.code == 0, final.err
    assert_restores(run, src, describe(src), tmp_path / "r")
    assert run("verify", "--read-data").code == 0


# --- the spool is shared with readers --------------------------------------------------------

# verify --read-data, paused at its first rebuild until the test says go: its work directory
# sits in the spool meanwhile.
_PAUSED_VERIFY = """
import os, sys, time
import deltagrid.commands.verify as verify
real = verify.materialize
def materialize(*args, **kwargs):
    open(sys.argv[1], "w").close()
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.01)
    return real(*args, **kwargs)
verify.materialize = materialize
from deltagrid.cli import main
sys.exit(main(sys.argv[3:]))
"""


def test_upload_clears_only_its_own_leftovers_in_the_spool(tmp_path: Path, home: Path, cli) -> None:
    run = cli
    src = tmp_path / "src"
    write_tree(src, 1, 20, 100_000)
    assert run("backup", src).code == 0
    paused, go = tmp_path / "paused", tmp_path / "go"
    verify = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_VERIFY, paused, go, "--home", home, "verify", "--read-data"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not paused.exists():
            assert verify.poll() is None, verify.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        readers = spool_leftovers(home)
        assert len(readers) == 1  # verify's work directory
        # What a killed upload leaves behind: a half-filled pack and a work directory.
        (home / "spool" / "pack-killed").write_bytes(b"DGPACK01 half a pack")
        (home / "spool" / "work-killed").mkdir()
        (home / "spool" / "work-killed" / "copy-x").write_bytes(b"a copy")

        write_tree(src, 2, 10, 100_000)
        backup = run("backup", src)
        assert backup.code == 0, backup.err
        assert spool_leftovers(home) == readers
    finally:
        go.touch()
        out, err = verify.communicate(timeout=60)
    assert verify.returncode == 0, err
    assert "verified" in out
    assert_restores(run, src, describe(src), tmp_path / "r")


# --- memory does not grow with a file's size -------------------------------------------------


def big_file(path: Path, mib: int) -> None:
    """`mib` MiB that are not trivial to compress: each MiB a rotation of one random MiB, stamped
    with its number (so no two 4 MiB pieces are equal and deduplication does not apply)."""
    base = random.Random(mib).randbytes(MiB)
    with open(path, "wb") as f:
        for i in range(mib):
            k = (i * 7919) % MiB
            block = bytearray(base[k:] + base[:k])
            block[:8] = i.to_bytes(8, "little")
            f.write(block)


def edit(path: Path, mib: int) -> None:
    """100-byte edits every 37 MiB and an append: a delta backup."""
    with open(path, "r+b") as f:
        for off in range(12_345, mib * MiB, 37 * MiB):
            f.seek(off)
            f.write(os.urandom(100))
        f.seek(0, os.SEEK_END)
        f.write(os.urandom(50_000))


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


# `deltagrid ARGS` in a child that reports its peak RSS (VmHWM, in KiB) on its last stderr line.
# Not os.wait4's ru_maxrss: Linux carries the RSS a child had before exec (a fork of this big
# pytest process) into it, so every child would seem as big as pytest.
_PEAK = """
import sys
from deltagrid.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
sys.stderr.write(f"peak-kib {peak}\\n")
sys.exit(code)
"""


def measured(home: Path, *args: str | Path) -> tuple[Run, int]:
    """Run `deltagrid` in a child; its exit and its own peak RSS in MiB."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, "--home", str(home), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    *err, last = done.stderr.splitlines() or [""]
    assert last.startswith("peak-kib "), done.stderr
    return Run(done.returncode, "", "\n".join(err)), int(last.split()[1]) // 1024


def peaks(tmp_path: Path, mib: int, config: str) -> dict[str, int]:
    """Back up, delta back up and restore one `mib` MiB file; peak RSS of each, in MiB."""
    src, home = tmp_path / f"src{mib}", tmp_path / f"home{mib}"
    src.mkdir()
    home.mkdir()
    (home / "config.toml").write_text(config)
    big = src / "big.bin"
    big_file(big, mib)
    out: dict[str, int] = {}
    run, out["backup"] = measured(home, "backup", src)
    assert run.code == 0, run.err
    edit(big, mib)
    run, out["delta backup"] = measured(home, "--json", "backup", src)
    assert run.code == 0, run.err
    target = tmp_path / f"r{mib}"
    run, out["restore"] = measured(home, "restore", target)
    assert run.code == 0, run.err
    assert file_hash(restored_root(target, src) / "big.bin") == file_hash(big)
    shutil.rmtree(target)
    shutil.rmtree(home / "store")
    big.unlink()
    return out


def signature_mib(mib: int) -> float:
    """The librsync signature of a file this size: 36 bytes per 2 KiB block, 1.8% of the file.
    The uploader holds it whole (the new one, and for a delta the basis's in librsync's table):
    that, not the file's bytes, is what backups grow by with the file."""
    return mib * MiB / 2048 * 36 / MiB


# (small, big) MiB and the pack size they run with. Restore fetches WORKERS spans of at most a
# pack ahead of use, so its memory grows until a restore spans that many packs, then stays: the
# default run uses 4 MiB packs so the small file already reaches that steady state.
SIZES = [
    pytest.param(32, 256, 4, id="32-256MiB"),
    pytest.param(128, 1024, 16, id="128MiB-1GiB-defaults", marks=pytest.mark.slow),
]
ABSOLUTE_MIB = 256
SLACK_MIB = 16  # allocator and interpreter noise between two runs


@pytest.mark.parametrize(("small", "big", "pack_mib"), SIZES)
def test_peak_memory_does_not_grow_with_the_file(
    tmp_path: Path, small: int, big: int, pack_mib: int, figures
) -> None:
    config = f"[upload]\npack_size = {pack_mib * MiB}\npiece_size = {pack_mib // 4 * MiB}\n"
    margins = {
        "backup": SLACK_MIB + 3 * signature_mib(big),
        "delta backup": SLACK_MIB + 3 * signature_mib(big),
        "restore": SLACK_MIB + WORKERS * pack_mib,
    }
    low = peaks(tmp_path, small, config)
    high = peaks(tmp_path, big, config)
    if any(high[step] > low[step] + margin for step, margin in margins.items()):
        # A peak only gains from noise (the threads' timing, the allocator): the big file's
        # figures are the lower of two runs before they are judged.
        (tmp_path / "again").mkdir()
        again = peaks(tmp_path / "again", big, config)
        high = {step: min(high[step], again[step]) for step in high}
    for step in ("backup", "delta backup", "restore"):
        figures.count("resources", f"peak RSS MiB, {step}, {small} MiB file", low[step])
        figures.count("resources", f"peak RSS MiB, {step}, {big} MiB file", high[step])
    for step, margin in margins.items():
        assert high[step] <= low[step] + margin, (step, low, high)
        assert high[step] <= ABSOLUTE_MIB, (step, high)
