-- Generated from backupdb/schema.py: do not edit. Regenerate with
--   python -m deltagrid.backupdb.schema_sql
-- connection.create runs it to make a new backupdb without importing SQLAlchemy.

CREATE TABLE blobs (
    id INTEGER NOT NULL,
    pack_id INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    length INTEGER NOT NULL,
    raw_length INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE content_blobs (
    id INTEGER NOT NULL,
    content_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    blob_id INTEGER NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE contents (
    id INTEGER NOT NULL,
    hash BLOB NOT NULL,
    size INTEGER NOT NULL,
    basis_id INTEGER,
    depth INTEGER NOT NULL,
    chain_bytes INTEGER NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE damaged_blobs (
    id INTEGER NOT NULL,
    blob_id INTEGER NOT NULL,
    found_ns INTEGER NOT NULL,
    how TEXT NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE forgotten (
    id INTEGER NOT NULL,
    snapshot_id INTEGER NOT NULL,
    forgotten_ns INTEGER NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE packs (
    id INTEGER NOT NULL,
    ref TEXT NOT NULL,
    size INTEGER NOT NULL,
    snapshot_id INTEGER NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE paths (
    id INTEGER NOT NULL,
    parent_id INTEGER,
    path BLOB NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE queue (
    id INTEGER NOT NULL,
    scan_id INTEGER NOT NULL,
    path BLOB NOT NULL,
    reason VARCHAR(8) NOT NULL,
    kind VARCHAR(1) NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    prev_version_id INTEGER,
    done BOOLEAN NOT NULL,
    outcome VARCHAR(12),
    PRIMARY KEY (id)
);

CREATE TABLE runs (
    id INTEGER NOT NULL,
    command TEXT NOT NULL,
    argv TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER NOT NULL,
    exit_code INTEGER NOT NULL,
    snapshot_id INTEGER,
    files INTEGER NOT NULL,
    bytes_read INTEGER NOT NULL,
    bytes_uploaded INTEGER NOT NULL,
    store_bytes INTEGER,
    summary TEXT NOT NULL,
    error_count INTEGER NOT NULL,
    errors TEXT NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE scan_errors (
    id INTEGER NOT NULL,
    scan_id INTEGER NOT NULL,
    path BLOB NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE scans (
    id INTEGER NOT NULL,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER,
    roots TEXT NOT NULL,
    counts TEXT,
    errors INTEGER NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE schema_version (
    id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE snapshots (
    id INTEGER NOT NULL,
    started_ns INTEGER NOT NULL,
    committed_ns INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    sources TEXT NOT NULL,
    files INTEGER NOT NULL,
    bytes_added INTEGER NOT NULL,
    stats TEXT NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE unreferenced (
    id INTEGER NOT NULL,
    ref TEXT NOT NULL,
    since_ns INTEGER,
    PRIMARY KEY (id)
);

CREATE TABLE version_ends (
    id INTEGER NOT NULL,
    version_id INTEGER NOT NULL,
    valid_until INTEGER NOT NULL,
    PRIMARY KEY (id)
);

CREATE TABLE versions (
    id INTEGER NOT NULL,
    path_id INTEGER NOT NULL,
    valid_from INTEGER NOT NULL,
    kind VARCHAR(1) NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    target BLOB,
    content_id INTEGER,
    recheck BOOLEAN NOT NULL,
    xattrs BLOB,
    extents BLOB,
    rdev INTEGER,
    PRIMARY KEY (id)
);

CREATE INDEX blobs_by_hash_key ON blobs (substr(hash, 1, 8));

CREATE INDEX blobs_by_pack ON blobs (pack_id);

CREATE INDEX content_blobs_by_content ON content_blobs (content_id, seq);

CREATE INDEX contents_by_hash_key ON contents (substr(hash, 1, 8));

CREATE INDEX contents_deltas ON contents (basis_id) WHERE basis_id IS NOT NULL;

CREATE UNIQUE INDEX damaged_blobs_by_blob ON damaged_blobs (blob_id);

CREATE UNIQUE INDEX forgotten_by_snapshot ON forgotten (snapshot_id);

CREATE INDEX packs_by_ref ON packs (ref);

CREATE INDEX paths_by_parent ON paths (parent_id);

CREATE UNIQUE INDEX paths_by_path ON paths (path);

CREATE INDEX queue_deleted ON queue (scan_id) WHERE reason = 'deleted';

CREATE UNIQUE INDEX unreferenced_by_ref ON unreferenced (ref);

CREATE UNIQUE INDEX version_ends_by_version ON version_ends (version_id);

CREATE INDEX versions_by_content ON versions (content_id);

CREATE INDEX versions_by_path ON versions (path_id, id);
