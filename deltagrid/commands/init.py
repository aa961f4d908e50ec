"""`deltagrid init [--store URL]`: create the repository (default store: HOME/store)."""

from __future__ import annotations

import argparse

from deltagrid.floor.errors import DeltagridError, UsageError
from deltagrid.home import Home
from deltagrid.output import Output
from deltagrid.repository import identity
from deltagrid.repository.root import parse_root
from deltagrid.store import open_store


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("init", parents=[common], help="create the repository")
    p.add_argument("--store", help="store URL (default: file://HOME/store)")
    p.set_defaults(run=run)


def initialise(home: Home, store_url: str | None) -> tuple[str, str | None, str | None]:
    """Create config, backupdb and store; refuse to take over an existing repository.

    Returns the store URL and, for a Tahoe store, the root's write and read capabilities.
    """
    if home.initialised():
        raise DeltagridError(f"{home.path} already holds a deltagrid repository")
    settings = home.settings()
    if store_url and settings.store and store_url != settings.store:
        raise UsageError(
            f"--store {store_url} differs from the store {home.config_path} names "
            f"({settings.store}): change or remove that line first"
        )
    if settings.cap:  # a copied config of a grid that has backups: never make a new root
        raise DeltagridError(
            f"{home.config_path} holds the capability of an existing store; run "
            "'deltagrid attach' to continue its backups"
        )
    url = store_url or settings.store or home.default_store_url()
    store = open_store(url, create=True)
    writecap = readcap = None
    try:
        if url.startswith("tahoe:"):
            from deltagrid.store.tahoe import TahoeStore  # only for a grid: it loads requests

            assert isinstance(store, TahoeStore)
            writecap, readcap = store.create_root()
        elif parse_root(store.read_root()) is not None:
            raise DeltagridError(
                f"{url} already holds backups; use 'deltagrid attach' to continue them"
            )
    finally:
        store.close()
    home.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for leftover in ("", "-wal", "-shm"):  # an empty backupdb a killed init left, with its WAL
        home.db_path.with_name(home.db_path.name + leftover).unlink(missing_ok=True)
    home.create_db().close()
    identity.save(home.state, identity.Seen(identity.new_store_id()))  # the root gets it
    home.write_config(url, writecap)
    return url, writecap, readcap


def ensure(home: Home, out: Output) -> None:
    """Create the repository a first `backup` or `scan` needs (the config's store, else the
    embedded one); the caller holds the lock."""
    if not home.initialised():
        url, _writecap, _readcap = initialise(home, None)
        out.info(f"created repository in {home.path}, store {url}")


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    with home.lock():
        url, writecap, readcap = initialise(home, args.store)
    out.info(f"created repository in {home.path}, store {url}")
    if writecap:
        out.line("keep this capability somewhere safe; with it, any machine can restore and")
        out.line("continue these backups (deltagrid attach --store URL --cap CAP):")
        out.line(f"  {writecap}")
        out.line(f"read-only capability (restore only): {readcap}")
    out.document({"home": str(home.path), "store": url, "cap": writecap, "readcap": readcap})
    return 0
