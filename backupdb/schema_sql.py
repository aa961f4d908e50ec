"""Render schema.sql: schema.py's DDL on SQLite, for `connection.create` to run without SQLAlchemy.

schema.py stays the one definition of the backupdb; after changing it, regenerate schema.sql with
`python -m deltagrid.backupdb.schema_sql` (tests/test_schema_sql.py fails until then).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from deltagrid.backupdb import schema

PATH = Path(__file__).with_name("schema.sql")
HEADER = (
    "-- Generated from backupdb/schema.py: do not edit. Regenerate with\n"
    "--   python -m deltagrid.backupdb.schema_sql\n"
    "-- connection.create runs it to make a new backupdb without importing SQLAlchemy.\n"
)


def render() -> str:
    """The CREATE TABLE statements of `schema.metadata` in `sorted_tables` order, then its CREATE
    INDEX statements, as SQLAlchemy renders them for SQLite (tabs and trailing blanks tidied)."""
    dialect = sqlite.dialect()
    tables = schema.metadata.sorted_tables
    indexes = [i for t in tables for i in sorted(t.indexes, key=lambda i: str(i.name))]
    ddl = [CreateTable(t) for t in tables] + [CreateIndex(i) for i in indexes]
    statements = []
    for statement in ddl:
        text = str(statement.compile(dialect=dialect)).strip().replace("\t", "    ")
        statements.append("\n".join(line.rstrip() for line in text.splitlines()) + ";\n")
    return HEADER + "\n" + "\n".join(statements)


if __name__ == "__main__":
    PATH.write_text(render())
