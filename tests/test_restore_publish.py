"""Publishing restores: `--into DIR` (rename or atomic swap), `--link-dest`, and `--at` / `diff`
over a run of nights with renames and deletes."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import stat
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import backed_up, describe

OLD = 1_600_000_000 * 10**9  # mtimes well in the past: no file is re-read for being recent
DAY = 86_400 * 10**9


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def _age(root: Path) -> None:
    """Old mtimes below `root`: each directory (and `root`) gets the same one every night, so a
    directory whose entries changed is no metadata change for `diff`; a file or symlink still
    carrying a recent mtime (one the caller did not stamp) gets a fixed old one too."""
    recent = OLD + 10_000 * DAY
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) or st.st_mtime_ns > recent:
                t = OLD + _name_ns(os.path.relpath(path, root))
                os.utime(path, ns=(t, t), follow_symlinks=False)
    os.utime(root, ns=(OLD, OLD))


def _name_ns(rel: str) -> int:
    return int.from_bytes(hashlib.blake2b(rel.encode(), digest_size=4).digest(), "big")


def _stamp(path: Path, night: int) -> None:
    """The mtime `path` has when last written on `night` (a stable nanosecond part per name)."""
    t = OLD + night * DAY + _name_ns(path.name)
    os.utime(path, ns=(t, t), follow_symlinks=False)


def _restore_into(cli, *args: str | Path) -> dict:
    run = cli("--json", "restore", *args)
    assert run.code == 0, run.err
    assert run.json["errors"] == []
    return run.json


def _staging_left(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".deltagrid-" in p.name)


def _ino(path: Path) -> int:
    return os.lstat(path).st_ino


def _flat(desc: dict[bytes, tuple]) -> dict[bytes, tuple]:
    """A description without hard-link groups: --link-dest makes files share an inode with the
    previous tree, which `describe` would report as a group."""
    return {k: v[:5] if v[0] == "f" else v for k, v in desc.items()}


# --- two snapshots that differ in many files and directories -------------------------------------


def _tree_night_1(src: Path) -> None:
    for d in range(8):
        for f in range(6):
            _write(src / f"d{d}" / f"f{f}.txt", os.urandom(500 + 300 * f))
            _stamp(src / f"d{d}" / f"f{f}.txt", 1)
    (src / "d7" / "inner").mkdir()
    _write(src / "d7" / "inner" / "deep.bin", os.urandom(5000))
    _write(src / "top.txt", "top of the tree\n")
    _stamp(src / "top.txt", 1)
    os.symlink("top.txt", src / "link")
    _age(src)


def _tree_night_2(src: Path) -> None:
    for d in range(3):  # every file in three directories rewritten
        for f in range(6):
            _write(src / f"d{d}" / f"f{f}.txt", os.urandom(400 + 200 * f))
            _stamp(src / f"d{d}" / f"f{f}.txt", 2)
    shutil.rmtree(src / "d3")
    shutil.rmtree(src / "d4")
    for n in range(3):
        for f in range(4):
            _write(src / f"n{n}" / f"g{f}.txt", os.urandom(700))
            _stamp(src / f"n{n}" / f"g{f}.txt", 2)
    (src / "d5").rename(src / "r5")
    (src / "d6").chmod(0o700)
    (src / "d7" / "inner" / "deep.bin").unlink()
    (src / "link").unlink()
    os.symlink("d7/f0.txt", src / "link")
    _write(src / "added.txt", "night 2\n")
    _stamp(src / "added.txt", 2)
    _age(src)


def _two_snapshots(cli, src: Path) -> tuple[dict, dict]:
    _tree_night_1(src)
    backed_up(cli, src)
    one = describe(src)
    _tree_night_2(src)
    backed_up(cli, src)
    two = describe(src)
    assert one != two
    return one, two


# --- a reader during --swap ----------------------------------------------------------------------


class Reader(threading.Thread):
    """Lists DIR and hashes every file in it, over and over, until stopped.

    Each walk opens DIR once and walks relative to that descriptor (os.fwalk), so it reads one
    tree, never a mix of two. If a swap replaces DIR during the walk, the walked tree (now the
    old one) is being deleted by the publisher: entries vanish under the walk, which may then
    fail with FileNotFoundError or list a partly deleted tree. Such a walk says nothing about
    what readers of DIR see and is discarded: a walk counts only if, at its end, DIR still names
    the directory it opened (same device and inode: the old tree never comes back, and the open
    descriptor keeps its inode number from being reused). Finding DIR must never fail:
    with an atomic exchange there is no moment without DIR.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.walks: list[dict[bytes, tuple]] = []
        self.interrupted = 0
        self.open_failures: list[OSError] = []
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._one_walk()
        except BaseException as exc:  # reported by the test
            self.crash = exc

    def _one_walk(self) -> None:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            self.open_failures.append(exc)
            return
        try:
            opened = os.fstat(fd)
            try:
                listing = self._walk(fd)
            except FileNotFoundError:
                listing = None
            try:
                now = os.stat(self.root)
            except OSError as exc:
                self.open_failures.append(exc)
                return
            if listing is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
                self.interrupted += 1
            else:
                self.walks.append(listing)
        finally:
            os.close(fd)

    def _walk(self, fd: int) -> dict[bytes, tuple]:
        """Like `describe`, relative to an open directory."""
        out: dict[bytes, tuple] = {}
        groups: dict[tuple[int, int], bytes] = {}

        def fail(exc: OSError) -> None:
            raise exc

        for dirpath, dirnames, filenames, dirfd in os.fwalk(b".", dir_fd=fd, onerror=fail):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                rel = os.path.normpath(os.path.join(dirpath, name))
                st = os.lstat(name, dir_fd=dirfd)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("l", os.readlink(name, dir_fd=dirfd), st.st_mtime_ns)
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
                else:
                    f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
                    with os.fdopen(f, "rb") as stream:
                        digest = hashlib.blake2b(stream.read(), digest_size=16).hexdigest()
                    group = None
                    if st.st_nlink > 1:
                        group = groups.setdefault((st.st_dev, st.st_ino), rel)
                    mode = stat.S_IMODE(st.st_mode)
                    out[rel] = ("f", mode, st.st_size, digest, st.st_mtime_ns, group)
        return out


