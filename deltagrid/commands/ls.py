"""`deltagrid ls [SNAPSHOT] [PATH]`: the entries of a snapshot (default: the latest).

In text, names are escaped as `ls -b` escapes them (a newline in a name must not look like two
entries); --json gives them by the surrogate-escape rule of output.py."""

from __future__ import annotations

import argparse
import os
import stat

from deltagrid.backupdb.entries import TYPE_BITS
from deltagrid.backupdb.restore_queries import versions_at
from deltagrid.floor.errors import UsageError
from deltagrid.floor.units import escaped, iso, path_text
from deltagrid.home import Home, plain_reading
from deltagrid.output import Output
from deltagrid.restore.resolve import resolve


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ls", parents=[common], help="list the entries of a snapshot")
    p.add_argument(
        "args",
        nargs="*",
        metavar="[SNAPSHOT] [PATH]",
        help="a snapshot id or 'latest' (default), then a path to list below (default: all); "
        "names are printed with control characters escaped, as `ls -b` does",
    )
    p.set_defaults(run=run)


def split_args(args: list[str]) -> tuple[int | None, bytes | None]:
    snapshot_id: int | None = None
    path: bytes | None = None
    rest = list(args)
    if rest and (rest[0].isdigit() or rest[0] == "latest"):
        first = rest.pop(0)
        snapshot_id = None if first == "latest" else int(first)
    if rest:
        path = os.path.abspath(os.fsencode(rest.pop(0)))
    if rest:
        raise UsageError("ls takes at most a snapshot and a path")
    return snapshot_id, path


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    snapshot_id, path = split_args(args.args)
    with plain_reading(home) as (conn, _store, published):
        snap = resolve(conn, published, snapshot_id)
        entries = list(versions_at(conn, snap.id, [path] if path else []))
    if path and not entries:
        hint = "" if args.args[-1].startswith("/") else " (a SNAPSHOT is a number or 'latest')"
        raise UsageError(f"snapshot {snap.id} has nothing at {path_text(path)}{hint}")
    docs = []
    for e in entries:
        mode = stat.filemode(TYPE_BITS.get(e.kind, 0) | e.mode)  # ? for a kind unknown here
        name = os.fsdecode(e.path)
        shown = escaped(e.path) + (f" -> {escaped(e.target or b'')}" if e.kind == "l" else "")
        size = str(e.size) if e.rdev is None else _device(e.rdev)
        out.line(f"{mode} {e.uid:>5} {e.gid:>5} {size:>12} {iso(e.mtime_ns)} {shown}")
        doc = {
            "path": name,
            "type": e.kind,
            "mode": e.mode,
            "uid": e.uid,
            "gid": e.gid,
            "size": e.size,
            "mtime_ns": e.mtime_ns,
        }
        if e.kind == "l":
            doc["target"] = os.fsdecode(e.target or b"")
        if e.rdev is not None:
            doc["rdev"] = e.rdev
        if e.content_hash is not None:
            doc["hash"] = e.content_hash.hex()
        docs.append(doc)
    out.document({"snapshot_id": snap.id, "entries": docs})
    return 0


def _device(rdev: int) -> str:
    """`major, minor`, as ls -l shows a device node (the raw number if it is no device's)."""
    try:
        return f"{os.major(rdev)}, {os.minor(rdev)}"
    except (OverflowError, ValueError):
        return str(rdev)
