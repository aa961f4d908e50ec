"""One contract every store backend keeps, run against each of them.

A new backend is a new folder plus one entry in BACKENDS. The backends: the embedded file store,
the fault-injecting store with no fault due (it must be a faithful wrapper, or the reliability
tests prove nothing), and the Tahoe store on the session's real local grid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deltagrid.floor.errors import CorruptData, ObjectMissing, StoreError
from deltagrid.store.base import Store, check_stored
from deltagrid.store.filestore import FileStore
from deltagrid.store.pack import digest
from tests import gridfixtures
from tests.reliability.faultstore import Faults, FaultStore

grid = gridfixtures.grid  # the session's grid, started only if a Tahoe case runs


def _file(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    return FileStore(tmp_path / "store", create=True)


def _faultless(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    return FaultStore(FileStore(tmp_path / "store", create=True), Faults("put", "fail", 10**9))


def _tahoe(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    from deltagrid.store.tahoe import TahoeStore

    node = request.getfixturevalue("grid").url.replace("tahoe://", "http://")
    writecap, _readcap = TahoeStore(node, None).create_root()
    return TahoeStore(node, writecap)


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Store]] = {
    "file": _file,
    "faultstore": _faultless,
    "tahoe": _tahoe,
}


@pytest.fixture(
    params=[
        pytest.param(name, marks=gridfixtures.needs_tahoe if name == "tahoe" else ())
        for name in BACKENDS
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = BACKENDS[request.param](tmp_path, request)
    try:
        yield s
    finally:
        s.close()


def _missing_ref(store: Store, existing: str) -> str:
    """A ref of the backend's own form that names nothing stored: for the file store a hash no
    object has; for Tahoe an immutable cap with another key (so another storage index)."""
    if existing.startswith("URI:CHK:"):
        parts = existing.split(":")
        parts[2] = parts[2][:-4] + ("aaaa" if not parts[2].endswith("aaaa") else "bbbb")
        return ":".join(parts)
    return digest(b"nothing was ever stored under this name").hex()


def test_put_bytes_then_get_gives_the_bytes_back_whole_and_by_range(store: Store) -> None:
    data = os.urandom(200_000)
    ref = store.put_bytes(data)
    assert store.get(ref) == data
    assert store.size(ref) == len(data)
    assert store.get(ref, 0, 10) == data[:10]
    assert store.get(ref, 123_456, 1000) == data[123_456:124_456]
    assert store.get(ref, 150_000) == data[150_000:]
    assert store.get(ref, 5, 0) == b""
    assert check_stored(store, ref, len(data)) == ref


def test_a_range_past_the_end_is_an_error_not_short_bytes(store: Store) -> None:
    ref = store.put_bytes(os.urandom(100_000))
    with pytest.raises(CorruptData):
        store.get(ref, 99_000, 5_000)


def test_put_file_stores_its_bytes_and_leaves_the_file(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "object"
    data = os.urandom(3 << 20)  # a few MiB: more than one chunk of any streaming put
    path.write_bytes(data)
    ref = store.put_file(path)
    assert path.read_bytes() == data
    assert store.size(ref) == len(data)
    assert store.get(ref, (2 << 20) + 7, 4096) == data[(2 << 20) + 7 : (2 << 20) + 7 + 4096]


def test_move_file_stores_its_bytes_and_takes_the_file(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "pack"
    data = os.urandom(70_000)
    path.write_bytes(data)
    ref = store.move_file(path, digest(data))
    assert not path.exists()
    assert store.get(ref) == data


def test_tiny_and_empty_objects_round_trip(store: Store) -> None:
    for data in (b"", b"x", b"\x00" * 50):
        ref = store.put_bytes(data)
        assert store.get(ref) == data
        assert store.size(ref) == len(data)


def test_refs_name_their_bytes_for_good(store: Store) -> None:
    a, b = store.put_bytes(b"first object"), store.put_bytes(b"second object")
    assert a != b
    store.put_bytes(b"a third, put later")
    assert store.get(a) == b"first object" and store.get(b) == b"second object"


def test_an_object_never_stored_is_an_error(store: Store) -> None:
    missing = _missing_ref(store, store.put_bytes(os.urandom(5000)))
    with pytest.raises(StoreError):  # ObjectMissing where the backend can tell
        store.get(missing)
    with pytest.raises(StoreError):
        check_stored(store, missing, 5000)


def test_holds_says_whether_the_object_is_there(store: Store) -> None:
    data = os.urandom(100_000)
    ref = store.put_bytes(data)
    assert store.holds(ref, len(data))
    assert not store.holds(_missing_ref(store, ref), len(data))


def test_the_root_starts_absent_and_is_replaced_whole(store: Store) -> None:
    assert store.read_root() is None
    store.replace_root(b'{"first": 1}\n')
    assert store.read_root() == b'{"first": 1}\n'
    longer = b'{"second": "' + b"x" * 10_000 + b'"}\n'
    store.replace_root(longer)
    assert store.read_root() == longer
    store.replace_root(b"{}\n")  # shorter again: nothing of the longer one is left over
    assert store.read_root() == b"{}\n"


def test_listing_names_every_object_or_says_it_cannot(store: Store) -> None:
    refs = {store.put_bytes(os.urandom(1000 + i)) for i in range(5)}
    try:
        listed = set(store.list_refs())
    except StoreError:
        return  # a backend that cannot enumerate (a Tahoe grid) must say so, not list nothing
    assert refs <= listed


def test_delete_removes_an_object_where_the_backend_can(store: Store) -> None:
    kept, gone = store.put_bytes(b"kept object bytes"), store.put_bytes(b"deleted object")
    if not store.can_delete:
        with pytest.raises(NotImplementedError):
            store.delete(gone)
        return
    store.delete(gone)
    with pytest.raises(ObjectMissing):
        store.get(gone)
    with pytest.raises(ObjectMissing):
        store.size(gone)
    assert gone not in set(store.list_refs())
    assert store.get(kept) == b"kept object bytes"
    store.delete(gone)  # deleting again is harmless: prune may be run again after a kill


def test_a_put_of_stored_bytes_heals_a_damaged_copy(store: Store, tmp_path: Path) -> None:
    """Bytes put again over an object damaged in place (a bit flipped on the disk) are stored
    again, whichever way they come; a Tahoe grid repairs its shares itself (check --repair)."""
    if not isinstance(getattr(store, "inner", store), FileStore):
        pytest.skip("only a file store keeps an object where a put can find it damaged")
    files = getattr(store, "inner", store)
    assert isinstance(files, FileStore)
    data = os.urandom(50_000)
    for put in ("bytes", "file", "move"):
        ref = store.put_bytes(data)
        damaged = files._path(ref)
        raw = bytearray(damaged.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        damaged.write_bytes(bytes(raw))
        assert store.get(ref) != data
        if put == "bytes":
            again = store.put_bytes(data)
        else:
            path = tmp_path / f"object-{put}"
            path.write_bytes(data)
            again = store.put_file(path) if put == "file" else store.move_file(path, digest(data))
        assert again == ref and store.get(ref) == data, put
