"""Restoring into a TARGET that is not empty: `--overwrite MODE`, `--delete`, and resuming a
killed restore. Every run is the real CLI in a subprocess; every entry is checked afterwards on
disk, its kind, bytes, mode and mtime, and the bytes the --json document says were written."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import describe, dg, one_error, restored_root, settle

HOUR = 3600 * 10**9
MODES = ("always", "if-changed", "if-newer", "never")


def look(path: Path) -> tuple:
    """An entry as the tests compare it: kind, then bytes or link target, mode, mtime."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("l", os.readlink(path), st.st_mtime_ns)
    if stat.S_ISDIR(st.st_mode):
        return ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return ("f", path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)


def put(path: Path, data: bytes, mtime_ns: int, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


# --- the table: four modes x the states an entry can be found in ------------------------------

# What each mode leaves: "snap" the snapshot's entry; "kept" what was there, untouched and
# reported as kept; "same" what was there, untouched, counted as in place (identical bytes, or
# with if-changed assumed so from size and mtime).
TABLE = {
    # state:        always   if-changed if-newer never
    "missing": ("snap", "snap", "snap", "snap"),
    "identical": ("snap", "snap", "snap", "snap"),
    "meta": ("snap", "snap", "same", "same"),  # same bytes and mtime, another mode
    "older": ("snap", "snap", "snap", "kept"),
    "newer": ("snap", "snap", "kept", "kept"),
    "disguised": ("snap", "same", "kept", "kept"),  # same size and mtime, other bytes
    "kind_file": ("snap", "snap", "kept", "kept"),  # a file where an empty dir is (newer)
    "kind_dir": ("snap", "snap", "kept", "kept"),  # a dir where a file is (newer)
    "kind_link": ("snap", "snap", "kept", "kept"),  # a symlink where a file is (newer)
}
WRITES = {"missing", "older", "newer", "disguised", "kind_file", "kind_dir/inner.txt"}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A home with one snapshot of a tree holding one entry per state of the table."""
    base = tmp_path_factory.mktemp("policy")
    src, home = base / "src", base / "home"
    src.mkdir()
    for name in ("missing", "identical", "meta", "older", "newer", "kind_file"):
        (src / name).write_bytes(f"the snapshot's {name}\n".encode() * 20)
    (src / "disguised").write_bytes(b"A" * 1000)
    (src / "kind_dir").mkdir()
    (src / "kind_dir" / "inner.txt").write_bytes(b"inside the directory\n" * 7)
    os.symlink("missing", src / "kind_link")
    settle(src)
    run = dg(home, "--json", "backup", src)
    assert run.code == 0, run.err
    return src, home


def plant(root: Path, src: Path) -> dict[str, tuple]:
    """Fill `root` (where the restore puts `src`) with an entry in each state; what was put."""
    snap_ns = os.lstat(src / "older").st_mtime_ns
    now = time.time_ns()
    root.mkdir(parents=True)
    shutil.copy2(src / "identical", root / "identical")
    shutil.copy2(src / "meta", root / "meta")
    os.chmod(root / "meta", 0o600)
    put(root / "older", b"an older version\n", snap_ns - 48 * HOUR)
    put(root / "newer", b"edited since the backup\n", now)
    put(root / "disguised", b"B" * 1000, os.lstat(src / "disguised").st_mtime_ns)
    (root / "kind_file").mkdir()
    os.utime(root / "kind_file", ns=(now, now))
    put(root / "kind_dir", b"a file where the snapshot has a directory\n", now)
    put(root / "kind_link", b"a file where the snapshot has a symlink\n", now)
    put(root / "extra", b"not in the snapshot\n", now)
    return {p.name: look(p) for p in root.iterdir()}


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_on_each_state_of_the_target(
    tmp_path: Path, snapshot: tuple[Path, Path], mode: str
) -> None:
    src, home = snapshot
    target = tmp_path / "target"
    root = restored_root(target, src)
    found = plant(root, src)
    before = {name: os.lstat(root / name).st_ino for name in ("identical", "meta")}

    run = dg(home, "--json", "restore", "--overwrite", mode, target)

    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    column = MODES.index(mode)
    for state, outcomes in TABLE.items():
        expected = look(src / state) if outcomes[column] == "snap" else found[state]
        assert look(root / state) == expected, (mode, state)
    assert look(root / "extra") == found["extra"]  # not in the snapshot, no --delete: stays
    inner = root / "kind_dir" / "inner.txt"
    if TABLE["kind_dir"][column] == "snap":
        assert look(inner) == look(src / "kind_dir" / "inner.txt")
    for name, inode in before.items():  # identical bytes are never written again
        assert os.lstat(root / name).st_ino == inode
    doc = run.json
    replaced = {s for s, o in TABLE.items() if o[column] == "snap"} | {"kind_dir/inner.txt"}
    if TABLE["kind_dir"][column] == "kept":
        replaced.discard("kind_dir/inner.txt")
    written = sorted(WRITES & replaced)
    assert doc["bytes_written"] == sum((src / p).stat().st_size for p in written), written
    kept = sorted(s for s, o in TABLE.items() if o[column] == "kept")
    assert sorted(doc["kept"]) == [str(root / s) for s in kept]
    assert doc["not_restored_below_kept"] == (1 if "kind_dir" in kept else 0)
    assert doc["overwrite"] == mode and doc["errors"] == []


def test_the_default_is_never_and_says_what_it_kept(
    tmp_path: Path, snapshot: tuple[Path, Path]
) -> None:
    src, home = snapshot
    target = tmp_path / "target"
    root = restored_root(target, src)
    found = plant(root, src)
    run = dg(home, "restore", target)
    assert run.code == 0, run.err
    assert look(root / "newer") == found["newer"]
    assert look(root / "missing") == look(src / "missing")
    lines = run.err.splitlines()
    assert len(lines) == 1 and "kept 6 entries of TARGET that differ" in lines[0], run.err
    assert "--overwrite never" in lines[0]


def test_a_directory_with_entries_in_the_way_of_a_file_needs_delete(
    tmp_path: Path, snapshot: tuple[Path, Path]
) -> None:
    src, home = snapshot
    target = tmp_path / "target"
    root = restored_root(target, src)
    (root / "older").mkdir(parents=True)
    (root / "older" / "mine.txt").write_bytes(b"someone's file\n")

    run = dg(home, "restore", "--overwrite", "always", target)
    assert run.code == 1
    assert "older is a directory in the way, not empty (--delete replaces it)" in run.err
    assert (root / "older" / "mine.txt").read_bytes() == b"someone's file\n"
    assert look(root / "newer") == look(src / "newer")  # the rest is restored

    run = dg(home, "--json", "restore", "--overwrite", "always", "--delete", target)
    assert run.code == 0, run.err
    assert look(root / "older") == look(src / "older")
    assert str(root / "older") in run.json["deleted"]


# --- --delete ------------------------------------------------------------------------------------


def test_delete_removes_exactly_the_extras_under_the_restored_path(
    tmp_path: Path, snapshot: tuple[Path, Path]
) -> None:
    src, home = snapshot
    target = tmp_path / "target"
    root = restored_root(target, src)
    dg(home, "restore", target)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"outside TARGET\n")
    sub = root / "kind_dir"
    (sub / "extra.txt").write_bytes(b"extra\n")
    (sub / "extra-dir" / "deeper").mkdir(parents=True)
    (sub / "extra-dir" / "deeper" / "f").write_bytes(b"extra too\n")
    os.symlink(outside, sub / "planted")  # a symlink out of TARGET: removed, never followed
    (root / "beside.txt").write_bytes(b"in TARGET, beside the restored path\n")
    (target / "elsewhere").write_bytes(b"in TARGET, outside the snapshot\n")
    expected_outside = describe(outside)
    keep = {p: look(p) for p in (root / "beside.txt", target / "elsewhere", root / "newer")}

    run = dg(home, "--json", "restore", "--path", src / "kind_dir", "--delete", target)

    assert run.code == 0, run.err
    assert sorted(run.json["deleted"]) == [
        str(sub / "extra-dir"),
        str(sub / "extra.txt"),
        str(sub / "planted"),
    ]
    assert sorted(os.listdir(sub)) == ["inner.txt"]
    assert describe(outside) == expected_outside
    assert {p: look(p) for p in keep} == keep


def test_delete_never_walks_through_a_symlink_in_place_of_a_directory(
    tmp_path: Path, snapshot: tuple[Path, Path]
) -> None:
    src, home = snapshot
    target = tmp_path / "target"
    root = restored_root(target, src)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"outside TARGET\n")
    root.mkdir(parents=True)
    os.symlink(outside, root / "kind_dir")
    expected_outside = describe(outside)

    kept = dg(home, "--json", "restore", "--delete", target)  # never: the symlink is kept
    assert kept.code == 0, kept.err
    assert kept.json["kept"] == [str(root / "kind_dir")]
    assert describe(outside) == expected_outside

    replaced = dg(home, "--json", "restore", "--overwrite", "always", "--delete", target)
    assert replaced.code == 0, replaced.err
    assert look(root / "kind_dir" / "inner.txt") == look(src / "kind_dir" / "inner.txt")
    assert describe(outside) == expected_outside
    assert describe(root) == describe(src)


def test_into_refuses_the_target_policy(tmp_path: Path, snapshot: tuple[Path, Path]) -> None:
    src, home = snapshot
    for option in (["--overwrite", "always"], ["--delete"]):
        run = dg(home, "restore", "--path", src, "--into", tmp_path / "mirror", *option)
        one_error(run, 2, "--into publishes a fresh tree")
        assert not (tmp_path / "mirror").exists()


# --- a killed restore resumes ---------------------------------------------------------------------

# SIGKILL the restore right after its Nth file is renamed into place (on whichever thread).
_KILL_AFTER_FILES = """
import os, signal, sys
from deltagrid.restore.restore import Restorer
real, count, kill_at = Restorer._install, [0], int(sys.argv[1])
def _install(self, tmp, dest):
    real(self, tmp, dest)
    count[0] += 1
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
Restorer._install = _install
from deltagrid.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("mode", ["never", "always"])
def test_a_killed_restore_resumes_writing_only_what_is_left(tmp_path: Path, mode: str) -> None:
    src, home, target = tmp_path / "src", tmp_path / "home", tmp_path / "target"
    rng = __import__("random").Random(19)
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(50):
            size = rng.randrange(1, 6000)
            (src / f"d{d}" / f"f{i}").write_bytes(rng.randbytes(size))
    settle(src)
    assert dg(home, "backup", src).code == 0

    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_FILES, "120"]
        + ["--home", str(home), "restore", "--overwrite", mode, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    root = restored_root(target, src)
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    there = [p for p in files if (root / p).exists()]
    assert len(there) == 120  # every file that landed is whole: written aside, renamed
    left = [p for p in files if p not in there]

    resumed = dg(home, "--json", "restore", "--overwrite", mode, target)

    assert resumed.code == 0, resumed.err
    doc = resumed.json
    assert doc["bytes_written"] == sum((src / p).stat().st_size for p in left)
    assert doc["bytes_skipped"] == sum((src / p).stat().st_size for p in there)
    assert doc["files_skipped"] == len(there) and doc["kept"] == []
    assert describe(root) == describe(src)
    again = dg(home, "--json", "restore", "--overwrite", mode, target)
    assert again.json["bytes_written"] == 0 and again.json["files_skipped"] == len(files)
