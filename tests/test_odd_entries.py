"""One odd entry never aborts a night: whatever fails on one entry (its link cannot be read, it
cannot be opened) makes that entry unreadable — exit 23, named in the output and in `log` — and
everything else is committed. A path past PATH_MAX is no such entry: it is backed up and
restored. Pseudo file systems below a source are not walked; a source that is a symlink to a
directory is backed up as that tree; a file that keeps growing is read only so far past its
size."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import deltagrid.floor.fs
from deltagrid.uploader import reader
from tests.helpers import Run, dg, restored_root, settle

_MAIN = (
    "import site, sys; site.addsitedir({purelib!r}); "
    "from deltagrid.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _user_python() -> list[str] | None:
    """A command that runs deltagrid as the user `nobody`: this interpreter if nobody may run
    it, else the system's python of the same version given this environment's packages."""
    purelib = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}"):
        cmd = ["runuser", "-u", "nobody", "--", python, "-c", _MAIN.format(purelib=purelib)]
        try:
            probe = subprocess.run([*cmd, "--version"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return cmd
    return None


@pytest.fixture
def user_tmp() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="dg-odd-"))
    path.chmod(0o755)
    yield path
    for dirpath, dirnames, _files in os.walk(path):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
    shutil.rmtree(path)


class UserRunner:
    """`as_user(ARGS...)`: deltagrid run with no privileges, so permission bits apply (as root,
    as the user `nobody`; otherwise as the user running the tests), its home under `user_tmp`.
    Every command on that home goes through it: a backupdb file root made would lock the user
    out."""

    def __init__(self, home: Path, cmd: list[str] | None) -> None:
        self.home = home
        self.cmd = cmd

    def __call__(self, *args: str | Path) -> Run:
        if self.cmd is None:
            return dg(self.home, *args)
        proc = subprocess.run(
            [*self.cmd, "--home", str(self.home), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def logged(self) -> dict[str, str]:
        """The unreadable paths `log` names for the last run, with their reasons."""
        runs = self("--json", "log").json["runs"]
        return {e["path"]: e["error"] for e in runs[0]["errors"]}


@pytest.fixture
def as_user(user_tmp: Path) -> UserRunner:
    home = user_tmp / "home"
    if os.geteuid() != 0:
        return UserRunner(home, None)
    cmd = _user_python()
    if cmd is None:
        pytest.skip("no python the user nobody may run (runuser, a readable interpreter)")
    home.mkdir()
    os.chown(home, 65534, 65534)
    return UserRunner(home, cmd)


def _named(run: Run) -> dict[str, str]:
    """Every unreadable path a backup's JSON names, scan's and upload's, with its reason."""
    doc = run.json
    found = {e["path"]: e["error"] for e in doc["scan"]["errors"]}
    found.update({e["path"]: e["error"] for e in doc.get("unreadable", [])})
    return found


def _logged(home: Path) -> dict[str, str]:
    runs = dg(home, "--json", "log").json["runs"]
    return {e["path"]: e["error"] for e in runs[0]["errors"]}


def test_files_and_directories_a_user_cannot_read_are_named_and_the_rest_committed(
    as_user: UserRunner, user_tmp: Path
) -> None:
    src = user_tmp / "src"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "inside.txt").write_text("unseen\n")
    (src / "ok.txt").write_text("readable\n")
    (src / "secret.txt").write_text("not for nobody\n")
    (src / "secret.txt").chmod(0o000)
    (src / "locked").chmod(0o000)
    settle(src)
    run = as_user("--json", "backup", src)
    assert run.code == 23, run.err
    assert "Traceback" not in run.err
    named = _named(run)
    assert set(named) == {str(src / "secret.txt"), str(src / "locked")}
    assert named[str(src / "secret.txt")] == "Permission denied"
    assert "Permission denied" in named[str(src / "locked")]
    assert f"cannot read {src / 'secret.txt'}" in run.err
    assert as_user.logged() == named
    listing = as_user("ls", "1", src).out
    assert str(src / "ok.txt") in listing and str(src / "secret.txt") not in listing

    (src / "secret.txt").chmod(0o644)  # readable again: the next night converges
    (src / "locked").chmod(0o755)
    again = as_user("--json", "backup", src)
    assert again.code == 0, again.err
    listing = as_user("ls", "2", src).out
    assert str(src / "locked" / "inside.txt") in listing and str(src / "secret.txt") in listing


def test_backup_of_proc_goes_on_past_a_link_it_may_not_read(as_user: UserRunner) -> None:
    """/proc/1/cwd, exe and root: readlink fails with EACCES for another user's process."""
    if os.stat("/proc/1").st_uid == (65534 if os.geteuid() == 0 else os.geteuid()):
        pytest.skip("process 1 belongs to the user running the backup")
    run = as_user("--json", "backup", "/proc/1")
    assert run.code == 23, run.err
    assert "Traceback" not in run.err
    assert _named(run).get("/proc/1/cwd") == "Permission denied"
    assert run.json["snapshot_id"] == 1  # committed, with what could be read
    assert as_user.logged()["/proc/1/cwd"] == "Permission denied"
    assert "/proc/1/status" in as_user("ls", "1", "/proc/1/status").out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "other.txt").write_text("committed whatever happens to the link\n")
    os.symlink("other.txt", src / "link")
    settle(src)
    return src


