"""`deltagrid prune [--dry-run] [--repack-threshold F] [--delete-now]`: drop data only forgotten
snapshots need. Store objects nothing names any more are deleted by a later prune, once they have
been unreferenced for `[maintenance] delete_after` (readers on other machines may still read
them); `--delete-now` deletes them at once (still after the readers on this machine)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from deltagrid.backupdb import queries
from deltagrid.commands import fraction
from deltagrid.floor.units import human_bytes
from deltagrid.home import Home
from deltagrid.maintaining import maintaining
from deltagrid.maintenance.executor import Outcome, Plan
from deltagrid.maintenance.plans import plan_prune
from deltagrid.output import Output


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("prune", parents=[common], help="drop what no kept snapshot needs")
    p.add_argument("--dry-run", action="store_true", help="only print what would be done")
    p.add_argument(
        "--repack-threshold",
        type=fraction,
        default=0.5,
        metavar="F",
        help="repack packs whose dead share of bytes exceeds F (default 0.5)",
    )
    p.add_argument(
        "--delete-now",
        action="store_true",
        help="delete what nothing references at once, not after [maintenance] delete_after "
        "(a restore on another machine that began before may then fail; readers on this "
        "machine are still waited for)",
    )
    p.set_defaults(run=run)


def plan_doc(plan: Plan) -> dict[str, int]:
    return {
        "keyframes": len(plan.keyframes),
        "versions": len(plan.dead_versions),
        "contents": len(plan.dead_contents),
        "packs_deleted": len(plan.dead_packs),
        "packs_repacked": len(plan.repack),
    }


def outcome_text(out: Output, o: Outcome) -> None:
    out.info(
        f"dropped {o.versions_dropped} versions and {o.contents_dropped} contents, wrote "
        f"{o.keyframes_written} keyframes; packs: {o.packs_deleted} deleted, {o.packs_repacked} "
        f"repacked into {o.packs_written}; freed {human_bytes(o.bytes_freed)}, wrote "
        f"{human_bytes(o.bytes_written)}; {o.objects_deleted} store objects deleted"
        + (f", {o.objects_waiting} waiting out delete_after" if o.objects_waiting else "")
    )


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    with maintaining(home) as session:
        with session.engine.connect() as conn:
            kept = queries.kept_snapshot_ids(conn)
            plan, live = plan_prune(conn, kept, args.repack_threshold)
            latest = queries.last_snapshot_id(conn)
        if args.dry_run:
            doc = plan_doc(plan)
            out.info(
                f"would write {doc['keyframes']} keyframes, drop {doc['versions']} versions and "
                f"{doc['contents']} contents, delete {doc['packs_deleted']} packs and repack "
                f"{doc['packs_repacked']}"
            )
            out.document({"dry_run": True, "plan": doc})
            return 0
        outcome = session.executor(home, out, args.delete_now).run(plan, live, latest)
    outcome_text(out, outcome)
    out.document({"dry_run": False, **asdict(outcome)})
    return 0
