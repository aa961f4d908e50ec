"""`deltagrid scan SOURCE...`: walk the sources and queue what changed."""

from __future__ import annotations

import argparse
import os

from deltagrid.errors import EXIT_OK, EXIT_UNREADABLE
from deltagrid.home import Home
from deltagrid.output import Output
from scanner.excludes import Excludes
from scanner.scan import REASONS, Scanner, ScanResult, normalise_roots


def add_scan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="directories or files to back up")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="gitignore-style pattern, relative to each source (repeatable)",
    )
    p.add_argument(
        "--exclude-from",
        action="append",
        default=[],
        metavar="FILE",
        help="read exclude patterns from FILE, one a line",
    )
    p.add_argument("--checksum", action="store_true", help="queue every file: read and hash all")
    p.add_argument("--one-file-system", action="store_true", help="do not cross mount points")


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("scan", parents=[common], help="queue what changed since the last backup")
    add_scan_options(p)
    p.set_defaults(run=run)


def run_scan(args: argparse.Namespace, home: Home, out: Output) -> ScanResult:
    roots = normalise_roots(args.sources)
    excludes = Excludes.from_args(args.exclude, args.exclude_from)
    engine = home.engine()
    try:
        with out.bar(desc="scan", unit=" entries") as bar:
            scanner = Scanner(
                engine,
                excludes,
                checksum=args.checksum,
                one_file_system=args.one_file_system,
                on_entry=lambda: bar.update(1),
                warn=out.warn,
            )
            return scanner.run(roots)
    finally:
        engine.dispose()


def scan_doc(result: ScanResult) -> dict[str, object]:
    return {
        "scan_id": result.scan_id,
        "queued": dict(result.counts),
        "unchanged": result.unchanged,
        "skipped": [os.fsdecode(p) for p in result.skipped],
        "errors": [{"path": os.fsdecode(p), "error": m} for p, m in result.errors],
    }


def scan_text(result: ScanResult, out: Output) -> None:
    counts = ", ".join(f"{result.counts[r]} {r}" for r in REASONS)
    out.line(f"scan {result.scan_id}: {counts}, {result.unchanged} unchanged")
    if result.skipped:
        out.line(f"  skipped {len(result.skipped)} special files")
    for path, message in result.errors:
        out.line(f"  unreadable: {os.fsdecode(path)}: {message}")


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    with home.lock():
        result = run_scan(args, home, out)
    scan_text(result, out)
    out.document(scan_doc(result))
    return EXIT_UNREADABLE if result.errors else EXIT_OK
