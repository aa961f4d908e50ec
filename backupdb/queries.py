"""Queries over the backupdb through SQLAlchemy Core, for everything but a night's run.

A night's scan, upload and commit run on plain sqlite3 (scan_queries.py, upload_queries.py,
snapshots.py); the few of those queries other code needs too are called from here on the sqlite3
connection under SQLAlchemy's (`driver`), in its transaction. A version is live in snapshot S
when valid_from <= S and it has no end, or ends after S. Readers only look at snapshots the root
pointer has published.
Restore's reads are in restore_queries.py, on plain sqlite3; `ls` too, and `diff`, `verify` and
maintenance on `driver`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.sql import Select

from deltagrid.backupdb import sql, upload_queries
from deltagrid.backupdb.schema import (
    blobs,
    content_blobs,
    contents,
    damaged_blobs,
    forgotten,
    packs,
    paths,
    queue,
    runs,
    scan_errors,
    snapshots,
    version_ends,
    versions,
)
from deltagrid.backupdb.snapshots import last_snapshot_id as _last_snapshot_id


def _new_id(conn: Connection, statement: Any, params: dict[str, Any] | None = None) -> int:
    """Execute an INSERT and return the new row's id.

    The per-file statements below are built once, with their values passed as parameters:
    SQLAlchemy then finds them in its compiled cache at once instead of building and keying a
    new statement per row (about 4x cheaper, which matters at 100,000 files a night).
    """
    rowid = conn.execute(statement, params).lastrowid
    assert rowid is not None
    return int(rowid)


_not_ended = ~exists().where(version_ends.c.version_id == versions.c.id)


def live_in(snapshot_id: int) -> Any:
    """SQL condition: the version is live in `snapshot_id` (sql.LIVE_AT, for SQLAlchemy)."""
    ended_by = (
        select(version_ends.c.valid_until)
        .where(version_ends.c.version_id == versions.c.id)
        .scalar_subquery()
    )
    return and_(
        versions.c.valid_from <= snapshot_id,
        or_(ended_by.is_(None), ended_by > snapshot_id),
    )


# --- snapshots --------------------------------------------------------------------------------


def last_snapshot_id(conn: Connection) -> int:
    """The newest snapshot recorded locally, 0 when there is none."""
    return _last_snapshot_id(driver(conn))


_not_forgotten = ~exists().where(forgotten.c.snapshot_id == snapshots.c.id)


def list_snapshots(conn: Connection, upto: int) -> list[Row[Any]]:
    """Snapshots up to `upto` that were not forgotten, oldest first."""
    return list(
        conn.execute(
            select(snapshots).where(snapshots.c.id <= upto, _not_forgotten).order_by(snapshots.c.id)
        )
    )


def forget(conn: Connection, snapshot_ids: Iterable[int]) -> None:
    """Mark snapshots forgotten: gone from listings at once, their data dropped by prune."""
    now = time.time_ns()
    rows = [{"snapshot_id": sid, "forgotten_ns": now} for sid in snapshot_ids]
    if rows:
        conn.execute(insert(forgotten), rows)


# --- paths and versions -----------------------------------------------------------------------


_PATH_ID = select(paths.c.id).where(paths.c.path == bindparam("path"))


def path_id(conn: Connection, path: bytes) -> int | None:
    return conn.execute(_PATH_ID, {"path": path}).scalar()


def ensure_path(conn: Connection, path: bytes, dirs: dict[bytes, int] | None = None) -> int:
    """The id of `path`, adding it and any missing ancestors; `dirs` caches the ancestors' ids
    across calls (directories only, so it stays small)."""
    found = path_id(conn, path)
    if found is not None:
        return found
    parent = None
    if path != b"/":
        head = path.rsplit(b"/", 1)[0] or b"/"
        parent = dirs.get(head) if dirs is not None else None
        if parent is None:
            parent = ensure_path(conn, head, dirs)
            if dirs is not None:
                dirs[head] = parent
    return _new_id(conn, insert(paths), {"parent_id": parent, "path": path})


def _versions(*extra: Any) -> Select[Any]:
    """Versions joined with their paths."""
    return select(paths.c.path, *versions.c, *extra).join(paths, paths.c.id == versions.c.path_id)


def driver(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under `conn` (same transaction)."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw


_LIVE_VERSION = _versions().where(paths.c.path == bindparam("path"), _not_ended)


def live_version(conn: Connection, path: bytes) -> Row[Any] | None:
    return conn.execute(_LIVE_VERSION, {"path": path}).first()


def _writing(conn: Connection) -> sqlite3.Connection:
    """The DB-API connection, inside `conn`'s transaction (begun here when none is: the driver
    alone would commit each statement on its own)."""
    if not conn.in_transaction():
        conn.begin()
    return driver(conn)


def add_version(
    conn: Connection,
    path_id_: int,
    valid_from: int,
    columns: dict[str, Any],
    content_id: int | None,
    recheck: bool,
) -> None:
    """A version of `columns` (versions columns by name; those left out are NULL)."""
    row = {"path_id": path_id_, "valid_from": valid_from, "content_id": content_id}
    conn.execute(insert(versions), {**row, "recheck": recheck, **columns})


def version_changes(conn: Connection, snapshot_id: int) -> Iterator[Row[Any]]:
    """Versions that begin in a snapshot."""
    yield from conn.execute(select(versions).where(versions.c.valid_from == snapshot_id))


# --- contents, blobs, packs -------------------------------------------------------------------


def add_pack(conn: Connection, ref: str, size: int, snapshot_id: int) -> int:
    return upload_queries.add_pack(_writing(conn), ref, size, snapshot_id)


def add_blob(
    conn: Connection, pack_id: int, offset: int, length: int, raw_length: int, digest: bytes
) -> int:
    return upload_queries.add_blobs(
        _writing(conn), pack_id, [(offset, length, raw_length, digest)]
    )[0]


def all_packs(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(select(packs).order_by(packs.c.id)))


def all_contents(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(select(contents).order_by(contents.c.id)))


def contents_live_in(conn: Connection, snapshot_id: int) -> set[int]:
    return set(
        conn.execute(
            select(versions.c.content_id).where(
                live_in(snapshot_id), versions.c.content_id.is_not(None)
            )
        ).scalars()
    )


def snapshots_using(conn: Connection, content_ids: Iterable[int], upto: int) -> list[int]:
    """Snapshots in which a version with one of these contents is live."""
    ids = list(content_ids)
    rows = conn.execute(
        select(versions.c.valid_from, version_ends.c.valid_until)
        .outerjoin(version_ends, version_ends.c.version_id == versions.c.id)
        .where(versions.c.content_id.in_(ids))
    )
    found: set[int] = set()
    for valid_from, valid_until in rows:
        found.update(range(valid_from, min(valid_until or upto + 1, upto + 1)))
    return sorted(found)


# --- scans and the queue ----------------------------------------------------------------------


def scan_errors_since(conn: Connection, first_scan_id: int) -> list[Row[Any]]:
    return list(conn.execute(select(scan_errors).where(scan_errors.c.scan_id >= first_scan_id)))


def only_in(conn: Connection, present: int, absent: int) -> dict[bytes, Row[Any]]:
    """Versions live in snapshot `present` but not in `absent`, by path."""
    rows = conn.execute(
        _versions(contents.c.hash.label("content_hash"))
        .outerjoin(contents, contents.c.id == versions.c.content_id)
        .where(live_in(present), ~live_in(absent))
    )
    return {row.path: row for row in rows}


def paths_using(conn: Connection, content_id: int) -> list[bytes]:
    """Every path that had a version with this content, in any snapshot."""
    return list(
        conn.execute(
            select(paths.c.path)
            .join(versions, versions.c.path_id == paths.c.id)
            .where(versions.c.content_id == content_id)
            .distinct()
            .order_by(paths.c.path)
        ).scalars()
    )


# --- maintenance ------------------------------------------------------------------------------


def version_spans(conn: Connection) -> list[Row[Any]]:
    """Every version: id, valid_from, valid_until (None while live), content_id."""
    return list(
        conn.execute(
            select(
                versions.c.id,
                versions.c.valid_from,
                version_ends.c.valid_until,
                versions.c.content_id,
            ).outerjoin(version_ends, version_ends.c.version_id == versions.c.id)
        )
    )


def content_blob_ids(conn: Connection) -> dict[int, list[int]]:
    """Each content's blob ids, in order."""
    found: dict[int, list[int]] = {}
    rows = conn.execute(
        select(content_blobs.c.content_id, content_blobs.c.blob_id).order_by(
            content_blobs.c.content_id, content_blobs.c.seq
        )
    )
    for content_id, blob_id in rows:
        found.setdefault(content_id, []).append(blob_id)
    return found


