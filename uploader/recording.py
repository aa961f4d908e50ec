"""What the upload records: each finished entry's new content, path and version, the versions it
ends and its queue row's done mark — written in the transaction that records the pack holding
the entry's last blob, so a kill loses at most the pack in flight."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import TypeGuard

from deltagrid.backupdb import upload_queries
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


def record_entries(
    conn: sqlite3.Connection, records: list[Record], snapshot_id: int
) -> list[PendingContent]:
    """Record the finished entries (inside the caller's transaction); the new contents they
    brought, now with ids."""
    new = _add_contents(conn, records)
    stored = [r.path for r in records if r.meta is not None]
    path_ids = upload_queries.ensure_paths(conn, stored)
    new_versions = []
    for rec in records:
        if rec.meta is not None:
            content = rec.content
            content_id = content.id if isinstance(content, PendingContent) else content
            path_id = path_ids[rec.path]
            new_versions.append((path_id, snapshot_id, *rec.meta.values(), content_id, rec.recheck))
    ends = [r.end for r in records if r.end is not None]
    upload_queries.end_versions(conn, ends + [v for r in records for v in r.end_below], snapshot_id)
    upload_queries.add_versions(conn, new_versions)
    upload_queries.mark_done(conn, [(rec.qid, rec.outcome) for rec in records])
    return new


def _add_contents(conn: sqlite3.Connection, records: list[Record]) -> list[PendingContent]:
    """Insert the new contents the finished entries use; their blobs all have ids now."""
    new = list({id(r.content): r.content for r in records if unrecorded(r.content)}.values())
    rows = []
    for content in new:
        blob_ids = []
        for b in content.blobs:
            if isinstance(b, PendingBlob):
                assert b.id is not None, "a finished file's blob is still in the spool"
                blob_ids.append(b.id)
            else:
                blob_ids.append(b)
        rows.append(
            upload_queries.NewContent(
                content.digest,
                content.size,
                content.basis_id,
                content.depth,
                content.chain_bytes,
                blob_ids,
            )
        )
    for content, content_id in zip(new, upload_queries.add_contents(conn, rows), strict=True):
        content.id = content_id
    return new


def unrecorded(content: PendingContent | int | None) -> TypeGuard[PendingContent]:
    return isinstance(content, PendingContent) and content.id is None
