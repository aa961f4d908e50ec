"""The signature cache: one SQLite file, puts buffered until a flush, damage read as missing,
an unopenable file replaced, the old file-per-signature layout imported."""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from deltagrid.store.pack import digest
from deltagrid.uploader import sigcache
from deltagrid.uploader.sigcache import SigCache


def _key(n: int) -> bytes:
    return digest(b"content %d" % n)


def _rows(root: Path) -> int:
    with closing(sqlite3.connect(root / "signatures.sqlite")) as conn:
        return conn.execute("SELECT count(*) FROM sig").fetchone()[0]


def test_puts_stay_in_memory_until_a_flush(tmp_path: Path) -> None:
    root = tmp_path / "sigs"
    cache = SigCache(root)
    cache.put(_key(1), b"first")
    cache.put(_key(1), b"first, again")
    assert cache.get(_key(1)) == b"first, again"
    assert not root.exists()  # nothing touched the disk yet
    assert cache.get(_key(2)) is None
    assert _rows(root) == 0

    cache.flush()  # written on the cache's thread: a get waits for it
    assert cache.get(_key(1)) == b"first, again"
    assert _rows(root) == 1
    other = SigCache(root)  # while the first is still open, as after a crash
    assert other.get(_key(1)) == b"first, again"
    other.close()
    cache.close()


def test_close_writes_what_is_buffered(tmp_path: Path) -> None:
    cache = SigCache(tmp_path / "sigs")
    cache.put(_key(1), b"sig")
    cache.close()
    assert SigCache(tmp_path / "sigs").get(_key(1)) == b"sig"


def test_a_backup_closes_the_cache_it_opened(tmp_path: Path) -> None:
    """A backup run inside a process that goes on (a test, a program using deltagrid) leaves no
    connection open: one left open loses SQLite's locks when the process next closes any
    descriptor of the file (copying the home does), and a later checkpoint through it once
    wrote pages over another process's (CI saw "disk I/O error" on the next backup)."""
    from deltagrid.cli import main

    src, home = tmp_path / "src", tmp_path / "home"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(256 << 10))  # over delta_min_size: it has a signature
    assert main(["--home", str(home), "-q", "backup", str(src)]) == 0
    db = home / "sigs" / "signatures.sqlite"
    # The last connection closed checkpoints the WAL and removes it; none is left open.
    assert not db.with_name(db.name + "-wal").exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("dg-sigcache")]
    assert _rows(db.parent) == 1  # the signature was written, not lost with the buffer


def test_a_big_buffer_is_written_without_waiting_for_a_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sigcache, "FLUSH_BYTES", 100)
    root = tmp_path / "sigs"
    cache = SigCache(root)
    cache.put(_key(1), os.urandom(60))
    cache.put(_key(1), os.urandom(60))  # replaces: still 60 bytes buffered
    assert not root.exists()
    cache.put(_key(2), os.urandom(60))
    assert cache.buffer == {} and cache.buffered == 0
    cache.wait()
    assert _rows(root) == 2


