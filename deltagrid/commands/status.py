"""`deltagrid status`: what the queue and the spool hold, and the last snapshot."""

from __future__ import annotations

import argparse

from deltagrid.backupdb import scan_queries, snapshots
from deltagrid.floor.units import human_bytes, iso
from deltagrid.home import Home, plain_reading
from deltagrid.output import Output
from deltagrid.uploader.spool import PACK_PREFIX


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="queue and spool state")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    with plain_reading(home) as (conn, store, published):
        by_reason = scan_queries.pending_by_reason(conn)
        rows, size = scan_queries.pending_totals(conn)
        interrupted = scan_queries.interrupted_scan(conn)
        local = snapshots.last_snapshot_id(conn)
    holder = home.lock_holder()
    spool = sorted(home.spool.glob(f"{PACK_PREFIX}*")) if home.spool.exists() else []
    spool_bytes = sum(p.stat().st_size for p in spool)
    out.line(f"store: {store.url}")
    out.line(f"latest snapshot: {published or 'none'}")
    if local > published:
        out.line(f"  snapshot {local} is recorded but not yet published: run 'deltagrid upload'")
    out.line(
        f"queue: {rows} entries, {human_bytes(size)} to read"
        + "".join(f", {n} {r}" for r, n in sorted(by_reason.items()))
    )
    if interrupted:
        out.line("  the last scan was interrupted: run 'deltagrid scan' again")
    out.line(f"spool: {len(spool)} packs in progress, {human_bytes(spool_bytes)}")
    if holder is not None:
        since = iso(int(holder.get("since_ns", 0)))
        out.line(f"writing now: pid {holder['pid']} ({holder.get('command')}) since {since}")
    out.document(
        {
            "store": store.url,
            "snapshot_id": published,
            "unpublished_snapshot": local if local > published else None,
            "queue": {"entries": rows, "bytes": size, "by_reason": by_reason},
            "scan_interrupted": interrupted,
            "spool": {"packs": len(spool), "bytes": spool_bytes},
            "writer": holder,
        }
    )
    return 0
