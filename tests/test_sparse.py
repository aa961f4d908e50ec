"""Sparse files: backup reads their data alone, restore gives their holes back, and every night's
hole layout restores exactly, whether data was written into a hole or a hole punched into data."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
from pathlib import Path

import pytest

from deltagrid.floor import sparse
from tests.helpers import dg, restored_root, settle

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def layout(path: Path) -> tuple[int, list[tuple[int, int]] | None, str]:
    """A file as the tests compare it without reading its holes: its size, its data runs (None:
    no hole) and the hash of the bytes in them. Two files with equal layouts hold equal bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        runs = sparse.data_runs(fd, size)
        h = hashlib.blake2b(digest_size=16)
        for offset, length in runs if runs is not None else [(0, size)]:
            h.update(os.pread(fd, length, offset))
        return size, runs, h.hexdigest()
    finally:
        os.close(fd)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def make_sparse(path: Path, size: int, runs: list[tuple[int, int]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for offset, length in runs:
            os.pwrite(fd, os.urandom(length), offset)
    finally:
        os.close(fd)


def punch_hole(path: Path, offset: int, length: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fd = os.open(path, os.O_WRONLY)
    try:
        if libc.fallocate(fd, _PUNCH_HOLE, offset, length) != 0:
            err = ctypes.get_errno()
            if err in (errno.EOPNOTSUPP, errno.ENOSYS):
                pytest.skip(f"this file system cannot punch holes: {os.strerror(err)}")
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    probe = src / "probe"
    make_sparse(probe, 4 * MIB, [(MIB, 4 * KIB)])
    if layout(probe)[1] is None:
        pytest.skip("this file system does not report holes (SEEK_HOLE)")
    probe.unlink()
    return src


def test_a_2gib_file_with_16kib_of_data_is_read_as_16kib_and_restored_with_its_holes(
    src: Path, home: Path, tmp_path: Path
) -> None:
    big = src / "disk.img"
    make_sparse(big, 2 * GIB, [(MIB, 8 * KIB), (GIB + 64 * KIB, 8 * KIB)])
    (src / "plain.txt").write_bytes(b"a dense neighbour\n")
    settle(src)
    run = dg(home, "--json", "backup", src)
    assert run.code == 0, run.err
    assert run.json["bytes_read"] == 16 * KIB + len(b"a dense neighbour\n")
    assert run.json["bytes_uploaded"] < 64 * KIB

    target = tmp_path / "r"
    assert dg(home, "restore", target).code == 0
    back = restored_root(target, src) / "disk.img"
    assert layout(back) == layout(big)
    assert abs(allocated(back) - allocated(big)) <= 4 * 4096
    assert (restored_root(target, src) / "plain.txt").read_bytes() == b"a dense neighbour\n"
    assert os.stat(back).st_mtime_ns == os.stat(big).st_mtime_ns
    assert dg(home, "verify", "--read-data").code == 0

    again = dg(home, "--json", "backup", src)  # a quiet night: nothing queued, nothing read
    assert again.code == 0 and again.json["bytes_read"] == 0


def test_a_file_that_is_all_hole_restores_as_all_hole(src: Path, home: Path, tmp_path: Path):
    make_sparse(src / "empty.img", GIB, [])
    settle(src)
    run = dg(home, "--json", "backup", src)
    assert run.code == 0 and run.json["bytes_read"] == 0
    target = tmp_path / "r"
    assert dg(home, "restore", target).code == 0
    back = restored_root(target, src) / "empty.img"
    assert os.stat(back).st_size == GIB and allocated(back) == 0


def test_every_night_restores_exactly_as_the_hole_layout_changes(
    src: Path, home: Path, tmp_path: Path
) -> None:
    """Data written into a hole, a hole punched into data, the file filled dense and made
    sparse again: each night's snapshot restores that night's bytes and holes, and the nights
    after the first store deltas of the file's data, not copies."""
    f = src / "vm.img"
    make_sparse(f, 64 * MIB, [(i * 8 * MIB, 128 * KIB) for i in range(8)])
    nights = []

    def night() -> dict:
        settle(src)
        run = dg(home, "--json", "backup", src)
        assert run.code == 0, run.err
        nights.append((run.json["snapshot_id"], layout(f), allocated(f)))
        return run.json

    night()
    fd = os.open(f, os.O_WRONLY)  # data into a hole, between two runs
    os.pwrite(fd, b"written into a hole" * 300, 4 * MIB + 77)
    os.close(fd)
    assert night()["counts"].get("deltas") == 1
    punch_hole(f, 16 * MIB, 64 * KIB)  # half of the third run gone
    assert night()["counts"].get("deltas") == 1
    fd = os.open(f, os.O_WRONLY)  # dense: every hole filled
    os.pwrite(fd, b"\1" * (64 * MIB), 0)
    os.close(fd)
    night()
    punch_hole(f, 8 * MIB, 40 * MIB)  # sparse again
    night()
    assert [n[1][1] is None for n in nights] == [False, False, False, True, False]
    for a, b in zip(nights[:-1], nights[1:], strict=True):
        assert f"M {f}" in dg(home, "diff", str(a[0]), str(b[0])).out.splitlines()

    for snapshot, expected, size_on_disk in nights:
        target = tmp_path / f"r{snapshot}"
        run = dg(home, "restore", "--snapshot", str(snapshot), target)
        assert run.code == 0, run.err
        back = restored_root(target, src) / "vm.img"
        assert layout(back) == expected, f"snapshot {snapshot}"
        assert abs(allocated(back) - size_on_disk) <= 4 * 4096, f"snapshot {snapshot}"
    assert dg(home, "verify", "--read-data").code == 0


def test_link_dest_links_a_sparse_file_only_when_its_holes_and_data_match(
    src: Path, home: Path, tmp_path: Path
) -> None:
    f = src / "s.img"
    make_sparse(f, 32 * MIB, [(MIB, 64 * KIB), (20 * MIB, 4 * KIB)])
    settle(src)
    assert dg(home, "backup", src).code == 0
    first, second = tmp_path / "m1", tmp_path / "m2"
    assert dg(home, "restore", "--path", src, "--into", first).code == 0
    run = dg(home, "--json", "restore", "--path", src, "--into", second, "--link-dest", first)
    assert run.code == 0, run.err
    assert os.stat(second / "s.img").st_ino == os.stat(first / "s.img").st_ino

    fd = os.open(first / "s.img", os.O_WRONLY)  # the previous tree's copy gains data: no link
    os.pwrite(fd, b"\0" * 4096, 10 * MIB)  # zeros, but allocated: same bytes, other holes
    os.close(fd)
    os.utime(first / "s.img", ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns))
    third = tmp_path / "m3"
    assert dg(home, "restore", "--path", src, "--into", third, "--link-dest", first).code == 0
    assert os.stat(third / "s.img").st_ino != os.stat(first / "s.img").st_ino
    assert layout(third / "s.img") == layout(f)
