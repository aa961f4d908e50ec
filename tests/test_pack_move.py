"""A finished spool pack is moved into a file store on its filesystem, copied across filesystems.

Real files, a real tmpfs for the second filesystem (skipped where it cannot be mounted): the
object must hold the pack's bytes under their BLAKE2b name either way, the spool file must be
gone, and a backup whose spool lies on another filesystem must restore byte for byte. The raw
per-pack inserts must stay inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import func, select

from deltagrid.backupdb import connection, db, queries, upload_queries
from deltagrid.backupdb.schema import blobs, content_blobs, contents, packs, paths
from deltagrid.store.base import check_stored
from deltagrid.store.filestore import FileStore
from deltagrid.store.pack import PackWriter, read_index
from tests.helpers import describe, dg, restored_root


def _pack(path: Path, pieces: list[bytes]) -> PackWriter:
    writer = PackWriter(path, level=1)
    for raw in pieces:
        writer.add(raw, hashlib.blake2b(raw, digest_size=32).digest())
    writer.finish()
    return writer


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs: a filesystem other than tmp_path's."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    where = tmp_path / "tmpfs"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_pack_writer_digest_is_the_hash_of_the_file(tmp_path: Path) -> None:
    writer = _pack(tmp_path / "p", [os.urandom(5000), b"a" * 70000, b""])
    data = (tmp_path / "p").read_bytes()
    assert writer.digest() == hashlib.blake2b(data, digest_size=32).digest()
    assert writer.size == len(data)
    assert len(read_index(data)) == 3


def test_same_filesystem_pack_is_renamed_into_place(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store", create=True)
    spool = tmp_path / "spool-pack"
    writer = _pack(spool, [os.urandom(100_000)])
    data, inode = spool.read_bytes(), spool.stat().st_ino
    ref = check_stored(store, store.move_file(spool, writer.digest()), writer.size)
    assert ref == hashlib.blake2b(data, digest_size=32).hexdigest()
    assert not spool.exists()
    assert store.get(ref) == data
    assert store._path(ref).stat().st_ino == inode  # moved, not copied
    assert list(store.objects.glob(".tmp-*")) == []


def test_a_pack_already_stored_is_kept_and_the_spool_file_goes(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store", create=True)
    pieces = [os.urandom(3000)]
    first = _pack(tmp_path / "a", pieces)
    ref = store.move_file(tmp_path / "a", first.digest())
    inode = store._path(ref).stat().st_ino
    second = _pack(tmp_path / "b", pieces)
    assert store.move_file(tmp_path / "b", second.digest()) == ref
    assert not (tmp_path / "b").exists()
    assert store._path(ref).stat().st_ino == inode


def test_other_filesystem_pack_is_copied(tmp_path: Path, other_fs: Path) -> None:
    store = FileStore(tmp_path / "store", create=True)
    spool = other_fs / "spool-pack"
    writer = _pack(spool, [os.urandom(200_000), b"x" * 50_000])
    data = spool.read_bytes()
    ref = check_stored(store, store.move_file(spool, writer.digest()), writer.size)
    assert ref == hashlib.blake2b(data, digest_size=32).hexdigest()
    assert not spool.exists()
    stored = store._path(ref)
    assert stored.read_bytes() == data
    assert stored.stat().st_dev != other_fs.stat().st_dev
    assert list(store.objects.glob(".tmp-*")) == []


def test_backup_with_spool_on_another_filesystem_restores(
    tmp_path: Path, home: Path, other_fs: Path
) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "big").write_bytes(os.urandom(3 << 20) * 3)  # pieces beyond the read-ahead's reach
    for i in range(50):
        (src / "d" / f"f{i}").write_bytes(os.urandom(i * 700))
    assert dg(home, "init").code == 0
    if (home / "spool").exists():
        (home / "spool").rmdir()
    (home / "spool").symlink_to(other_fs)
    assert dg(home, "backup", src).code == 0
    assert [p.name for p in other_fs.iterdir() if p.name.startswith("pack-")] == []
    assert dg(home, "restore", tmp_path / "r").code == 0
    assert describe(restored_root(tmp_path / "r", src)) == describe(src)
    assert dg(home, "verify", "--read-data").code == 0


def test_raw_inserts_roll_back_with_the_transaction(tmp_path: Path) -> None:
    """The uploader records a pack in one sqlite3 transaction, maintenance its new packs in
    SQLAlchemy's: the raw inserts must roll back with either, or a kill would leave half a pack
    recorded."""
    path = tmp_path / "b.sqlite"
    connection.create(path).close()
    engine = db.open_db(path)
    with (
        closing(connection.connect(path)) as conn,
        pytest.raises(RuntimeError),
        connection.transaction(conn),
    ):
        blob_ids = upload_queries.add_blobs(conn, 1, [(8, 10, 20, b"h" * 32)])
        upload_queries.add_contents(
            conn, [upload_queries.NewContent(b"c" * 32, 20, None, 0, 0, blob_ids)]
        )
        upload_queries.ensure_paths(conn, [b"/a/b"])
        assert b"c" * 32 in upload_queries.contents_by_hash(conn, [b"c" * 32])
        assert upload_queries.blobs_by_hash(conn, [b"h" * 32]) == {b"h" * 32: blob_ids[0]}
        raise RuntimeError("killed before the commit")
    with engine.connect() as conn:
        pack_id = queries.add_pack(conn, "ref", 30, 1)
        queries.add_blob(conn, pack_id, 8, 10, 20, b"h" * 32)
        conn.rollback()
    with engine.connect() as conn:
        for table in (packs, blobs, contents, content_blobs, paths):
            assert conn.execute(select(func.count()).select_from(table)).scalar() == 0, table
        assert upload_queries.contents_by_hash(queries.driver(conn), [b"c" * 32]) == {}
    engine.dispose()