def test_a_link_swapped_for_a_file_as_it_is_read_is_unreadable_then_backed_up(
    tree: Path, home: Path, cli_in, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = deltagrid.floor.fs.read_link
    link = os.fsencode(tree / "link")

    def swap_first(path: bytes) -> bytes:
        if path == link:
            os.unlink(path)
            Path(os.fsdecode(path)).write_text("a file now\n")
        return real(path)  # EINVAL: not a symlink

    monkeypatch.setattr(deltagrid.floor.fs, "read_link", swap_first)
    run = cli_in(home, "--json", "backup", tree)
    assert run.code == 23, run.err
    assert _named(run) == {str(tree / "link"): "Invalid argument"}
    assert str(tree / "other.txt") in cli_in(home, "ls", "1", tree).out
    assert str(tree / "link") in _logged(home)

    monkeypatch.undo()
    settle(tree)
    again = cli_in(home, "--json", "backup", tree)
    assert again.code == 0, again.err
    entry = [ln for ln in cli_in(home, "ls", "2", tree / "link").out.splitlines()]
    assert len(entry) == 1 and entry[0].startswith("-")  # a regular file now


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES, errno.EINVAL, errno.EIO])
def test_a_link_whose_target_cannot_be_read_is_named_and_the_rest_committed(
    code: int, tree: Path, home: Path, cli_in, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = deltagrid.floor.fs.read_link

    def failing(path: bytes) -> bytes:
        if path.endswith(b"/link"):
            raise OSError(code, os.strerror(code), path)
        return real(path)

    monkeypatch.setattr(deltagrid.floor.fs, "read_link", failing)
    run = cli_in(home, "--json", "backup", tree)
    assert run.code == 23, run.err
    assert _named(run) == {str(tree / "link"): os.strerror(code)}
    assert run.json["snapshot_id"] == 1
    assert str(tree / "other.txt") in cli_in(home, "ls", "1", tree).out


def _describe_by_fd(root: Path) -> dict[str, tuple]:
    """Every entry below `root` (kind, mode, mtime in ns, bytes and extended attributes or link
    target), walked through
    directory descriptors: paths past PATH_MAX cannot be named whole."""
    out: dict[str, tuple] = {}

    def walk(fd: int, rel: str) -> None:
        for name in sorted(os.listdir(fd)):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            key = f"{rel}/{name}"
            if stat.S_ISDIR(st.st_mode):
                out[key] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                try:
                    walk(child, key)
                finally:
                    os.close(child)
            elif stat.S_ISLNK(st.st_mode):
                out[key] = ("l", os.readlink(name, dir_fd=fd))
            else:
                f = os.open(name, os.O_RDONLY, dir_fd=fd)
                try:
                    data = os.read(f, 1 << 20)
                    attributes = sorted((a, os.getxattr(f, a)) for a in os.listxattr(f))
                finally:
                    os.close(f)
                out[key] = ("f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, data, attributes)

    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walk(top, "")
    finally:
        os.close(top)
    return out


def test_a_path_over_5000_bytes_is_backed_up_and_restored(tmp_path: Path, home: Path) -> None:
    """Walk, read and restore reach it through directory descriptors: no PATH_MAX."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "short.txt").write_text("fine\n")
    fd = os.open(src, os.O_RDONLY)
    dirs = []
    try:
        for level in range(22):  # 22 x 251 bytes: past PATH_MAX (4096)
            name = f"{level:02d}" + "d" * 248
            os.mkdir(name, 0o750, dir_fd=fd)
            dirs.append((fd, name))
            fd = os.open(name, os.O_RDONLY, dir_fd=fd)
        leaf = os.open("leaf.txt", os.O_CREAT | os.O_WRONLY, 0o640, dir_fd=fd)
        os.write(leaf, b"deep down\n")
        os.setxattr(leaf, "user.depth", b"22")  # read on the descriptor its bytes are read from
        os.close(leaf)
        os.symlink("leaf.txt", "leaf-link", dir_fd=fd)
        old = 1_500_000_000_123_456_789  # each its own, deepest last: a swap would show
        os.utime("leaf.txt", ns=(old, old - 1), dir_fd=fd)
        for level, (parent, name) in reversed(list(enumerate(dirs))):
            os.utime(name, ns=(old, old + level), dir_fd=parent)
    finally:
        os.close(fd)
        for parent, _name in dirs:
            os.close(parent)
    os.utime(src / "short.txt", ns=(old, old))
    os.utime(src, ns=(old, old))
    run = dg(home, "--json", "backup", src)
    assert run.code == 0, run.err
    listing = dg(home, "ls", "1", src).out
    assert max(len(line) for line in listing.splitlines()) > 5000
    again = dg(home, "--json", "backup", src)
    assert again.code == 0
    assert again.json["scan"]["queued"] == {"new": 0, "changed": 0, "meta": 0, "deleted": 0}

    target = tmp_path / "r"
    run = dg(home, "restore", target)
    assert run.code == 0, run.err
    expected = _describe_by_fd(src)
    assert len(expected) == 25
    assert _describe_by_fd(restored_root(target, src)) == expected


@pytest.fixture
def mount_below(tmp_path: Path) -> Iterator:
    """`mount_below(fstype, dir)`: mount a pseudo file system there for the test, or skip."""
    mounted: list[Path] = []

    def mount(fstype: str, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", fstype, fstype, str(where)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount {fstype} here: {proc.stderr.strip() or proc.returncode}")
        mounted.append(where)

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", str(where)], check=True)


def test_a_pseudo_file_system_below_a_source_is_noted_and_not_walked(
    tmp_path: Path, home: Path, mount_below
) -> None:
    src = tmp_path / "src"
    (src / "sys").mkdir(parents=True)
    (src / "data.txt").write_text("real data\n")
    mount_below("proc", src / "sys" / "proc")
    run = dg(home, "--json", "backup", src)
    assert run.code == 0, run.err
    notes = run.json["scan"]["notes"]
    assert notes == [f"skipped {src / 'sys' / 'proc'}: a proc file system (--include-pseudo-fs)"]
    listing = dg(home, "ls", "1", src).out
    assert str(src / "sys" / "proc") in listing  # the mount point itself, as with rsync -x
    assert str(src / "sys" / "proc" / "self") not in listing
    assert str(src / "data.txt") in listing
    text = dg(home, "backup", src)
    assert f"skipped {src / 'sys' / 'proc'}: a proc file system" in text.out


def test_include_pseudo_fs_walks_them_and_the_default_drops_them_again(
    tmp_path: Path, home: Path, mount_below
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    mq = src / "mq"
    mount_below("mqueue", mq)
    fd = os.open(mq / "queue", os.O_CREAT | os.O_RDONLY, 0o600)  # a message queue
    os.close(fd)
    run = dg(home, "--json", "backup", "--include-pseudo-fs", src)
    assert run.code == 0, run.err
    assert run.json["scan"]["notes"] == []
    assert str(mq / "queue") in dg(home, "ls", "1", src).out
    run = dg(home, "--json", "backup", src)
    assert run.code == 0 and len(run.json["scan"]["notes"]) == 1
    assert str(mq / "queue") not in dg(home, "ls", "2", src).out


@pytest.mark.parametrize("slash", ["", "/"])
def test_a_source_that_links_to_a_directory_is_backed_up_as_its_tree(
    slash: str, tmp_path: Path, home: Path
) -> None:
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "a.txt").write_text("in the tree\n")
    (real / "sub" / "b.txt").write_text("below\n")
    os.symlink("a.txt", real / "inner-link")
    os.symlink("real", tmp_path / "link")
    settle(real)
    source = str(tmp_path / "link") + slash
    run = dg(home, "--json", "backup", source)
    assert run.code == 0, run.err
    assert run.json["scan"]["notes"] == [
        f"{tmp_path / 'link'} is a symlink to real: backing up its tree"
    ]
    target = tmp_path / "r"
    assert dg(home, "restore", target).code == 0
    back = restored_root(target, tmp_path / "link")
    assert back.is_dir() and not back.is_symlink()
    assert (back / "a.txt").read_text() == "in the tree\n"
    assert (back / "sub" / "b.txt").read_text() == "below\n"
    assert os.readlink(back / "inner-link") == "a.txt"  # links inside stay links
    assert not (restored_root(target, real)).exists()  # recorded under the path given

    again = dg(home, "--json", "backup", source)
    assert again.code == 0
    assert again.json["scan"]["queued"] == {"new": 0, "changed": 0, "meta": 0, "deleted": 0}


def test_a_file_that_keeps_growing_is_read_only_so_far_past_its_size(tmp_path: Path) -> None:
    """The reader's own limit: each run read makes the file grow, as a busy log or a device-
    like file would; the read still ends GROWTH past the size at open, and what is kept is a
    copy of the file as it then stood, flagged as changed."""
    path = tmp_path / "growing.log"
    size = 8 << 20
    path.write_bytes(b"x" * size)
    handed: list[int] = []

    def grow(data: bytes) -> None:
        handed.append(len(data))
        with open(path, "ab") as f:
            f.write(b"y" * (1 << 20))

    fd, st = reader.open_source(os.fsencode(path))
    source = reader.read_opened(
        fd, st, os.fsencode(path), 4 << 20, None, 2048, tmp_path, on_bytes=grow
    )
    try:
        assert sum(handed) == size + reader.GROWTH
        assert source.changed and source.temporary
        assert source.meta.size == os.path.getsize(path)
    finally:
        source.cleanup()
