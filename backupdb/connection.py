"""Opening the backupdb with the sqlite3 module alone.

A night (scan, upload, commit) runs on such a connection and never imports SQLAlchemy: that import
costs about a quarter of a second, half of a quiet night and a fifth of a night with churn.
The engines of db.py configure their connections here too, so both kinds see the same pragmas and
the same transaction discipline: pysqlite's own transaction handling is off (isolation_level
None) and every transaction is an explicit BEGIN, which a kill -9 keeps whole or rolls back.
"""

from __future__ import annotations

import os
import re
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from deltagrid.floor.errors import BackupDBError

SCHEMA_VERSION = 9
# Version history (migrating creates the tables added since, and adds the columns of ADDED_COLUMNS):
#   1  first release
#   2  `forgotten`: snapshots marked by `forget`, dropped from listings, their data pruned
#   3  `runs` (local): the history of writer runs, for `deltagrid log` and `report`
#   4  `versions.xattrs`: extended attributes and POSIX ACLs (NULL in older rows: none known)
#   5  `damaged_blobs`: blobs verify, restore or repair found damaged; never reused
#   6  `unreferenced` (local): store objects prune deletes once `delete_after` has passed
#   7  `versions.extents`: a sparse file's data runs; times past 64-bit ns stored as BLOBs
#   8  contents and blobs indexed by their hash's first 8 bytes; fewer queue indexes (local
#      indexes only: DROPPED_INDEXES)
#   9  FIFOs and device nodes (kinds p, c, b); `versions.rdev`: a device node's number

# The tables of schema.py (tests hold the two together): the catalog, in export order, then the
# local ones.
CATALOG = (
    "schema_version",
    "snapshots",
    "paths",
    "versions",
    "version_ends",
    "contents",
    "content_blobs",
    "blobs",
    "packs",
    "forgotten",
    "damaged_blobs",
)
LOCAL = ("scans", "queue", "scan_errors", "runs", "unreferenced")
# Columns added to existing tables, last in their table (as schema.py declares them), so an
# older table altered and a new one created alike have the same columns in the same order.
ADDED_COLUMNS = (
    ("versions", "xattrs", "BLOB"),
    ("versions", "extents", "BLOB"),
    ("versions", "rdev", "INTEGER"),
)
# Local indexes an older backupdb has that schema.py replaced (the export holds no indexes).
DROPPED_INDEXES = (
    "contents_by_hash",
    "contents_by_basis",
    "blobs_by_hash",
    "queue_pending",
    "queue_by_scan",
    "queue_by_path",
)
# What SQLite raises on a damaged file: its own errors, or a UnicodeDecodeError when the error
# message it builds quotes damaged bytes (a table name in a broken schema) that are not UTF-8:
# the sqlite3 module then cannot make the message a str.
DAMAGE = (sqlite3.DatabaseError, UnicodeDecodeError)
# What `create` runs: generated from schema.py by `python -m deltagrid.backupdb.schema_sql`.
SCHEMA_SQL = Path(__file__).with_name("schema.sql")
_CREATE = re.compile(r"^(CREATE (?:UNIQUE )?(?:TABLE|INDEX)) ")
_INDEX_NAME = re.compile(r"^CREATE (?:UNIQUE )?INDEX IF NOT EXISTS (\S+) ")


def configure(conn: sqlite3.Connection, busy_ms: int, read_only: bool = False) -> None:
    """Autocommit unless a transaction is begun explicitly; WAL (set by writers: setting it is a
    write); durable commits; wait for a writer's transaction up to `busy_ms`."""
    conn.isolation_level = None
    if not read_only:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")


def _ddl(if_missing: bool = False) -> Iterator[str]:
    """The statements of schema.sql; `if_missing` makes each skip what exists already."""
    lines = SCHEMA_SQL.read_text().splitlines(keepends=True)
    ddl = "".join(line for line in lines if not line.startswith("--"))
    for statement in filter(str.strip, ddl.split(";")):
        if if_missing:
            statement = _CREATE.sub(r"\1 IF NOT EXISTS ", statement.strip(), count=1)
        yield statement


# The indexes on a hash's first bytes (schema.py): a random key, so each of many transactions
# of new rows writes most of their pages again. A first backup builds them once, after its
# inserts (uploader/catalog.py); a query is right without them, only slow. (`export.load`
# inserts in one transaction, which writes each page once: building after was no faster.)
HASH_INDEXES = ("blobs_by_hash_key", "contents_by_hash_key")


def hash_indexes_built(conn: sqlite3.Connection) -> bool:
    placeholders = ", ".join("?" * len(HASH_INDEXES))
    query = f"SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN ({placeholders})"
    return bool(conn.execute(query, HASH_INDEXES).fetchone()[0] == len(HASH_INDEXES))


def drop_hash_indexes(conn: sqlite3.Connection) -> None:
    """In a write transaction of its own."""
    with transaction(conn):
        for name in HASH_INDEXES:
            conn.execute(f'DROP INDEX IF EXISTS "{name}"')


def build_hash_indexes(conn: sqlite3.Connection) -> None:
    """Unless they are built, in a write transaction of its own: schema.sql's statements, each
    index sorted once (seconds at a million files)."""
    if hash_indexes_built(conn):
        return
    with transaction(conn):
        for statement in _ddl(if_missing=True):
            match = _INDEX_NAME.match(statement)
            if match is not None and match[1] in HASH_INDEXES:
                conn.execute(statement)


