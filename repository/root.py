"""The root pointer: the one mutable object of a store, naming the newest snapshot and the chain
of backupdb exports that describes it. Until it moves, a snapshot does not exist for readers.

Root pointer document (JSON, UTF-8):

    {"format": "deltagrid-root/1", "snapshot": 7, "committed_ns": ...,
     "store_id": "<32 hex>", "generation": 12,
     "backupdb": [{"type": "full", "ref": R, "size": N, "hash": H0},
                  {"type": "delta", "ref": R, "size": N, "base": H0, "hash": H1}, ...]}

Each chain entry is a zstd-compressed object: the whole export, or the rdiff delta from the
export whose BLAKE2b is `base` to the one whose BLAKE2b is `hash`. `store_id` names the
repository (made once, at `init`) and `generation` counts the root's replacements, so that a home
tells another repository or a rolled-back copy from its own store (identity.py). Roots written
before both existed lack them; the next write adds them.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from deltagrid.floor.errors import CorruptData
from deltagrid.store.base import Store

ROOT_FORMAT = "deltagrid-root/1"
EXPORT_BLOCK = 1024  # small blocks: an export changes in scattered pages
MAX_OBJECT = 1 << 34
_STORE_ID = re.compile(r"^[0-9a-f]{32}$")


def parse_root(raw: bytes | None) -> dict[str, Any] | None:
    """Decode and sanity-check a root pointer document."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to be a root
        raise CorruptData("the store's root pointer is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != ROOT_FORMAT:
        raise CorruptData("the store's root pointer is not a deltagrid root")
    snap, chain = doc.get("snapshot"), doc.get("backupdb")
    if not isinstance(snap, int) or snap < 0 or not isinstance(chain, list):
        raise CorruptData("the store's root pointer is malformed")
    for entry in chain:
        if not (
            isinstance(entry, dict)
            and entry.get("type") in ("full", "delta")
            and isinstance(entry.get("ref"), str)
            and isinstance(entry.get("hash"), str)
            and isinstance(entry.get("size"), int)
            and entry["size"] >= 0
        ):
            raise CorruptData("the store's root pointer has a malformed backupdb entry")
    store_id, generation = doc.get("store_id"), doc.get("generation")
    if store_id is not None and not (isinstance(store_id, str) and _STORE_ID.match(store_id)):
        raise CorruptData("the store's root pointer has a malformed store_id")
    if generation is not None and not (isinstance(generation, int) and generation > 0):
        raise CorruptData("the store's root pointer has a malformed generation")
    if chain and chain[0]["type"] != "full":
        raise CorruptData("the store's root pointer chain does not start with a full export")
    return doc


def published_snapshot(store: Store) -> int:
    """The newest snapshot readers may see: the one the root pointer names."""
    root = parse_root(store.read_root())
    return int(root["snapshot"]) if root else 0


def new_root(
    snapshot_id: int, chain: list[dict[str, Any]], store_id: str, generation: int
) -> bytes:
    doc = {
        "format": ROOT_FORMAT,
        "snapshot": snapshot_id,
        "committed_ns": time.time_ns(),
        "store_id": store_id,
        "generation": generation,
        "backupdb": chain,
    }
    return json.dumps(doc, indent=1).encode() + b"\n"