def test_a_reader_sees_the_whole_old_tree_or_the_whole_new_one_during_swaps(
    tmp_path: Path, cli
) -> None:
    src = tmp_path / "src"
    one, two = _two_snapshots(cli, src)
    live = tmp_path / "live"
    assert _restore_into(cli, "--snapshot", 1, "--path", src, "--into", live)["published"] == (
        "renamed"
    )
    assert describe(live) == one

    reader = Reader(live)
    reader.start()
    try:
        for snapshot in (2, 1, 2, 1, 2, 1, 2):
            doc = _restore_into(
                cli, "--snapshot", snapshot, "--path", src, "--into", live, "--swap"
            )
            assert doc["published"] == "exchanged"
            time.sleep(0.05)  # let the reader see this tree a few times
    finally:
        reader.stop.set()
        reader.join(30)
    assert not reader.is_alive()
    assert reader.crash is None, repr(reader.crash)
    assert reader.open_failures == []  # DIR never went missing

    seen = {1: 0, 2: 0}
    for listing in reader.walks:
        if listing == one:
            seen[1] += 1
        elif listing == two:
            seen[2] += 1
        else:
            off = [
                sorted(k for k in tree.keys() | listing.keys() if tree.get(k) != listing.get(k))
                for tree in (one, two)
            ]
            raise AssertionError(f"a walk saw neither tree whole: {off[0][:5]}, {off[1][:5]}")
    assert len(reader.walks) >= 20, (len(reader.walks), reader.interrupted)
    assert seen[1] > 0 and seen[2] > 0, seen
    assert describe(live) == two
    assert _staging_left(tmp_path) == []


