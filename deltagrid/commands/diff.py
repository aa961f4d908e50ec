"""`deltagrid diff SNAP_A SNAP_B`: what was added, deleted or changed between two snapshots.

Marks, as restic prints them: `+` added, `-` deleted, `M` content changed, `T` type changed,
`U` only metadata (mode, owner, times, extended attributes or ACLs) changed.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from deltagrid.backupdb import queries
from deltagrid.commands import whole
from deltagrid.floor.units import escaped
from deltagrid.home import Home, reading
from deltagrid.output import Output
from deltagrid.restore.resolve import resolve


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("diff", parents=[common], help="what changed between snapshots")
    p.add_argument("a", type=whole(1), metavar="SNAP_A", help="the older snapshot's id")
    p.add_argument("b", type=whole(1), metavar="SNAP_B", help="the newer snapshot's id")
    p.set_defaults(run=run)


_SHOWN = (
    "kind",
    "mode",
    "uid",
    "gid",
    "size",
    "mtime_ns",
    "target",
    "rdev",
    "content_hash",
    "xattrs",
)


def mark(old: Any, new: Any) -> str | None:
    """The change mark, or None when the two versions describe the same entry (a re-read)."""
    if old is None:
        return "+"
    if new is None:
        return "-"
    if old.kind != new.kind:
        return "T"
    if (old.content_hash, old.target, old.extents) != (new.content_hash, new.target, new.extents):
        return "M"  # the bytes, the link, or where a sparse file's holes lie
    if all(getattr(old, f) == getattr(new, f) for f in _SHOWN):
        return None
    return "U"


def changes(conn: Any, a: int, b: int) -> list[tuple[bytes, str]]:
    """(path, mark) of every entry that differs between snapshots a and b, by path."""
    gone = queries.only_in(conn, a, b)
    came = queries.only_in(conn, b, a)
    found = []
    for path in sorted(gone.keys() | came.keys()):
        m = mark(gone.get(path), came.get(path))
        if m is not None:
            found.append((path, m))
    return found


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    with reading(home) as (conn, _store, published):
        a = resolve(queries.driver(conn), published, args.a).id
        b = resolve(queries.driver(conn), published, args.b).id
        found = changes(conn, a, b)
    docs = []
    for path, m in found:
        docs.append({"path": os.fsdecode(path), "change": m})
        out.line(f"{m} {escaped(path)}")
    counts = {m: sum(1 for c in docs if c["change"] == m) for m in "+-MTU"}
    out.line(
        f"{counts['+']} added, {counts['-']} deleted, {counts['M']} changed, "
        f"{counts['T']} changed type, {counts['U']} metadata only"
    )
    out.document({"a": a, "b": b, "changes": docs, "counts": counts})
    return 0
