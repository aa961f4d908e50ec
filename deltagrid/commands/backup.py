"""`deltagrid backup [SOURCE...]`: scan then upload; creates the default repository if needed.

With no SOURCE it backs up the `sources` of config.toml. On success it prints one summary line
(two if some entries vanished); -v adds a line per changed path, -q prints only errors.
"""

from __future__ import annotations

import argparse
import contextlib
import time

from deltagrid.backupdb import scan_queries
from deltagrid.commands.init import ensure
from deltagrid.commands.scan import (
    ScanPlan,
    add_scan_options,
    own_text,
    run_scan,
    scan_doc,
    scan_plan,
    scan_text,
)
from deltagrid.commands.upload import (
    exit_code,
    problems_text,
    run_upload,
    summary_line,
    upload_doc,
    upload_text,
)
from deltagrid.floor.units import count
from deltagrid.guard import writable_store
from deltagrid.home import Home
from deltagrid.output import Output
from deltagrid.scanner.beside import ScanBeside
from deltagrid.scanner.scan import ScanResult
from deltagrid.uploader.result import UploadResult


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("backup", parents=[common], help="scan, then upload: the nightly run")
    add_scan_options(p)
    p.set_defaults(run=run)


def changes_text(scanned: ScanResult, result: UploadResult) -> str:
    """`3 new, 12 changed, 1 deleted`, or `no changes`."""
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
    return ", ".join(changed) or "no changes"


def _scan_beside(plan: ScanPlan, home: Home, out: Output) -> ScanBeside | None:
    """The scan started in a process of its own, to be uploaded as it goes, if it can find
    only new entries (scanner/beside.py says why); else None: it runs first, whole."""
    conn = home.connect()
    try:
        if not scan_queries.only_new(conn, plan.roots):
            return None
    finally:
        conn.close()
    beside = ScanBeside(home.db_path, out.warn)
    return beside if beside.start(plan.roots, plan.options()) else None


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    plan = scan_plan(args, home, home.settings())  # a missing source fails before anything
    began = time.monotonic()
    with home.lock():
        ensure(home, out)
        store = None
        beside = None
        try:
            with home.checked_beside():  # the backupdb's pages read while the tree is
                store = writable_store(home)  # refused before the scan: nothing written
                beside = _scan_beside(plan, home, out)
                if beside is None:
                    scanned = run_scan(plan, home, out)
        except BaseException:
            if beside is not None:
                beside.close()
            if store is not None:
                store.close()
            raise
        if beside is None:
            result, committed = run_upload(home, out, store)
        else:
            with contextlib.closing(beside):
                result, committed = run_upload(home, out, store, beside)
            assert beside.result is not None  # the upload ends once the scan has
            scanned = beside.result
            for note in scanned.notes:
                out.info(note)
    seconds = time.monotonic() - began
    if out.verbose:
        scan_text(scanned, out)
        upload_text(result, committed, out, seconds)
    else:
        out.info(summary_line(result, committed, changes_text(scanned, result), seconds))
        problems_text(result, out)
    own_text(scanned, out)
    out.document({"scan": scan_doc(scanned), **upload_doc(result, committed)})
    return exit_code(bool(scanned.errors or result.unreadable), bool(result.vanished))