def create(path: Path) -> sqlite3.Connection:
    """A new, empty backupdb at `path` (which must not exist), configured as `connect`'s.

    Runs schema.sql (schema.py's DDL, rendered) rather than SQLAlchemy's create_all: importing
    SQLAlchemy would double the time of a small first backup. Tables, indexes and the version
    row commit in one transaction: a kill leaves no tables or all of them.
    """
    conn = connect(path)
    try:
        with transaction(conn):
            for statement in _ddl():
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring an older backupdb to SCHEMA_VERSION, in one transaction: create the tables and
    indexes it lacks, drop those replaced, and add the columns added to existing tables since."""
    with transaction(conn):
        for index in DROPPED_INDEXES:
            conn.execute(f'DROP INDEX IF EXISTS "{index}"')
        for statement in _ddl(if_missing=True):
            conn.execute(statement)
        for table, column, ddl in ADDED_COLUMNS:
            have = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
            if column not in have:
                conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {ddl}')
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


def connect(path: Path, busy_ms: int = 30000, read_only: bool = False) -> sqlite3.Connection:
    """A configured connection to an existing backupdb, unchecked (see `open_checked`)."""
    conn = _connect_read_only(path) if read_only else sqlite3.connect(path)
    configure(conn, busy_ms, read_only)
    return conn


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """The backupdb of a home this process cannot write (a read-only mount, file modes): opened
    read-only; if SQLite cannot open the WAL index that way (it needs a writable -shm or
    directory), as immutable, which reads the file with no locks at all: nothing can write it."""
    uri = "file:" + urllib.parse.quote(os.fspath(path))
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        conn.execute("SELECT 1 FROM sqlite_master").fetchall()
        return conn
    except sqlite3.OperationalError:
        conn.close()
    return sqlite3.connect(f"{uri}?immutable=1", uri=True)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction: committed whole when the block ends, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_checked(
    path: Path, check: bool = True, busy_ms: int = 30000, read_only: bool = False
) -> sqlite3.Connection:
    """Open an existing backupdb, refusing one that is damaged, incomplete or of a newer schema;
    an older one is migrated first (or, `read_only`, refused: it cannot be).

    `check` runs SQLite's page-level check, which reads every page (seconds at a million
    files): damage found up front fails the run before it does anything.
    """
    if not path.exists():
        raise BackupDBError(f"no backupdb at {path}; repair it with 'deltagrid attach'")
    try:
        conn = connect(path, busy_ms, read_only)
        try:
            version = _inspect(conn, path, check)
        except BaseException:
            conn.close()
            raise
    except DAMAGE as exc:
        raise open_error(path, exc) from None
    if version < SCHEMA_VERSION and read_only:
        conn.close()
        raise BackupDBError(
            f"backupdb {path} has schema version {version} and cannot be brought to "
            f"{SCHEMA_VERSION} read-only: open it once where it is writable"
        )
    if version < SCHEMA_VERSION:
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
    return conn


def check_pages(path: Path) -> None:
    """SQLite's page-level check of the backupdb at `path`, on a connection of its own (so it
    can run on a thread beside the run's work: SQLite lets the GIL go while it reads)."""
    try:
        with closing(connect(path)) as conn:
            _check(conn, path)
    except DAMAGE as exc:
        raise open_error(path, exc) from None


def _check(conn: sqlite3.Connection, path: Path) -> None:
    """SQLite reports damage as rows: the first one, as a one-line error."""
    found = [r[0] for r in conn.execute("PRAGMA quick_check")]
    if found != ["ok"]:
        lines = [ln for r in found for ln in r.splitlines() if not ln.startswith("***")]
        raise BackupDBError(
            f"backupdb {path} is damaged ({(lines or found)[0]}); repair it with 'deltagrid attach'"
        )


def _inspect(conn: sqlite3.Connection, path: Path, check: bool) -> int:
    """The schema version of a backupdb whose pages (with `check`) and tables are whole."""
    if check:  # damage found up front, not by a query failing mid-run
        _check(conn, path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    version = row[0] if row is not None else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BackupDBError(
            f"backupdb {path} has schema version {version}; this deltagrid reads up to "
            f"{SCHEMA_VERSION} (a newer deltagrid wrote it)"
        )
    missing = set(CATALOG + LOCAL) - tables
    if version == SCHEMA_VERSION and missing:
        raise BackupDBError(
            f"backupdb {path} lacks tables {sorted(missing)}; repair it with 'deltagrid attach'"
        )
    return version


def open_error(path: Path, exc: sqlite3.DatabaseError | UnicodeDecodeError) -> BackupDBError:
    """The one-line error for a backupdb SQLite could not open or read."""
    if isinstance(exc, UnicodeDecodeError):
        return BackupDBError(
            f"backupdb {path} is damaged (SQLite's error names bytes that are not text); "
            "repair it with 'deltagrid attach'"
        )
    if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in (
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
    ):
        # Not damage: a full disk cannot grow the WAL index. 'attach' would not help.
        return BackupDBError(f"cannot open backupdb {path}: {exc} (is its disk full?)")
    return BackupDBError(
        f"backupdb {path} is damaged ({exc.__class__.__name__}); repair it with 'deltagrid attach'"
    )
