"""Round trips through the fidelity checker: extended attributes, POSIX ACLs, file capabilities,
set-ID bits and read-only directories come back as they were, as root and as a non-root user,
or are named in a warning; a permission is never wider than the source's."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltagrid.floor import xattrs
from deltagrid.restore.metadata import mode_without_acl
from tests.fidelity import differences
from tests.helpers import Run, dg, restored_root, settle

NOBODY = 65534  # a named user for ACL entries: exists on every Debian
AS_ROOT = os.geteuid() == 0
CAP_NET_RAW = base64.b64decode("AQAAAgAgAAAAAAAAAAAAAAAAAAA=")  # `setcap cap_net_raw+ep`, raw

needs_root = pytest.mark.skipif(not AS_ROOT, reason="needs root (trusted.*, capabilities, users)")
needs_acl_tools = pytest.mark.skipif(
    shutil.which("setfacl") is None, reason="setfacl missing: install the 'acl' package"
)


def setfacl(*args: str | Path) -> None:
    subprocess.run(["setfacl", *map(str, args)], check=True)


def ok(run: Run) -> Run:
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    return run


def warnings(run: Run) -> list[str]:
    return [ln for ln in run.err.splitlines() if ln.startswith("deltagrid: warning: ")]


def attributed_tree(src: Path) -> None:
    """Files, a directory and links carrying user attributes and access and default ACLs with
    a named user and a mask, beside entries carrying none."""
    (src / "d").mkdir(parents=True)
    (src / "plain.txt").write_text("no attributes\n")
    tagged = src / "tagged.txt"
    tagged.write_text("tagged\n")
    os.setxattr(tagged, "user.mime_type", b"text/plain")
    os.setxattr(tagged, "user.binary", bytes(range(256)))
    os.setxattr(tagged, "user.empty", b"")
    shared = src / "shared.txt"
    shared.write_text("the group reads, user nobody writes\n")
    shared.chmod(0o640)
    setfacl("-m", f"u:{NOBODY}:rw,g::r,o::-", shared)  # mask rw: the mode shows group rw
    (src / "d").chmod(0o750)
    setfacl("-m", f"u:{NOBODY}:rwx", src / "d")  # mask rwx: the mode shows group rwx
    setfacl("-d", "-m", f"u:{NOBODY}:rx,g::rx,o::-", src / "d")
    (src / "d" / "inner.txt").write_text("made under the default ACL\n")  # inherits it
    os.link(tagged, src / "d" / "tagged-link.txt")
    (src / "link").symlink_to("tagged.txt")
    settle(src)


@needs_acl_tools
def test_user_attributes_and_acls_round_trip(tmp_path: Path, home: Path) -> None:
    src, target = tmp_path / "src", tmp_path / "r"
    attributed_tree(src)
    assert stat.S_IMODE((src / "shared.txt").stat().st_mode) == 0o660  # the mask as group bits
    ok(dg(home, "backup", src))
    ok(dg(home, "restore", target))
    assert differences(src, restored_root(target, src)) == []


@needs_root
def test_capabilities_and_trusted_attributes_round_trip_as_root(tmp_path: Path, home: Path):
    src, target = tmp_path / "src", tmp_path / "r"
    src.mkdir()
    ping = src / "ping"
    ping.write_bytes(b"\x7fELF pretend")
    ping.chmod(0o755)
    os.chown(ping, 1, 1)  # another owner: restore's chown would clear a capability set first
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.setxattr(ping, "trusted.origin", b"package")
    suid = src / "suid"
    suid.write_bytes(b"set-user-ID daemon")
    os.chown(suid, 1, 1)
    suid.chmod(0o6755)
    settle(src)
    ok(dg(home, "backup", src))
    run = ok(dg(home, "restore", target))
    assert warnings(run) == []
    restored = restored_root(target, src)
    assert differences(src, restored) == []
    assert os.getxattr(restored / "ping", "security.capability") == CAP_NET_RAW


def test_an_attribute_only_change_is_a_new_version_shown_by_diff(
    tmp_path: Path, home: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    note = src / "note.txt"
    note.write_text("the same bytes every night\n")
    os.setxattr(note, "user.state", b"draft")
    (src / "d").mkdir()
    settle(src)
    ok(dg(home, "backup", src))
    os.setxattr(note, "user.state", b"final")  # moves ctime only
    os.setxattr(src / "d", "user.colour", b"blue")
    ok(dg(home, "backup", src))
    os.removexattr(note, "user.state")
    ok(dg(home, "backup", src))
    assert ok(dg(home, "diff", "1", "2")).out.splitlines()[:2] == [
        f"U {src / 'd'}",
        f"U {note}",
    ]
    assert ok(dg(home, "diff", "2", "3")).out.splitlines()[0] == f"U {note}"
    for snapshot, state in (("1", b"draft"), ("2", b"final"), ("3", None)):
        target = tmp_path / f"r{snapshot}"
        ok(dg(home, "restore", "--snapshot", snapshot, target))
        restored = restored_root(target, note)
        found = xattrs.decode(xattrs.read(os.fsencode(restored)))
        assert found.get("user.state") == state, snapshot
        assert restored.read_text() == "the same bytes every night\n"
    with sqlite3.connect(home / "backupdb.sqlite") as conn:  # the bytes were stored once
        assert conn.execute("SELECT count(*) FROM contents").fetchone() == (1,)


def test_attributes_are_read_only_for_entries_whose_ctime_moved(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet night lists no attributes at all; a night with one attribute changed lists
    that file's alone (setting an attribute moves ctime, which queues the entry)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_text(str(i))
        os.setxattr(src / f"f{i}", "user.n", str(i).encode())
    settle(src)
    assert cli("backup", src).code == 0
    listed: list[bytes] = []
    real = os.listxattr

    def listing(where: bytes | int, *, follow_symlinks: bool = True) -> list[str]:
        """By path, or (a small file's, read ahead) on the descriptor its bytes are read from."""
        if isinstance(where, int):
            listed.append(os.fsencode(os.readlink(f"/proc/self/fd/{where}")))
        else:
            listed.append(where)
        return real(where, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "listxattr", listing)
    assert cli("backup", src).code == 0
    assert listed == []
    os.setxattr(src / "f7", "user.n", b"seven")
    assert cli("backup", src).code == 0
    assert listed == [os.fsencode(src / "f7")]


def test_link_dest_links_a_file_only_if_its_attributes_match(tmp_path: Path, home: Path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("same", "retagged"):
        (src / name).write_text(f"{name}\n")
        os.setxattr(src / name, "user.state", b"draft")
    settle(src)
    ok(dg(home, "backup", src))
    ok(dg(home, "restore", tmp_path / "r1"))
    os.setxattr(src / "retagged", "user.state", b"final")
    ok(dg(home, "backup", src))
    run = ok(dg(home, "--json", "restore", "--link-dest", tmp_path / "r1", tmp_path / "r2"))
    assert run.json["linked"] == 1
    old, new = restored_root(tmp_path / "r1", src), restored_root(tmp_path / "r2", src)
    assert os.stat(new / "same").st_ino == os.stat(old / "same").st_ino
    assert os.getxattr(new / "retagged", "user.state") == b"final"
    assert os.getxattr(old / "retagged", "user.state") == b"draft"
    assert differences(src, new) == []


@needs_acl_tools
def test_a_checksum_night_records_the_attributes_an_older_backupdb_lacks(
    tmp_path: Path, home: Path
) -> None:
    src, target = tmp_path / "src", tmp_path / "r"
    attributed_tree(src)
    ok(dg(home, "backup", src))
    with sqlite3.connect(home / "backupdb.sqlite") as conn:  # as a schema-3 backup left them
        conn.execute("UPDATE versions SET xattrs = NULL")
    ok(dg(home, "backup", src))  # a quiet night: nothing read
    ok(dg(home, "backup", "--checksum", src))  # every entry looked at again
    changed = ok(dg(home, "diff", "2", "3")).out.splitlines()
    assert changed == [
        f"U {src / 'd'}",
        f"U {src / 'd' / 'inner.txt'}",
        f"U {src / 'd' / 'tagged-link.txt'}",
        f"U {src / 'shared.txt'}",
        f"U {src / 'tagged.txt'}",
        "0 added, 0 deleted, 0 changed, 0 changed type, 5 metadata only",
    ]
    ok(dg(home, "restore", target))
    assert differences(src, restored_root(target, src)) == []


@needs_acl_tools
def test_an_acl_is_read_as_the_permissions_it_gave() -> None:
    """mode_without_acl on ACLs the kernel made: the group and other bits never give anyone
    more than the ACL did."""
    with tempfile.NamedTemporaryFile() as f:
        path = f.name
        cases = [
            (f"u::rw,u:{NOBODY}:rw,g::r,m::rw,o::r", 0o644),  # named user write: not the group
            (f"u::rw,u:{NOBODY}:-,g::r,m::r,o::r", 0o600),  # a named user denied: others too
            (f"u::rwx,g::rwx,g:{NOBODY}:r,m::rx,o::rx", 0o754),  # the mask and a named group
            (f"u::rw,g::rw,g:{NOBODY}:r,m::rw,o::-", 0o660),  # the owning group keeps rw
        ]
        for acl, expected in cases:
            setfacl("--set", acl, path)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            value = os.getxattr(path, xattrs.ACL_ACCESS)
            assert mode_without_acl(mode, value) == expected, acl


@needs_root
@needs_acl_tools
def test_a_file_system_refusing_attributes_gets_a_narrower_mode_and_warnings(
    tmp_path: Path, home: Path
) -> None:
    src, target = tmp_path / "src", tmp_path / "ramfs"
    attributed_tree(src)
    ok(dg(home, "backup", src))
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", target], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a ramfs here: {mounted.stderr.decode().strip()}")
    try:
        run = ok(dg(home, "restore", target))  # restored, with what could not be said
        restored = restored_root(target, src)
        lines = warnings(run)
        expected = {
            # the hard-linked pair's first path in the backup names their shared inode
            f"{restored / 'd' / 'tagged-link.txt'}: user.binary not restored: Operation not "
            "supported",
            f"{restored / 'shared.txt'}: system.posix_acl_access not restored: Operation not "
            "supported",
            f"{restored / 'd'}: system.posix_acl_default not restored: Operation not supported",
        }
        assert expected <= {ln.removeprefix("deltagrid: warning: ") for ln in lines}
        assert lines[-1] == (
            "deltagrid: warning: 7 attributes could not be restored (the file system or this "
            "user's rights refused them)"
        )
        assert len(lines) == 8  # three user.*, four ACLs, the summary
        # The group read, nobody wrote: without the ACL nobody is "other", which read nothing.
        assert stat.S_IMODE((restored / "shared.txt").stat().st_mode) == 0o640
        assert stat.S_IMODE((src / "d").stat().st_mode) == 0o770
        assert stat.S_IMODE((restored / "d").stat().st_mode) == 0o750
        assert (restored / "tagged.txt").read_text() == "tagged\n"
    finally:
        subprocess.run(["umount", target], check=True)


# --- as a non-root user --------------------------------------------------------------------------


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    """A fresh system user, removed afterwards (when running as root)."""
    if not AS_ROOT:
        pytest.skip("creating a user needs root")
    name = f"dgt{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
    )
    try:
        user = pwd.getpwnam(name)
        probe = _as(user, [sys.executable, "-c", "pass"])
        if probe.returncode != 0:  # e.g. a Python built under root's own home, mode 0700
            pytest.skip(f"another user cannot run this Python: {probe.stderr.strip()}")
        yield user
    finally:
        subprocess.run(["userdel", name], check=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's own is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="deltagrid-fidelity-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", path], check=True)


def dg_as(user: pwd.struct_passwd, home: Path, *args: str | Path) -> Run:
    """`deltagrid --home HOME ARGS...` run as `user`, with no capabilities."""
    proc = _as(user, [sys.executable, "-m", "deltagrid", "--home", str(home), *map(str, args)])
    return Run(proc.returncode, proc.stdout, proc.stderr)


def _as(user: pwd.struct_passwd, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )


def give(path: Path, user: pwd.struct_passwd) -> None:
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", path], check=True)


def root_tree(src: Path) -> None:
    """What a root snapshot holds that a user cannot restore as it was: set-ID programs, a
    trusted attribute, read-only directories."""
    (src / "bin").mkdir(parents=True)
    for name, mode in (("su", 0o4755), ("wall", 0o2755), ("plain", 0o755)):
        (src / "bin" / name).write_bytes(name.encode())
        (src / "bin" / name).chmod(mode)
    os.setxattr(src / "bin" / "plain", "trusted.md5", b"0123")
    os.setxattr(src / "bin" / "plain", "user.note", b"kept")
    (src / "ro" / "deeper").mkdir(parents=True)
    (src / "ro" / "deeper" / "file").write_text("under read-only directories\n")
    (src / "ro" / "deeper").chmod(0o555)
    (src / "ro").chmod(0o555)
    settle(src)


def test_a_root_snapshot_restored_by_a_user_drops_set_id_bits_and_restores_twice(
    shared_dir: Path, user: pwd.struct_passwd
) -> None:
    src, home, target = shared_dir / "src", shared_dir / "home", shared_dir / "r"
    root_tree(src)
    ok(dg(home, "backup", src))
    give(home, user)  # a copy of the backup the user may read
    target.mkdir()
    give(target, user)
    expected = [
        "bin/plain: xattr trusted.md5 b'0123' != None",
        "bin/su: mode 4755 != 755",
        "bin/wall: mode 2755 != 755",
    ]
    for night in range(2):  # a second restore writes under the read-only directories
        if night:  # (a file lost from them meanwhile: restore must make it again)
            (restored_root(target, src) / "ro" / "deeper" / "file").unlink()
        run = ok(dg_as(user, home, "restore", "--overwrite", "always", target))
        restored = restored_root(target, src)
        assert differences(src, restored, owner=False) == expected
        assert warnings(run) == [
            f"deltagrid: warning: {restored / 'bin' / 'plain'}: trusted.md5 not restored: "
            "Operation not permitted",
            "deltagrid: warning: 1 attributes could not be restored (the file system or this "
            "user's rights refused them)",
            "deltagrid: warning: 2 set-user-ID/set-group-ID bits dropped: their owner or group "
            "could not be restored (restore as root to keep them)",
        ]
        assert os.stat(restored / "bin" / "su").st_uid == user.pw_uid


@needs_acl_tools
def test_a_users_own_tree_round_trips_as_that_user(
    shared_dir: Path, user: pwd.struct_passwd
) -> None:
    src, home, target = shared_dir / "src", shared_dir / "home", shared_dir / "r"
    attributed_tree(src)
    (src / "ro").mkdir()
    (src / "ro" / "f").write_text("x")
    (src / "ro").chmod(0o500)
    give(src, user)
    settle(src)
    for path in (home, target):
        path.mkdir()
        give(path, user)
    ok(dg_as(user, home, "backup", src))
    for _night in range(2):
        run = ok(dg_as(user, home, "restore", "--overwrite", "always", target))
        assert warnings(run) == []
        assert differences(src, restored_root(target, src)) == []  # owners too: all the user's


def test_the_checker_sees_every_kind_of_difference(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        for name in ("mode", "xattr", "content", "linked"):
            (root / name).write_text("same\n")
        (root / "link").symlink_to("mode")
        os.link(root / "linked", root / "linked-too")
    (b / "mode").chmod(0o600)
    os.setxattr(b / "xattr", "user.extra", b"1")
    (b / "content").write_text("other\n")
    (b / "link").unlink()
    (b / "link").symlink_to("xattr")
    (b / "linked-too").unlink()
    (b / "linked-too").write_text("same\n")
    (b / "only-here").mkdir()
    with open(a / "sparse", "wb") as f:
        f.truncate(1 << 20)  # a hole
    (b / "sparse").write_bytes(bytes(1 << 20))  # the same bytes, allocated
    os.utime(a / "content", ns=(5, 5))
    os.utime(b / "content", ns=(5, 6))
    text = "\n".join(differences(a, b, owner=False))
    for expected in (
        "mode: mode 644 != 600",
        "xattr: xattr user.extra None != b'1'",
        "content: content differs",
        "content: mtime 5 != 6",
        "link: target 'mode' != 'xattr'",
        "linked: hard-linked with linked != None",
        "linked-too: hard-linked with linked != None",
        "sparse: allocated 0 != 1048576 bytes",
        f"only-here: only in {b}",
    ):
        assert expected in text, text
