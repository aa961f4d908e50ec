"""`deltagrid grid start DIR [--servers N]` / `grid stop DIR`: a local Tahoe grid on loopback."""

from __future__ import annotations

import argparse
from pathlib import Path

from deltagrid.commands import whole
from deltagrid.home import Home
from deltagrid.output import Output
from deltagrid.store.tahoe_grid import LocalGrid


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("grid", parents=[common], help="run a local Tahoe-LAFS grid for trying out")
    p.add_argument("action", choices=["start", "stop"], help="start or stop the grid")
    p.add_argument("dir", type=Path, metavar="DIR", help="where the grid's nodes live")
    p.add_argument(
        "--servers", type=whole(1, 20), default=4, help="storage servers (first start only)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    grid = LocalGrid(args.dir)
    if args.action == "stop":
        grid.stop()
        out.info(f"stopped the grid in {grid.base}")
        out.document({"dir": str(grid.base), "running": False})
        return 0
    if not grid.state.exists():
        grid.create(servers=args.servers)
    grid.start()
    out.line(f"grid in {grid.base} is up: store URL {grid.url}")
    out.document({"dir": str(grid.base), "running": True, "store": grid.url})
    return 0
