"""The scanner: why each entry is queued, what excludes leave out, mounts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Run, describe, dg, restored_root

OLD_NS = 1_600_000_000 * 10**9  # an mtime well in the past: the uploader does not flag a re-read


def settle(*files: Path) -> None:
    """Written long ago, as far as mtimes go (else a file is re-read by the next scan)."""
    for f in files:
        os.utime(f, ns=(OLD_NS, OLD_NS), follow_symlinks=False)


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    settle(path)
    return path


def queued(run: Run) -> dict[str, int]:
    assert run.code == 0, run.err
    doc = run.json.get("scan", run.json)
    return {**doc["queued"], "unchanged": doc["unchanged"]}


def reasons(new=0, changed=0, meta=0, deleted=0, unchanged=0) -> dict[str, int]:
    return {
        "new": new,
        "changed": changed,
        "meta": meta,
        "deleted": deleted,
        "unchanged": unchanged,
    }


def listed(cli, src: Path, *snapshot: str) -> set[str]:
    """Paths in a snapshot (default: latest), relative to `src` ('' is src itself)."""
    run = cli("--json", "ls", *snapshot)
    assert run.code == 0, run.err
    base = str(src)
    return {e["path"][len(base) :].lstrip("/") for e in run.json["entries"]}


def assert_restores_exactly(cli, src: Path, target: Path, expected: dict | None = None) -> None:
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == (describe(src) if expected is None else expected)


def test_scan_queues_each_entry_with_its_reason(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    for name in ("keep.txt", "edit.txt", "chmod.txt", "gone.txt", "sub/inner.txt"):
        write(src / name, f"{name}\n")
    (src / "link").symlink_to("keep.txt")
    assert cli("init").code == 0
    # Everything is new: the root, 2 directories' worth of entries, the symlink.
    assert queued(cli("--json", "scan", src)) == reasons(new=8)
    assert cli("upload").code == 0
    assert queued(cli("--json", "scan", src)) == reasons(unchanged=8)

    write(src / "edit.txt", "edited\n")  # content: changed
    os.chmod(src / "chmod.txt", 0o600)  # mode only: meta
    (src / "gone.txt").unlink()  # deleted
    write(src / "new.txt", "new\n")  # new
    (src / "link").unlink()
    (src / "link").symlink_to("edit.txt")  # another target: changed
    os.utime(src / "sub", ns=(OLD_NS, OLD_NS))  # a directory's times: meta
    # The root's own mtime moved with the entries added and removed: meta too.
    second = cli("--json", "scan", src)
    assert queued(second) == reasons(new=1, changed=2, meta=3, deleted=1, unchanged=2)
    upload = cli("--json", "upload")
    assert upload.code == 0, upload.err
    assert upload.json["counts"]["deleted"] == 1
    assert listed(cli, src) == {
        "",
        "chmod.txt",
        "edit.txt",
        "keep.txt",
        "link",
        "new.txt",
        "sub",
        "sub/inner.txt",
    }
    assert_restores_exactly(cli, src, tmp_path / "r2")

    shutil.rmtree(src / "sub")
    write(src / "sub", "a file where a directory was\n")  # changed; what was below: deleted
    (src / "keep.txt").unlink()
    write(src / "keep.txt" / "x.txt", "a directory where a file was\n")  # changed, and a new child
    (src / "link").unlink()  # deleted
    third = cli("--json", "scan", src)
    assert queued(third) == reasons(new=1, changed=2, meta=1, deleted=2, unchanged=3)
    assert cli("upload").code == 0
    assert listed(cli, src) == {
        "",
        "chmod.txt",
        "edit.txt",
        "keep.txt",
        "keep.txt/x.txt",
        "new.txt",
        "sub",
    }
    assert_restores_exactly(cli, src, tmp_path / "r3")


def test_chmod_only_is_meta_and_uploads_no_data(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    write(src / "big.bin", os.urandom(300_000))
    write(src / "small.txt", "small\n")
    assert cli("backup", src).code == 0

    os.chmod(src / "big.bin", 0o600)
    os.chmod(src / "small.txt", 0o640)
    scan = cli("--json", "scan", src)
    assert queued(scan) == reasons(meta=2, unchanged=1)
    upload = cli("--json", "upload")
    assert upload.code == 0, upload.err
    assert upload.json["bytes_uploaded"] == 0
    assert upload.json["packs"] == 0
    modes = {e["path"]: e["mode"] for e in cli("--json", "ls").json["entries"]}
    assert modes[str(src / "big.bin")] == 0o600
    assert modes[str(src / "small.txt")] == 0o640
    assert_restores_exactly(cli, src, tmp_path / "r")


def test_a_rewrite_that_puts_the_mtime_back_is_still_changed(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    f = write(src / "f.bin", b"a" * 1000)
    assert cli("backup", src).code == 0
    before = os.stat(f)
    f.write_bytes(b"b" * 1000)  # same size...
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...same mtime: only ctime moved
    assert queued(cli("--json", "scan", src)) == reasons(changed=1, unchanged=1)
    assert cli("upload").code == 0
    assert_restores_exactly(cli, src, tmp_path / "r")

    # The same with a chmod: queued as `meta`, yet the new bytes are what gets stored.
    before = os.stat(f)
    f.write_bytes(b"c" * 1000)
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.chmod(f, 0o600)
    assert queued(cli("--json", "scan", src)) == reasons(meta=1, unchanged=1)
    assert cli("upload").code == 0
    assert_restores_exactly(cli, src, tmp_path / "r2")


def test_checksum_queues_every_file_but_unchanged_content_uploads_nothing(
    tmp_path: Path, cli
) -> None:
    src = tmp_path / "src"
    sizes = {"a.bin": 0, "b.bin": 1000, "c.bin": 70_000, "sub/d.bin": 500_000, "sub/e.bin": 5}
    for name, size in sizes.items():
        write(src / name, os.urandom(size))
    (src / "link").symlink_to("a.bin")
    assert cli("backup", src).code == 0
    assert queued(cli("--json", "scan", src)) == reasons(unchanged=8)

    scan = cli("--json", "scan", "--checksum", src)
    # root, sub and the link are looked at again too (their attributes), as metadata
    assert queued(scan) == reasons(changed=5, meta=3)
    upload = cli("--json", "upload")
    assert upload.code == 0, upload.err
    assert upload.json["bytes_read"] == sum(sizes.values())
    assert upload.json["bytes_uploaded"] == 0
    assert upload.json["packs"] == 0
    assert upload.json["counts"]["unchanged"] == 8
    assert_restores_exactly(cli, src, tmp_path / "r")


def test_excludes_follow_gitignore_rules_and_drop_what_was_backed_up(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    kept = {
        "keep.tmp": "re-included by !keep.tmp",
        "sub/keep.tmp": "!keep.tmp matches at any depth",
        "sub/build": "a file: build/ matches directories only",
        "sub/top-only": "/top-only is anchored at the root",
        "notcache": "not named cache",
        "x/cache.txt": "not named cache either",
        "x/y/z.txt": "plain",
    }
    excluded = {
        "a.tmp": "*.tmp",
        "sub/b.tmp": "*.tmp at any depth",
        "build/out.o": "in a build/ directory",
        "build/keep.tmp": "a negation cannot re-include below an excluded directory",
        "top-only": "/top-only",
        "cache/c1": "**/cache at the root",
        "x/y/cache/c2": "**/cache below",
    }
    for name, text in {**kept, **excluded}.items():
        write(src / name, text + "\n")
    assert cli("backup", src).code == 0
    everything = listed(cli, src)
    assert set(excluded) <= everything

    patterns = tmp_path / "excludes"
    patterns.write_text("# anchored, any depth, negation\n\n/top-only\n**/cache\n!keep.tmp\n")
    run = cli(
        "--json",
        "backup",
        "--exclude",
        "*.tmp",
        "--exclude",
        "build/",
        "--exclude-from",
        patterns,
        src,
    )
    assert run.code == 0, run.err
    dirs = {"", "sub", "x", "x/y"}
    assert listed(cli, src) == dirs | set(kept)
    # Excluded now, backed up before: gone from the new snapshot, with everything below them.
    gone = set(excluded) | {"build", "cache", "x/y/cache"}
    assert run.json["scan"]["queued"]["deleted"] == len(gone)
    assert listed(cli, src, "1") == everything
    expected = {
        k: v for k, v in describe(src).items() if os.fsdecode(k) in (dirs | set(kept)) - {""}
    }
    assert_restores_exactly(cli, src, tmp_path / "r", expected)


def test_a_second_scan_supersedes_the_pending_rows_of_the_first(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", "a1\n")
    write(src / "b.txt", "b1\n")
    assert cli("backup", src).code == 0

    write(src / "a.txt", "a2\n")
    write(src / "c.txt", "c, soon gone\n")
    assert queued(cli("--json", "scan", src)) == reasons(new=1, changed=1, meta=1, unchanged=1)
    write(src / "a.txt", "a3, longer\n")
    (src / "b.txt").unlink()
    (src / "c.txt").unlink()
    write(src / "d.txt", "d\n")
    second = cli("--json", "scan", src)
    assert queued(second) == reasons(new=1, changed=1, meta=1, deleted=1)
    assert cli("--json", "status").json["queue"]["entries"] == 4  # only the second scan's rows

    upload = cli("--json", "upload")
    assert upload.code == 0, upload.err  # c.txt is not looked for: no 'vanished'
    assert upload.json["vanished"] == []
    assert listed(cli, src) == {"", "a.txt", "d.txt"}
    assert_restores_exactly(cli, src, tmp_path / "r")


def test_a_scan_of_another_root_keeps_the_first_ones_rows(tmp_path: Path, cli) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write(one / "a.txt", "a\n")
    write(two / "b.txt", "b\n")
    assert cli("init").code == 0
    assert queued(cli("--json", "scan", one)) == reasons(new=2)
    assert queued(cli("--json", "scan", two)) == reasons(new=2)
    assert cli("--json", "status").json["queue"]["entries"] == 4
    assert cli("upload").code == 0
    assert listed(cli, tmp_path) >= {"one/a.txt", "two/b.txt"}


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$1"', "sh", str(where)],
        capture_output=True,
    )
    return probe.returncode == 0


def test_one_file_system_does_not_descend_into_another_mount(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    write(src / "local.txt", "on the source's filesystem\n")
    (src / "mnt").mkdir()
    if not _can_mount_tmpfs(src / "mnt"):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here")
    # In a private mount namespace: a tmpfs on src/mnt holding one file, one backup with
    # --one-file-system, one without. The mount is gone when the namespace ends.
    script = (
        'mount -t tmpfs tmpfs "$3/mnt" && echo elsewhere > "$3/mnt/inside.txt" && '
        '"$1" -m deltagrid --home "$2" --json backup --one-file-system "$3" > "$4" && '
        '"$1" -m deltagrid --home "$2" --json backup "$3" > "$5"'
    )
    docs = tmp_path / "one.json", tmp_path / "all.json"
    run = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, str(home), str(src), *docs],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    ls1 = dg(home, "--json", "ls", "1")
    assert {e["path"] for e in ls1.json["entries"]} == {
        str(src),
        str(src / "local.txt"),
        str(src / "mnt"),  # the mount point itself is kept, not what is in it
    }
    ls2 = dg(home, "--json", "ls", "2")
    assert str(src / "mnt" / "inside.txt") in {e["path"] for e in ls2.json["entries"]}
