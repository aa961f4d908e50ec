"""`deltagrid verify [--read-data]`: does the store hold everything the backupdb references?"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from backupdb import queries
from deltagrid.errors import EXIT_ERROR, EXIT_OK, DeltagridError
from deltagrid.home import Home, reading
from deltagrid.output import Output
from restore.rebuild import DirectSource, materialize


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("verify", parents=[common], help="check the store against the backupdb")
    p.add_argument(
        "--read-data",
        action="store_true",
        help="also rebuild every file version and check its hash",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    problems: list[dict[str, object]] = []
    checked_contents = 0
    with reading(home) as (conn, store, published):
        packs = queries.all_packs(conn)
        for pack in packs:
            try:
                size = store.size(pack.ref)
            except DeltagridError as exc:
                problems.append({"pack": pack.ref, "error": str(exc)})
                continue
            if size != pack.size:
                problems.append({"pack": pack.ref, "error": f"size {size}, expected {pack.size}"})
        if args.read_data:
            home.spool.mkdir(parents=True, exist_ok=True)
            source = DirectSource(store)
            with (
                tempfile.TemporaryDirectory(dir=home.spool) as work,
                out.bar(desc="verify", unit=" versions") as bar,
            ):
                for content in queries.all_contents(conn):
                    checked_contents += 1
                    bar.update(1)
                    try:
                        materialize(conn, source, content.id, Path(work)).unlink()
                    except DeltagridError as exc:
                        snaps = queries.snapshots_using(conn, [content.id], published)
                        problems.append(
                            {"content": content.hash.hex(), "error": str(exc), "snapshots": snaps}
                        )
    for p in problems:
        what = p.get("pack") or p.get("content")
        out.warn(f"damaged {what}: {p['error']}")
    out.line(
        f"verified {len(packs)} packs"
        + (f" and {checked_contents} file versions" if args.read_data else "")
        + f": {len(problems)} problems"
    )
    out.document({"packs": len(packs), "contents": checked_contents, "problems": problems})
    return EXIT_ERROR if problems else EXIT_OK
