"""`deltagrid log [--last N]`: the history of writer runs, newest first.

Each scan, upload, backup, forget, prune, compact and restore run is recorded when it ends:
command, start, duration, exit code, files, bytes read and uploaded, and for a partial or failed
run the paths and reasons (or the error); a run stopped by a signal says so, with its counts so
far. The history is local to this home and survives nothing but the
backupdb it lives in (an `attach` starts it afresh).
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime

from deltagrid.backupdb.runs import Run, last_runs
from deltagrid.commands import whole
from deltagrid.floor.units import count, escaped, human_bytes, human_duration, shortened
from deltagrid.home import Home
from deltagrid.output import Output

SHOWN_ERRORS = 10  # per run in the text view; --json has them all (up to the recorded 1,000)
WIDTH = 120  # characters of a path, an error or a summary in the text view; --json has them whole


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("log", parents=[common], help="the history of backup and maintenance runs")
    p.add_argument("--last", type=whole(1), default=20, metavar="N", help="the N newest runs (20)")
    p.set_defaults(run=run)


def when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _cell(text: str) -> str:
    """A path, error or summary as the table shows it: one line, at most WIDTH characters."""
    return shortened(escaped(os.fsencode(text)), WIDTH)


def table(runs: list[Run], out: Output, shown_errors: int = SHOWN_ERRORS) -> None:
    """The runs as an aligned table; each partial or failed run's paths below its row."""
    out.line(
        f"{'RUN':>5}  {'STARTED':19}  {'COMMAND':8}  {'TOOK':>11}  {'EXIT':>4}  {'OUTCOME':8}  "
        f"{'FILES':>9}  {'READ':>10}  {'UPLOADED':>10}  SUMMARY"
    )
    for r in runs:
        out.line(
            f"{r.id:>5}  {when(r.started_ns):19}  {r.command:8}  "
            f"{human_duration(r.seconds):>11}  {r.exit_code:>4}  {r.outcome:8}  "
            f"{count(r.files):>9}  {human_bytes(r.bytes_read):>10}  "
            f"{human_bytes(r.bytes_uploaded):>10}  {_cell(r.summary)}"
        )
        for e in r.errors[:shown_errors]:
            out.line(f"{'':7}{_cell(e.get('path') or '?')}: {_cell(e.get('error', ''))}")
        hidden = r.error_count - min(len(r.errors), shown_errors)
        if hidden > 0:
            out.line(f"{'':7}... and {count(hidden)} more (deltagrid --json log)")


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    engine = home.engine(writer=False)
    try:
        with engine.connect() as conn:
            runs = last_runs(conn, args.last)
    finally:
        engine.dispose()
    if runs:
        table(runs, out)
    else:
        out.line("no runs recorded yet")
    out.document({"runs": [r.doc() for r in runs]})
    return 0
