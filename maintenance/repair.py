"""Repair: find what the store lost, and store again whatever the sources still hold.

1. Every pack the catalog names is asked for its size: a pack missing or cut short makes its
   lost blobs damaged (recorded at once, in their own transaction, so a killed repair still
   leaves them known). Blobs verify or restore found damaged are recorded already.
2. Every broken content (damage.py) is planned in chain order, keyframe side first: one whose
   basis is being repaired is whole again through it and needs nothing; any other is read from
   a source path that had it and still holds the same bytes (hash checked), to be stored again
   as a keyframe in place of the old blobs; failing that, it cannot be recovered.
3. The executor carries the plan out in its crash-safe order (new packs put, one transaction,
   a full export published), dropping the damaged blobs nothing uses any more, and packs left
   with no blob.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from deltagrid.backupdb import damage, queries
from deltagrid.backupdb.damage import Damage
from deltagrid.floor.errors import ObjectMissing
from deltagrid.maintenance.executor import Plan
from deltagrid.restore.damage import pack_damage
from deltagrid.store.base import Store

_READ = 1 << 20


@dataclass
class Unrecoverable:
    """A broken content no source holds any more: where it was, and which snapshots lose it."""

    content: str  # hash, hex
    paths: list[str]
    snapshots: list[int]


@dataclass
class RepairPlan:
    plan: Plan
    broken: int = 0  # contents whose chain holds a damaged blob
    through_basis: int = 0  # whole again once the content below them is repaired
    unrecoverable: list[Unrecoverable] = field(default_factory=list)


def check_store(conn: Connection, store: Store) -> tuple[list[Damage], int]:
    """The blobs of packs the store lost (missing, or shorter than recorded), and how many such
    packs. One size query a pack: a stat on file://, a request on a grid."""
    raw = queries.driver(conn)
    found: list[Damage] = []
    lost = 0
    for pack in queries.all_packs(conn):
        try:
            held: int | None = store.size(pack.ref)
        except ObjectMissing:
            held = None
        if held is None or held < pack.size:
            lost += 1
            found += pack_damage(raw, pack.ref, held)
    return found, lost


def plan_repair(conn: Connection, published: int) -> RepairPlan:
    raw = queries.driver(conn)
    broken = damage.broken_contents(raw)
    rows = {r.id: r for r in queries.all_contents(conn)}
    damaged = damage.damaged_blob_ids(raw)
    holding = _holding(raw)  # (damaged blob, a content using it)
    direct = {c for _b, c in holding}
    result = RepairPlan(Plan(), broken=len(broken))
    keyframes = result.plan.keyframes
    for c in sorted(broken, key=lambda c: (rows[c].depth, c)):
        if _whole_through(c, rows, keyframes, direct):
            result.through_basis += 1
            continue
        path = _source_of(conn, rows[c])
        if path is not None:
            keyframes.add(c)
            result.plan.sources[c] = (path, rows[c].hash)
        elif snapshots := queries.snapshots_using(conn, [c], published):
            paths = [os.fsdecode(p) for p in queries.paths_using(conn, c)]
            result.unrecoverable.append(Unrecoverable(rows[c].hash.hex(), paths, snapshots))
    still_used = {b for b, c in holding if c not in keyframes}
    result.plan.dead_blobs = damaged - still_used
    result.plan.dead_packs = _emptied_packs(raw, result.plan.dead_blobs)
    return result


def _holding(raw: Any) -> list[tuple[int, int]]:
    """Every (damaged blob, content using it)."""
    return list(
        raw.execute(
            "SELECT cb.blob_id, cb.content_id FROM content_blobs cb "
            "JOIN damaged_blobs d ON d.blob_id = cb.blob_id"
        )
    )


def _whole_through(c: int, rows: dict[int, Any], keyframes: set[int], direct: set[int]) -> bool:
    """Whether content `c` reads whole once `keyframes` are stored again: walking down its
    chain, a content to be stored again comes before one holding a damaged blob."""
    current: int | None = c
    while current is not None:
        if current in keyframes:
            return True
        if current in direct:
            return False
        current = rows[current].basis_id
    return True


def _source_of(conn: Connection, row: Any) -> bytes | None:
    """A path that had this content and holds its bytes now (a regular file, same hash)."""
    for path in queries.paths_using(conn, row.id):
        if _holds(path, row.size, row.hash):
            return bytes(path)
    return None


def _holds(path: bytes, size: int, content_hash: bytes) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        h = hashlib.blake2b(digest_size=32)
        try:
            while chunk := f.read(_READ):
                h.update(chunk)
        except OSError:
            return False
        return h.digest() == content_hash


def _emptied_packs(raw: Any, dead_blobs: set[int]) -> set[int]:
    """Packs whose every blob is among `dead_blobs`."""
    if not dead_blobs:
        return set()
    members: dict[int, set[int]] = {}
    rows = raw.execute(
        "SELECT pack_id, id FROM blobs WHERE pack_id IN "
        "(SELECT b.pack_id FROM blobs b JOIN damaged_blobs d ON d.blob_id = b.id)"
    )
    for pack_id, blob_id in rows:
        members.setdefault(pack_id, set()).add(blob_id)
    return {p for p, blob_ids in members.items() if blob_ids <= dead_blobs}
