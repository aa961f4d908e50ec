"""`deltagrid scan [SOURCE...]`: walk the sources and queue what changed (creating the
repository on a fresh home, as `backup` does).

With no SOURCE the `sources` of config.toml are scanned; SOURCE arguments replace them. The
`excludes` of config.toml always apply, and --exclude patterns are added after them (the last
matching pattern decides, so `--exclude '!keep.log'` can re-include a configured `*.log`).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any

from deltagrid.commands.init import ensure
from deltagrid.config import Config
from deltagrid.floor.errors import EXIT_OK, EXIT_UNREADABLE, UsageError
from deltagrid.floor.units import count, human_duration, plural
from deltagrid.home import Home
from deltagrid.output import Output
from deltagrid.scanner.excludes import Excludes
from deltagrid.scanner.scan import REASONS, Scanner, ScanResult, normalise_roots

MARKS = {"new": "+", "changed": "M", "meta": "U", "deleted": "-"}


def add_scan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="directories or files to back up (default: `sources` in config.toml)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="gitignore-style pattern, relative to each source (repeatable; added to the "
        "`excludes` in config.toml)",
    )
    p.add_argument(
        "--exclude-from",
        action="append",
        default=[],
        metavar="FILE",
        help="read exclude patterns from FILE, one a line",
    )
    p.add_argument(
        "--checksum",
        action="store_true",
        help="queue every entry: read and hash all files, read all attributes",
    )
    p.add_argument(
        "--one-file-system",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="do not cross mount points (default: `one_file_system` in config.toml, else no)",
    )
    p.add_argument(
        "--include-pseudo-fs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="walk into proc, sysfs, cgroup... file systems below a source too (default: "
        "`include_pseudo_fs` in config.toml, else no)",
    )


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("scan", parents=[common], help="queue what changed since the last backup")
    add_scan_options(p)
    p.set_defaults(run=run)


@dataclass
class ScanPlan:
    """What a scan walks and skips: the command line over config.toml."""

    roots: list[bytes]
    excludes: Excludes
    one_file_system: bool
    checksum: bool
    own: list[bytes]  # the home and a file:// store: never backed up
    include_pseudo_fs: bool = False

    def options(self) -> dict[str, Any]:
        """Scanner's keyword arguments for this plan (its roots go to Scanner.run), in this
        process or in the one that scans beside a first backup's upload."""
        return {
            "excludes": self.excludes,
            "checksum": self.checksum,
            "one_file_system": self.one_file_system,
            "own": self.own,
            "include_pseudo_fs": self.include_pseudo_fs,
        }


def scan_plan(args: argparse.Namespace, home: Home, settings: Config) -> ScanPlan:
    """Check the sources exist (before anything is created) and merge options with the config."""
    if args.sources:
        roots = _roots(args.sources, "")
    elif settings.sources:
        roots = _roots(settings.source_paths(), f" (in `sources` of {home.config_path})")
    else:
        raise UsageError(
            f"no SOURCE given and no `sources` in {home.config_path}: name what to back up"
        )
    one_fs = settings.one_file_system if args.one_file_system is None else args.one_file_system
    excludes = Excludes.from_args(settings.excludes + args.exclude, args.exclude_from)
    own = [os.fsencode(p.absolute()) for p in home.own_dirs()]
    pseudo = (
        settings.include_pseudo_fs if args.include_pseudo_fs is None else args.include_pseudo_fs
    )
    return ScanPlan(roots, excludes, one_fs, args.checksum, own, pseudo)


def _roots(sources: list[str], where: str) -> list[bytes]:
    """The roots to walk. A missing source among others (an unplugged disk) stays in: the scan
    reports it as unreadable, keeps its entries as last backed up and the run exits 23, as
    rsync does; only when no source exists is it a usage error, before anything is created."""
    present = [s for s in sources if os.path.lexists(os.path.abspath(os.fsencode(s)))]
    if not present:
        named = ", ".join(sources)
        what = "source not found" if len(sources) == 1 else "no source found"
        raise UsageError(f"{what}: {named}{where}")
    missing = [os.path.abspath(os.fsencode(s)) for s in sources if s not in present]
    return normalise_roots(present) + missing


def run_scan(plan: ScanPlan, home: Home, out: Output, list_queued: bool = False) -> ScanResult:
    conn = home.connect()
    try:
        with out.bar(desc="scan", unit=" entries") as bar:
            scanner = Scanner(conn, on_entries=bar.update, warn=out.warn, **plan.options())
            out.so_far = lambda: _scanned_so_far(scanner)
            result = scanner.run(plan.roots)
    finally:
        conn.close()
    for note in result.notes:
        out.info(note)
    if list_queued and out.verbose:
        _list_queued(home, result.scan_id, out)
    return result


def _scanned_so_far(scanner: Scanner) -> dict[str, object]:
    queued = sum(scanner.result.counts.values()) if hasattr(scanner, "result") else 0
    return {"files": queued, "summary": f"during the scan: {count(queued)} entries queued"}


def _list_queued(home: Home, scan_id: int, out: Output) -> None:
    from deltagrid.backupdb import queries  # -v only: a quiet night's scan never imports SQLAlchemy

    engine = home.engine()
    try:
        with engine.connect() as conn:
            for row in queries.queued(conn, scan_id):
                out.detail(f"{MARKS.get(row.reason, '?')} {os.fsdecode(row.path)}")
    finally:
        engine.dispose()


def scan_doc(result: ScanResult) -> dict[str, object]:
    return {
        "scan_id": result.scan_id,
        "queued": dict(result.counts),
        "unchanged": result.unchanged,
        "skipped": [os.fsdecode(p) for p in result.skipped],
        "notes": list(result.notes),
        "errors": [{"path": os.fsdecode(p), "error": m} for p, m in result.errors],
        "own_excluded": [os.fsdecode(p) for p in result.own],
    }


def own_text(result: ScanResult, out: Output) -> None:
    """The one line that says deltagrid left its own folders out of the backup."""
    if result.own:
        where = ", ".join(dict.fromkeys(os.fsdecode(p) for p in result.own))
        out.info(f"left out deltagrid's own home and store: {where}")


def scan_text(result: ScanResult, out: Output, seconds: float | None = None) -> None:
    counts = ", ".join(f"{count(result.counts[r])} {r}" for r in REASONS)
    took = f" in {human_duration(seconds)}" if seconds is not None else ""
    out.info(f"scan {result.scan_id}: {counts}; {count(result.unchanged)} unchanged{took}")
    if result.skipped:
        out.info(f"  skipped {plural(len(result.skipped), 'socket')}")
    for path, message in result.errors:
        out.info(f"  unreadable: {os.fsdecode(path)}: {message}")


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    plan = scan_plan(args, home, home.settings())
    began = time.monotonic()
    with home.lock():
        ensure(home, out)
        result = run_scan(plan, home, out, list_queued=True)
    scan_text(result, out, time.monotonic() - began)
    own_text(result, out)
    out.document(scan_doc(result))
    return EXIT_UNREADABLE if result.errors else EXIT_OK
