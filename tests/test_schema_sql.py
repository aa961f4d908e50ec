"""A new backupdb is made from schema.sql on plain sqlite3 (connection.create): the file must be
what SQLAlchemy renders for schema.py now, the database it makes the one create_all makes, and
the first backup and attach must really leave SQLAlchemy unimported."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from deltagrid.backupdb import connection, schema, schema_sql
from deltagrid.backupdb.sql import LIVE
from tests.helpers import describe, dg, restored_root, settle


def test_schema_sql_is_what_sqlalchemy_renders_now() -> None:
    assert schema_sql.PATH.read_text() == schema_sql.render(), (
        "backupdb/schema.sql is stale: regenerate it with `python -m deltagrid.backupdb.schema_sql`"
    )


def _layout(path: Path) -> dict[str, object]:
    """Every table's columns, and every index's table, uniqueness, origin and columns."""
    with closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        layout: dict[str, object] = {}
        for table in tables:
            layout[table] = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
            for _seq, name, unique, origin, partial in conn.execute(
                f'PRAGMA index_list("{table}")'
            ):
                columns = conn.execute(f'PRAGMA index_info("{name}")').fetchall()
                layout[f"index {name}"] = (table, unique, origin, partial, columns)
        layout["schema_version rows"] = conn.execute("SELECT * FROM schema_version").fetchall()
    return layout


def test_created_backupdb_has_create_alls_tables_columns_and_indexes(tmp_path: Path) -> None:
    connection.create(tmp_path / "plain.sqlite").close()
    engine = create_engine(f"sqlite:///{tmp_path / 'alchemy.sqlite'}")
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
        conn.execute(schema.schema_version.insert().values(version=connection.SCHEMA_VERSION))
    engine.dispose()
    plain, alchemy = _layout(tmp_path / "plain.sqlite"), _layout(tmp_path / "alchemy.sqlite")
    assert plain == alchemy
    assert {name for name in plain if not name.startswith(("index ", "schema_version "))} == set(
        connection.CATALOG + connection.LOCAL
    )
    assert sum(name.startswith("index ") for name in plain) == sum(
        len(table.indexes) for table in schema.metadata.tables.values()
    )
    assert plain["schema_version rows"] == [(1, connection.SCHEMA_VERSION)]


# The indexes of schema 7 that schema 8 replaced (connection.DROPPED_INDEXES).
_SCHEMA_7_INDEXES = (
    "DROP INDEX contents_by_hash_key",
    "DROP INDEX blobs_by_hash_key",
    "DROP INDEX contents_deltas",
    "DROP INDEX queue_deleted",
    "CREATE UNIQUE INDEX contents_by_hash ON contents (hash)",
    "CREATE INDEX blobs_by_hash ON blobs (hash)",
    "CREATE INDEX contents_by_basis ON contents (basis_id)",
    "CREATE INDEX queue_pending ON queue (done, id)",
    "CREATE INDEX queue_by_scan ON queue (scan_id, reason)",
    "CREATE INDEX queue_by_path ON queue (path)",
    "UPDATE schema_version SET version = 7",
)


def test_a_schema_7_backupdb_gets_the_new_indexes_and_finds_its_contents(tmp_path: Path) -> None:
    """Migrating replaces the old indexes: the backupdb is then laid out as a new one, and the
    next backup finds a copied file's bytes by their hash rather than storing them again."""
    src, home = tmp_path / "src", tmp_path / "home"
    src.mkdir()
    (src / "a.txt").write_bytes(b"the same bytes\n" * 100)
    settle(src)
    assert dg(home, "backup", src).code == 0
    db = home / "backupdb.sqlite"
    with closing(sqlite3.connect(db)) as conn:
        for statement in _SCHEMA_7_INDEXES:
            conn.execute(statement)
        conn.commit()
    (src / "b.txt").write_bytes((src / "a.txt").read_bytes())
    settle(src)
    assert dg(home, "backup", src).code == 0
    connection.create(tmp_path / "new.sqlite").close()
    migrated, new = _layout(db), _layout(tmp_path / "new.sqlite")
    assert {k: v for k, v in migrated.items() if k.startswith("index ")} == {
        k: v for k, v in new.items() if k.startswith("index ")
    }
    assert migrated["schema_version rows"] == [(1, connection.SCHEMA_VERSION)]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM contents").fetchone() == (1,)
        live = f"SELECT count(*) FROM versions v WHERE kind = 'f' AND {LIVE}"
        assert conn.execute(live).fetchone() == (2,)


def test_a_failed_create_leaves_no_tables(tmp_path: Path) -> None:
    """Tables, indexes and version row are one transaction: a statement failing halfway (here a
    table that is already there, after several created before it) leaves none of the others."""
    path = tmp_path / "b.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE versions (x)")
    with pytest.raises(sqlite3.OperationalError, match="versions already exists"):
        connection.create(path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("versions",)]


def _traced(home: Path, *args: str | Path) -> str:
    """`deltagrid --home HOME ARGS` under -X importtime: it succeeded; its import trace."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "deltagrid", "--home", str(home)]
        + list(map(str, args)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_first_backup_and_attach_import_no_sqlalchemy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "big.bin").write_bytes(os.urandom(300 << 10))
    for i in range(5):
        (src / f"note{i}.txt").write_text(f"note {i}\n" * (i + 1))
    os.symlink("note1.txt", src / "link")
    settle(src)
    home = tmp_path / "home"
    trace = _traced(home, "backup", src)
    assert "backupdb.connection\n" in trace  # the trace is there...
    assert "sqlalchemy" not in trace  # ...and SQLAlchemy is not
    assert dg(home, "restore", tmp_path / "r").code == 0
    assert describe(restored_root(tmp_path / "r", src)) == describe(src)

    other = tmp_path / "other"
    trace = _traced(other, "attach", "--store", f"file://{home / 'store'}")
    assert "backupdb.export\n" in trace
    assert "sqlalchemy" not in trace
    assert dg(other, "restore", tmp_path / "r2").code == 0
    assert describe(restored_root(tmp_path / "r2", src)) == describe(src)
