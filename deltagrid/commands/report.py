"""`deltagrid report [--html FILE]`: what the backups cost and how they are going.

In a terminal: per snapshot its date, files and bytes added with a bar; the store's size; the
files with most versions; the longest delta chains; the last runs. `--html FILE` writes the same
as one self-contained page with charts (inline CSS and SVG, no script, nothing fetched).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deltagrid.commands import whole
from deltagrid.floor.fs import atomic_write
from deltagrid.home import Home, reading
from deltagrid.output import Output
from deltagrid.report import html, text
from deltagrid.report.figures import gather


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("report", parents=[common], help="sizes, changes and runs, as text or HTML")
    p.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML page")
    p.add_argument(
        "--runs", type=whole(0), default=10, metavar="N", help="how many recent runs to show (10)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    with reading(home) as (conn, store, published):
        figures = gather(conn, store, published, args.runs)
    figures.home = str(home.path)
    if args.html is not None:
        path = args.html.absolute()
        atomic_write(path, html.render(figures).encode("utf-8"), 0o644)
        out.info(f"wrote {path}")
        out.document({"html": str(path), **figures.doc()})
        return 0
    text.render(figures, out.line)
    out.document(figures.doc())
    return 0
