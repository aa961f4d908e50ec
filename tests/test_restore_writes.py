"""Small files are written on a thread of their own, many to a task: every file handed over lands
and is reported once, on the caller's thread; one that fails is reported as that entry's error
while the others still land; an error that is not an entry's stops the restore."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from deltagrid.restore import writes
from deltagrid.restore.writes import Writes


def _write(_entry: str, parent: bytes, dest: bytes, data: bytes) -> None:
    Path(dest.decode()).write_bytes(data)


def test_every_file_lands_and_is_reported_once_on_the_callers_thread(tmp_path: Path) -> None:
    done: list[tuple[str, bool, bool]] = []
    failed: list[str] = []
    main = threading.current_thread()

    def on_done(entry: str, linked: bool) -> None:
        done.append((entry, linked, threading.current_thread() is main))

    def on_error(entry: str, _exc: BaseException) -> bool:
        failed.append(entry)
        return True

    w = Writes(_write, on_done, on_error)
    count = writes.BATCH_FILES * (writes.IN_FLIGHT + 2) + 3  # more than are ever in flight
    names = [f"f{i}" for i in range(count)]
    missing_dir = str(tmp_path / "no-such-dir" / "f").encode()
    for i, name in enumerate(names):
        dest = missing_dir if i == 7 else str(tmp_path / name).encode()
        w.add(name, str(tmp_path).encode(), dest, name.encode())
    w.finish()
    w.close()

    assert failed == ["f7"]
    assert sorted(d[0] for d in done) == sorted(n for n in names if n != "f7")
    assert all(not linked and on_main for _e, linked, on_main in done)
    for name in names:
        if name != "f7":
            assert (tmp_path / name).read_bytes() == name.encode()


def test_an_error_that_is_not_the_entrys_is_raised(tmp_path: Path) -> None:
    def broken(_entry: str, _parent: bytes, _dest: bytes, _data: bytes) -> None:
        raise MemoryError("no room")

    w = Writes(broken, lambda _e, _l: None, lambda _e, exc: not isinstance(exc, MemoryError))
    w.add("f", str(tmp_path).encode(), str(tmp_path / "f").encode(), b"x")
    with pytest.raises(MemoryError):
        w.finish()
    w.close()
