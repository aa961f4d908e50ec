"""Round trips: whatever a tree holds comes back from restore exactly, and ls/snapshots show it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tests.helpers import describe, restored_root

OLD = 1_600_000_000  # 2020-09-13: mtimes well away from "now", so nothing is re-checked
NON_UTF8_DIR = b"caf\xe9-latin1"
NON_UTF8_FILE = b"\xff\xfe-not-utf8.bin"


def _write(path: bytes, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _age(root: bytes) -> None:
    """Old mtimes for `root` and all below it; entries get distinct nanosecond parts."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            n += 1
            os.utime(
                os.path.join(dirpath, name),
                ns=(OLD * 10**9, OLD * 10**9 + n * 1_000_000_007),
                follow_symlinks=False,
            )
    os.utime(root, ns=(OLD * 10**9, OLD * 10**9))


def make_tree(src: Path, big: bool = False) -> None:
    """A tree with every kind of entry deltagrid must carry over."""
    root = os.fsencode(src)

    def p(*parts: bytes) -> bytes:
        return os.path.join(root, *parts)

    os.makedirs(root)
    _write(p(b"empty.txt"), b"")
    os.mkdir(p(b"empty dir"))
    _write(p(b"with space.txt"), b"spaces\n")
    _write(p(b"new\nline.txt"), b"a newline in the name\n")
    _write(p(b"tab\tand 'quotes' \"here\".txt"), b"odd characters\n")
    _write(p(b"-dash-first"), b"dash\n")
    _write(p(NON_UTF8_FILE), os.urandom(3000))
    os.mkdir(p(NON_UTF8_DIR))
    _write(p(NON_UTF8_DIR, b"inner \xe9t\xe9.txt"), b"latin-1 name\n")
    _write(p(b"medium.bin"), os.urandom(300 << 10))  # above delta_min_size
    _write(p(b"compressible.txt"), b"the same line again and again\n" * 20000)
    if big:
        _write(p(b"big.bin"), os.urandom(50 << 20))

    # modes
    _write(p(b"secret.txt"), b"only me\n", 0o600)
    _write(p(b"script.sh"), b"#!/bin/sh\necho hi\n", 0o755)
    os.mkdir(p(b"private"))
    _write(p(b"private", b"key"), b"k" * 100, 0o400)
    os.chmod(p(b"private"), 0o700)
    os.mkdir(p(b"public"))
    os.chmod(p(b"public"), 0o755)
    os.mkdir(p(b"read-only dir"))
    _write(p(b"read-only dir", b"locked.txt"), b"cannot add beside me\n", 0o444)

    # a subtree and siblings whose names start like it (for --path prefixes)
    os.makedirs(p(b"sub", b"inner"))
    _write(p(b"sub", b"one.txt"), b"one\n")
    _write(p(b"sub", b"inner", b"two.bin"), os.urandom(100 << 10))
    os.symlink(b"../one.txt", p(b"sub", b"inner", b"up-link"))
    os.mkdir(p(b"sub0"))
    _write(p(b"sub0", b"not-sub.txt"), b"sibling\n")
    os.mkdir(p(b"sub-extra"))
    _write(p(b"sub-extra", b"not-sub.txt"), b"sibling\n")

    # symlinks: to a file, dangling, to a directory, absolute, with a non-UTF-8 target
    os.symlink(b"empty.txt", p(b"link-to-file"))
    os.symlink(b"does/not/exist", p(b"dangling"))
    os.symlink(b"sub", p(b"link-to-dir"))
    os.symlink(b"/etc/hostname", p(b"absolute-link"))
    os.symlink(NON_UTF8_DIR + b"/inner \xe9t\xe9.txt", p(b"link-\xe9"))

    # a FIFO (never opened: a backup or restore that opened it would wait for a writer)
    os.mkfifo(p(b"a fifo"))
    os.chmod(p(b"a fifo"), 0o620)

    # 40 levels deep
    deep = p(*[b"level-%02d" % i for i in range(40)])
    os.makedirs(deep)
    _write(os.path.join(deep, b"bottom.txt"), b"deep down\n")

    # a hard-link group of three names in two directories
    os.mkdir(p(b"hard"))
    os.mkdir(p(b"hard2"))
    _write(p(b"hard", b"a"), os.urandom(200 << 10), 0o640)
    os.link(p(b"hard", b"a"), p(b"hard", b"b"))
    os.link(p(b"hard", b"a"), p(b"hard2", b"c"))

    _age(root)
    os.chmod(p(b"read-only dir"), 0o555)