def test_a_failed_write_is_raised_by_the_next_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writes run on a thread of their own: what one raises (a full disk) must reach the
    uploader, which waits for the last one before it commits."""
    cache = SigCache(tmp_path / "sigs")
    cache.put(_key(1), b"a signature")

    def full(conn: sqlite3.Connection, puts: dict[bytes, bytes]) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sigcache, "_put", full)
    cache.flush()
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        cache.wait()
    monkeypatch.undo()
    cache.wait()  # raised once
    cache.close()


def test_a_damaged_row_reads_as_missing(tmp_path: Path) -> None:
    root = tmp_path / "sigs"
    cache = SigCache(root)
    cache.put(_key(1), b"a signature")
    cache.put(_key(2), b"another one")
    cache.flush()
    cache.wait()
    with sqlite3.connect(root / "signatures.sqlite") as conn:
        conn.execute("UPDATE sig SET sig = ? WHERE hash = ?", (b"a signaturE", _key(1)))
    assert cache.get(_key(1)) is None
    assert cache.get(_key(2)) == b"another one"
    cache.put(_key(1), b"rebuilt")  # what the uploader does next
    cache.flush()
    cache.wait()
    assert SigCache(root).get(_key(1)) == b"rebuilt"


def test_large_signatures_are_written_and_read_in_place_and_checked(tmp_path: Path) -> None:
    """A signature past sigcache._IN_PLACE goes through incremental blob I/O, beside small ones
    in the same transaction; it reads back whole, replaces an older one, and a byte changed in
    it reads as missing."""
    root = tmp_path / "sigs"
    big, bigger = os.urandom(sigcache._IN_PLACE + 5), os.urandom(3 * sigcache._IN_PLACE)
    cache = SigCache(root)
    cache.put(_key(1), big)
    cache.put(_key(2), b"small")
    cache.close()
    with closing(sqlite3.connect(root / "signatures.sqlite")) as conn:
        stored = dict(conn.execute("SELECT hash, sig FROM sig").fetchall())
    assert stored == {_key(1): big, _key(2): b"small"}
    cache = SigCache(root)
    assert cache.get(_key(1)) == big and cache.get(_key(2)) == b"small"
    cache.put(_key(1), bigger)
    cache.flush()
    assert cache.get(_key(1)) == bigger  # after the write: from the database
    assert _rows(root) == 2
    with sqlite3.connect(root / "signatures.sqlite") as conn:
        damaged = bytes([bigger[0] ^ 1]) + bigger[1:]
        conn.execute("UPDATE sig SET sig = ? WHERE hash = ?", (damaged, _key(1)))
    assert cache.get(_key(1)) is None
    cache.close()


def test_discard_drops_the_row_and_the_buffered_put(tmp_path: Path) -> None:
    root = tmp_path / "sigs"
    cache = SigCache(root)
    cache.put(_key(1), b"stored")
    cache.flush()
    cache.put(_key(2), b"buffered")
    cache.discard(_key(1))
    cache.discard(_key(2))
    cache.discard(_key(3))  # never there: no error
    assert cache.get(_key(1)) is None and cache.get(_key(2)) is None
    assert cache.buffered == 0
    cache.flush()
    cache.wait()
    assert _rows(root) == 0


def test_the_old_layout_is_imported_and_removed(tmp_path: Path) -> None:
    root = tmp_path / "sigs"
    sigs = {_key(n): os.urandom(100 + n) for n in range(5)}
    for key, sig in sigs.items():
        path = root / key.hex()[:2] / key.hex()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sig + digest(sig))
    torn = root / _key(0).hex()[:2] / _key(0).hex()
    torn.write_bytes(torn.read_bytes()[:-5])  # what a crash could leave
    (root / "ab").mkdir(exist_ok=True)
    (root / "ab" / ".tmp-123").write_bytes(b"left over")

    cache = SigCache(root)
    assert cache.get(_key(0)) is None
    for n in range(1, 5):
        assert cache.get(_key(n)) == sigs[_key(n)]
    assert sorted(p.name for p in root.iterdir()) == [
        "signatures.sqlite",
        "signatures.sqlite-shm",
        "signatures.sqlite-wal",
    ]
    assert _rows(root) == 4


@pytest.mark.parametrize("damage", ["garbage", "pages", "table name"])
def test_a_database_that_does_not_open_is_replaced(tmp_path: Path, damage: str) -> None:
    """ "table name": a byte of the schema's table name that is not UTF-8, which SQLite quotes
    in its error (the sqlite3 module then raises UnicodeDecodeError)."""
    root = tmp_path / "sigs"
    db = root / "signatures.sqlite"
    cache = SigCache(root)
    cache.put(_key(1), b"old signature")
    cache.close()
    if damage == "garbage":
        db.write_bytes(b"not a database at all\n" * 100)
    elif damage == "table name":
        data = db.read_bytes()
        at = data.index(b"tablesigsig") + len(b"tables")
        db.write_bytes(data[:at] + b"\x80" + data[at + 1 :])
    else:  # a valid header, then every page overwritten
        with open(db, "r+b") as f:
            f.seek(100)
            f.write(os.urandom(db.stat().st_size - 100))
    bad = db.read_bytes()

    cache = SigCache(root)
    assert cache.get(_key(1)) is None
    cache.put(_key(2), b"new signature")
    cache.flush()
    cache.wait()
    assert SigCache(root).get(_key(2)) == b"new signature"
    assert (root / "signatures.sqlite.damaged").read_bytes() == bad
