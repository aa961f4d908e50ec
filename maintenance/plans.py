"""Planning prune and compact.

prune: a version is needed when it is live in a kept (not forgotten) snapshot; a content when a
needed version uses it or a needed delta is built on it. When the lowest needed content of a
chain still has a basis, that basis is only there for it: the content is rewritten as a keyframe
and everything below it goes. Packs with no needed blob are deleted; packs mostly dead (more than
`threshold` of their bytes) are repacked.

compact: contents of the latest snapshot whose chain is longer than `max_chain` deltas, or whose
deltas outweigh the file, are rewritten as keyframes; older snapshots keep their chains, and a
later prune drops what only they needed.

Neither rebuilds a content whose chain holds a damaged blob (it cannot be rebuilt: its chain is
kept whole for `repair`), nor repacks a pack holding one (its bytes cannot be copied out).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from deltagrid.backupdb import damage, queries
from deltagrid.maintenance.executor import Plan, chains_of, needed_versions


def _blobs_and_packs(
    conn: Connection, plan: Plan, keep_contents: set[int], threshold: float
) -> set[int]:
    """Fill the plan's dead blobs and packs; return the live blob ids."""
    by_content = queries.content_blob_ids(conn)
    damaged = damage.damaged_blob_ids(queries.driver(conn))
    live: set[int] = set()
    for c in keep_contents - plan.keyframes:
        live.update(by_content.get(c, []))
    live_bytes: dict[int, int] = {}
    unmovable: set[int] = set()
    for b in queries.all_blobs(conn):
        if b.id in damaged:
            unmovable.add(b.pack_id)
        if b.id in live:
            live_bytes[b.pack_id] = live_bytes.get(b.pack_id, 0) + b.length
        else:
            plan.dead_blobs.add(b.id)
    for pack in queries.all_packs(conn):
        used = live_bytes.get(pack.id, 0)
        if used == 0:
            plan.dead_packs.add(pack.id)
        elif 1 - used / pack.size > threshold and pack.id not in unmovable:
            plan.repack.add(pack.id)
    return live


def plan_prune(conn: Connection, kept: list[int], threshold: float) -> tuple[Plan, set[int]]:
    plan = Plan()
    spans = queries.version_spans(conn)
    needed = needed_versions(spans, sorted(kept))
    plan.dead_versions = {v.id for v in spans} - needed
    wanted = {v.content_id for v in spans if v.id in needed and v.content_id is not None}
    keep_contents: set[int] = set()
    broken = damage.broken_contents(queries.driver(conn))
    for chain in chains_of(conn, wanted).values():
        lowest = next(i for i, c in enumerate(chain) if c in wanted)
        if chain[lowest] in broken:
            lowest = 0
        if lowest > 0:
            plan.keyframes.add(chain[lowest])
        keep_contents.update(chain[lowest:])
    plan.dead_contents = {c.id for c in queries.all_contents(conn)} - keep_contents
    return plan, _blobs_and_packs(conn, plan, keep_contents, threshold)


def plan_compact(conn: Connection, latest: int, max_chain: int) -> tuple[Plan, set[int]]:
    plan = Plan()
    live = queries.contents_live_in(conn, latest)
    rows: dict[int, Any] = {r.id: r for r in queries.all_contents(conn)}
    broken = damage.broken_contents(queries.driver(conn))
    for c in live - broken:
        r = rows[c]
        if r.basis_id is not None and (r.depth > max_chain or r.chain_bytes > r.size):
            plan.keyframes.add(c)
    keep_contents = set(rows)
    return plan, _blobs_and_packs(conn, plan, keep_contents, threshold=1.0)