def all_blobs(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(select(blobs)))


def delete_ids(conn: Connection, column: Any, ids: Iterable[int]) -> None:
    """DELETE the rows whose `column` is one of `ids` (chunked)."""
    for chunk in sql.chunks(ids):
        conn.execute(delete(column.table).where(column.in_(chunk)))


def drop_versions(conn: Connection, version_ids: Iterable[int]) -> None:
    ids = list(version_ids)
    delete_ids(conn, version_ends.c.version_id, ids)
    delete_ids(conn, versions.c.id, ids)


def drop_contents(conn: Connection, content_ids: Iterable[int]) -> None:
    ids = list(content_ids)
    delete_ids(conn, content_blobs.c.content_id, ids)
    delete_ids(conn, contents.c.id, ids)


def drop_blobs(conn: Connection, blob_ids: Iterable[int]) -> None:
    """Drop blobs, and what was recorded of their damage: a later blob may get a dropped id."""
    ids = list(blob_ids)
    delete_ids(conn, damaged_blobs.c.blob_id, ids)
    delete_ids(conn, blobs.c.id, ids)


def drop_packs(conn: Connection, pack_ids: Iterable[int]) -> None:
    delete_ids(conn, packs.c.id, pack_ids)


def relocate_blob(conn: Connection, blob_id: int, pack_id: int, offset: int) -> None:
    conn.execute(update(blobs).where(blobs.c.id == blob_id).values(pack_id=pack_id, offset=offset))


