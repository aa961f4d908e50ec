"""`deltagrid restore [--snapshot ID | --at TIME] [--path P]... TARGET`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from deltagrid.errors import EXIT_ERROR, EXIT_OK
from deltagrid.home import Home, reading
from deltagrid.output import Output, human_bytes
from restore.resolve import resolve
from restore.restore import Restorer


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("restore", parents=[common], help="restore a snapshot under TARGET")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--snapshot", type=int, metavar="ID")
    which.add_argument("--at", metavar="TIME", help="last snapshot at or before TIME (ISO, or 3d)")
    p.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="P",
        help="restore only this absolute path and what is below it (repeatable)",
    )
    p.add_argument("target", type=Path, metavar="TARGET")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    prefixes = [os.path.abspath(os.fsencode(p)) for p in args.path]
    with reading(home) as (conn, store, published):
        snap = resolve(conn, published, args.snapshot, args.at)
        with out.bar(desc="restore", unit="B", unit_scale=True) as bar:
            result = Restorer(conn, store, args.target, on_progress=bar.update).run(
                snap.id, prefixes
            )
    for path, message in result.errors:
        out.warn(f"cannot restore {os.fsdecode(path)}: {message}")
    out.line(
        f"restored snapshot {snap.id} to {args.target}: {result.files} files "
        f"({human_bytes(result.size)}), {result.hardlinks} hard links, {result.dirs} dirs, "
        f"{result.symlinks} symlinks, {len(result.errors)} errors"
    )
    out.document(
        {
            "snapshot_id": snap.id,
            "target": str(args.target),
            "files": result.files,
            "bytes": result.size,
            "hardlinks": result.hardlinks,
            "dirs": result.dirs,
            "symlinks": result.symlinks,
            "errors": [{"path": os.fsdecode(p), "error": m} for p, m in result.errors],
        }
    )
    return EXIT_ERROR if result.errors else EXIT_OK
