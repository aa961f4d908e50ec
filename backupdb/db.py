"""Opening the backupdb: WAL, real transactions, schema version check.

pysqlite's own transaction handling starts transactions lazily and lets reads escape them; the
connect/begin hooks below hand transaction control to SQLAlchemy, so `engine.begin()` is a real
SQLite transaction that a kill -9 either keeps whole or rolls back.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select, update
from sqlalchemy.exc import SQLAlchemyError

from backupdb import schema
from deltagrid.errors import BackupDBError


def _engine(path: Path, writer: bool = True, busy_ms: int = 30000) -> Engine:
    engine = create_engine(f"sqlite:///{path}")
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql(begin)

    return engine


def create(path: Path) -> Engine:
    """Create a new, empty backupdb at `path`."""
    engine = _engine(path)
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
        conn.execute(insert(schema.schema_version).values(version=schema.SCHEMA_VERSION))
    return engine


def migrate(conn: Connection) -> None:
    """Bring an older backupdb to SCHEMA_VERSION (so far every change only adds tables)."""
    schema.metadata.create_all(conn, checkfirst=True)
    conn.execute(update(schema.schema_version).values(version=schema.SCHEMA_VERSION))


def open_db(path: Path, writer: bool = True, check: bool = True, busy_ms: int = 30000) -> Engine:
    """Open an existing backupdb, refusing one that is damaged or of an unknown schema.

    Writers take SQLite's write lock when a transaction begins; readers never wait for one.
    `check=False` skips the page-level check (a quick append, e.g. to the run history); a
    writer waits up to `busy_ms` for another's transaction to end.
    """
    if not path.exists():
        raise BackupDBError(f"no backupdb at {path}; repair it with 'deltagrid attach'")
    engine = _engine(path, writer, busy_ms)
    try:
        with engine.connect() as conn:
            found = ["ok"]
            if check:
                found = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
            if found != ["ok"]:  # it reports damage as rows; a later query would fail mid-run
                engine.dispose()
                lines = [ln for r in found for ln in r.splitlines() if not ln.startswith("***")]
                raise BackupDBError(
                    f"backupdb {path} is damaged ({(lines or found)[0]}); "
                    "repair it with 'deltagrid attach'"
                )
            version = conn.execute(select(schema.schema_version.c.version)).scalar()
            if isinstance(version, int) and version < schema.SCHEMA_VERSION:
                migrate(conn)
                conn.commit()
                version = schema.SCHEMA_VERSION
            tables = set(inspect(conn).get_table_names())
            missing = {t.name for t in schema.metadata.sorted_tables} - tables
            if missing:
                raise BackupDBError(
                    f"backupdb {path} lacks tables {sorted(missing)}; "
                    "repair it with 'deltagrid attach'"
                )
    except (sqlite3.DatabaseError, SQLAlchemyError) as exc:
        engine.dispose()
        cause = getattr(exc, "orig", None) or exc
        if getattr(cause, "sqlite_errorcode", 0) & 0xFF in (
            sqlite3.SQLITE_FULL,
            sqlite3.SQLITE_IOERR,
        ):
            # Not damage: a full disk cannot grow the WAL index. 'attach' would not help.
            raise BackupDBError(
                f"cannot open backupdb {path}: {cause} (is its disk full?)"
            ) from None
        raise BackupDBError(
            f"backupdb {path} is damaged ({exc.__class__.__name__}); "
            "repair it with 'deltagrid attach'"
        ) from None
    if version != schema.SCHEMA_VERSION:
        raise BackupDBError(
            f"backupdb {path} has schema version {version}; this deltagrid reads up to "
            f"{schema.SCHEMA_VERSION} (a newer deltagrid wrote it)"
        )
    return engine
