"""`deltagrid compact [--max-chain N] [--dry-run]`: bound the restore cost of the latest files."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from deltagrid.backupdb import queries
from deltagrid.commands import whole
from deltagrid.commands.prune import outcome_text, plan_doc
from deltagrid.floor.units import plural
from deltagrid.home import Home
from deltagrid.maintaining import maintaining
from deltagrid.maintenance.plans import plan_compact
from deltagrid.output import Output


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compact", parents=[common], help="rewrite long delta chains as keyframes")
    p.add_argument(
        "--max-chain",
        type=whole(0),
        default=4,
        metavar="N",
        help="latest versions needing more than N patches become keyframes (4)",
    )
    p.add_argument("--dry-run", action="store_true", help="only print what would be done")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    with maintaining(home) as session:
        with session.engine.connect() as conn:
            latest = queries.last_snapshot_id(conn)
            plan, live = plan_compact(conn, latest, args.max_chain)
        if args.dry_run or not plan.keyframes:
            out.info(f"{plural(len(plan.keyframes), 'version')} to rewrite as keyframes")
            out.document({"dry_run": args.dry_run, "plan": plan_doc(plan)})
            return 0
        plan.dead_blobs.clear()  # compact only adds keyframes; prune frees what they replace
        plan.dead_packs.clear()
        outcome = session.executor(home, out).run(plan, live, latest)
    outcome_text(out, outcome)
    out.document({"dry_run": False, **asdict(outcome)})
    return 0
