"""The run history: one `runs` row per writer run, added on plain sqlite3, read by `log` and
`report`."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from deltagrid.backupdb.connection import transaction


@dataclass
class Run:
    """A recorded run, as `log` and `report` show it."""

    id: int
    command: str
    argv: list[str]
    started_ns: int
    finished_ns: int
    exit_code: int
    snapshot_id: int | None
    files: int
    bytes_read: int
    bytes_uploaded: int
    store_bytes: int | None
    summary: str
    error_count: int
    errors: list[dict[str, str]]

    @property
    def outcome(self) -> str:
        return OUTCOMES.get(self.exit_code, "failed")

    @property
    def seconds(self) -> float:
        return (self.finished_ns - self.started_ns) / 1e9

    def doc(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["outcome"] = self.outcome
        return d


OUTCOMES = {
    0: "ok",
    23: "partial",
    24: "partial",
    2: "usage",
    75: "locked",
    129: "interrupted",  # SIGHUP
    130: "interrupted",  # SIGINT
    143: "interrupted",  # SIGTERM
}


def last_runs(conn: Any, limit: int) -> list[Run]:
    from deltagrid.backupdb import queries  # SQLAlchemy: only `log` and `report` read runs

    return [
        Run(
            id=r.id,
            command=r.command,
            argv=json.loads(r.argv),
            started_ns=r.started_ns,
            finished_ns=r.finished_ns,
            exit_code=r.exit_code,
            snapshot_id=r.snapshot_id,
            files=r.files,
            bytes_read=r.bytes_read,
            bytes_uploaded=r.bytes_uploaded,
            store_bytes=r.store_bytes,
            summary=r.summary,
            error_count=r.error_count,
            errors=json.loads(r.errors),
        )
        for r in queries.last_runs(conn, limit)
    ]


def add_run(conn: sqlite3.Connection, values: dict[str, Any]) -> None:
    """Record one finished writer run (a row of the local `runs` table), with the pack bytes
    the catalog references after it (the store's size, less the small backupdb objects)."""
    with transaction(conn):
        (values["store_bytes"],) = conn.execute(
            "SELECT coalesce(sum(size), 0) FROM packs"
        ).fetchone()
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        conn.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", values)
