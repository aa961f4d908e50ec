"""`deltagrid forget [--keep-last N --keep-daily N ... --keep-within DURATION] [--dry-run]`.

With no --keep-* option the `[retention]` table of config.toml is the policy; any --keep-*
option replaces that table for this run (the two are not merged).
"""

from __future__ import annotations

import argparse

from deltagrid.backupdb import queries
from deltagrid.commands import whole
from deltagrid.config import Retention
from deltagrid.floor.errors import UsageError
from deltagrid.floor.units import iso
from deltagrid.home import Home
from deltagrid.maintaining import maintaining
from deltagrid.maintenance.retention import COUNTS, Policy, keep
from deltagrid.output import Output
from deltagrid.repository.root import published_snapshot


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("forget", parents=[common], help="forget snapshots outside a policy")
    for bucket in COUNTS:
        p.add_argument(f"--keep-{bucket}", type=whole(0), metavar="N")
    p.add_argument("--keep-within", metavar="DURATION", help="e.g. 7d, 2w, 1y6m")
    p.add_argument("--dry-run", action="store_true", help="only print what would be forgotten")
    p.set_defaults(run=run)


def policy_of(args: argparse.Namespace, home: Home) -> Policy:
    """The command line's --keep-* options, or else config.toml's [retention]."""
    given = {b: getattr(args, f"keep_{b}") for b in COUNTS}
    if any(v is not None for v in given.values()) or args.keep_within:
        keeps = {f"keep_{b}": v or 0 for b, v in given.items()}
        policy = Retention(**keeps, keep_within=args.keep_within).policy()
    else:
        policy = home.settings().retention.policy()
    if policy.empty() and (any(v is not None for v in given.values()) or args.keep_within):
        raise UsageError(
            "the --keep-* options given keep no snapshot (every count is 0): forget never "
            "forgets every snapshot; give a count of 1 or more"
        )
    if policy.empty():
        raise UsageError(
            "forget needs at least one --keep-* option, "
            f"or a [retention] table in {home.config_path}"
        )
    return policy


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    policy = policy_of(args, home)
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
        out.info(
            f"{'keep  ' if r.id in kept else 'forget'} {r.id:>5}  {iso(r.committed_ns)}  {why}"
        )
    out.info(f"{verb} {len(gone)} of {len(rows)} snapshots; run 'deltagrid prune' to free space")
    out.document(
        {
            "dry_run": args.dry_run,
            "kept": [{"id": r.id, "reasons": kept[r.id]} for r in rows if r.id in kept],
            "forgotten": [r.id for r in gone],
        }
    )
    return 0
