"""`deltagrid upload`: drain the queue into the store and commit a snapshot."""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from deltagrid.backupdb import scan_queries, snapshots
from deltagrid.floor.errors import EXIT_OK, EXIT_UNREADABLE, EXIT_VANISHED, DeltagridError
from deltagrid.floor.units import count, human_bytes, human_duration, plural
from deltagrid.guard import writable_store
from deltagrid.home import Home
from deltagrid.output import Output
from deltagrid.repository.publisher import Publisher, commit
from deltagrid.store.base import Store
from deltagrid.uploader.result import UploadResult
from deltagrid.uploader.spool import clear_leftovers

if TYPE_CHECKING:
    from deltagrid.scanner.beside import ScanBeside


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("upload", parents=[common], help="upload the queue and commit a snapshot")
    p.set_defaults(run=run)


def run_upload(
    home: Home, out: Output, store: Store | None = None, scan: ScanBeside | None = None
) -> tuple[UploadResult, dict[str, int]]:
    """Upload and commit to `store` (closed here), or to the home's store, checked first.
    `scan`: a scan still running beside the upload, whose rows it takes as they come."""
    config = home.config()
    store = store or writable_store(home)
    try:
        conn = home.connect()
    except BaseException:
        store.close()
        raise
    try:
        publisher = Publisher(home.db_path, store, home.state, config.upload.full_export_every)
        finished = publisher.publish()  # a commit a killed run left between its two steps
        if scan is None and scan_queries.interrupted_scan(conn):
            raise DeltagridError("the last scan was interrupted; run 'deltagrid scan' again")
        rows, total = scan_queries.pending_totals(conn)
        if finished["published"] and not rows and scan is None:  # all the killed run left
            result = UploadResult(finished["published"])
            _describe(home, conn, result.snapshot_id, finished, out)
            return result, finished
        started = time.time_ns()
        if scan is not None:
            result = _drain(home, conn, store, None, out, scan.scanning)
            assert scan.result is not None  # the drain ends once the scan has
        elif rows:
            result = _drain(home, conn, store, total, out)
        else:  # a quiet night: nothing to read, so no uploader either
            clear_leftovers(home.spool)
            result = UploadResult(snapshots.last_snapshot_id(conn) + 1)
        stats = dict(result.counts)
        stats.update(bytes_read=result.bytes_read, bytes_uploaded=result.bytes_uploaded)
        committed = commit(conn, publisher, result.snapshot_id, started, stats)
        _describe(home, conn, result.snapshot_id, committed, out)
        return result, committed
    finally:
        store.close()
        conn.close()


def _drain(
    home: Home,
    conn: sqlite3.Connection,
    store: Store,
    total: int | None,
    out: Output,
    scanning: Callable[[bool], bool] | None = None,
) -> UploadResult:
    """Upload the `total` bytes the queue holds (not known while a scan beside adds rows)."""
    from deltagrid.uploader.upload import Uploader

    with out.bar(desc="upload", total=total, unit="B", unit_scale=True) as bar:
        uploader = Uploader(
            conn,
            store,
            home.spool,
            home.sigcache,
            home.config().upload,
            on_progress=bar.update,
            warn=out.warn,
            scanning=scanning,
        )
        out.so_far = lambda: _uploaded_so_far(getattr(uploader, "result", None))
        return uploader.run()


def _uploaded_so_far(result: UploadResult | None) -> dict[str, object]:
    """An interrupted upload's figures: the queue rows of the packs recorded stay done."""
    if result is None:
        return {"summary": "before the upload started"}
    files = result.counts["files"]
    return {
        "files": files,
        "bytes_read": result.bytes_read,
        "bytes_uploaded": result.bytes_uploaded,
        "summary": (
            f"{count(files)} files read, {human_bytes(result.bytes_uploaded)} uploaded in "
            f"{count(result.packs)} packs; the next run resumes"
        ),
    }


def _describe(
    home: Home, conn: sqlite3.Connection, snapshot_id: int, committed: dict[str, int], out: Output
) -> None:
    """Add the snapshot's file count to `committed`; with -v, list what it changed."""
    figures = snapshots.snapshot_figures(conn, snapshot_id)
    committed["files"] = figures[1] if figures is not None else 0
    if not out.verbose:
        return
    from deltagrid.commands.diff import changes

    engine = home.engine()
    try:
        with engine.connect() as sa_conn:
            for path, mark in changes(sa_conn, snapshot_id - 1, snapshot_id):
                out.detail(f"{mark} {os.fsdecode(path)}")  # marked as `diff` marks them
    finally:
        engine.dispose()


def upload_doc(result: UploadResult, committed: dict[str, int]) -> dict[str, object]:
    return {
        "snapshot_id": result.snapshot_id,
        "counts": dict(result.counts),
        "bytes_read": result.bytes_read,
        "bytes_uploaded": result.bytes_uploaded,
        "backupdb_bytes": committed["backupdb_bytes"],
        "packs": result.packs,
        "vanished": [os.fsdecode(p) for p in result.vanished],
        "unreadable": [{"path": os.fsdecode(p), "error": m} for p, m in result.unreadable],
    }


def upload_text(
    result: UploadResult, committed: dict[str, int], out: Output, seconds: float | None = None
) -> None:
    """One line, of the shape `backup` prints (see summary_line)."""
    c = result.counts
    stored = (
        f"stored {count(c['files'])} ({count(c['deltas'])} as deltas, {count(c['keyframes'])} "
        f"whole, {count(c['deduplicated'])} deduplicated), {count(c['deleted'])} deleted"
    )
    out.info(summary_line(result, committed, stored, seconds))
    problems_text(result, out)


def summary_line(
    result: UploadResult, committed: dict[str, int], changes: str, seconds: float | None
) -> str:
    """`snapshot 7: 1,204 files; CHANGES; read 48.2 MiB, uploaded 1.3 MiB in 1 pack + 2.1 KiB
    backupdb; took 2.4 s`: what the snapshot holds, what changed, what it cost. The backupdb
    (the catalog) is named apart from the packs: on a night of small changes it is most of
    what goes out, and without it "uploaded" would exceed "read" for no visible reason."""
    took = f"; took {human_duration(seconds)}" if seconds is not None else ""
    return (
        f"snapshot {result.snapshot_id}: {plural(committed.get('files', 0), 'file')}; "
        f"{changes}; read {human_bytes(result.bytes_read)}, uploaded "
        f"{human_bytes(result.bytes_uploaded)} in {plural(result.packs, 'pack')} + "
        f"{human_bytes(committed.get('backupdb_bytes', 0))} backupdb{took}"
    )


def problems_text(result: UploadResult, out: Output) -> None:
    """Unreadable entries were warned about on stderr as they happened; vanished ones are
    counted, and named with -v."""
    for path in result.vanished:
        out.detail(f"  vanished: {os.fsdecode(path)}")
    for path, message in result.unreadable:
        out.detail(f"  unreadable: {os.fsdecode(path)}: {message}")
    if result.vanished and not out.verbose:
        out.info(
            f"  {plural(len(result.vanished), 'entry', 'entries')} vanished between scan and "
            "upload (-v or 'deltagrid log' names them)"
        )


def exit_code(unreadable: bool, vanished: bool) -> int:
    if unreadable:
        return EXIT_UNREADABLE
    return EXIT_VANISHED if vanished else EXIT_OK


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    began = time.monotonic()
    with home.lock():
        result, committed = run_upload(home, out)
    upload_text(result, committed, out, time.monotonic() - began)
    out.document(upload_doc(result, committed))
    return exit_code(bool(result.unreadable), bool(result.vanished))
