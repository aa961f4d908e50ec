"""The fidelity checker: every way two trees can differ that a restore must not introduce.

`differences(a, b)` compares, entry by entry (the roots included): type, mode, owner (when
asked; by default as root), mtime in ns, the bytes of files, symlink targets, device numbers,
hard-link groups, every extended attribute (ACLs included, as their raw xattrs), and for a
sparse file its allocated size. It returns one line per difference, so a test asserts `== []`
and a failure shows them all.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

SPARSE_SLACK = 32  # 512-byte units: allocated sizes may differ by a few file system blocks
_CHUNK = 1 << 20


def tree(root: Path) -> dict[str, os.stat_result]:
    """Every entry below `root` (and `root` itself, as "."), by relative path, from lstat."""
    found = {".": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            found[os.path.relpath(full, root)] = os.lstat(full)
    return found


def attributes(path: Path) -> dict[str, bytes]:
    """Every extended attribute of `path` (never following a symlink)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk = fa.read(_CHUNK)
            if chunk != fb.read(_CHUNK):
                return False
            if not chunk:
                return True


def _link_groups(entries: dict[str, os.stat_result]) -> dict[str, str]:
    """For each file hard-linked to another in the tree, the first path (sorted) of its group.
    (A link to a file outside the tree, as --link-dest makes, is no group of the tree.)"""
    first: dict[tuple[int, int], str] = {}
    groups = {}
    for rel in sorted(entries):
        st = entries[rel]
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups[rel] = first.setdefault((st.st_dev, st.st_ino), rel)
    size = Counter(groups.values())
    return {rel: group for rel, group in groups.items() if size[group] > 1}


def _entry(
    rel: str, a: Path, b: Path, sa: os.stat_result, sb: os.stat_result, owner: bool
) -> Iterator[str]:
    """The differences of one entry present in both trees."""
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        yield f"{rel}: type {stat.filemode(sa.st_mode)[0]} != {stat.filemode(sb.st_mode)[0]}"
        return
    if not stat.S_ISLNK(sa.st_mode) and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
        yield f"{rel}: mode {stat.S_IMODE(sa.st_mode):o} != {stat.S_IMODE(sb.st_mode):o}"
    if owner and (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        yield f"{rel}: owner {sa.st_uid}:{sa.st_gid} != {sb.st_uid}:{sb.st_gid}"
    if sa.st_mtime_ns != sb.st_mtime_ns:
        yield f"{rel}: mtime {sa.st_mtime_ns} != {sb.st_mtime_ns}"
    if (stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode)) and sa.st_rdev != sb.st_rdev:
        yield f"{rel}: device {sa.st_rdev:#x} != {sb.st_rdev:#x}"
    if stat.S_ISLNK(sa.st_mode) and os.readlink(a) != os.readlink(b):
        yield f"{rel}: target {os.readlink(a)!r} != {os.readlink(b)!r}"
    if stat.S_ISREG(sa.st_mode):
        if sa.st_size != sb.st_size or not same_bytes(a, b):
            yield f"{rel}: content differs ({sa.st_size} and {sb.st_size} bytes)"
        sparse = min(sa.st_blocks, sb.st_blocks) * 512 < max(sa.st_size, sb.st_size)
        if sparse and abs(sa.st_blocks - sb.st_blocks) > SPARSE_SLACK:
            yield f"{rel}: allocated {sa.st_blocks * 512} != {sb.st_blocks * 512} bytes"
    xa, xb = attributes(a), attributes(b)
    for name in sorted(xa.keys() | xb.keys()):
        if xa.get(name) != xb.get(name):
            yield f"{rel}: xattr {name} {xa.get(name)!r} != {xb.get(name)!r}"


def differences(a: Path, b: Path, owner: bool | None = None) -> list[str]:
    """Every difference between the trees at `a` and `b`, one line each; [] when faithful.
    `owner`: compare owners too (default: when running as root)."""
    owner = os.geteuid() == 0 if owner is None else owner
    ta, tb = tree(a), tree(b)
    found = [f"{rel}: only in {a}" for rel in sorted(ta.keys() - tb.keys())]
    found += [f"{rel}: only in {b}" for rel in sorted(tb.keys() - ta.keys())]
    for rel in sorted(ta.keys() & tb.keys()):
        found += _entry(rel, a / rel, b / rel, ta[rel], tb[rel], owner)
    ga, gb = _link_groups(ta), _link_groups(tb)
    for rel in sorted(ga.keys() | gb.keys()):
        if ga.get(rel) != gb.get(rel):
            found.append(f"{rel}: hard-linked with {ga.get(rel)} != {gb.get(rel)}")
    return found
