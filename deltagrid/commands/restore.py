"""`deltagrid restore [--snapshot ID | --at TIME] [--path P]... TARGET`, or, to publish one
subtree atomically, `restore [--path P] --into DIR [--swap[=rename]] [--keep-old NAME]`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from deltagrid.commands import whole
from deltagrid.floor.errors import EXIT_ERROR, EXIT_OK, UsageError
from deltagrid.floor.units import human_bytes, path_text, plural
from deltagrid.home import Home, plain_reading
from deltagrid.output import Output
from deltagrid.restore.mirror import publish, remove_tree, staging_for
from deltagrid.restore.resolve import require_paths, resolve
from deltagrid.restore.restore import Restorer, RestoreResult


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("restore", parents=[common], help="restore a snapshot under TARGET")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--snapshot", type=whole(1), metavar="ID")
    which.add_argument("--at", metavar="TIME", help="last snapshot at or before TIME (ISO, or 3d)")
    p.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="P",
        help="restore only this absolute path and what is below it (repeatable)",
    )
    p.add_argument(
        "--into",
        type=Path,
        metavar="DIR",
        help="restore the --path subtree as DIR itself, published atomically",
    )
    p.add_argument(
        "--swap",
        nargs="?",
        const="exchange",
        choices=["exchange", "rename"],
        help="with --into: replace an existing DIR (atomic exchange; 'rename': two "
        "renames, for filesystems without RENAME_EXCHANGE)",
    )
    p.add_argument("--keep-old", metavar="NAME", help="with --swap: keep the old tree as NAME")
    p.add_argument(
        "--link-dest",
        type=Path,
        metavar="PREV_DIR",
        help="hard-link files identical to those in PREV_DIR instead of writing them",
    )
    p.add_argument(
        "target",
        type=Path,
        nargs="?",
        metavar="TARGET",
        help="directory to restore under: each path goes to TARGET/its/absolute/path",
    )
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    if args.into is None:
        if args.target is None:
            raise UsageError("restore needs TARGET or --into DIR (see 'deltagrid --help')")
        if args.swap or args.keep_old:
            raise UsageError("--swap and --keep-old go with --into")
    else:
        if args.target is not None:
            raise UsageError("give either TARGET or --into DIR, not both")
        if len(args.path) > 1:
            raise UsageError("--into publishes one subtree: give at most one --path")
        if args.keep_old and not args.swap:
            raise UsageError("--keep-old goes with --swap")
    if args.link_dest is not None and not args.link_dest.is_dir():
        raise UsageError(f"--link-dest {args.link_dest} is not a directory")


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    _check(args)
    prefixes = [os.path.abspath(os.fsencode(p)) for p in args.path]
    strip = (prefixes[0] if prefixes else b"/") if args.into else None
    if args.into is not None and os.path.lexists(args.into) and not args.swap:
        raise UsageError(f"{args.into} exists: pass --swap to replace it atomically")
    target = staging_for(args.into) if args.into is not None else args.target
    how = None
    try:
        with plain_reading(home) as (conn, store, published):
            snap = resolve(conn, published, args.snapshot, args.at)
            require_paths(conn, snap.id, prefixes)
            with out.bar(desc="restore", unit="B", unit_scale=True) as bar:
                restorer = Restorer(
                    conn,
                    store,
                    target,
                    on_progress=bar.update,
                    strip=strip,
                    link_dest=args.link_dest,
                    on_total=lambda total: setattr(bar, "total", total),
                )
                result = restorer.run(snap.id, prefixes)
        if args.into is not None and not result.errors:
            if result.files + result.dirs + result.symlinks == 0:
                raise UsageError(f"snapshot {snap.id} has nothing at {args.path[0]}")
            how = publish(target, args.into, args.swap, args.keep_old)
    finally:
        if args.into is not None and how is None and target.exists():
            remove_tree(target)  # not published: the staging tree goes, DIR is untouched
    report(out, snap.id, args.into or args.target, result, how, args.into is not None)
    return EXIT_ERROR if result.errors else EXIT_OK


def report(
    out: Output, snapshot_id: int, where: Path, result: RestoreResult, how: str | None, into: bool
) -> None:
    for path, message in result.errors:
        out.warn(f"cannot restore {path_text(path)}: {message}")
    if into and how is None:
        out.warn(f"nothing was published: {where} is as it was")
    out.info(
        f"restored snapshot {snapshot_id} to {where}: {plural(result.files, 'file')} "
        f"({human_bytes(result.size)}), {plural(result.hardlinks, 'hard link')}, "
        f"{plural(result.dirs, 'dir')}, {plural(result.symlinks, 'symlink')}, "
        f"{plural(len(result.errors), 'error')}"
        + (f", {result.linked} linked from --link-dest" if result.linked else "")
        + (f"; published ({how})" if how else "")
    )
    out.document(
        {
            "snapshot_id": snapshot_id,
            "target": str(where),
            "files": result.files,
            "bytes": result.size,
            "hardlinks": result.hardlinks,
            "linked": result.linked,
            "dirs": result.dirs,
            "symlinks": result.symlinks,
            "published": how,
            "errors": [{"path": os.fsdecode(p), "error": m} for p, m in result.errors],
        }
    )
