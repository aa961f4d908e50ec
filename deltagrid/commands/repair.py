"""`deltagrid repair`: store again what damage broke, from the sources that still hold it.

Checks that every pack the catalog names is in the store whole, then re-reads each damaged file
version from a source path that still holds its bytes and stores it as a keyframe in place of
the damaged blobs (maintenance/repair.py). What no source holds any more is named by path and
snapshot; exit 1 if anything cannot be recovered.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from deltagrid.backupdb import damage, queries
from deltagrid.floor.errors import EXIT_ERROR, EXIT_OK
from deltagrid.floor.units import human_bytes, plural
from deltagrid.home import Home
from deltagrid.maintaining import maintaining
from deltagrid.maintenance.executor import Outcome
from deltagrid.maintenance.repair import RepairPlan, check_store, plan_repair
from deltagrid.output import Output


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "repair", parents=[common], help="store again what damage broke, from the sources"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    outcome = None
    with maintaining(home, repairing=True) as session:
        with session.engine.connect() as conn:
            packs = len(queries.all_packs(conn))
            found, lost = check_store(conn, session.store)
        with session.engine.begin() as conn:  # known at once: a killed repair keeps it
            recorded = damage.record(queries.driver(conn), found, time.time_ns())
        with session.engine.connect() as conn:
            latest = queries.last_snapshot_id(conn)
            repair = plan_repair(conn, latest)
        plan = repair.plan
        if plan.keyframes or plan.dead_blobs:
            outcome = session.executor(home, out).run(plan, set(), latest)
    _report(out, packs, lost, recorded, repair, outcome)
    return EXIT_ERROR if repair.unrecoverable else EXIT_OK


def _report(
    out: Output, packs: int, lost: int, recorded: int, repair: RepairPlan, outcome: Outcome | None
) -> None:
    for u in repair.unrecoverable:
        where = ", ".join(u.paths) or u.content
        out.warn(
            f"cannot recover {where} (snapshots {u.snapshots}): "
            "no source holds these bytes any more"
        )
    repaired = len(repair.plan.keyframes)
    if lost:
        out.info(f"{plural(lost, 'pack')} of {packs} missing or cut short in the store")
    if not repair.broken and outcome is None:
        out.info(f"nothing to repair: {plural(packs, 'pack')} checked")
    else:
        written = outcome.bytes_written if outcome else 0
        out.info(
            f"repaired {plural(repaired, 'file version')} from the sources"
            + (
                f" ({repair.through_basis} more whole again through them)"
                if repair.through_basis
                else ""
            )
            + f", wrote {human_bytes(written)}; "
            + f"{count_text(len(repair.unrecoverable))} cannot be recovered"
        )
    out.document(
        {
            "packs": packs,
            "packs_lost": lost,
            "damaged_blobs_recorded": recorded,
            "broken": repair.broken,
            "repaired": repaired,
            "through_basis": repair.through_basis,
            "unrecoverable": [asdict(u) for u in repair.unrecoverable],
            "outcome": asdict(outcome) if outcome else None,
        }
    )


def count_text(n: int) -> str:
    return "nothing" if n == 0 else plural(n, "file version")