def set_chain(
    conn: Connection,
    content_id: int,
    basis_id: int | None,
    depth: int,
    chain_bytes: int,
    blob_ids: Sequence[int] | None = None,
) -> None:
    """Rewrite a content's place in its chain (and, for a new keyframe, its blobs)."""
    conn.execute(
        update(contents)
        .where(contents.c.id == content_id)
        .values(basis_id=basis_id, depth=depth, chain_bytes=chain_bytes)
    )
    if blob_ids is not None:
        conn.execute(delete(content_blobs).where(content_blobs.c.content_id == content_id))
        conn.execute(
            insert(content_blobs),
            [{"content_id": content_id, "seq": i, "blob_id": b} for i, b in enumerate(blob_ids)],
        )


def kept_snapshot_ids(conn: Connection) -> list[int]:
    """Snapshots not forgotten, oldest first (including one recorded but not yet published)."""
    return list(
        conn.execute(
            select(snapshots.c.id).where(_not_forgotten).order_by(snapshots.c.id)
        ).scalars()
    )


# --- history and report -----------------------------------------------------------------------


def last_runs(conn: Connection, limit: int) -> list[Row[Any]]:
    """The newest `limit` runs, newest first."""
    return list(conn.execute(select(runs).order_by(runs.c.id.desc()).limit(limit)))


def store_bytes(conn: Connection) -> int:
    """Pack bytes the catalog references: the store's size, less the small backupdb objects."""
    return int(conn.execute(select(func.coalesce(func.sum(packs.c.size), 0))).scalar_one())


def pack_bytes_by_snapshot(conn: Connection) -> dict[int, int]:
    """Bytes of the packs still referenced, by the snapshot whose upload put them."""
    rows = conn.execute(
        select(packs.c.snapshot_id, func.sum(packs.c.size)).group_by(packs.c.snapshot_id)
    )
    return {sid: int(n) for sid, n in rows}


def queued(conn: Connection, scan_id: int) -> list[Row[Any]]:
    """What a scan queued: path and reason, in queue order."""
    return list(
        conn.execute(
            select(queue.c.path, queue.c.reason)
            .where(queue.c.scan_id == scan_id, queue.c.done.is_(False))
            .order_by(queue.c.id)
        )
    )


def most_versions(conn: Connection, limit: int) -> list[Row[Any]]:
    """The files whose content changed most: path, versions (distinct contents recorded; a
    re-read or a chmod is no new version here, and what prune dropped no longer counts)."""
    n = func.count(versions.c.content_id.distinct()).label("versions")
    return list(
        conn.execute(
            select(paths.c.path, n)
            .join(versions, versions.c.path_id == paths.c.id)
            .where(versions.c.kind == "f")
            .group_by(paths.c.id)
            .order_by(n.desc(), paths.c.path)
            .limit(limit)
        )
    )


def longest_chains(conn: Connection, snapshot_id: int, limit: int) -> list[Row[Any]]:
    """Files live in `snapshot_id` whose content needs the most patches to rebuild: path, size,
    depth (deltas after the keyframe), chain_bytes."""
    return list(
        conn.execute(
            select(paths.c.path, contents.c.size, contents.c.depth, contents.c.chain_bytes)
            .select_from(versions)
            .join(paths, paths.c.id == versions.c.path_id)
            .join(contents, contents.c.id == versions.c.content_id)
            .where(live_in(snapshot_id), versions.c.kind == "f", contents.c.depth > 0)
            .order_by(contents.c.depth.desc(), contents.c.chain_bytes.desc(), paths.c.path)
            .limit(limit)
        )
    )


def chain_depths(conn: Connection, snapshot_id: int) -> dict[int, int]:
    """How many files live in `snapshot_id` need 0, 1, 2... patches to rebuild."""
    n = func.count().label("files")
    rows = conn.execute(
        select(contents.c.depth, n)
        .select_from(versions)
        .join(contents, contents.c.id == versions.c.content_id)
        .where(live_in(snapshot_id), versions.c.kind == "f")
        .group_by(contents.c.depth)
    )
    return {int(depth): int(files) for depth, files in rows}
