"""The store is the one the catalog was written against: a rotated disk, a rolled-back store and a
wiped store, each refused before anything is written, each told apart in its message, and each
recovered with the command the message names; every snapshot restores exactly afterwards.

Real file stores swapped by renaming directories, real `python -m deltagrid` subprocesses. The
quiet-night test counts the store requests the check adds, in this process, through the real
file store's methods.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from deltagrid.repository import identity
from deltagrid.store.filestore import FileStore
from deltagrid.store.tahoe_grid import LocalGrid
from tests import gridfixtures
from tests.helpers import describe, dg, one_error, restored_root, root_of, settle

WRITERS = ["upload"], ["forget", "--keep-last", "1"], ["prune"], ["compact"]
SECTION = "store identity"


def night(src: Path, n: int) -> dict[bytes, tuple]:
    """Night `n` of a small tree: a rewritten note, a file added and one dropped, and an edit in
    a file large enough to be stored as a delta. Returns the tree as it then is."""
    (src / "sub").mkdir(parents=True, exist_ok=True)
    (src / "note.txt").write_text(f"night {n}\n" * (40 + n))
    (src / "sub" / f"day-{n}.bin").write_bytes(os.urandom(3_000 + n))
    (src / "sub" / f"day-{n - 2}.bin").unlink(missing_ok=True)
    big = src / "big.bin"
    if not big.exists():
        big.write_bytes(os.urandom(300 << 10))
    with open(big, "r+b") as f:
        f.seek(n * 7_000)
        f.write(os.urandom(200))
    settle(src)
    return describe(src)


def backup(home: Path, src: Path) -> dict:
    run = dg(home, "--json", "backup", src)
    assert run.code == 0, run.err
    return run.json


def restores_exactly(home: Path, src: Path, nights: dict[int, dict], tmp: Path, figures) -> None:
    """Every snapshot the home lists restores to the tree it was taken of."""
    listed = [s["id"] for s in dg(home, "--json", "snapshots").json["snapshots"]]
    assert listed == sorted(nights), (listed, sorted(nights))
    for snap, expected in nights.items():
        target = Path(tempfile.mkdtemp(dir=tmp, prefix=f"restore-{snap}-"))
        run = dg(home, "restore", "--snapshot", snap, target)
        assert run.code == 0, run.err
        assert describe(restored_root(target, src)) == expected, f"snapshot {snap}"
        figures.count(SECTION, "snapshots restored exactly")


def refused(home: Path, src: Path, store: Path, figures, *fragments: str) -> str:
    """Every writer refuses the store with the same one-line message, and the store's files,
    names, sizes, bytes and mtimes, are as they were."""
    before = describe(store) if store.exists() else None
    first = one_error(dg(home, "backup", src), 1, *fragments)
    for args in WRITERS:
        assert one_error(dg(home, *args), 1, *fragments) == first, args
    assert (describe(store) if store.exists() else None) == before
    figures.count(SECTION, "writes refused", 1 + len(WRITERS))
    return first


def store_id(store: Path) -> str:
    root = json.loads((store / "root.json").read_text())
    return str(root["store_id"])


# --- two disks rotated at one mount point --------------------------------------------------------


def test_rotated_disks_are_told_apart_and_each_keeps_its_history(tmp_path: Path, figures) -> None:
    mount, disk_a, disk_b = tmp_path / "mount", tmp_path / "disk-a", tmp_path / "disk-b"
    url = f"file://{mount}"
    src = tmp_path / "src"
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"

    # Disk B holds a repository made by another home; then disk A is mounted and backed up.
    assert dg(home_b, "init", "--store", url).code == 0
    on_b = {1: night(src, 1)}
    backup(home_b, src)
    mount.rename(disk_b)
    assert dg(home_a, "init", "--store", url).code == 0
    on_a = {1: on_b[1]}
    backup(home_a, src)
    on_a[2] = night(src, 2)
    backup(home_a, src)
    mount.rename(disk_a)
    id_a, id_b = store_id(disk_a), store_id(disk_b)
    assert id_a != id_b

    # Disk B comes back at the mount point: home A refuses it before writing anything.
    disk_b.rename(mount)
    on_a[3] = night(src, 3)
    message = refused(
        home_a, src, mount, figures, "another repository", id_b[:8], id_a[:8], "snapshot 1"
    )
    assert "--home" in message and "deltagrid attach" in message
    figures.count(SECTION, "another repository")
    # Its verify, missing what the catalog names, says so too, not "pruned: attach again":
    # attaching this home to disk B would adopt the wrong disk's history.
    line = one_error(dg(home_a, "verify"), 1, "another repository", id_b[:8], id_a[:8])
    assert "mount the disk it writes to" in line and "pruned" not in line
    figures.count(SECTION, "readers told of another repository")

    # Recovery: a home per disk. A new home for disk B adopts its history and continues it.
    home_b2 = tmp_path / "home-b2"
    attached = dg(home_b2, "--json", "attach", "--store", url)
    assert attached.code == 0, attached.err
    assert attached.json["snapshot_id"] == 1
    on_b[2] = on_a[3]
    assert backup(home_b2, src)["snapshot_id"] == 2
    assert store_id(mount) == id_b
    restores_exactly(home_b2, src, on_b, tmp_path, figures)

    # Disk A again: its own home continues it; disk B's home now refuses it.
    mount.rename(disk_b)
    disk_a.rename(mount)
    refused(home_b2, src, mount, figures, "another repository", id_a[:8], id_b[:8])
    assert backup(home_a, src)["snapshot_id"] == 3
    restores_exactly(home_a, src, on_a, tmp_path, figures)

    # Or one home follows disk B from now on: attach adopts that store's history.
    mount.rename(disk_a)
    disk_b.rename(mount)
    assert dg(home_a, "attach").code == 0
    on_b[3] = night(src, 4)
    assert backup(home_a, src)["snapshot_id"] == 3
    assert store_id(mount) == id_b
    restores_exactly(home_a, src, on_b, tmp_path, figures)
    assert dg(home_a, "verify", "--read-data").code == 0


def test_a_restore_from_the_other_disk_names_it_rather_than_a_prune(
    tmp_path: Path, figures
) -> None:
    """Two homes, a disk each, different trees; disk B mounted where home A expects its own.
    Restoring from it cannot work (what A's catalog names is not there, every byte is checked)
    and the line says why: another repository, not a prune that attach would mend."""
    mount, src_a, src_b = tmp_path / "mount", tmp_path / "src-a", tmp_path / "src-b"
    url = f"file://{mount}"
    for src, name in ((src_a, "a"), (src_b, "b")):
        src.mkdir()
        (src / f"{name}.txt").write_text(f"only on disk {name}\n" * 50)
        settle(src)
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    assert dg(home_a, "init", "--store", url).code == 0
    backup(home_a, src_a)
    mount.rename(tmp_path / "disk-a")
    assert dg(home_b, "init", "--store", url).code == 0
    backup(home_b, src_b)
    target = tmp_path / "restored"
    line = one_error(dg(home_a, "restore", target), 1, "another repository")
    assert "mount the disk it writes to" in line and "pruned" not in line
    assert not (restored_root(target, src_a) / "a.txt").exists()
    figures.count(SECTION, "readers told of another repository")


# --- a store rolled back to an older copy --------------------------------------------------------


@pytest.mark.parametrize("nights_lost", [1, 2])
def test_rolled_back_store_is_behind_and_attach_adopts_it(
    tmp_path: Path, nights_lost: int, figures
) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    store = home / "store"
    nights = {}
    for n in (1, 2):
        nights[n] = night(src, n)
        backup(home, src)
    copy = tmp_path / "store-after-night-2"
    shutil.copytree(store, copy)
    for n in range(3, 3 + nights_lost):
        night(src, n)
        backup(home, src)
    assert root_of(home)["snapshot"] == 2 + nights_lost

    # The NAS snapshot is rolled back: the store is the copy taken after night 2.
    shutil.rmtree(store)
    copy.rename(store)
    message = refused(home, src, store, figures, "is behind this home", "snapshot 2")
    assert f"wrote snapshot {2 + nights_lost}" in message
    assert "deltagrid attach" in message and "deltagrid repair" in message
    figures.count(SECTION, "store behind")

    # attach adopts the store as it is; the next backup uploads again what changed since.
    attached = dg(home, "--json", "attach")
    assert attached.code == 0, attached.err
    assert attached.json["snapshot_id"] == 2
    nights[3] = night(src, 10)
    third = backup(home, src)
    assert third["snapshot_id"] == 3 and third["bytes_uploaded"] > 0
    nights[4] = night(src, 11)
    assert backup(home, src)["snapshot_id"] == 4
    assert [e["type"] for e in root_of(home)["backupdb"]][-1] == "delta"  # the chain continues
    restores_exactly(home, src, nights, tmp_path, figures)
    assert dg(home, "verify", "--read-data").code == 0


def test_a_home_from_before_store_ids_finds_a_rolled_back_store_by_its_packs(
    tmp_path: Path, figures
) -> None:
    """A home and a store written by an older deltagrid have no record and no store id: a store
    rolled back by one night looks like a commit a kill left unpublished, and only the probe of
    the newest packs tells it apart."""
    src, home = tmp_path / "src", tmp_path / "home"
    store = home / "store"
    night(src, 1)
    backup(home, src)
    copy = tmp_path / "store-after-night-1"
    shutil.copytree(store, copy)
    night(src, 2)
    backup(home, src)
    (home / "state" / identity.RECORD).unlink()
    shutil.rmtree(store)
    copy.rename(store)
    root = json.loads((store / "root.json").read_text())
    del root["store_id"], root["generation"]
    (store / "root.json").write_text(json.dumps(root))
    refused(home, src, store, figures, "lost objects", "deltagrid repair")
    figures.count(SECTION, "store behind, found by its packs")


# --- a store ahead of the home -----------------------------------------------------------------


def test_a_store_another_home_wrote_is_ahead_and_attach_catches_up(tmp_path: Path, figures) -> None:
    """Another machine attached to the same store forgets snapshots: the root moves on with the
    same snapshot number, and only its generation says this home is behind it."""
    src, home, other = tmp_path / "src", tmp_path / "home", tmp_path / "other"
    store = home / "store"
    nights = {}
    for n in (1, 2):
        nights[n] = night(src, n)
        backup(home, src)
    assert dg(other, "attach", "--store", f"file://{store}").code == 0
    assert dg(other, "forget", "--keep-last", "1").code == 0
    message = refused(home, src, store, figures, "written by another home", "deltagrid attach")
    assert "generation 3" in message
    figures.count(SECTION, "store ahead")
    assert dg(home, "attach").code == 0
    del nights[1]
    nights[3] = night(src, 3)
    assert backup(home, src)["snapshot_id"] == 3
    restores_exactly(home, src, nights, tmp_path, figures)


def test_a_kill_between_the_root_and_the_record_is_our_own_write(tmp_path: Path, figures) -> None:
    """The record is written with the root being written as `pending`, then the root, then the
    record again: killed between the last two, the next run knows the root as its own."""
    src, home = tmp_path / "src", tmp_path / "home"
    nights = {1: night(src, 1)}
    backup(home, src)
    nights[2] = night(src, 2)
    backup(home, src)
    root = root_of(home)
    record = home / "state" / identity.RECORD
    after = json.loads(record.read_text())
    assert after == {
        "store_id": root["store_id"],
        "generation": root["generation"],
        "snapshot": 2,
        "pending": None,
    }
    before = dict(after, generation=root["generation"] - 1, snapshot=1)
    record.write_text(json.dumps(before))  # as if killed after the root was replaced...
    message = refused(home, src, home / "store", figures, "written by another home")
    assert f"generation {root['generation']}" in message
    pending = {"generation": root["generation"], "hash": root["backupdb"][-1]["hash"]}
    record.write_text(json.dumps(dict(before, pending=pending)))  # ...having said what it wrote
    nights[3] = night(src, 3)
    assert backup(home, src)["snapshot_id"] == 3
    assert json.loads(record.read_text())["generation"] == root["generation"] + 1
    restores_exactly(home, src, nights, tmp_path, figures)
    figures.count(SECTION, "own root found after a kill")


# --- a wiped store -------------------------------------------------------------------------------


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


WIPES = {
    "objects emptied": (lambda s: _empty(s / "objects"), ("lost objects", "deltagrid repair")),
    "root removed": (lambda s: (s / "root.json").unlink(), ("has no root pointer", "wiped")),
    "store emptied": (_empty, ("no deltagrid store at", "wiped", "deltagrid repair")),
}


@pytest.mark.parametrize("wipe", sorted(WIPES))
def test_wiped_store_is_refused_before_anything_is_written(
    tmp_path: Path, wipe: str, figures
) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    store = home / "store"
    for n in (1, 2):
        night(src, n)
        backup(home, src)
    damage, fragments = WIPES[wipe]
    damage(store)
    night(src, 3)
    refused(home, src, store, figures, *fragments)
    figures.count(SECTION, f"wiped store ({wipe})")
    if wipe != "store emptied":  # what the message says: repair keeps this home's history
        _repair_then_carry_on(home, src, tmp_path, figures)
    if wipe == "store emptied":  # what the message says: a new home, on the emptied store
        fresh = tmp_path / "fresh"
        assert dg(fresh, "init", "--store", f"file://{store}").code == 0
        expected = {1: describe(src)}
        backup(fresh, src)
        restores_exactly(fresh, src, expected, tmp_path, figures)


def _repair_then_carry_on(home: Path, src: Path, tmp: Path, figures) -> None:
    """`repair` puts back what the sources still hold; the versions they no longer hold are
    named (exit 1) and no longer block a backup; the latest snapshot and the next one restore
    exactly and verify is clean but for the versions named."""
    repair = dg(home, "--json", "repair")
    assert repair.code in (0, 1), repair.err
    assert "Traceback" not in repair.err
    lost = {p for u in repair.json["unrecoverable"] for p in u["paths"]}
    assert repair.code == (1 if lost else 0)
    figures.count(SECTION, "stores put back by repair")
    latest = dg(home, "--json", "snapshots").json["snapshots"][-1]["id"]
    expected = describe(src)
    nights = {latest + 1: expected}
    backup(home, src)  # no longer refused: what is known lost is not probed for again
    target = Path(tempfile.mkdtemp(dir=tmp, prefix="after-repair-"))
    assert dg(home, "restore", target).code == 0
    assert describe(restored_root(target, src)) == nights[latest + 1]
    verify = dg(home, "--json", "verify", "--read-data").json
    named = {p["path"] for p in verify["problems"] if "path" in p}
    assert named <= lost | {str(src / "note.txt"), str(src / "big.bin")}, verify["problems"]


def test_a_rolled_back_store_keeps_this_homes_history_with_repair(tmp_path: Path, figures) -> None:
    """The other way out of 'behind': the home's own history is published again over the
    rolled-back store, and what it lost is stored again from the sources."""
    src, home = tmp_path / "src", tmp_path / "home"
    store = home / "store"
    (src / "kept").mkdir(parents=True)
    nights = {}
    for n in (1, 2, 3):  # files only added: the sources still hold every version
        (src / "kept" / f"night-{n}.bin").write_bytes(os.urandom(20_000 + n))
        settle(src)
        nights[n] = describe(src)
        backup(home, src)
        if n == 1:
            copy = tmp_path / "store-after-night-1"
            shutil.copytree(store, copy)
    shutil.rmtree(store)
    copy.rename(store)
    refused(home, src, store, figures, "is behind this home", "deltagrid repair")
    repair = dg(home, "--json", "repair")
    assert repair.code == 0, repair.err
    assert repair.json["unrecoverable"] == [] and repair.json["repaired"] > 0
    assert root_of(home)["snapshot"] == 3
    restores_exactly(home, src, nights, tmp_path, figures)
    assert dg(home, "verify", "--read-data").code == 0
    figures.count(SECTION, "stores put back by repair")


# --- the cost on a quiet night -------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Every request to the real file store (its primitive methods, by name) in this process;
    those made inside the identity check under `check:NAME`."""
    calls: dict[str, int] = {}
    inside = [False]
    for name in ("get", "size", "read_root", "replace_root", "put_file", "put_bytes", "move_file"):
        real = getattr(FileStore, name)

        def wrapper(self, *args, _real=real, _name=name, **kw):  # type: ignore[no-untyped-def]
            key = f"check:{_name}" if inside[0] else _name
            calls[key] = calls.get(key, 0) + 1
            return _real(self, *args, **kw)

        monkeypatch.setattr(FileStore, name, wrapper)
    real_check = identity.check

    def check(*args, **kw):  # type: ignore[no-untyped-def]
        inside[0] = True
        try:
            return real_check(*args, **kw)
        finally:
            inside[0] = False

    monkeypatch.setattr(identity, "check", check)
    yield calls


def test_quiet_night_check_costs_a_few_requests_whatever_the_store_holds(
    tmp_path: Path, cli_in, counted: dict[str, int], figures
) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[upload]\npack_size = 65536\n")  # many small packs
    for n in range(1, 5):
        night(src, n)
        for i in range(30):
            (src / "sub" / f"n{n}-{i}.bin").write_bytes(os.urandom(20_000))
        settle(src)
        assert cli_in(home, "backup", src).code == 0
    packs = len(list(FileStore(home / "store").list_refs()))
    assert packs > 30

    counted.clear()
    run = cli_in(home, "--json", "backup", src)
    assert run.code == 0, run.err
    assert run.json["bytes_uploaded"] == 0
    check = {k: v for k, v in counted.items() if k.startswith("check:")}
    # One root read, then the newest 3 packs, 3 drawn at random and the full export: a `size`
    # each on a file store (a `t=check` each on Tahoe).
    assert check == {"check:read_root": 1, "check:size": 7}, check
    rest = sum(v for k, v in counted.items() if not k.startswith("check:"))
    figures.count(SECTION, "quiet-night store requests, the check's", sum(check.values()))
    figures.count(SECTION, "quiet-night store requests, the rest", rest)
    figures.count(SECTION, "store objects on the quiet night", packs)


# --- on a Tahoe grid -----------------------------------------------------------------------------

grid = gridfixtures.grid  # the session's grid, shared with the other grid tests
healthy = gridfixtures.healthy


def _shares_of(grid: LocalGrid, cap: str) -> list[Path]:
    """The share directories of an immutable object on the grid's storage servers."""
    from allmydata import uri
    from allmydata.util import base32

    index = base32.b2a(uri.from_string(cap).get_storage_index()).decode()
    return list(grid.base.glob(f"storage*/storage/shares/{index[:2]}/{index}"))


@gridfixtures.needs_tahoe
def test_on_a_grid_the_check_asks_the_servers_and_finds_lost_shares(
    tmp_path: Path, cli_in, healthy: LocalGrid, monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    src, home = tmp_path / "src", tmp_path / "home"
    assert cli_in(home, "init", "--store", healthy.url).code == 0
    for n in (1, 2):
        night(src, n)
        assert cli_in(home, "backup", src).code == 0

    calls: list[tuple[str, str, bool]] = []  # method, query, inside the check
    inside = [False]
    real_request, real_check = requests.Session.request, identity.check

    def request(self, method, url, *args, **kw):  # type: ignore[no-untyped-def]
        calls.append((method, url.partition("?")[2], inside[0]))
        return real_request(self, method, url, *args, **kw)

    def check(*args, **kw):  # type: ignore[no-untyped-def]
        inside[0] = True
        try:
            return real_check(*args, **kw)
        finally:
            inside[0] = False

    monkeypatch.setattr(requests.Session, "request", request)
    monkeypatch.setattr(identity, "check", check)
    run = cli_in(home, "--json", "backup", src)
    assert run.code == 0, run.err
    assert run.json["bytes_uploaded"] == 0
    by_check = sorted((m, q) for m, q, ins in calls if ins)
    probes = len(by_check) - 1
    assert by_check == [("GET", "")] + [("POST", "t=check&output=JSON")] * probes
    assert 1 <= probes <= 7
    figures.count(SECTION, "grid quiet-night HTTP requests, the check's", len(by_check))
    figures.count(SECTION, "grid quiet-night HTTP requests, the rest", len(calls) - len(by_check))

    # The servers lose every share of the newest pack: the check finds it, nothing is written.
    db = sqlite3.connect(home / "backupdb.sqlite")
    newest = db.execute("SELECT ref FROM packs ORDER BY id DESC LIMIT 1").fetchone()[0]
    db.close()
    shares = _shares_of(healthy, newest)
    assert shares
    for share in shares:
        shutil.rmtree(share)
    root = root_of(home)
    night(src, 3)
    one_error(cli_in(home, "backup", src), 1, "lost objects", "deltagrid repair")
    assert root_of(home) == root
    figures.count(SECTION, "grid shares lost, found by the check")
