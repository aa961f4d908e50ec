"""`deltagrid upload`: drain the queue into the store and commit a snapshot."""

from __future__ import annotations

import argparse
import os
import time

from backupdb import queries
from deltagrid.errors import EXIT_OK, EXIT_UNREADABLE, EXIT_VANISHED, DeltagridError
from deltagrid.home import Home
from deltagrid.output import Output, human_bytes
from uploader.commit import Publisher, commit
from uploader.upload import Uploader, UploadResult


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("upload", parents=[common], help="upload the queue and commit a snapshot")
    p.set_defaults(run=run)


def run_upload(home: Home, out: Output) -> tuple[UploadResult, dict[str, int]]:
    config = home.config()
    engine = home.engine()
    store = home.store()
    try:
        publisher = Publisher(engine, store, home.state, config.upload.full_export_every)
        finished = publisher.publish()  # a commit a killed run left between its two steps
        with engine.connect() as conn:
            if queries.interrupted_scan(conn) is not None:
                raise DeltagridError("the last scan was interrupted; run 'deltagrid scan' again")
            rows, total = queries.pending_totals(conn)
        if finished["published"] and not rows:  # that was all the killed run had left to do
            return UploadResult(finished["published"]), finished
        started = time.time_ns()
        with out.bar(desc="upload", total=total, unit="B", unit_scale=True) as bar:
            uploader = Uploader(
                engine,
                store,
                home.spool,
                home.sigcache,
                config.upload,
                on_progress=bar.update,
                warn=out.warn,
            )
            result = uploader.run()
        stats = dict(result.counts)
        stats.update(bytes_read=result.bytes_read, bytes_uploaded=result.bytes_uploaded)
        committed = commit(engine, publisher, result.snapshot_id, started, stats)
        return result, committed
    finally:
        store.close()
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


def upload_text(result: UploadResult, committed: dict[str, int], out: Output) -> None:
    c = result.counts
    out.line(
        f"snapshot {result.snapshot_id} committed: {c['files']} files stored "
        f"({c['deltas']} deltas, {c['keyframes']} full, {c['deduplicated']} deduplicated), "
        f"{c['dirs']} dirs, {c['symlinks']} symlinks, {c['deleted']} deleted, "
        f"{c['unchanged']} unchanged"
    )
    out.line(
        f"  read {human_bytes(result.bytes_read)}, uploaded {human_bytes(result.bytes_uploaded)} "
        f"in {result.packs} packs + {human_bytes(committed['backupdb_bytes'])} backupdb"
    )
    for path in result.vanished:
        out.line(f"  vanished: {os.fsdecode(path)}")
    for path, message in result.unreadable:
        out.line(f"  unreadable: {os.fsdecode(path)}: {message}")


def exit_code(unreadable: bool, vanished: bool) -> int:
    if unreadable:
        return EXIT_UNREADABLE
    return EXIT_VANISHED if vanished else EXIT_OK


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    with home.lock():
        result, committed = run_upload(home, out)
    upload_text(result, committed, out)
    out.document(upload_doc(result, committed))
    return exit_code(bool(result.unreadable), bool(result.vanished))
