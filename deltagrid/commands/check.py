"""`deltagrid check [--renew-leases] [--repair]`: the health of every live object in the store.

On a Tahoe grid every live pack, every backupdb object the root names and the root itself get
`t=check` (with `add-lease=true` and `repair=true` when asked). Packs prune dropped are never
touched, so their leases run out and the storage servers reclaim them. On a file store leases do
not exist: check only confirms each object is there with its size.
"""

from __future__ import annotations

import argparse
from typing import Any

from deltagrid.backupdb import queries
from deltagrid.floor.errors import EXIT_ERROR, EXIT_OK, DeltagridError, UsageError
from deltagrid.home import Home, reading
from deltagrid.output import Output
from deltagrid.repository.root import parse_root
from deltagrid.store.tahoe import TahoeStore


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", parents=[common], help="grid health; renew leases, repair")
    p.add_argument("--renew-leases", action="store_true", help="add a lease to every live object")
    p.add_argument("--repair", action="store_true", help="let Tahoe repair unhealthy objects")
    p.set_defaults(run=run)


def live_objects(conn: Any, store: Any) -> list[tuple[str, str]]:
    """(kind, ref) of everything the newest catalog and root need, each once."""
    root = parse_root(store.read_root()) or {"backupdb": []}
    found = [("backupdb", e["ref"]) for e in root["backupdb"]]
    found += [("pack", p.ref) for p in queries.all_packs(conn)]
    unique: dict[str, str] = {}
    for kind, ref in found:
        unique.setdefault(ref, kind)
    return [(kind, ref) for ref, kind in unique.items()]


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    problems: list[dict[str, object]] = []
    renewed = repaired = 0
    with reading(home) as (conn, store, _published):
        tahoe = store if isinstance(store, TahoeStore) else None
        if (args.renew_leases or args.repair) and tahoe is None:
            raise UsageError("leases and repair are Tahoe notions; this store is " + store.url)
        objects = live_objects(conn, store)
        if tahoe is not None:
            objects.append(("root", tahoe.cap or ""))
        with out.bar(desc="check", total=len(objects), unit=" objects") as bar:
            for kind, ref in objects:
                bar.update(1)
                try:
                    if tahoe is None:
                        store.size(ref)
                        continue
                    result = tahoe.check(ref, add_lease=args.renew_leases, repair=args.repair)
                except DeltagridError as exc:
                    problems.append({"kind": kind, "ref": ref, "error": str(exc)})
                    continue
                renewed += bool(args.renew_leases)
                post = result.get("post-repair-results", {}).get("results", {})
                repaired += bool(result.get("repair-attempted") and post.get("healthy"))
                healthy = result.get("results", {}).get("healthy", True)
                if not healthy and not post.get("healthy"):
                    summary = result.get("results", {}).get("summary", "unhealthy")
                    problems.append({"kind": kind, "ref": ref, "error": summary})
    for p in problems:
        out.warn(f"{p['kind']} {str(p['ref'])[:60]}: {p['error']}")
    out.info(
        f"checked {len(objects)} live objects: {len(problems)} unhealthy"
        + (f", {renewed} leases renewed" if args.renew_leases else "")
        + (f", {repaired} repaired" if args.repair else "")
    )
    out.document(
        {"checked": len(objects), "renewed": renewed, "repaired": repaired, "problems": problems}
    )
    return EXIT_ERROR if problems else EXIT_OK
