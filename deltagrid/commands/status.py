"""`deltagrid status`: what the queue and the spool hold, and the last snapshot.

Everything but the published snapshot is local. The store is asked for its root pointer with a
time limit, so a stopped Tahoe node costs a few seconds and a line saying so, not the retries of
a backup (half a minute) before the local queue is shown.
"""

from __future__ import annotations

import argparse
import threading

from deltagrid.backupdb import scan_queries, snapshots
from deltagrid.floor.errors import DeltagridError
from deltagrid.floor.units import human_bytes, iso, plural
from deltagrid.home import Home
from deltagrid.output import Output
from deltagrid.uploader.spool import PACK_PREFIX

STORE_SECONDS = 3.0  # how long status waits for the store's root pointer


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="queue and spool state")
    p.set_defaults(run=run)


def published(home: Home, seconds: float = STORE_SECONDS) -> tuple[int | None, str | None]:
    """The snapshot the store's root pointer names, or None and why it is not known."""
    answer: dict[str, int | str] = {}

    def ask() -> None:
        from deltagrid.repository.root import published_snapshot

        try:
            store = home.store()
            try:
                answer["snapshot"] = published_snapshot(store)
            finally:
                store.close()
        except (DeltagridError, OSError) as exc:
            answer["error"] = str(exc)

    asking = threading.Thread(target=ask, daemon=True)  # left behind if the store hangs
    asking.start()
    asking.join(seconds)
    if "snapshot" in answer:
        return int(answer["snapshot"]), None
    return None, str(answer.get("error", f"no answer within {seconds:g} s"))


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    config = home.config()
    conn = home.connect()
    try:
        by_reason = scan_queries.pending_by_reason(conn)
        rows, size = scan_queries.pending_totals(conn)
        interrupted = scan_queries.interrupted_scan(conn)
        local = snapshots.last_snapshot_id(conn)
    finally:
        conn.close()
    holder = home.lock_holder()
    spool = sorted(home.spool.glob(f"{PACK_PREFIX}*")) if home.spool.exists() else []
    spool_bytes = sum(p.stat().st_size for p in spool)
    out.line(
        f"queue: {plural(rows, 'entry', 'entries')}, {human_bytes(size)} to read"
        + "".join(f", {n} {r}" for r, n in sorted(by_reason.items()))
    )
    if interrupted:
        out.line("  the last scan was interrupted: run 'deltagrid scan' again")
    out.line(f"spool: {plural(len(spool), 'pack')} in progress, {human_bytes(spool_bytes)}")
    if holder is not None:
        since = iso(int(holder.get("since_ns", 0)))
        out.line(f"writing now: pid {holder['pid']} ({holder.get('command')}) since {since}")
    latest, why = published(home)
    out.line(f"store: {config.store}" + (f" (not checked: {why})" if why else ""))
    if latest is None:
        out.line(f"latest snapshot: {local or 'none'} (recorded here; the store did not say)")
    else:
        out.line(f"latest snapshot: {latest or 'none'}")
        if local > latest:
            out.line(
                f"  snapshot {local} is recorded but not yet published: run 'deltagrid upload'"
            )
    out.document(
        {
            "store": config.store,
            "store_checked": why is None,
            "store_error": why,
            "snapshot_id": latest,
            "local_snapshot_id": local,
            "unpublished_snapshot": local if latest is not None and local > latest else None,
            "queue": {"entries": rows, "bytes": size, "by_reason": by_reason},
            "scan_interrupted": interrupted,
            "spool": {"packs": len(spool), "bytes": spool_bytes},
            "writer": holder,
        }
    )
    return 0
