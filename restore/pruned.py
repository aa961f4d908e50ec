"""Telling a prune, or another store, from damage when an object a reader needs is missing.

The readers' lock covers readers on the machine that prunes; a reader on another machine is
covered by `delete_after` only (docs/design.md, "Readers and maintenance"). One that outlasts it,
or reads a catalog older than the store's (a home attached before the last prunes), may find
objects gone that its catalog names. That is no damage: the store's current catalog does not
need them. It is told apart cheaply, by reading the root pointer again: if it moved since the
reader began, or does not end in the export this home last read, the catalog was out of date.
If it names another repository than the home's record (a rotated disk, the other one mounted),
that is said instead: attaching to it, as for a prune, would adopt the wrong disk's history.
"""

from __future__ import annotations

from pathlib import Path

from deltagrid.floor.errors import StoreError, StorePruned, WrongStore
from deltagrid.repository import identity
from deltagrid.repository.publisher import last_export_hash
from deltagrid.repository.root import parse_root
from deltagrid.store.base import Store


def pruned(store: Store, began: bytes | None, state: Path, what: str) -> StoreError | None:
    """Why objects were missing for a reader that began when the root was `began`: the error to
    report when another repository or a prune explains it, None when this home reads the
    store's current catalog (the objects are lost: damage)."""
    now = store.read_root()
    root = parse_root(now)
    if root is not None and (
        another := identity.another_repository(store.url, root, identity.load(state))
    ):
        return WrongStore(
            f"{another}: objects this home's catalog names are not there; mount the disk it "
            f"writes to, or read this one with a home of its own ('deltagrid --home DIR attach')"
        )
    if not store.can_delete:
        return None  # nothing is ever deleted there: a missing object is lost
    if root is None or not root["backupdb"]:
        return None
    current = root["backupdb"][-1]["hash"] == last_export_hash(state)
    again = "run it again" if current else f"run 'deltagrid attach', then the {what} again"
    if now != began:
        return StorePruned(f"the store was pruned while this {what} ran: {again}")
    if not current:
        return StorePruned(
            f"the store was pruned after this home's catalog was read (it is older than the "
            f"store's): {again}"
        )
    return None
