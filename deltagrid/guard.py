"""The store a writer may write to: the home's, once shown to be the one its catalog was
written against (repository/identity.py). `backup`, `upload`, `forget`, `prune` and `compact`
open it before they write anything."""

from __future__ import annotations

from contextlib import closing

from deltagrid.backupdb.snapshots import last_snapshot_id
from deltagrid.floor.errors import NoStore, WrongStore
from deltagrid.home import Home
from deltagrid.repository import identity
from deltagrid.store.base import Store


def writable_store(home: Home, repairing: bool = False) -> Store:
    """The home's store, checked; WrongStore (nothing written) when it is not that store.
    `repairing`: a store that lost objects or fell behind is `repair`'s to mend."""
    with closing(home.connect()) as conn:
        try:
            store = home.store()
        except NoStore as exc:
            wrote = identity.load(home.state).snapshot or last_snapshot_id(conn)
            if not wrote:
                raise
            raise WrongStore(
                f"no deltagrid store at {exc.where}, though this home wrote snapshot {wrote} "
                "to it: the disk is not mounted, is another one, or the store was wiped; "
                f"nothing was written; {identity.FIX_LOST}"
            ) from None
        try:
            identity.check(store, home.state, conn, repairing)
        except BaseException:
            store.close()
            raise
    return store
