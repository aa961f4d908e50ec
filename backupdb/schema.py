"""Every table of the backupdb, in one place.

Catalog tables are append-only: a row is never updated in place, and a version's end of life is a
row of its own in `version_ends`. Uniqueness and lookups live in separate `Index` objects, never
in the CREATE TABLE, so the export (tables in rowid order, no indexes) changes only at its ends
from one night to the next and its rdiff delta stays small. Local tables (the queue, scans) never
leave the machine.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
)

from deltagrid.backupdb.connection import SCHEMA_VERSION as SCHEMA_VERSION  # its history is there

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("started_ns", Integer, nullable=False),
    Column("committed_ns", Integer, nullable=False),
    Column("hostname", Text, nullable=False),
    Column("sources", Text, nullable=False),  # JSON list of the roots scanned
    Column("files", Integer, nullable=False),  # regular files live in the snapshot
    Column("bytes_added", Integer, nullable=False),  # pack bytes put to the store for it
    Column("stats", Text, nullable=False),  # JSON counts of the run that made it
)

paths = Table(
    "paths",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("parent_id", Integer),
    Column("path", LargeBinary, nullable=False),  # absolute, as bytes
)
Index("paths_by_path", paths.c.path, unique=True)
Index("paths_by_parent", paths.c.parent_id)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("path_id", Integer, nullable=False),
    Column("valid_from", Integer, nullable=False),  # first snapshot id in which it is live
    # f file, d directory, l symlink, p FIFO, c character device, b block device
    Column("kind", String(1), nullable=False),
    Column("mode", Integer, nullable=False),
    Column("uid", Integer, nullable=False),
    Column("gid", Integer, nullable=False),
    Column("size", Integer, nullable=False),
    # Times: INTEGER ns, or past 64 bits their decimal digits as a BLOB (entries.time_to_db)
    Column("mtime_ns", Integer, nullable=False),
    Column("ctime_ns", Integer, nullable=False),
    Column("inode", Integer, nullable=False),
    Column("dev", Integer, nullable=False),
    Column("nlink", Integer, nullable=False),
    Column("target", LargeBinary),  # symlink target
    Column("content_id", Integer),  # regular files only
    Column("recheck", Boolean, nullable=False),  # the next scan must read it again
    Column("xattrs", LargeBinary),  # extended attributes and ACLs (floor/xattrs.py); NULL: none
    # Schema 7, last as ALTER TABLE adds it: a sparse file's data runs (floor/sparse.py), whose
    # bytes, one after the other, are its content; NULL for a file without holes
    Column("extents", LargeBinary),
    Column("rdev", Integer),  # schema 9: a device node's device number; NULL for other kinds
)
Index("versions_by_path", versions.c.path_id, versions.c.id)
Index("versions_by_content", versions.c.content_id)

version_ends = Table(
    "version_ends",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("valid_until", Integer, nullable=False),  # first snapshot id in which it is gone
)
Index("version_ends_by_version", version_ends.c.version_id, unique=True)

contents = Table(
    "contents",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("hash", LargeBinary, nullable=False),  # BLAKE2b-256 of the file's bytes
    Column("size", Integer, nullable=False),
    Column("basis_id", Integer),  # NULL: a keyframe; else a delta against this content
    Column("depth", Integer, nullable=False),  # deltas between it and its keyframe
    Column("chain_bytes", Integer, nullable=False),  # delta bytes on that chain
)
# A hash is found by its first 8 bytes (sql.HASH_KEY): a random key, so every new row lands on a
# page at random; a third of the full hash's index, it dirties a third of the pages a night
# rewrites. The full hash is compared after. add_contents keeps one content a hash.
Index("contents_by_hash_key", func.substr(contents.c.hash, 1, 8))
# The deltas built on a content (damage.py); keyframes, most contents, have no entry.
Index("contents_deltas", contents.c.basis_id, sqlite_where=contents.c.basis_id.isnot(None))

content_blobs = Table(
    "content_blobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("content_id", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("blob_id", Integer, nullable=False),
)
Index("content_blobs_by_content", content_blobs.c.content_id, content_blobs.c.seq)

blobs = Table(
    "blobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pack_id", Integer, nullable=False),
    Column("offset", Integer, nullable=False),
    Column("length", Integer, nullable=False),  # stored (compressed) length
    Column("raw_length", Integer, nullable=False),
    Column("hash", LargeBinary, nullable=False),  # BLAKE2b-256 of the raw bytes
)
Index("blobs_by_hash_key", func.substr(blobs.c.hash, 1, 8))  # as contents_by_hash_key
Index("blobs_by_pack", blobs.c.pack_id)

packs = Table(
    "packs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ref", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("snapshot_id", Integer, nullable=False),  # the snapshot whose upload put it
)
Index("packs_by_ref", packs.c.ref)

forgotten = Table(
    "forgotten",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("snapshot_id", Integer, nullable=False),
    Column("forgotten_ns", Integer, nullable=False),
)
Index("forgotten_by_snapshot", forgotten.c.snapshot_id, unique=True)

# Blobs found damaged (bytes that do not match their hash, or a pack missing or cut short), as
# `verify`, `restore` or `repair` found them: no backup reuses such a blob or builds a delta on a
# content whose chain holds one. Exported, so another machine attached to the store knows too.
damaged_blobs = Table(
    "damaged_blobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("blob_id", Integer, nullable=False),
    Column("found_ns", Integer, nullable=False),
    Column("how", Text, nullable=False),  # bytes do not match, pack missing, pack truncated
)
Index("damaged_blobs_by_blob", damaged_blobs.c.blob_id, unique=True)


# connection.CATALOG names the catalog tables, in export order; connection.LOCAL the rest.

# Local tables: the machine's own work, never exported.

scans = Table(
    "scans",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("started_ns", Integer, nullable=False),
    Column("finished_ns", Integer),  # NULL while running or if interrupted
    Column("roots", Text, nullable=False),  # JSON list of roots (surrogate-escaped)
    Column("counts", Text),  # JSON counts by reason
    Column("errors", Integer, nullable=False, default=0),
)

queue = Table(
    "queue",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scan_id", Integer, nullable=False),
    Column("path", LargeBinary, nullable=False),
    Column("reason", String(8), nullable=False),  # new, changed, meta, deleted
    Column("kind", String(1), nullable=False),
    Column("size", Integer, nullable=False),
    Column("mtime_ns", Integer, nullable=False),  # as in versions
    Column("inode", Integer, nullable=False),
    Column("dev", Integer, nullable=False),
    Column("prev_version_id", Integer),  # the live version when scanned
    Column("done", Boolean, nullable=False, default=False),
    Column("outcome", String(12)),  # stored, unchanged, vanished, unreadable
)
# A queued file costs no index entry: the uploader reads the pending rows in id order (the
# table's own) and marks them done in place; a finished scan looks for older rows below its
# roots once (a pass over the queue); the deleted entries are few.
Index("queue_deleted", queue.c.scan_id, sqlite_where=queue.c.reason == "deleted")

scan_errors = Table(
    "scan_errors",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scan_id", Integer, nullable=False),
    Column("path", LargeBinary, nullable=False),
    Column("message", Text, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("command", Text, nullable=False),  # scan, upload, backup, forget, prune, compact
    Column("argv", Text, nullable=False),  # JSON list of the arguments after `deltagrid`
    Column("started_ns", Integer, nullable=False),
    Column("finished_ns", Integer, nullable=False),
    Column("exit_code", Integer, nullable=False),
    Column("snapshot_id", Integer),  # the snapshot the run committed, if any
    Column("files", Integer, nullable=False),  # files stored (scan: entries queued)
    Column("bytes_read", Integer, nullable=False),
    Column("bytes_uploaded", Integer, nullable=False),  # pack bytes put to the store
    Column("store_bytes", Integer),  # pack bytes the catalog references after the run
    Column("summary", Text, nullable=False),  # one line: what the run did, or why it failed
    Column("error_count", Integer, nullable=False),
    Column("errors", Text, nullable=False),  # JSON list of {path, error}, the first 1,000
)

# Store objects nothing names any more (packs prune dropped, backupdb exports a newer root
# replaced, orphans of killed runs), which prune and compact delete only once they have been
# unreferenced for `[maintenance] delete_after`: a reader on another machine, which the readers'
# lock does not reach, may still read them from the catalog it began with. A row is added in the
# transaction that stops naming its object; `since_ns` stays NULL until a root pointer that does
# not name it is in place (the grace period counts from then). Local, not exported: the export
# would otherwise change with every prune, leaving its predecessor to delete, forever; and a
# machine that takes the store over finds the same objects by listing it (they are what neither
# catalog nor root names), and starts their grace period then: later, never earlier.
unreferenced = Table(
    "unreferenced",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ref", Text, nullable=False),
    Column("since_ns", Integer),
)
Index("unreferenced_by_ref", unreferenced.c.ref, unique=True)
