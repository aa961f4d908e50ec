"""FIFOs and device nodes are kept as metadata (a device its number), never opened, and made
again by restore; sockets are skipped with a warning."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from tests.fidelity import differences
from tests.helpers import NOBODY, dg, restored_root, settle, unprivileged

NULL, ZERO, LOOP = os.makedev(1, 3), os.makedev(1, 5), os.makedev(7, 200)


def may_make_devices(where: Path) -> bool:
    """Whether this process may make device nodes (root with CAP_MKNOD, as outside most
    containers)."""
    probe = where / "probe"
    try:
        os.mknod(probe, 0o600 | stat.S_IFCHR, NULL)
    except PermissionError:
        return False
    probe.unlink()
    return True


def quiet(run) -> bool:
    assert run.code == 0, run.err
    return not any(run.json["scan"]["queued"].values())


def test_fifos_are_backed_up_and_restored_and_never_opened(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a file\n")
    os.mkfifo(src / "pipe", 0o640)
    os.mkfifo(src / "sub" / "queue", 0o600)
    os.chmod(src / "pipe", 0o640)  # past the umask
    settle(src)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(src / "sock"))
        run = dg(home, "--json", "backup", src, timeout=60)  # a FIFO opened would wait here
    finally:
        sock.close()
    assert run.code == 0, run.err
    assert run.json["scan"]["skipped"] == [str(src / "sock")]
    assert run.err.splitlines() == [f"deltagrid: warning: skipping socket {src / 'sock'}"]
    assert run.json["counts"]["specials"] == 2
    (src / "sock").unlink()
    settle(src)
    assert dg(home, "backup", src, timeout=60).code == 0  # src's mtime moved

    listing = dg(home, "--json", "ls").json["entries"]
    assert {e["path"]: e["type"] for e in listing if e["type"] not in "fd"} == {
        str(src / "pipe"): "p",
        str(src / "sub" / "queue"): "p",
    }
    assert [ln.split()[0] for ln in dg(home, "ls").out.splitlines() if "pipe" in ln] == [
        "prw-r-----"
    ]
    assert quiet(dg(home, "--json", "backup", src, timeout=60))  # unchanged: nothing queued

    restored = dg(home, "--json", "restore", tmp_path / "r", timeout=60)
    assert restored.code == 0, restored.err
    assert restored.json["specials"] == 2
    assert differences(src, restored_root(tmp_path / "r", src)) == []
    # Restored again over itself: the FIFOs found are the same, nothing is replaced or opened.
    again = dg(home, "--json", "restore", tmp_path / "r", timeout=60)
    assert again.code == 0, again.err
    assert again.json["specials"] == 2 and again.json["errors"] == []
    assert differences(src, restored_root(tmp_path / "r", src)) == []
    # One given another mode since gets the snapshot's back in place, by its path.
    os.chmod(restored_root(tmp_path / "r", src) / "pipe", 0o606)
    fixed = dg(home, "restore", "--overwrite", "always", tmp_path / "r", timeout=60)
    assert fixed.code == 0, fixed.err
    assert differences(src, restored_root(tmp_path / "r", src)) == []


def test_a_file_that_became_a_fifo_is_a_change_and_each_snapshot_restores_its_own(
    tmp_path: Path, home: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("a file first\n")
    settle(src)
    assert dg(home, "backup", src).code == 0
    (src / "x").unlink()
    os.mkfifo(src / "x")
    settle(src)
    run = dg(home, "--json", "backup", src, timeout=60)
    assert run.code == 0, run.err
    assert run.json["scan"]["queued"]["changed"] == 1
    assert [ln for ln in dg(home, "diff", "1", "2").out.splitlines() if ln.endswith("/x")] == [
        f"T {src / 'x'}"
    ]
    for snapshot, kind in (("1", stat.S_IFREG), ("2", stat.S_IFIFO)):
        target = tmp_path / f"r{snapshot}"
        assert dg(home, "restore", "--snapshot", snapshot, target, timeout=60).code == 0
        x = restored_root(target, src) / "x"
        assert stat.S_IFMT(os.lstat(x).st_mode) == kind
    assert (restored_root(tmp_path / "r1", src) / "x").read_text() == "a file first\n"


def test_device_nodes_keep_their_numbers(tmp_path: Path, home: Path) -> None:
    if not may_make_devices(tmp_path):
        pytest.skip("this process may not make device nodes (CAP_MKNOD)")
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, NULL)
    os.mknod(src / "loop", 0o660 | stat.S_IFBLK, LOOP)
    os.chmod(src / "null", 0o666)
    os.chown(src / "loop", 0, 6)
    settle(src)
    first = dg(home, "--json", "backup", src, timeout=60)
    assert first.code == 0, first.err
    assert first.json["counts"]["specials"] == 2
    listing = {e["path"]: e for e in dg(home, "--json", "ls").json["entries"]}
    assert (listing[str(src / "null")]["type"], listing[str(src / "null")]["rdev"]) == ("c", NULL)
    assert (listing[str(src / "loop")]["type"], listing[str(src / "loop")]["rdev"]) == ("b", LOOP)
    assert [ln.split()[:5] for ln in dg(home, "ls").out.splitlines() if ln.endswith("/null")] == [
        ["crw-rw-rw-", "0", "0", "1,", "3"]
    ]
    assert quiet(dg(home, "--json", "backup", src))

    (src / "null").unlink()
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, ZERO)  # another device under the same name
    os.chmod(src / "null", 0o666)
    settle(src)
    run = dg(home, "--json", "backup", src)
    assert run.code == 0 and run.json["scan"]["queued"]["changed"] == 1, run.err
    for snapshot, target in ((run.json["snapshot_id"], "now"), (first.json["snapshot_id"], "then")):
        assert dg(home, "restore", "--snapshot", snapshot, tmp_path / target).code == 0
    assert differences(src, restored_root(tmp_path / "now", src)) == []
    assert os.lstat(restored_root(tmp_path / "then", src) / "null").st_rdev == NULL


def test_a_device_node_a_restore_may_not_make_is_an_error_naming_it(tmp_path: Path) -> None:
    """As an unprivileged user, mknod of a device fails: the restore names it, counts it as an
    error and exits 1; everything else, a FIFO too, is restored."""
    if os.geteuid() != 0 or not may_make_devices(tmp_path):
        pytest.skip("needs root with CAP_MKNOD to make the device node backed up")
    with unprivileged() as (work, dg_as):
        src, home = work / "src", work / "home"
        src.mkdir()
        (src / "a.txt").write_text("a file\n")
        os.mkfifo(src / "pipe")
        os.mknod(src / "null", 0o666 | stat.S_IFCHR, NULL)
        for path in (src, src / "a.txt", src / "pipe"):
            os.chown(path, NOBODY, NOBODY)
        assert dg_as(home, "backup", src).code == 0
        run = dg_as(home, "restore", work / "r")
        assert run.code == 1, run.err
        assert run.err.splitlines() == [
            f"deltagrid: warning: cannot restore {src / 'null'}: Operation not permitted"
        ]
        assert "1 FIFO or device node, 1 error" in run.out
        restored = restored_root(work / "r", src)
        assert (restored / "a.txt").read_text() == "a file\n"
        assert stat.S_ISFIFO(os.lstat(restored / "pipe").st_mode)
        assert not os.path.lexists(restored / "null")
        shutil.rmtree(work / "r")
