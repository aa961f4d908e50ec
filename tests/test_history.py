"""The run history (`deltagrid log`) and what a run prints: one summary by default, a line per
path with -v, nothing but errors with -q, and --json as before."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

import deltagrid.uploader.reader
from deltagrid.backupdb import export, schema
from deltagrid.history import MAX_ERRORS, record
from deltagrid.home import Home
from deltagrid.uploader.reader import SourceError
from tests.helpers import dg, one_error


@pytest.fixture
def src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "gone.txt").write_text("soon deleted\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(150_000))
    for path in (src / "sub" / "b.bin", src / "sub", src / "a.txt", src / "gone.txt", src):
        os.utime(path, (1_700_000_000, 1_700_000_000))  # not "just written": no recheck
    return src


def runs(cli, *args: str) -> list[dict]:
    done = cli("--json", "log", *args)
    assert done.code == 0, done.err
    return done.json["runs"]


def test_every_writer_run_is_recorded_newest_first(src: Path, cli) -> None:
    assert cli("backup", src).code == 0
    (src / "a.txt").write_text("changed\n")
    assert cli("scan", src).code == 0
    assert cli("upload").code == 0
    assert cli("forget", "--keep-last", "1").code == 0
    assert cli("prune").code == 0
    assert cli("compact").code == 0
    assert cli("snapshots").code == 0  # readers are not recorded
    logged = runs(cli)
    assert [r["command"] for r in logged] == [
        "compact",
        "prune",
        "forget",
        "upload",
        "scan",
        "backup",
    ]
    assert all(r["exit_code"] == 0 and r["outcome"] == "ok" for r in logged)
    backup = logged[-1]
    assert backup["argv"] == ["--home", backup["argv"][1], "backup", str(src)]
    assert backup["snapshot_id"] == 1 and backup["files"] == 3
    assert backup["bytes_read"] > 150_000 and backup["bytes_uploaded"] > 0
    assert backup["finished_ns"] >= backup["started_ns"] and backup["store_bytes"] > 0
    assert logged[3]["snapshot_id"] == 2 and logged[3]["summary"].startswith("snapshot 2: ")
    assert logged[4]["files"] == 1 and "1 changed" in logged[4]["summary"]
    assert logged[2]["summary"] == "forgot 1 snapshot, kept 1"
    assert [r["command"] for r in runs(cli, "--last", "2")] == ["compact", "prune"]
    text = cli("log").out.splitlines()
    assert text[0].split()[:6] == ["RUN", "STARTED", "COMMAND", "TOOK", "EXIT", "OUTCOME"]
    assert len(text) == 7 and "backup" in text[-1] and "snapshot 1:" in text[-1]


@pytest.mark.parametrize(
    ("err", "code", "reason"),
    [
        (errno.EIO, 23, os.strerror(errno.EIO)),
        (errno.ENOENT, 24, "vanished between scan and upload"),
    ],
)
def test_a_partial_run_records_its_paths_and_reasons(
    src: Path, cli, monkeypatch: pytest.MonkeyPatch, err: int, code: int, reason: str
) -> None:
    assert cli("backup", src).code == 0
    (src / "sub" / "b.bin").write_bytes(os.urandom(150_000))
    (src / "new.txt").write_text("new\n")
    failing = {os.fsencode(src / "sub" / "b.bin"), os.fsencode(src / "new.txt")}
    real_open = deltagrid.uploader.reader.open_source

    def open_source(path: bytes) -> tuple[int, os.stat_result]:
        if path in failing:
            raise SourceError(OSError(err, os.strerror(err), path))
        return real_open(path)

    monkeypatch.setattr(deltagrid.uploader.reader, "open_source", open_source)
    assert cli("backup", src).code == code
    monkeypatch.undo()
    partial = runs(cli)[0]
    assert partial["exit_code"] == code and partial["outcome"] == "partial"
    assert partial["error_count"] == 2
    assert sorted(partial["errors"], key=lambda e: e["path"]) == [
        {"path": str(src / "new.txt"), "error": reason},
        {"path": str(src / "sub" / "b.bin"), "error": reason},
    ]
    text = cli("log").out
    assert f"{src / 'sub' / 'b.bin'}: {reason}" in text and f"{src / 'new.txt'}: {reason}" in text


def test_an_unreadable_directory_in_the_scan_is_recorded(
    src: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("backup", src).code == 0
    import deltagrid.scanner.scan

    real_scandir = os.scandir
    locked = os.fsencode(src / "sub")

    def scandir(path=".", *args, **kwargs):
        if isinstance(path, (str, bytes, os.PathLike)) and os.fsencode(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(deltagrid.scanner.scan.os, "scandir", scandir)
    assert cli("scan", src).code == 23
    monkeypatch.undo()
    scan = runs(cli)[0]
    assert scan["command"] == "scan" and scan["exit_code"] == 23
    assert scan["errors"] == [{"path": str(src / "sub"), "error": os.strerror(errno.EACCES)}]


def test_a_failed_run_records_its_message(tmp_path: Path, src: Path, home: Path, cli) -> None:
    assert cli("backup", src).code == 0
    one_error(cli("backup", tmp_path / "nowhere"), 2, "source not found")
    store = home / "store"
    store.rename(tmp_path / "store-away")
    one_error(dg(home, "backup", src), 1, "no deltagrid store")
    (tmp_path / "store-away").rename(store)
    failed, usage = runs(cli)[:2]
    assert failed["exit_code"] == 1 and failed["outcome"] == "failed"
    assert failed["summary"].startswith(f"no deltagrid store at {store}")
    assert usage["exit_code"] == 2 and usage["summary"] == f"source not found: {tmp_path}/nowhere"
    assert "failed" in cli("log").out


def test_a_locked_run_is_recorded_without_waiting(src: Path, home: Path, cli) -> None:
    import fcntl

    assert cli("backup", src).code == 0
    fd = os.open(home / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        one_error(cli("backup", src), 75, "another deltagrid process")
    finally:
        os.close(fd)
    assert runs(cli)[0]["outcome"] == "locked"


def test_the_paths_of_a_run_are_capped(src: Path, home: Path, cli) -> None:
    assert cli("backup", src).code == 0
    errors = [{"path": f"/x/{i}", "error": "Input/output error"} for i in range(MAX_ERRORS + 500)]
    doc = {"queued": {"new": 0}, "unchanged": 3, "errors": errors}
    record(Home(home), "scan", ["scan"], 1, 23, doc, None)
    logged = runs(cli)[0]
    assert logged["error_count"] == MAX_ERRORS + 500 and len(logged["errors"]) == MAX_ERRORS
    assert "... and 1,490 more" in cli("log").out  # the text view shows 10 a run


def test_runs_are_local_and_an_older_backupdb_gains_the_table(src: Path, home: Path, cli) -> None:
    assert cli("backup", src).code == 0
    exported = home / "export.sqlite"
    export.write(home / "backupdb.sqlite", exported)
    with sqlite3.connect(exported) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "runs" not in tables and "snapshots" in tables
    # A schema-2 backupdb (no runs table) is migrated when opened, and keeps its history going.
    with sqlite3.connect(home / "backupdb.sqlite") as conn:
        conn.execute("DROP TABLE runs")
        conn.execute("UPDATE schema_version SET version = 2")
    assert cli("backup", src).code == 0
    plain = create_engine(f"sqlite:///{home / 'backupdb.sqlite'}")
    with plain.connect() as conn:
        assert "runs" in inspect(conn).get_table_names()
        version = conn.exec_driver_sql("SELECT version FROM schema_version").scalar()
    plain.dispose()
    assert version == schema.SCHEMA_VERSION >= 3  # migrated to the newest, which has `runs`
    assert [r["command"] for r in runs(cli)] == ["backup"]


# --- what a run prints -------------------------------------------------------------------------


def test_backup_prints_one_summary_line_by_default(src: Path, cli) -> None:
    first = cli("backup", src)
    assert first.code == 0 and first.err == ""
    lines = first.out.splitlines()
    assert lines[0].startswith("created repository in ")
    assert (
        lines[1].startswith("snapshot 1: 3 files; 5 new; read ") and " backupdb; took " in lines[1]
    )
    assert len(lines) == 2
    again = cli("backup", src)
    assert again.out.splitlines() == [again.out.strip()]
    assert "snapshot 2: 3 files; no changes; read 0 B, uploaded 0 B in 0 packs + " in again.out


def test_verbose_lists_each_changed_path(src: Path, cli) -> None:
    assert cli("backup", src).code == 0
    (src / "a.txt").write_text("changed\n")
    (src / "gone.txt").unlink()
    (src / "c.txt").write_text("new\n")
    os.chmod(src / "sub" / "b.bin", 0o600)
    run = cli("-v", "backup", src)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    for expected in (
        f"+ {src / 'c.txt'}",
        f"M {src / 'a.txt'}",
        f"- {src / 'gone.txt'}",
        f"U {src / 'sub' / 'b.bin'}",
    ):
        assert expected in lines
    assert any(ln.startswith("snapshot 2: 3 files; stored ") for ln in lines)
    (src / "d.txt").write_text("d\n")
    scan = cli("scan", "--verbose", src)
    assert f"+ {src / 'd.txt'}" in scan.out.splitlines()


def test_quiet_prints_nothing_but_errors(tmp_path: Path, src: Path, cli) -> None:
    for args in (["backup", src], ["scan", src], ["upload"], ["forget", "--keep-last", "5"]):
        run = cli("-q", *args)
        assert (run.code, run.out, run.err) == (0, "", ""), args
    one_error(cli("-q", "backup", tmp_path / "nowhere"), 2, "source not found")


def test_json_output_keeps_its_keys(src: Path, cli) -> None:
    doc = cli("--json", "-v", "backup", src).json
    assert set(doc) == {
        "scan",
        "snapshot_id",
        "counts",
        "bytes_read",
        "bytes_uploaded",
        "backupdb_bytes",
        "packs",
        "vanished",
        "unreadable",
    }
    assert set(doc["scan"]) == {
        "scan_id",
        "queued",
        "unchanged",
        "skipped",
        "errors",
        "own_excluded",
        "notes",
    }
    json.dumps(doc)
