"""`deltagrid attach [--store URL] [--cap CAP]`: rebuild the home's backupdb from the store.

On a new machine this makes restore (and, with a write capability, further backups) work; on a
home whose backupdb is lost or damaged it is the repair.
"""

from __future__ import annotations

import argparse

from deltagrid.floor.errors import UsageError
from deltagrid.home import Home
from deltagrid.output import Output
from deltagrid.restore.attach import attach
from deltagrid.store import open_store


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("attach", parents=[common], help="rebuild the backupdb from the store")
    p.add_argument("--store", help="store URL (default: the one in the home's config)")
    p.add_argument("--cap", help="a Tahoe store's root capability, as init printed it")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    url, cap = args.store, args.cap
    if url is None:
        settings = home.settings()  # the store of this home, or one written in by hand
        if not settings.store:
            raise UsageError("attach needs --store URL on a new home")
        url, cap = settings.store, cap or settings.cap
    if url.startswith("tahoe:") and not cap:
        raise UsageError("attaching a tahoe:// store needs --cap CAP")
    with home.lock():
        store = open_store(url, cap=cap)
        try:
            snapshot_id = attach(store, home.db_path, home.state)
        finally:
            store.close()
        home.write_config(url, cap)
    out.info(f"attached {home.path} to {url}: latest snapshot {snapshot_id}")
    out.document({"home": str(home.path), "store": url, "snapshot_id": snapshot_id})
    return 0