def test_into_publishes_by_rename_refuses_to_overwrite_and_swaps_or_keeps_the_old_tree(
    tmp_path: Path, cli
) -> None:
    src = tmp_path / "src"
    one, two = _two_snapshots(cli, src)
    out = tmp_path / "out"
    out.mkdir()
    live = out / "live"

    # DIR absent: one rename
    doc = _restore_into(cli, "--snapshot", 1, "--path", src, "--into", live)
    assert doc["published"] == "renamed"
    assert doc["files"] == sum(1 for v in one.values() if v[0] == "f")
    assert describe(live) == one
    first_ino = _ino(live)
    assert _staging_left(out) == []

    # DIR present, no --swap: usage error, DIR untouched, no staging left behind
    run = cli("--json", "restore", "--snapshot", 2, "--path", src, "--into", live)
    assert run.code == 2
    assert "--swap" in run.err
    assert describe(live) == one and _ino(live) == first_ino
    assert _staging_left(out) == []

    # --keep-old without --swap is a usage error too
    run = cli("restore", "--snapshot", 2, "--path", src, "--into", live, "--keep-old", "prev")
    assert run.code == 2
    assert describe(live) == one and not (out / "prev").exists()

    # --swap --keep-old: the new tree in place, the old one kept intact under NAME
    doc = _restore_into(
        cli, "--snapshot", 2, "--path", src, "--into", live, "--swap", "--keep-old", "prev"
    )
    assert doc["published"] == "exchanged"
    assert describe(live) == two
    assert describe(out / "prev") == one
    assert _ino(out / "prev") == first_ino  # the very tree that was published, not a copy
    assert _staging_left(out) == []

    # --keep-old naming something that exists: refused after the restore, nothing published
    second_ino = _ino(live)
    into = ("--path", src, "--into", live)
    run = cli("--json", "restore", "--snapshot", 1, *into, "--swap", "--keep-old", "prev")
    assert run.code == 2
    assert "already exists" in run.err
    assert describe(live) == two and _ino(live) == second_ino
    assert describe(out / "prev") == one
    assert _staging_left(out) == []

    # --swap=rename: two renames, same result
    doc = _restore_into(cli, "--snapshot", 1, "--path", src, "--into", live, "--swap=rename")
    assert doc["published"] == "renamed twice"
    assert describe(live) == one
    assert sorted(p.name for p in out.iterdir()) == ["live", "prev"]

    # a path the snapshot does not hold: nothing to publish
    run = cli("restore", "--snapshot", 1, "--path", src / "d3" / "nope", "--into", out / "x")
    assert run.code == 1
    assert "has nothing at" in run.err
    assert sorted(p.name for p in out.iterdir()) == ["live", "prev"]


