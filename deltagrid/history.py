"""The run history: one `runs` row at the end of every scan, upload, backup, forget, prune,
compact, repair and restore run — clean, partial (23/24, with the paths and reasons), failed
(with the message) or interrupted by a signal (with what it had done so far).

The CLI records it in one place, after the command returned or raised. The figures come from the
document the command built for --json (the same keys), so a command needs no history code of
its own. Recording never changes a run's outcome: if the backupdb cannot take the row (damaged,
missing, busy for more than a moment), the run simply goes unrecorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from deltagrid.floor.errors import EXIT_SIGNAL, DeltagridError
from deltagrid.floor.units import count, human_bytes, plural
from deltagrid.home import Home

RECORDED = ("scan", "upload", "backup", "forget", "prune", "compact", "repair", "restore")
MAX_ERRORS = 1000  # paths kept per run; the count is kept whole


@dataclass
class Figures:
    snapshot_id: int | None = None
    files: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0
    summary: str = ""
    errors: list[dict[str, str]] = field(default_factory=list)


def _scan(doc: dict[str, Any]) -> Figures:
    queued = doc.get("queued", {})
    counts = ", ".join(f"{n} {reason}" for reason, n in queued.items() if n)
    return Figures(
        files=sum(queued.values()),
        summary=f"queued {counts or 'nothing'}; {doc.get('unchanged', 0)} unchanged",
        errors=list(doc.get("errors", [])),
    )


def _upload(doc: dict[str, Any]) -> Figures:
    c = doc.get("counts", {})
    errors = list(doc.get("scan", {}).get("errors", [])) + list(doc.get("unreadable", []))
    errors += [{"path": p, "error": "vanished between scan and upload"} for p in doc["vanished"]]
    return Figures(
        snapshot_id=doc["snapshot_id"],
        files=c.get("files", 0),
        bytes_read=doc["bytes_read"],
        bytes_uploaded=doc["bytes_uploaded"],
        summary=(
            f"snapshot {doc['snapshot_id']}: {plural(c.get('files', 0), 'file')} stored, "
            f"{count(c.get('deleted', 0))} deleted"
        ),
        errors=errors,
    )


def _forget(doc: dict[str, Any]) -> Figures:
    verb = "would forget" if doc.get("dry_run") else "forgot"
    gone, kept = len(doc.get("forgotten", [])), len(doc.get("kept", []))
    return Figures(summary=f"{verb} {plural(gone, 'snapshot')}, kept {kept}")


def _rewrite(doc: dict[str, Any]) -> Figures:
    if doc.get("dry_run"):
        plan = doc.get("plan", {})
        return Figures(summary="dry run: " + ", ".join(f"{v} {k}" for k, v in plan.items()))
    return Figures(
        files=doc.get("keyframes_written", 0),
        bytes_uploaded=doc.get("bytes_written", 0),
        summary=(
            f"{plural(doc.get('keyframes_written', 0), 'keyframe')} written, "
            f"{plural(doc.get('packs_deleted', 0), 'pack')} deleted, "
            f"{count(doc.get('packs_repacked', 0))} repacked, "
            f"{human_bytes(doc.get('bytes_freed', 0))} freed"
        ),
    )


def _repair(doc: dict[str, Any]) -> Figures:
    lost = doc.get("unrecoverable", [])
    return Figures(
        files=doc.get("repaired", 0),
        bytes_uploaded=(doc.get("outcome") or {}).get("bytes_written", 0),
        summary=f"{plural(doc.get('repaired', 0), 'file version')} repaired, {count(len(lost))} "
        "cannot be recovered",
        errors=[
            {"path": p, "error": f"cannot be recovered (snapshots {u['snapshots']})"}
            for u in lost
            for p in u["paths"] or [u["content"]]
        ],
    )


def _restore(doc: dict[str, Any]) -> Figures:
    return Figures(
        snapshot_id=doc["snapshot_id"],
        files=doc["files"],
        summary=(
            f"snapshot {doc['snapshot_id']} to {doc['target']}: {plural(doc['files'], 'file')} "
            f"({human_bytes(doc['bytes'])}), {count(len(doc['errors']))} errors"
        ),
        errors=list(doc["errors"]),
    )


_FIGURES = {
    "scan": _scan,
    "upload": _upload,
    "backup": _upload,
    "forget": _forget,
    "prune": _rewrite,
    "compact": _rewrite,
    "repair": _repair,
    "restore": _restore,
}


def figures(command: str, doc: dict[str, Any] | None) -> Figures:
    """What a run's --json document says about it (nothing, if it ended before producing one)."""
    if not doc or "error" in doc:
        return Figures()
    try:
        return _FIGURES[command](doc)
    except (KeyError, TypeError, AttributeError):  # a document of another shape: keep the row
        return Figures(summary="finished")


def interrupted(error: str | None, so_far: dict[str, Any]) -> Figures:
    """An interrupted run's figures: what the command said it had done when the signal came
    (`Output.so_far`), after the signal's name."""
    fields = ("snapshot_id", "files", "bytes_read", "bytes_uploaded")
    f = Figures(**{k: so_far[k] for k in fields if k in so_far})
    f.summary = "; ".join(filter(None, (error, so_far.get("summary"))))
    return f


def record(
    home: Home,
    command: str,
    argv: list[str],
    started_ns: int,
    exit_code: int,
    doc: dict[str, Any] | None,
    error: str | None,
    so_far: dict[str, Any] | None = None,
) -> None:
    """Append the run to the home's history, if the home has a backupdb to hold it. `so_far`:
    an interrupted run's counts (its exit code is EXIT_SIGNAL + the signal)."""
    try:
        if command not in RECORDED or not home.db_path.exists():
            return
    except OSError:  # a home this user cannot read: the run's own error said so
        return
    import sqlite3

    from deltagrid.backupdb import connection, runs

    if exit_code > EXIT_SIGNAL and so_far is not None:
        f, error = interrupted(error, so_far), None
    else:
        f = figures(command, doc)
    values = {
        "command": command,
        "argv": json.dumps(argv),
        "started_ns": started_ns,
        "finished_ns": time.time_ns(),
        "exit_code": exit_code,
        "snapshot_id": f.snapshot_id,
        "files": f.files,
        "bytes_read": f.bytes_read,
        "bytes_uploaded": f.bytes_uploaded,
        # A path that is not UTF-8 (a surrogate escape) in the message: SQLite takes UTF-8 only.
        "summary": (error or f.summary or "finished")
        .encode("utf-8", "surrogateescape")
        .decode("utf-8", "backslashreplace"),
        "error_count": len(f.errors),
        "errors": json.dumps(f.errors[:MAX_ERRORS]),
    }
    try:
        conn = connection.open_checked(home.db_path, check=False, busy_ms=2000)
    except (DeltagridError, OSError):
        return
    try:
        runs.add_run(conn, values)
    except (sqlite3.Error, OSError):
        pass  # the history is a convenience; the run's own outcome stands
    finally:
        conn.close()
