"""`deltagrid backup [SOURCE...]`: scan then upload; creates the default repository if needed.

With no SOURCE it backs up the `sources` of config.toml. On success it prints one summary line
(two if some entries vanished); -v adds a line per changed path, -q prints only errors.
"""

from __future__ import annotations

import argparse
import time

from deltagrid.commands.init import ensure
from deltagrid.commands.scan import add_scan_options, run_scan, scan_doc, scan_plan, scan_text
from deltagrid.commands.upload import (
    exit_code,
    problems_text,
    run_upload,
    upload_doc,
    upload_text,
)
from deltagrid.floor.units import count, human_bytes, human_duration, plural
from deltagrid.home import Home
from deltagrid.output import Output
from deltagrid.scanner.scan import ScanResult
from deltagrid.uploader.result import UploadResult


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("backup", parents=[common], help="scan, then upload: the nightly run")
    add_scan_options(p)
    p.set_defaults(run=run)


def summary(scanned: ScanResult, result: UploadResult, files: int, seconds: float) -> str:
    """`snapshot 7: 1,204 files; 3 new, 12 changed, 1 deleted; uploaded 1.3 MiB of 48.2 MiB
    read in 2.4 s`."""
    q = scanned.counts
    changed = [
        f"{count(n)} {what}"
        for n, what in (
            (q["new"], "new"),
            (q["changed"], "changed"),
            (q["meta"], "metadata only"),
            (q["deleted"], "deleted"),
        )
        if n
    ]
    unreadable = len(scanned.errors) + len(result.unreadable)
    if unreadable:
        changed.append(f"{count(unreadable)} unreadable")
    return (
        f"snapshot {result.snapshot_id}: {plural(files, 'file')}; "
        f"{', '.join(changed) or 'no changes'}; uploaded {human_bytes(result.bytes_uploaded)} "
        f"of {human_bytes(result.bytes_read)} read in {human_duration(seconds)}"
    )


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    plan = scan_plan(args, home, home.settings())  # a missing source fails before anything
    began = time.monotonic()
    with home.lock():
        ensure(home, out)
        scanned = run_scan(plan, home, out)
        result, committed = run_upload(home, out)
    seconds = time.monotonic() - began
    if out.verbose:
        scan_text(scanned, out)
        upload_text(result, committed, out, seconds)
    else:
        out.info(summary(scanned, result, committed.get("files", 0), seconds))
        problems_text(result, out)
    out.document({"scan": scan_doc(scanned), **upload_doc(result, committed)})
    return exit_code(bool(scanned.errors or result.unreadable), bool(result.vanished))
