"""The backupdb's portable form: catalog tables only, in rowid order, without indexes.

Because catalog rows are only ever appended, tonight's export is last night's with rows added at
the end of each table, and an rdiff delta between the two is little more than the new rows. The
export is itself a SQLite file, so reading it needs nothing but SQLite; `load` rebuilds the
indexes and the local tables around it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateTable

from backupdb import db, schema
from deltagrid.errors import CorruptData

# Tables newer than schema version 1, which an older export may lack.
ADDED_IN = {"forgotten": 2}


def _ddl(table: Table) -> str:
    return str(CreateTable(table).compile(dialect=sqlite.dialect()))


def _column_list(table: Table) -> str:
    return ", ".join(f'"{c.name}"' for c in table.columns)


def write(engine: Engine, dest: Path) -> None:
    """Write the catalog of the backupdb behind `engine` to a new SQLite file `dest`."""
    dest.unlink(missing_ok=True)
    with sqlite3.connect(dest, isolation_level=None) as out:
        out.execute("PRAGMA journal_mode=OFF")
        out.execute("PRAGMA page_size=4096")
        out.execute("BEGIN")
        for table in schema.CATALOG:
            out.execute(_ddl(table))
        out.execute("COMMIT")
    out.close()
    _copy_catalog(engine, dest, to_export=True)
    with open(dest, "rb+") as f:
        os.fsync(f.fileno())


def load(export: Path, dest: Path) -> Engine:
    """Build a full backupdb at `dest` (which must not exist) from an export file."""
    try:
        with sqlite3.connect(f"file:{export}?mode=ro", uri=True) as check:
            names = {
                r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            version = check.execute("SELECT version FROM schema_version").fetchone()
        check.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # a name that is not UTF-8
        raise CorruptData(f"the backupdb export does not open as SQLite: {exc}") from None
    if version is None or version[0] not in range(1, schema.SCHEMA_VERSION + 1):
        raise CorruptData(f"the backupdb export has schema version {version}")
    missing = {t.name for t in schema.CATALOG if t.name not in ADDED_IN} - names
    if missing:
        raise CorruptData(f"the backupdb export lacks tables {sorted(missing)}")
    engine = db.create(dest)
    try:  # an older export lacks tables added since: they stay empty, the version is current
        _copy_catalog(engine, export, to_export=False, only=names)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise CorruptData(f"the backupdb export is damaged: {exc}") from None
    return engine


def _copy_catalog(
    engine: Engine, export: Path, to_export: bool, only: set[str] | None = None
) -> None:
    """Copy the catalog tables (those in `only`), in rowid order, to or from an export file."""
    src, dst = ("main", "export") if to_export else ("export", "main")
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("ATTACH DATABASE ? AS export", (str(export),))
        cur.execute("BEGIN")
        for table in schema.CATALOG:
            if only is not None and table.name not in only:
                continue
            if table.name == "schema_version" and not to_export:
                continue  # the new backupdb has its own row, at the current version
            cols = _column_list(table)
            cur.execute(
                f'INSERT INTO {dst}."{table.name}" ({cols}) '
                f'SELECT {cols} FROM {src}."{table.name}" ORDER BY rowid'
            )
        cur.execute("COMMIT")
        cur.execute("DETACH DATABASE export")
        cur.close()
    finally:
        raw.close()
