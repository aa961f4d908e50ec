"""Recovery from the store alone: rebuild the local backupdb from the root pointer.

The root names the backupdb's newest export as a full export plus rdiff deltas; each step is
hash-checked, the export is loaded into a fresh backupdb beside the old one and renamed into place,
and the export's signature is kept so the next commit continues the same delta chain. The home
then writes to that store as it is: its id, generation and snapshot are what the home last saw,
whatever store or history the home followed before (another disk, a rolled-back copy).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

from deltagrid.backupdb import export
from deltagrid.floor import rdiff
from deltagrid.floor.errors import DeltagridError
from deltagrid.floor.fs import atomic_write, fsync_dir
from deltagrid.repository import identity
from deltagrid.repository.fetch import fetch_export
from deltagrid.repository.root import EXPORT_BLOCK, parse_root
from deltagrid.store.base import Store
from deltagrid.store.pack import digest


def attach(store: Store, db_path: Path, state: Path) -> int:
    """Replace the backupdb at `db_path` with the store's; return the latest snapshot id."""
    root = parse_root(store.read_root())
    if root is None or not root["backupdb"]:
        raise DeltagridError(f"{store.url} holds no snapshot yet: nothing to attach")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=db_path.parent, prefix=".attach-") as tmp:
        exported = Path(tmp) / "export.sqlite"
        fetch_export(store, root, exported)
        rebuilt = Path(tmp) / "backupdb.sqlite"
        export.load(exported, rebuilt)
        with open(rebuilt, "rb+") as f:
            os.fsync(f.fileno())
        _set_aside(db_path)
        os.replace(rebuilt, db_path)
        fsync_dir(db_path.parent)
        sig = io.BytesIO()
        magic, _block, strong = rdiff.signature_args(exported.stat().st_size)
        with open(exported, "rb") as f:
            rdiff.signature(f, sig, strong, magic, EXPORT_BLOCK)
    state.mkdir(parents=True, exist_ok=True)
    atomic_write(state / "last-export.sig", sig.getvalue())
    # fetch_export checked the export against the hash its root records: no need to read it again
    record = {"hash": root["backupdb"][-1]["hash"], "sig": digest(sig.getvalue()).hex()}
    atomic_write(state / "last-export.json", json.dumps(record).encode())
    identity.save(state, identity.adopted(root))
    return int(root["snapshot"])


def _set_aside(db_path: Path) -> None:
    """Keep a previous (maybe damaged) backupdb, with its WAL, under a dated name."""
    suffixes = ("", "-wal", "-shm")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = f"{db_path}.old-{stamp}"
    n = 1
    while any(os.path.lexists(aside + s) for s in suffixes):  # two repairs in one second
        n += 1
        aside = f"{db_path}.old-{stamp}.{n}"
    for suffix in suffixes:
        old = Path(str(db_path) + suffix)
        if old.exists():
            os.replace(old, Path(aside + suffix))
