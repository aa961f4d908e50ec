"""A night with nothing to upload runs on plain sqlite3 (backupdb/connection.py, nightly.py):
it must still be a whole snapshot, and it must really leave SQLAlchemy unimported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from backupdb import connection, schema
from tests.helpers import describe, dg, restored_root, settle


def test_plain_table_names_are_the_schemas() -> None:
    assert list(connection.CATALOG) == [t.name for t in schema.CATALOG]
    assert list(connection.LOCAL) == [t.name for t in schema.LOCAL]
    assert set(connection.CATALOG + connection.LOCAL) == set(schema.metadata.tables)


def _modules_imported(home: Path, *args: str | Path) -> tuple[int, str]:
    """Run deltagrid with -X importtime: its exit code and every module it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "deltagrid", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr


def test_quiet_night_is_a_whole_snapshot_without_sqlalchemy(tmp_path: Path) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a" * 1000)
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 300)
    settle(src)
    assert dg(home, "backup", src).code == 0
    leftover = home / "spool" / "pack-left-by-a-killed-run"
    leftover.write_bytes(b"never recorded")

    code, imported = _modules_imported(home, "backup", src)
    assert code == 0, imported
    assert "backupdb.nightly\n" in imported  # the trace is there...
    assert "sqlalchemy" not in imported and "tqdm" not in imported  # ...and these are not
    assert not leftover.exists()

    snaps = dg(home, "--json", "snapshots").json["snapshots"]
    assert [s["id"] for s in snaps] == [1, 2]
    assert snaps[-1]["files"] == 2 and snaps[-1]["sources"] == [str(src)]
    out = tmp_path / "out"
    assert dg(home, "restore", "--snapshot", "2", "--into", out).code == 0
    assert describe(restored_root(out, src)) == describe(src)

    (src / "a.txt").write_bytes(b"changed")  # a night with work imports what it needs
    code, imported = _modules_imported(home, "backup", src)
    assert code == 0 and "sqlalchemy" in imported
    assert dg(home, "verify").code == 0
