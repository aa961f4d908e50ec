"""`deltagrid restore [--snapshot ID | --at TIME] [--path P]... [--overwrite MODE] [--delete]
TARGET`, or, to publish one subtree atomically, `restore [--path P] --into DIR [--swap[=rename]]
[--keep-old NAME]`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from deltagrid.backupdb.damage import Damage
from deltagrid.commands import whole
from deltagrid.floor.errors import EXIT_ERROR, EXIT_OK, UsageError
from deltagrid.floor.units import human_bytes, path_text, plural
from deltagrid.home import Home, plain_reading
from deltagrid.output import Output
from deltagrid.restore.damage import locate, record
from deltagrid.restore.mirror import publish, remove_tree, staging_for
from deltagrid.restore.policy import DEFAULT, MODES
from deltagrid.restore.pruned import pruned
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
    add_policy(p)
    p.add_argument(
        "target",
        type=Path,
        nargs="?",
        metavar="TARGET",
        help="directory to restore under: each path goes to TARGET/its/absolute/path",
    )
    p.set_defaults(run=run)


def add_policy(p: argparse.ArgumentParser) -> None:
    """--overwrite and --delete: what happens to what TARGET already holds."""
    p.add_argument(
        "--overwrite",
        choices=MODES,
        metavar="MODE",
        help="what to do with an entry already in TARGET that differs from the snapshot: "
        "'always' replace it; 'if-changed' the same, but trust an equal size and mtime "
        "instead of hashing; 'if-newer' replace it only if the snapshot's is newer (mtime); "
        f"'never' keep it (default: {DEFAULT}, so a restore destroys nothing unless asked). "
        "Entries identical in size, mtime and hash are never written again, in every mode: "
        "rerun a killed restore and it resumes",
    )
    p.add_argument(
        "--delete",
        action="store_true",
        help="remove what TARGET holds under the restored directories that the snapshot does "
        "not have (never outside them, never through a symlink)",
    )


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
        if args.overwrite is not None or args.delete:
            raise UsageError(
                "--into publishes a fresh tree in one step: --overwrite and --delete are for TARGET"
            )
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
            began = store.read_root()
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
                    overwrite=args.overwrite or DEFAULT,
                    delete=args.delete,
                )
                out.so_far = lambda: _restored_so_far(snap.id, restorer.result)
                result = restorer.run(snap.id, prefixes)
            if result.missing and (why := pruned(store, began, home.state, "restore")):
                raise why  # not damage: nothing recorded, nothing published
            found = locate(conn, store, result.damaged) if result.damaged else []
        if args.into is not None and not result.errors:
            if result.files + result.dirs + result.symlinks + result.specials == 0:
                raise UsageError(f"snapshot {snap.id} has nothing at {args.path[0]}")
            how = publish(target, args.into, args.swap, args.keep_old)
    finally:
        if args.into is not None and how is None and target.exists():
            remove_tree(target)  # not published: the staging tree goes, DIR is untouched
    tail, fields = "", {}
    if args.into is None:
        mode = args.overwrite or DEFAULT
        tail = report_policy(out, mode, args.delete, result)
        fields = policy_fields(mode, args.delete, result)
    report(out, snap.id, args.into or args.target, result, how, args.into is not None, tail, fields)
    damage_note(out, record(home.db_path, found), found)
    return EXIT_ERROR if result.errors else EXIT_OK


def damage_note(out: Output, recorded: tuple[int, str | None], found: list[Damage]) -> None:
    """Say what damage the restore found and recorded (a reader: it may not be able to)."""
    blobs = len({d.blob_id for d in found})
    if recorded[1]:
        out.warn(recorded[1])
    elif blobs:
        out.warn(
            f"{plural(blobs, 'damaged blob')} found and recorded: backups store those files again; "
            "'deltagrid repair' re-uploads what the sources still hold"
        )


def _restored_so_far(snapshot_id: int, result: RestoreResult) -> dict[str, object]:
    """An interrupted restore's figures; its temporaries are gone, so a rerun starts over."""
    return {
        "snapshot_id": snapshot_id,
        "files": result.files,
        "summary": f"{result.files} files ({human_bytes(result.size)}) restored before it stopped",
    }


def report(
    out: Output,
    snapshot_id: int,
    where: Path,
    result: RestoreResult,
    how: str | None,
    into: bool,
    tail: str = "",
    fields: dict[str, Any] | None = None,
) -> None:
    for path, message in result.errors:
        out.warn(f"cannot restore {path_text(path)}: {message}")
    for path, message in result.warnings:
        out.warn(f"{path_text(path)}: {message}")
    if result.warnings:
        out.warn(
            f"{len(result.warnings)} attributes could not be restored (the file system or "
            "this user's rights refused them)"
        )
    if result.setid_dropped:
        out.warn(
            f"{result.setid_dropped} set-user-ID/set-group-ID bits dropped: their owner or "
            "group could not be restored (restore as root to keep them)"
        )
    if into and how is None:
        out.warn(f"nothing was published: {where} is as it was")
    out.info(
        f"restored snapshot {snapshot_id} to {where}: {plural(result.files, 'file')} "
        f"({human_bytes(result.size)}), {plural(result.hardlinks, 'hard link')}, "
        f"{plural(result.dirs, 'dir')}, {plural(result.symlinks, 'symlink')}, "
        + (
            f"{plural(result.specials, 'FIFO or device node', 'FIFOs and device nodes')}, "
            if result.specials
            else ""
        )
        + f"{plural(len(result.errors), 'error')}"
        + (f", {result.linked} linked from --link-dest" if result.linked else "")
        + (f"; published ({how})" if how else "")
        + tail
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
            "specials": result.specials,
            "published": how,
            "errors": [{"path": os.fsdecode(p), "error": m} for p, m in result.errors],
            "warnings": [{"path": os.fsdecode(p), "warning": m} for p, m in result.warnings],
            "setid_dropped": result.setid_dropped,
            **(fields or {}),
        }
    )


def report_policy(out: Output, mode: str, delete: bool, result: RestoreResult) -> str:
    """Name what the run kept and deleted in TARGET; the words for the summary line."""
    for path in result.kept:
        out.detail(f"kept {os.fsdecode(path)}")
    for path in result.deleted:
        out.detail(f"deleted {os.fsdecode(path)}")
    if result.kept:
        below = f" ({result.blocked} entries below them not restored)" if result.blocked else ""
        out.warn(
            f"kept {len(result.kept)} entries of TARGET that differ from the snapshot{below} "
            f"(--overwrite {mode}; -v names them)"
        )
    return (
        f"; wrote {human_bytes(result.written)}, {result.same} files "
        f"({human_bytes(result.skipped)}) already in place, {len(result.kept)} kept"
        + (f", {len(result.deleted)} deleted" if delete else "")
    )


def policy_fields(mode: str, delete: bool, result: RestoreResult) -> dict[str, Any]:
    """The --json fields of the target policy: what was written, skipped, kept, deleted."""
    return {
        "overwrite": mode,
        "delete": delete,
        "bytes_written": result.written,
        "bytes_skipped": result.skipped,
        "files_skipped": result.same,
        "kept": [os.fsdecode(p) for p in result.kept],
        "not_restored_below_kept": result.blocked,
        "deleted": [os.fsdecode(p) for p in result.deleted],
    }
