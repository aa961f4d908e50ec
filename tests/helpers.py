"""Helpers the tests share: describing a tree on disk so two trees can be compared exactly."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import deltagrid.uploader.reader
from deltagrid.home import Home
from deltagrid.repository.root import parse_root
from deltagrid.uploader.reader import SourceError


@dataclass
class Run:
    """One deltagrid run: exit code, stdout, stderr (and stdout as JSON)."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def one_error(run: Run, code: int, *fragments: str) -> str:
    """The run failed with `code` and said so in exactly one `deltagrid: error:` line."""
    assert run.code == code, (run.code, run.err)
    assert "Traceback" not in run.err
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("deltagrid: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def _command(home: Path, args: tuple[str | Path, ...]) -> list[str]:
    return [sys.executable, "-m", "deltagrid", "--home", str(home), *map(str, args)]


def dg(home: Path, *args: str | Path, timeout: float = 120) -> Run:
    """`python -m deltagrid --home HOME ARGS...` in a subprocess: the real process, real stderr."""
    proc = subprocess.run(_command(home, args), capture_output=True, text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def dg_started(home: Path, *args: str | Path) -> subprocess.Popen[str]:
    """`dg`, started and left running: for a test that signals it, stops it or waits on it."""
    return subprocess.Popen(
        _command(home, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def backed_up(cli: Callable[..., Run], src: Path) -> dict[str, Any]:
    """`backup SRC` through a `cli` fixture: it succeeded; its --json document."""
    run = cli("--json", "backup", src)
    assert run.code == 0, run.err
    return run.json


def describe(root: Path, mtimes: bool = True) -> dict[bytes, tuple]:
    """Every entry below `root`: kind, mode, size, content hash, link target, device number,
    mtime, link group.

    Hard links appear as a group id (the first path of the group), so two trees compare equal
    only if the same names are linked together.
    """
    out: dict[bytes, tuple] = {}
    groups: dict[tuple[int, int], bytes] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            mtime = st.st_mtime_ns if mtimes else 0
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full), mtime)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), mtime)
            elif not stat.S_ISREG(st.st_mode):  # a FIFO or device (p, c, b): never opened
                kind = stat.filemode(st.st_mode)[0]
                out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_rdev, mtime)
            else:
                with open(full, "rb") as f:
                    digest = hashlib.blake2b(f.read(), digest_size=16).hexdigest()
                group = None
                if st.st_nlink > 1:
                    group = groups.setdefault((st.st_dev, st.st_ino), rel)
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size, digest, mtime, group)
    return out


def settle(root: Path, age_s: float = 3600) -> None:
    """Date every entry under root (and root) an hour back, so a backup taken now records the
    real mtimes: a file written in the backup's own second is rechecked next night by design."""
    old = time.time() - age_s
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            os.utime(os.path.join(dirpath, name), (old, old), follow_symlinks=False)
    os.utime(root, (old, old))


def restored_root(target: Path, source: Path) -> Path:
    """Where restore puts `source`: TARGET + its absolute path."""
    return Path(str(target) + str(source.absolute()))


def watch_opening(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[bytes], None] | None = None
) -> list[bytes]:
    """Every path the uploader's one opener of source files opens, in order; `before` runs on
    each path first. `monkeypatch.undo()` ends it."""
    real_open = deltagrid.uploader.reader.open_source
    opened: list[bytes] = []

    def open_source(path: bytes) -> tuple[int, os.stat_result]:
        if before is not None:
            before(path)
        opened.append(path)
        return real_open(path)

    monkeypatch.setattr(deltagrid.uploader.reader, "open_source", open_source)
    return opened


def fail_reading(monkeypatch: pytest.MonkeyPatch, paths: set[bytes]) -> None:
    """Make the uploader's one opener of source files fail with EIO for `paths`: running as
    root, no chmod makes a file unreadable. `monkeypatch.undo()` ends it."""
    real_open = deltagrid.uploader.reader.open_source

    def open_source(path: bytes) -> tuple[int, os.stat_result]:
        if path in paths:
            raise SourceError(OSError(errno.EIO, os.strerror(errno.EIO), path))
        return real_open(path)

    monkeypatch.setattr(deltagrid.uploader.reader, "open_source", open_source)


def root_of(home: Path) -> dict[str, Any]:
    """The root pointer the home's store holds now, parsed."""
    store = Home(home).store()
    try:
        root = parse_root(store.read_root())
    finally:
        store.close()
    assert root is not None
    return root


NOBODY = 65534  # the unprivileged user a test running as root switches to


@contextmanager
def unprivileged() -> Iterator[tuple[Path, Callable[..., Run]]]:
    """A directory owned by an unprivileged user, and `run(HOME, ARGS...)` running deltagrid as
    that user: file modes bind it as they bind anyone (root ignores them). As root the user is
    nobody (via setpriv); as anyone else, oneself. Skips, saying why, when neither works."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: no unprivileged user for file modes")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", "import deltagrid"], capture_output=True
        )
        if probe.returncode != 0:
            pytest.skip(
                f"user {NOBODY} cannot run this Python and deltagrid: {probe.stderr[-200:]!r}"
            )
    work = Path(tempfile.mkdtemp(prefix="deltagrid-user-"))
    os.chmod(work, 0o755)
    if prefix:
        os.chown(work, NOBODY, NOBODY)

    def run(home: Path, *args: str | Path) -> Run:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "deltagrid", "--home", str(home), *map(str, args)],
            capture_output=True,
            timeout=120,
        )
        decode = lambda b: b.decode("utf-8", "surrogateescape")  # noqa: E731
        return Run(proc.returncode, decode(proc.stdout), decode(proc.stderr))

    try:
        yield work, run
    finally:
        for dirpath, _dirs, _files in os.walk(work):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(work)
