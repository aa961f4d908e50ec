"""`deltagrid verify [--read-data [--subset N%]]`: does the store hold what the backupdb says?

Without --read-data: every pack exists with its recorded size (on Tahoe also: each pack's grid
health from `t=check`). With it: the selected file versions are rebuilt and their hashes checked;
every damaged version is named with its paths and the snapshots it affects. The blobs at fault
(and those of packs missing or cut short) are recorded in the backupdb, so that no backup reuses
them; `deltagrid repair` heals them.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path
from typing import Any

from deltagrid.backupdb import damage, queries
from deltagrid.backupdb.damage import Damage
from deltagrid.floor.errors import EXIT_ERROR, EXIT_OK, DeltagridError, ObjectMissing, UsageError
from deltagrid.floor.units import plural
from deltagrid.home import Home, reading
from deltagrid.output import Output
from deltagrid.restore.damage import NamingSource, pack_damage, record
from deltagrid.restore.pruned import pruned
from deltagrid.restore.rebuild import materialize
from deltagrid.store.tahoe import TahoeStore


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("verify", parents=[common], help="check the store against the backupdb")
    p.add_argument(
        "--read-data", action="store_true", help="also rebuild file versions and check their hashes"
    )
    p.add_argument("--subset", metavar="N%", help="with --read-data: a random N%% of versions")
    p.set_defaults(run=run)


def subset_fraction(text: str | None) -> float:
    if text is None:
        return 1.0
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise UsageError(f"--subset takes a percentage like 10%, not {text!r}") from None
    if not 0 < value <= 100:
        raise UsageError("--subset must be more than 0% and at most 100%")
    return value / 100


def check_packs(
    store: Any, packs: list[Any]
) -> tuple[list[dict[str, object]], int, dict[str, int | None]]:
    """Problems with the packs, how many are unhealthy but still readable on the grid, and the
    packs the store lost: missing (None) or cut short (the size it holds)."""
    problems: list[dict[str, object]] = []
    unhealthy = 0
    lost: dict[str, int | None] = {}
    for pack in packs:
        try:
            size = store.size(pack.ref)
            health = store.check(pack.ref) if isinstance(store, TahoeStore) else None
        except ObjectMissing as exc:
            problems.append({"pack": pack.ref, "error": str(exc)})
            lost[pack.ref] = None
            continue
        except DeltagridError as exc:
            problems.append({"pack": pack.ref, "error": str(exc)})
            continue
        if size != pack.size:
            problems.append({"pack": pack.ref, "error": f"size {size}, expected {pack.size}"})
            if size < pack.size:
                lost[pack.ref] = size
        if health is not None:
            results = health.get("results", {})
            if not results.get("recoverable", True):
                problems.append({"pack": pack.ref, "error": "not recoverable from the grid"})
                lost[pack.ref] = None
            elif not results.get("healthy", True):
                unhealthy += 1
    return problems, unhealthy, lost


def read_data(
    conn: Any, store: Any, published: int, fraction: float, home: Home, out: Output
) -> tuple[int, list[dict[str, object]], list[Damage]]:
    """Rebuild the contents (a random `fraction` of them) and check their hashes: how many were
    checked, the problems, the damaged blobs named."""
    contents = queries.all_contents(conn)
    if fraction < 1:
        contents = random.sample(contents, max(1, round(len(contents) * fraction)))
    scratch = None if home.read_only() else home.spool  # else the system's temp dir
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    source, raw = NamingSource(store), queries.driver(conn)
    problems: list[dict[str, object]] = []
    with (
        tempfile.TemporaryDirectory(dir=scratch) as work,
        out.bar(desc="verify", total=len(contents), unit=" versions") as bar,
    ):
        for content in contents:
            bar.update(1)
            try:
                materialize(raw, source, content.id, Path(work)).unlink()
            except DeltagridError as exc:
                problems.append(
                    {
                        "content": content.hash.hex(),
                        "error": str(exc),
                        "paths": [os.fsdecode(p) for p in queries.paths_using(conn, content.id)],
                        "snapshots": queries.snapshots_using(conn, [content.id], published),
                    }
                )
    return len(contents), problems, source.found


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    fraction = subset_fraction(args.subset)
    if args.subset and not args.read_data:
        raise UsageError("--subset goes with --read-data")
    checked = 0
    with reading(home) as (conn, store, published):
        began = store.read_root()
        packs = queries.all_packs(conn)
        problems, unhealthy, lost = check_packs(store, packs)
        raw = queries.driver(conn)
        found = [d for ref, size in lost.items() for d in pack_damage(raw, ref, size)]
        if args.read_data:
            checked, damaged, named = read_data(conn, store, published, fraction, home, out)
            problems += damaged
            found += named
        missing = any(d.how == damage.MISSING for d in found)
        if missing and (why := pruned(store, began, home.state, "verify")):
            raise why  # not damage: nothing recorded
    recorded, unrecorded = record(home.db_path, found)
    for p in problems:
        if "pack" in p:
            out.warn(f"damaged pack {p['pack']}: {p['error']}")
        else:
            where = ", ".join(p["paths"]) or p["content"]  # type: ignore[arg-type]
            out.warn(f"damaged {where} (snapshots {p['snapshots']}): {p['error']}")
    blobs = len({d.blob_id for d in found})
    if unrecorded:
        out.warn(unrecorded)
    elif blobs:
        out.warn(
            f"{plural(blobs, 'damaged blob')} found ({recorded} newly recorded): backups store "
            "those files again; 'deltagrid repair' re-uploads what the sources still hold"
        )
    out.info(
        f"verified {plural(len(packs), 'pack')}"
        + (f" ({unhealthy} unhealthy on the grid but recoverable)" if unhealthy else "")
        + (f" and {plural(checked, 'file version')}" if args.read_data else "")
        + f": {plural(len(problems), 'problem')}"
    )
    out.document(
        {
            "packs": len(packs),
            "unhealthy": unhealthy,
            "contents": checked,
            "problems": problems,
            "damaged_blobs": blobs,
            "recorded": recorded,
            "unrecorded": unrecorded,
        }
    )
    return EXIT_ERROR if problems else EXIT_OK
