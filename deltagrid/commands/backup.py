"""`deltagrid backup SOURCE...`: scan then upload; creates the default repository if needed."""

from __future__ import annotations

import argparse

from deltagrid.commands.init import initialise
from deltagrid.commands.scan import add_scan_options, run_scan, scan_doc, scan_text
from deltagrid.commands.upload import exit_code, run_upload, upload_doc, upload_text
from deltagrid.home import Home
from deltagrid.output import Output
from scanner.scan import normalise_roots


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("backup", parents=[common], help="scan, then upload: the nightly run")
    add_scan_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    normalise_roots(args.sources)  # a missing source fails before anything is created
    with home.lock():
        if not home.initialised():
            url, _writecap, _readcap = initialise(home, None)
            out.line(f"created repository in {home.path}, store {url}")
        scanned = run_scan(args, home, out)
        result, committed = run_upload(home, out)
    scan_text(scanned, out)
    upload_text(result, committed, out)
    out.document({"scan": scan_doc(scanned), **upload_doc(result, committed)})
    return exit_code(bool(scanned.errors or result.unreadable), bool(result.vanished))
