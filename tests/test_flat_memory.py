"""Issue 7: memory must not grow with the number of files.

An upload of tiny files puts its pack early, once it holds _PACK_ENTRIES entries, instead of
keeping a record per file until the pack reaches its byte size; the commit streams the backupdb
export, its signature and its delta through files.
"""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from deltagrid.repository.fetch import fetch_export
from deltagrid.repository.root import parse_root
from deltagrid.store.filestore import FileStore
from deltagrid.store.pack import digest_file
from deltagrid.uploader import upload
from tests.helpers import describe, restored_root


def _tiny_files(root: Path, n: int, tag: str) -> None:
    for i in range(n):
        d = root / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_text(f"{tag} file {i}\n" * (i % 5))


def _packs(home: Path) -> int:
    with sqlite3.connect(home / "backupdb.sqlite") as db:
        (n,) = db.execute("SELECT count(*) FROM packs").fetchone()
    db.close()
    return int(n)


def test_many_tiny_files_go_out_in_several_packs_and_restore_exactly(
    tmp_path: Path, home: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload, "_PACK_ENTRIES", 100)
    src = tmp_path / "src"
    _tiny_files(src, 1200, "one")
    backup = cli("--json", "backup", src)
    assert backup.code == 0, backup.err
    # far below the 16 MiB pack size: only the entry bound (checked once per queue batch of
    # 256 rows) can have split them
    assert backup.json["packs"] == _packs(home) >= 4

    _tiny_files(src, 120, "two")  # a second night rewrites some of them
    before = describe(src)
    night = cli("--json", "backup", src)
    assert night.code == 0, night.err

    target = tmp_path / "restore"
    restored = cli("--json", "restore", target)
    assert restored.code == 0, restored.err
    assert describe(restored_root(target, src)) == before


def test_streamed_exports_rebuild_and_record_their_size(tmp_path: Path, home: Path, cli) -> None:
    src = tmp_path / "src"
    _tiny_files(src, 1500, "one")
    for night in range(3):
        (src / f"new{night}.txt").write_text(f"night {night}\n")
        run = cli("--json", "backup", src)
        assert run.code == 0, run.err

    store = FileStore(home / "store")
    root = parse_root(store.read_root())
    assert root is not None
    chain = root["backupdb"]
    assert [e["type"] for e in chain] == ["full", "delta", "delta"]
    for entry in chain:  # a reader sizes its buffer from the frame, not from its 16 GiB limit
        frame = store.get(entry["ref"])
        assert len(frame) == entry["size"]
        assert zstandard.get_frame_parameters(frame).content_size > 0
    exported = tmp_path / "export.sqlite"
    fetch_export(store, root, exported)
    with sqlite3.connect(exported) as db:
        (snapshots,) = db.execute("SELECT count(*) FROM snapshots").fetchone()
    db.close()
    assert snapshots == 3


def _fetched(store: FileStore, dest: Path) -> tuple[int, int]:
    """Rebuild the store's export into `dest`, checked: (Python's peak memory, its size)."""
    root = parse_root(store.read_root())
    assert root is not None
    tracemalloc.start()
    try:
        fetch_export(store, root, dest)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest_file(dest).hex() == root["backupdb"][-1]["hash"]
    assert not dest.with_name(dest.name + ".step").exists()
    return peak, dest.stat().st_size


def test_an_export_is_rebuilt_in_files_not_in_memory(tmp_path: Path, home: Path, cli) -> None:
    """Rebuilding the export from its full object and deltas (attach, a restore on a new
    machine) holds one object's compressed frame and fixed buffers, not the export: 210 MiB at
    a million files, which the rebuild held three times over. From an export of 1,000 files to
    one of 6,000 and a delta, Python's peak memory grows by less than half what the export
    grows by (holding the export, it grew by twice as much)."""
    src = tmp_path / "src"
    sizes = []
    for files, name in ((1000, "small"), (5000, "large")):
        _tiny_files(src / name, files, name)  # a full export (a delta as large is not kept)
        assert cli("backup", src).code == 0
        (src / f"{name}.txt").write_text("one more\n")  # and a delta on it
        assert cli("backup", src).code == 0
        store = FileStore(home / "store")
        chain = parse_root(store.read_root())["backupdb"]  # type: ignore[index]
        assert [e["type"] for e in chain] == ["full", "delta"]
        sizes.append(_fetched(store, tmp_path / f"{name}.sqlite"))
    (small_peak, small), (peak, size) = sizes
    assert size > small + (1 << 20)
    assert peak - small_peak < (size - small) / 2, sizes
