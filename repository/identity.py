"""Is the store the one the catalog was written against? The store's identity, the root's
generation, and what the home last wrote.

A repository is named by `store_id`, 128 random bits made once at `init`, and its root pointer
carries a `generation`, one more at each replacement (root.py). The home keeps what it last wrote
or adopted in HOME/state/store.json: that store id, generation and snapshot, and while a root
replacement is under way the generation and export hash being written (`pending`), so that a
kill between the root's replacement and this record reads as our own write, not another home's.
It lives beside `last-export.*` rather than in the backupdb: the publisher writes them at the
same moment, `attach` replaces all of them together, and it needs no schema change.

Before a writer writes, the store's root is compared with that record (`compare`, no store read
of its own) and a few objects the catalog names are probed (`check`):

- another store id: another repository (two disks rotated at one mount point);
- the same id at a lower generation or an older snapshot: a store behind the home (a NAS
  snapshot rolled back, a copy restored);
- a higher generation this home did not write: another home wrote since (run `attach`);
- no root though the home wrote one, or probed objects missing: the store lost objects.

A root from before store ids has neither field: it is compared by snapshot numbers alone, and
the next write gives it the home's id (or a new one) and a generation.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deltagrid.backupdb.packs import probe_sample
from deltagrid.backupdb.snapshots import last_snapshot_id
from deltagrid.floor.errors import WrongStore
from deltagrid.floor.fs import atomic_write
from deltagrid.repository.root import parse_root
from deltagrid.store.base import Store

RECORD = "store.json"
PROBE_NEWEST = 3  # newest packs probed: what a rolled-back or emptied store lost first
PROBE_RANDOM = 3  # older packs drawn at random
FIX_LOST = (
    "run 'deltagrid repair' to upload again what the sources still hold, or start a new home "
    "(--home DIR) with an empty store"
)


@dataclass
class Seen:
    """The store as this home last wrote or adopted it."""

    store_id: str | None = None  # None: a home from before store ids
    generation: int = 0  # of the root it last wrote; 0: none yet
    snapshot: int = 0  # that root's snapshot
    pending: dict[str, Any] | None = None  # {"generation", "hash"} of a root being written


def new_store_id() -> str:
    return secrets.token_hex(16)


def short(store_id: str | None) -> str:
    return store_id[:8] if store_id else "none"


def load(state: Path) -> Seen:
    """The record; an empty one (compared by snapshot numbers) when it is missing or unreadable."""
    try:
        doc = json.loads((state / RECORD).read_text())
        return Seen(doc["store_id"], int(doc["generation"]), int(doc["snapshot"]), doc["pending"])
    except (OSError, ValueError, TypeError, KeyError):
        return Seen()


def save(state: Path, seen: Seen) -> None:
    state.mkdir(parents=True, exist_ok=True)
    atomic_write(state / RECORD, json.dumps(asdict(seen)).encode())


def adopted(root: dict[str, Any]) -> Seen:
    """The record of a home that takes the store's history as it is (attach)."""
    return Seen(root.get("store_id"), root.get("generation", 0), int(root["snapshot"]))


def compare(
    url: str, root: dict[str, Any] | None, seen: Seen, latest: int, repairing: bool = False
) -> Seen:
    """Raise WrongStore unless the store's `root` continues what this home wrote (`seen`; its
    backupdb's newest snapshot is `latest`). Returns the record to continue from: `seen`, or
    the root a kill left this home's own write in. `repairing`: `repair` puts back what a
    wiped or rolled-back store lost, so only another repository, or a store another home wrote
    to since, is refused."""
    if root is None and repairing:
        return seen
    if root is None:
        if seen.generation or latest > 1:  # a root was published (upload publishes first)
            raise WrongStore(
                f"the store at {url} has no root pointer, though this home wrote snapshot "
                f"{seen.snapshot or latest} to it: it was wiped, or it is another, empty disk; "
                f"nothing was written; {FIX_LOST}"
            )
        return seen
    rid, rgen, published = root.get("store_id"), root.get("generation", 0), root["snapshot"]
    if another := another_repository(url, root, seen):
        raise WrongStore(
            f"{another}; nothing was written; keep one home per disk (--home DIR), or run "
            "'deltagrid attach' to adopt that store's history"
        )
    if published > latest:
        raise WrongStore(
            f"the store at {url} has snapshot {published} but the local backupdb only {latest}; "
            "nothing was written; run 'deltagrid attach' to bring it up to date"
        )
    if rid and rid == seen.store_id and rgen > seen.generation:
        if _our_write(root, seen):
            return Seen(rid, rgen, published)
        raise WrongStore(
            f"the store at {url} was written by another home since this one wrote it "
            f"(generation {rgen}, this home's {seen.generation}); nothing was written; run "
            "'deltagrid attach' to bring this home up to date"
        )
    behind = published < seen.snapshot or published < latest - 1 or (rid and rgen < seen.generation)
    if behind and not repairing:
        raise WrongStore(
            f"the store at {url} is behind this home: it holds snapshot {published}"
            f"{_gen(rgen)}, this home wrote snapshot {max(seen.snapshot, latest)}"
            f"{_gen(seen.generation)} (a rolled-back or restored copy?); nothing was written; "
            "run 'deltagrid attach' to adopt the store's history as it is (the next backup "
            "uploads again what changed since), or 'deltagrid repair' to keep this home's"
        )
    return seen


def another_repository(url: str, root: dict[str, Any], seen: Seen) -> str | None:
    """What to say when the store's root names another repository than the home's record."""
    rid = root.get("store_id")
    if not (rid and seen.store_id and rid != seen.store_id):
        return None
    return (
        f"the store at {url} is another repository (store id {short(rid)}, snapshot "
        f"{root['snapshot']}) than the one this home writes to (store id "
        f"{short(seen.store_id)}, snapshot {seen.snapshot})"
    )


def _gen(generation: int) -> str:
    return f" (generation {generation})" if generation else ""


def _our_write(root: dict[str, Any], seen: Seen) -> bool:
    """The root is the one this home was writing when it was killed, before its record."""
    pending, chain = seen.pending, root["backupdb"]
    return bool(
        pending
        and chain
        and pending.get("generation") == root.get("generation")
        and pending.get("hash") == chain[-1]["hash"]
    )


def check(store: Store, state: Path, conn: sqlite3.Connection, repairing: bool = False) -> None:
    """Before a writer writes anything: compare the store's root with the home's record, then
    probe a few objects the catalog names (the newest packs, a random few, the root's full
    export). One root read and at most seven probes, whatever the size of the store. `repair`
    skips the probes: finding what is lost is its job."""
    root = parse_root(store.read_root())
    compare(store.url, root, load(state), last_snapshot_id(conn), repairing)
    if repairing:
        return
    probes = probe_sample(conn, PROBE_NEWEST, PROBE_RANDOM)
    if root is not None and root["backupdb"]:
        full = root["backupdb"][0]
        probes.append((full["ref"], full["size"]))
    missing = [ref for ref, size in probes if not store.holds(ref, size)]
    if missing:
        raise WrongStore(
            f"the store at {store.url} lost objects this home's catalog names ({len(missing)} "
            f"of {len(probes)} probed are missing or cut short, e.g. {missing[0][:24]}...); "
            f"nothing was written; {FIX_LOST}"
        )
