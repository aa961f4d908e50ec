"""What the upload records: a pack put, its blobs, and each finished entry's new content, path and
version, the versions it ends and its queue row's done mark — one transaction, in which the pack
holding an entry's last blob is recorded, so a kill loses at most the packs put and not recorded.

The upload hands over a transaction as plain values (`encode`: tuples, bytes and numbers, no
objects of ours), which `apply` writes, on the upload's connection or in the recorder process
(recorder.py). Its answer gives the new blobs and contents their ids, for the next transactions
and the catalog cache.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from deltagrid.backupdb import upload_queries
from deltagrid.backupdb.connection import transaction
from deltagrid.backupdb.entries import Meta
from deltagrid.uploader.packing import PendingBlob


@dataclass(eq=False)
class PendingContent:
    digest: bytes
    size: int
    basis_id: int | None
    depth: int
    chain_bytes: int
    blobs: list[PendingBlob | int]
    id: int | None = None


@dataclass
class Record:
    """What one queue row changes in the backupdb, written when its blobs are safe."""

    qid: int
    outcome: str
    path: bytes
    end: int | None = None  # version that stops being live
    meta: Meta | None = None  # new version, if any
    content: PendingContent | int | None = None
    recheck: bool = False
    end_below: list[int] = field(default_factory=list)  # a directory gone: what was inside it


# A pack put, to be recorded with its blobs: (its ref, its size, its blobs in order).
PutPack = tuple[str, int, list[PendingBlob]]
# A transaction as plain values: (snapshot, fresh, pack or None, entries); `fresh`: its new
# contents cannot be in the catalog (add_contents). A pack is (ref, size, blob
# index entries); an entry is (queue row, outcome, path, version ended, Meta.values() or None,
# content, recheck, versions ended below). A content is None, an id, a hash (one added earlier
# in the same transaction) or a new one: (hash, size, basis, depth, chain bytes, blobs), where a
# blob is an id or the hash of a blob of the transaction's pack.
Message = tuple[int, bool, Any, list[tuple[Any, ...]]]
# What `apply` answers: the ids of the pack's blobs, in order, and of the new contents, in the
# order the message brought them.
Answer = tuple[list[int], list[int]]


def encode(
    snapshot_id: int, fresh: bool, pack: PutPack | None, records: list[Record]
) -> tuple[Message, list[PendingContent]]:
    """The transaction that records `pack` and `records`, and the new contents it adds (to be
    given their ids from the answer). Contents and blobs added by earlier transactions have
    their ids by now (the upload takes each answer before it encodes the next)."""
    new: list[PendingContent] = []
    seen: set[int] = set()
    entries = []
    for rec in records:
        content: Any = rec.content
        if isinstance(content, PendingContent):
            if content.id is not None:
                content = content.id
            elif id(content) in seen:
                content = content.digest
            else:
                seen.add(id(content))
                new.append(content)
                content = (
                    content.digest,
                    content.size,
                    content.basis_id,
                    content.depth,
                    content.chain_bytes,
                    [b if isinstance(b, int) else _blob(b) for b in content.blobs],
                )
        values = None if rec.meta is None else rec.meta.values()
        entries.append(
            (rec.qid, rec.outcome, rec.path, rec.end, values, content, rec.recheck, rec.end_below)
        )
    put = None
    if pack is not None:
        ref, size, in_pack = pack
        put = (
            ref,
            size,
            [(e.offset, e.length, e.raw_length, e.hash) for e in (b.entry for b in in_pack)],
        )
    return (snapshot_id, fresh, put, entries), new


def _blob(blob: PendingBlob) -> int | bytes:
    return blob.id if blob.id is not None else blob.entry.hash


def apply(conn: sqlite3.Connection, message: Message) -> Answer:
    """Write the transaction `message` holds: committed whole, or rolled back if it raises."""
    snapshot_id, fresh, pack, entries = message
    with transaction(conn):
        blob_ids: list[int] = []
        in_pack: dict[bytes, int] = {}
        if pack is not None:
            ref, size, index = pack
            pack_id = upload_queries.add_pack(conn, ref, size, snapshot_id)
            blob_ids = upload_queries.add_blobs(conn, pack_id, index)
            in_pack = {e[3]: blob_id for e, blob_id in zip(index, blob_ids, strict=True)}
        content_ids = _record_entries(conn, snapshot_id, fresh, entries, in_pack)
    return blob_ids, content_ids


def _record_entries(
    conn: sqlite3.Connection,
    snapshot_id: int,
    fresh: bool,
    entries: list[tuple[Any, ...]],
    in_pack: dict[bytes, int],
) -> list[int]:
    """The entries' new contents, paths, versions, ended versions and done marks; the new
    contents' ids."""
    new = [e[5] for e in entries if type(e[5]) is tuple]
    rows = [
        upload_queries.NewContent(
            digest, size, basis, depth, chain, [b if type(b) is int else in_pack[b] for b in blobs]
        )
        for digest, size, basis, depth, chain, blobs in new
    ]
    content_ids = upload_queries.add_contents(conn, rows, fresh)
    by_hash = {c[0]: i for c, i in zip(new, content_ids, strict=True)}
    path_ids = upload_queries.ensure_paths(conn, [e[2] for e in entries if e[4] is not None])
    versions = []
    for _qid, _outcome, path, _end, values, content, recheck, _below in entries:
        if values is not None:
            if type(content) is tuple:
                content = by_hash[content[0]]
            elif type(content) is bytes:
                content = by_hash[content]
            versions.append((path_ids[path], snapshot_id, *values, content, recheck))
    ended = [e[3] for e in entries if e[3] is not None] + [v for e in entries for v in e[7]]
    upload_queries.end_versions(conn, ended, snapshot_id)
    upload_queries.add_versions(conn, versions)
    upload_queries.mark_done(conn, [(e[0], e[1]) for e in entries])
    return content_ids
