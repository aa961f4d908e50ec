"""`deltagrid forget --keep-last N --keep-daily N ... [--keep-within DURATION] [--dry-run]`."""

from __future__ import annotations

import argparse

from backupdb import queries
from deltagrid.commands.snapshots import iso
from deltagrid.home import Home
from deltagrid.output import Output
from maintenance.retention import Policy, keep, parse_duration
from maintenance.session import maintaining
from uploader.commit import published_snapshot


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("forget", parents=[common], help="forget snapshots outside a policy")
    for bucket in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        p.add_argument(f"--keep-{bucket}", type=int, default=0, metavar="N")
    p.add_argument("--keep-within", metavar="DURATION", help="e.g. 7d, 2w, 1y6m")
    p.add_argument("--dry-run", action="store_true", help="only print what would be forgotten")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    policy = Policy(
        last=args.keep_last,
        hourly=args.keep_hourly,
        daily=args.keep_daily,
        weekly=args.keep_weekly,
        monthly=args.keep_monthly,
        yearly=args.keep_yearly,
        within_ns=parse_duration(args.keep_within) if args.keep_within else 0,
    )
    with maintaining(home) as session:
        with session.engine.connect() as conn:
            rows = queries.list_snapshots(conn, published_snapshot(session.store))
        kept = keep([(r.id, r.committed_ns) for r in rows], policy)
        gone = [r for r in rows if r.id not in kept]
        if gone and not args.dry_run:
            with session.engine.begin() as conn:
                queries.forget(conn, [r.id for r in gone])
            session.publisher.publish(again=True)
    verb = "would forget" if args.dry_run else "forgot"
    for r in rows:
        why = ", ".join(kept.get(r.id, [])) or verb.split()[-1]
        out.line(
            f"{'keep  ' if r.id in kept else 'forget'} {r.id:>5}  {iso(r.committed_ns)}  {why}"
        )
    out.line(f"{verb} {len(gone)} of {len(rows)} snapshots; run 'deltagrid prune' to free space")
    out.document(
        {
            "dry_run": args.dry_run,
            "kept": [{"id": r.id, "reasons": kept[r.id]} for r in rows if r.id in kept],
            "forgotten": [r.id for r in gone],
        }
    )
    return 0
