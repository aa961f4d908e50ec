"""The backupdb through SQLAlchemy: engines whose transactions are real SQLite transactions.

pysqlite's own transaction handling starts transactions lazily and lets reads escape them; the
connect/begin hooks below hand transaction control to SQLAlchemy (with connection.configure), so
`engine.begin()` is a real SQLite transaction that a kill -9 either keeps whole or rolls back.
Opening checks the file first (connection.open_checked); a new backupdb is made without
SQLAlchemy (connection.create).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from deltagrid.backupdb import connection

# SQLAlchemy logs (with a traceback, on stderr by logging's last resort) an exception raised
# while its pool closes a connection, then raises it again. A signal that lands there (an
# Interrupted, deltagrid/interrupts.py) is the CLI's to report, in one line: not its log's.
logging.getLogger("sqlalchemy.pool").addHandler(logging.NullHandler())
logging.getLogger("sqlalchemy.pool").propagate = False


def _engine(
    path: Path, writer: bool = True, busy_ms: int = 30000, read_only: bool = False
) -> Engine:
    if read_only:
        engine = create_engine("sqlite://", creator=lambda: connection.connect(path, busy_ms, True))
    else:
        engine = create_engine(f"sqlite:///{path}")
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        connection.configure(dbapi_conn, busy_ms, read_only)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql(begin)

    return engine


def open_db(
    path: Path,
    writer: bool = True,
    check: bool = True,
    busy_ms: int = 30000,
    read_only: bool = False,
) -> Engine:
    """Open an existing backupdb, refusing one that is damaged or of an unknown schema.

    Writers take SQLite's write lock when a transaction begins; readers never wait for one.
    `check=False` skips the page-level check (a quick append, e.g. to the run history); a
    writer waits up to `busy_ms` for another's transaction to end. `read_only`: a home this
    process cannot write, read as connection.connect reads it.
    """
    connection.open_checked(path, check, busy_ms, read_only).close()
    return _engine(path, writer, busy_ms, read_only)