def _damage_packs(home: Path) -> None:
    """Flip one byte in the middle of the first blob of every pack."""
    conn = sqlite3.connect(home / "backupdb.sqlite")
    try:
        rows = conn.execute(
            "SELECT p.ref, b.offset, b.length FROM packs p JOIN blobs b ON b.pack_id = p.id "
            "WHERE b.offset = (SELECT min(offset) FROM blobs WHERE pack_id = p.id)"
        ).fetchall()
    finally:
        conn.close()
    assert rows
    for ref, offset, length in rows:
        pack = home / "store" / "objects" / ref[:2] / ref
        data = bytearray(pack.read_bytes())
        data[offset + length // 2] ^= 0x01
        pack.write_bytes(bytes(data))


def test_a_failed_restore_publishes_nothing(tmp_path: Path, home: Path, cli) -> None:
    src = tmp_path / "src"
    one, _two = _two_snapshots(cli, src)
    out = tmp_path / "out"
    out.mkdir()
    live = out / "live"
    _restore_into(cli, "--snapshot", 1, "--path", src, "--into", live)
    before = _ino(live)
    _damage_packs(home)

    for swap in ("--swap", "--swap=rename"):
        run = cli("--json", "restore", "--snapshot", 2, "--path", src, "--into", live, swap)
        assert run.code == 1
        assert run.json["published"] is None
        assert run.json["errors"]
        assert all(e["path"].startswith(str(src)) for e in run.json["errors"])
        assert "nothing was published" in run.err
        assert describe(live) == one and _ino(live) == before
        assert _staging_left(out) == []

    # DIR absent: a failed restore does not create it
    run = cli("--json", "restore", "--snapshot", 2, "--path", src, "--into", out / "fresh")
    assert run.code == 1 and run.json["published"] is None
    assert sorted(p.name for p in out.iterdir()) == ["live"]


# --- --link-dest: a nightly mirror sharing unchanged files ---------------------------------------


def test_link_dest_shares_unchanged_files_with_the_previous_mirror(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    for i in range(10):
        _write(src / "docs" / f"doc{i}.txt", os.urandom(2000 + i))
        _stamp(src / "docs" / f"doc{i}.txt", 1)
    _write(src / "edited.bin", os.urandom(9000))
    _write(src / "chmodded.sh", "#!/bin/sh\n")
    _write(src / "touched.txt", "same bytes, new mtime\n")
    _write(src / "moved.txt", "moves to another name\n")
    _write(src / "tampered.txt", "the mirror copy of me gets damaged\n")
    for name in ("edited.bin", "chmodded.sh", "touched.txt", "moved.txt", "tampered.txt"):
        _stamp(src / name, 1)
    _age(src)
    nights = [None]  # nights[n]: describe(src) after night n
    backed_up(cli, src)
    nights.append(describe(src))

    mirrors = tmp_path / "mirrors"
    mirrors.mkdir()
    m1 = mirrors / "night-1"
    doc = _restore_into(cli, "--snapshot", 1, "--path", src, "--into", m1)
    assert doc["linked"] == 0
    assert describe(m1) == nights[1]

    # night 2: one edit, a chmod, a touch, a rename, a new file; nine documents unchanged
    with open(src / "edited.bin", "r+b") as f:
        f.write(b"EDIT")
    _stamp(src / "edited.bin", 2)
    (src / "chmodded.sh").chmod(0o755)
    _stamp(src / "touched.txt", 2)
    (src / "moved.txt").rename(src / "docs" / "moved-here.txt")
    (src / "docs" / "doc9.txt").unlink()
    _write(src / "docs" / "new.txt", "new on night 2\n")
    _stamp(src / "docs" / "new.txt", 2)
    _age(src)
    backed_up(cli, src)
    nights.append(describe(src))

    # The mirror's copy of tampered.txt is damaged in place, keeping size and mtime: only the
    # content hash can tell, and it must not be linked.
    tampered = m1 / "tampered.txt"
    st = os.stat(tampered)
    tampered.write_bytes(tampered.read_bytes().upper())
    os.utime(tampered, ns=(st.st_atime_ns, st.st_mtime_ns))

    m2 = mirrors / "night-2"
    doc = _restore_into(cli, "--snapshot", 2, "--path", src, "--into", m2, "--link-dest", m1)
    unchanged = [f"docs/doc{i}.txt" for i in range(9)]
    assert doc["linked"] == len(unchanged)
    assert doc["files"] == sum(1 for v in nights[2].values() if v[0] == "f")
    for rel in unchanged:
        assert _ino(m2 / rel) == _ino(m1 / rel), rel
        assert os.stat(m2 / rel).st_nlink == 2
    for rel in ("edited.bin", "chmodded.sh", "touched.txt", "tampered.txt"):
        assert _ino(m2 / rel) != _ino(m1 / rel), rel
        assert os.stat(m2 / rel).st_nlink == 1
    assert os.stat(m2 / "docs" / "moved-here.txt").st_nlink == 1
    assert _flat(describe(m2)) == _flat(nights[2])
    assert (m2 / "tampered.txt").read_bytes() == (src / "tampered.txt").read_bytes()

    # night 3: another edit; the nine documents now live in three mirrors under one inode
    (src / "docs" / "doc0.txt").write_bytes(b"rewritten on night 3\n")
    _stamp(src / "docs" / "doc0.txt", 3)
    _age(src)
    backed_up(cli, src)
    nights.append(describe(src))
    m3 = mirrors / "night-3"
    doc = _restore_into(cli, "--snapshot", 3, "--path", src, "--into", m3, "--link-dest", m2)
    # all of night 2's files but doc0 are linked
    assert doc["linked"] == sum(1 for v in nights[2].values() if v[0] == "f") - 1
    for rel in unchanged[1:]:
        assert _ino(m3 / rel) == _ino(m1 / rel), rel
        assert os.stat(m3 / rel).st_nlink == 3
    assert _ino(m3 / "docs" / "doc0.txt") != _ino(m2 / "docs" / "doc0.txt")
    assert _ino(m3 / "edited.bin") == _ino(m2 / "edited.bin")
    assert _flat(describe(m3)) == _flat(nights[3])
    # the earlier mirrors are as they were (m1 but for the damage done to it above)
    assert _flat(describe(m2)) == _flat(nights[2])
    damaged = _flat(describe(m1))
    expected = _flat(nights[1])
    assert damaged.pop(b"tampered.txt") != expected.pop(b"tampered.txt")
    assert damaged == expected
    assert _staging_left(mirrors) == []


# --- --at and diff over six nights ---------------------------------------------------------------


def test_restore_at_each_of_six_nights_and_diff_reports_what_changed(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    s = str(src)
    nights: list[dict[bytes, tuple]] = []
    moments: list[str] = []
    diffs: list[set[tuple[str, str]]] = []

    def night_done(expected: set[tuple[str, str]]) -> None:
        _age(src)
        backed_up(cli, src)
        nights.append(describe(src))
        diffs.append({(f"{s}/{p}" if p else s, m) for p, m in expected})
        time.sleep(0.01)
        moments.append(datetime.now().astimezone().isoformat())  # after this night's snapshot
        time.sleep(0.01)

    # night 1
    for name, text in [("a.txt", "alpha\n"), ("b.txt", "bravo\n"), ("t", "a file for now\n")]:
        _write(src / name, text)
        _stamp(src / name, 1)
    _write(src / "m.sh", "#!/bin/sh\n")
    _stamp(src / "m.sh", 1)
    for name in ("x", "y"):
        _write(src / "dir1" / name, f"{name} in dir1\n")
        _stamp(src / "dir1" / name, 1)
    _write(src / "dir2" / "f", "in dir2\n")
    _stamp(src / "dir2" / "f", 1)
    os.symlink("a.txt", src / "link")
    night_done(set())

    # night 2: a rename, an edit, an addition
    (src / "a.txt").rename(src / "a2.txt")
    _write(src / "b.txt", "bravo, edited\n")
    _stamp(src / "b.txt", 2)
    _write(src / "c.txt", "charlie " * 100 + "\n")
    _stamp(src / "c.txt", 2)
    night_done({("a.txt", "-"), ("a2.txt", "+"), ("b.txt", "M"), ("c.txt", "+")})

    # night 3: a directory deleted, a chmod, a symlink retargeted
    shutil.rmtree(src / "dir1")
    (src / "m.sh").chmod(0o755)
    (src / "link").unlink()
    os.symlink("a2.txt", src / "link")
    night_done({("dir1", "-"), ("dir1/x", "-"), ("dir1/y", "-"), ("m.sh", "U"), ("link", "M")})

    # night 4: a file becomes a directory, a directory is renamed, an mtime-only change
    (src / "t").unlink()
    _write(src / "t" / "inner.txt", "now t is a directory\n")
    _stamp(src / "t" / "inner.txt", 4)
    (src / "dir2").rename(src / "dir3")
    _stamp(src / "b.txt", 4)
    night_done(
        {
            ("t", "T"),
            ("t/inner.txt", "+"),
            ("dir2", "-"),
            ("dir2/f", "-"),
            ("dir3", "+"),
            ("dir3/f", "+"),
            ("b.txt", "U"),
        }
    )

    # night 5: a delete, a directory recreated under an old name, a truncation
    (src / "a2.txt").unlink()
    _write(src / "dir1" / "z", "dir1 is back\n")
    _stamp(src / "dir1" / "z", 5)
    with open(src / "c.txt", "r+b") as f:
        f.truncate(10)
    _stamp(src / "c.txt", 5)
    night_done({("a2.txt", "-"), ("dir1", "+"), ("dir1/z", "+"), ("c.txt", "M")})

    # night 6: nothing
    night_done(set())

    for n in range(2, len(nights) + 1):
        run = cli("--json", "diff", n - 1, n)
        assert run.code == 0, run.err
        changes = {(c["path"], c["change"]) for c in run.json["changes"]}
        assert changes == diffs[n - 1], f"diff {n - 1} {n}"
        assert len(run.json["changes"]) == len(changes)
        assert run.json["counts"] == {m: sum(1 for _p, c in changes if c == m) for m in "+-MTU"}

    for n, (moment, expected) in enumerate(zip(moments, nights, strict=True), start=1):
        target = tmp_path / f"at-{n}"
        run = cli("--json", "restore", "--at", moment, "--path", src, "--into", target)
        assert run.code == 0, run.err
        assert run.json["snapshot_id"] == n
        assert describe(target) == expected, f"night {n}"


def test_exchange_unsupported_is_reported_not_faked(tmp_path: Path, cli, monkeypatch) -> None:
    """Where RENAME_EXCHANGE fails, --swap says so and publishes nothing; --swap=rename works."""
    from deltagrid.restore import mirror

    src = tmp_path / "src"
    one, two = _two_snapshots(cli, src)
    live = tmp_path / "live"
    _restore_into(cli, "--snapshot", 1, "--path", src, "--into", live)

    def unsupported(_a: Path, _b: Path) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(mirror, "exchange", unsupported)
    run = cli("restore", "--snapshot", 2, "--path", src, "--into", live, "--swap")
    assert run.code == 1
    assert "--swap=rename" in run.err
    assert describe(live) == one
    assert _staging_left(tmp_path) == []
    doc = _restore_into(cli, "--snapshot", 2, "--path", src, "--into", live, "--swap=rename")
    assert doc["published"] == "renamed twice"
    assert describe(live) == two


@pytest.mark.parametrize("swap", ["--swap", "--swap=rename"])
@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_swap_replaces_a_dir_that_is_a_symlink_or_a_file_and_not_what_it_points_to(
    tmp_path: Path, cli, kind: str, swap: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("restored\n")
    os.utime(src / "f.txt", ns=(OLD, OLD))
    backed_up(cli, src)
    expected = describe(src)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not replaced\n")
    before = describe(elsewhere)
    live = tmp_path / "live"
    if kind == "symlink":
        live.symlink_to(elsewhere)
    else:
        live.write_text("a file where the tree goes\n")

    doc = _restore_into(cli, "--path", src, "--into", live, swap)
    assert doc["published"] == ("exchanged" if swap == "--swap" else "renamed twice")
    assert not live.is_symlink() and describe(live) == expected
    assert describe(elsewhere) == before
    assert _staging_left(tmp_path) == []