def test_restore_reproduces_every_kind_of_entry_with_its_metadata(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    make_tree(src, big=True)
    before = describe(src)

    backup = cli("--json", "backup", src)
    assert backup.code == 0, backup.err
    doc = backup.json
    assert doc["snapshot_id"] == 1
    assert doc["counts"]["symlinks"] == 6
    assert doc["counts"]["specials"] == 1
    assert doc["unreadable"] == [] and doc["vanished"] == []
    # a 50 MB random file cannot shrink: it was stored, and whole
    assert doc["bytes_uploaded"] > 50 << 20
    assert describe(src) == before, "backing up must not touch the source"

    target = tmp_path / "restore"
    restored = cli("--json", "restore", target)
    assert restored.code == 0, restored.err
    assert restored.json["errors"] == []
    assert restored.json["hardlinks"] == 2
    assert restored.json["symlinks"] == 6
    assert restored.json["specials"] == 1

    out = restored_root(target, src)
    assert describe(out) == before
    root_src, root_out = os.lstat(src), os.lstat(out)
    assert (root_out.st_mode, root_out.st_mtime_ns) == (root_src.st_mode, root_src.st_mtime_ns)
    a, b, c = (os.stat(out / name) for name in ("hard/a", "hard/b", "hard2/c"))
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert os.readlink(out / "link-to-dir") == "sub"
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert stat.S_IMODE(os.stat(out / "read-only dir").st_mode) == 0o555

    verify = cli("verify", "--read-data")
    assert verify.code == 0, verify.out + verify.err


def test_restore_with_path_brings_back_only_that_subtree(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    make_tree(src)
    assert cli("backup", src).code == 0

    target = tmp_path / "restore"
    run = cli("--json", "restore", "--path", src / "sub", target)
    assert run.code == 0, run.err
    out = restored_root(target, src)
    assert describe(out / "sub") == describe(src / "sub")
    # only the subtree: not its siblings, not those whose names merely start with "sub"
    assert sorted(os.listdir(out)) == ["sub"]
    assert run.json["files"] == 2 and run.json["symlinks"] == 1


def test_restore_with_several_paths_including_non_utf8_names(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    make_tree(src)
    assert cli("backup", src).code == 0

    target = tmp_path / "restore"
    latin = os.fsdecode(os.path.join(os.fsencode(src), NON_UTF8_DIR))
    run = cli("restore", "--path", latin, "--path", src / "hard" / "b", target)
    assert run.code == 0, run.err
    out = os.fsencode(restored_root(target, src))
    assert sorted(os.listdir(out)) == sorted([NON_UTF8_DIR, b"hard"])
    full = describe(src)
    got = describe(Path(os.fsdecode(out)))
    assert got[NON_UTF8_DIR] == full[NON_UTF8_DIR]
    inner = os.path.join(NON_UTF8_DIR, b"inner \xe9t\xe9.txt")
    assert got[inner] == full[inner]
    # one name of a hard-link group comes back as a plain file with the group's bytes
    restored_b = os.path.join(out, b"hard", b"b")
    with open(restored_b, "rb") as f:
        assert f.read() == (src / "hard" / "a").read_bytes()


def test_ls_lists_every_entry_of_the_snapshot(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    make_tree(src)
    assert cli("backup", src).code == 0

    run = cli("--json", "ls")
    assert run.code == 0, run.err
    assert run.json["snapshot_id"] == 1
    entries = {os.fsencode(e["path"]): e for e in run.json["entries"]}

    root = os.fsencode(src)
    st = os.lstat(root)
    expected: dict[bytes, tuple] = {root: ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)}
    expected.update({os.path.join(root, rel): d for rel, d in describe(src).items()})
    assert set(entries) == set(expected)
    for path, d in expected.items():
        e = entries[path]
        assert e["type"] == d[0], path
        if d[0] == "f":
            assert (e["mode"], e["size"], e["mtime_ns"]) == (d[1], d[2], d[4]), path
            assert len(e["hash"]) == 64
        elif d[0] == "d":
            assert (e["mode"], e["mtime_ns"]) == (d[1], d[2]), path
        elif d[0] == "p":
            assert (e["mode"], e["mtime_ns"], e.get("rdev")) == (d[1], d[3], None), path
        else:
            assert os.fsencode(e["target"]) == d[1], path
            assert e["mtime_ns"] == d[2], path
    # the three names of a hard-link group share one content
    hashes = {entries[os.path.join(root, n)]["hash"] for n in (b"hard/a", b"hard/b", b"hard2/c")}
    assert len(hashes) == 1


def test_ls_with_a_path_lists_that_subtree(tmp_path: Path, home: Path, cli) -> None:
    src = tmp_path / "src"
    make_tree(src)
    assert cli("backup", src).code == 0

    latin = os.path.join(os.fsencode(src), NON_UTF8_DIR)
    run = cli("--json", "ls", "1", os.fsdecode(latin))
    assert run.code == 0, run.err
    paths = [os.fsencode(e["path"]) for e in run.json["entries"]]
    assert paths == [latin, os.path.join(latin, b"inner \xe9t\xe9.txt")]

    run = cli("--json", "ls", src / "sub")
    names = [os.fsencode(e["path"]) for e in run.json["entries"]]
    sub = os.fsencode(src / "sub")
    assert names == sorted(
        [sub, sub + b"/one.txt", sub + b"/inner", sub + b"/inner/two.bin", sub + b"/inner/up-link"]
    )

    # the text listing prints the raw bytes of the name (a real process: stdout is bytes there)
    text = subprocess.run(
        [sys.executable, "-m", "deltagrid", "--home", home, "ls", latin],
        capture_output=True,
        check=True,
    )
    assert text.stdout.count(b"/" + NON_UTF8_DIR) == 2


def test_snapshots_lists_each_snapshot_with_its_files_and_sources(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    make_tree(src)
    first = cli("--json", "backup", src)
    (src / "later.txt").write_bytes(b"added the next night\n")
    second = cli("--json", "backup", src)
    assert (first.code, second.code) == (0, 0)

    run = cli("--json", "snapshots")
    assert run.code == 0, run.err
    snaps = run.json["snapshots"]
    files = sum(1 for d in describe(src).values() if d[0] == "f")
    assert [s["id"] for s in snaps] == [1, 2]
    assert [s["files"] for s in snaps] == [files - 1, files]
    assert all(s["sources"] == [str(src)] for s in snaps)
    assert [s["bytes_added"] for s in snaps] == [
        first.json["bytes_uploaded"],
        second.json["bytes_uploaded"],
    ]
    assert snaps[0]["bytes_added"] > 300 << 10
    assert 0 < snaps[1]["bytes_added"] < 4096


def test_restore_at_picks_the_last_snapshot_at_or_before_the_time(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    src.mkdir()
    note = src / "note.txt"
    moments = []
    for night in range(1, 4):
        note.write_text(f"version {night}\n")
        os.utime(note, (OLD + night, OLD + night))
        assert cli("backup", src).code == 0
        time.sleep(0.01)
        moments.append(datetime.now().astimezone().isoformat())  # after snapshot `night`
        time.sleep(0.01)

    for night, moment in enumerate(moments, start=1):
        target = tmp_path / f"at-{night}"
        run = cli("--json", "restore", "--at", moment, target)
        assert run.code == 0, run.err
        assert run.json["snapshot_id"] == night
        assert (restored_root(target, src) / "note.txt").read_text() == f"version {night}\n"

    # relative times count back from now
    run = cli("--json", "restore", "--at", "0s", tmp_path / "now")
    assert run.json["snapshot_id"] == 3
    run = cli("--json", "restore", "--at", "1d", tmp_path / "yesterday")
    assert run.code == 1
    assert "no snapshot" in run.json["error"]
    assert cli("restore", "--at", "not a time", tmp_path / "bad").code == 2
    assert cli("restore", "--at", moments[0], "--snapshot", "1", tmp_path / "both").code == 2


def test_restore_at_the_time_snapshots_shows_picks_that_snapshot(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("one\n")
    assert cli("backup", src).code == 0
    shown = cli("--json", "snapshots").json["snapshots"][0]["time"]

    run = cli("--json", "restore", "--at", shown, tmp_path / "r")
    assert run.code == 0, run.err
    assert run.json["snapshot_id"] == 1
