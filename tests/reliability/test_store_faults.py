"""deltagrid driven through a store that fails, hangs, loses writes and returns damaged bytes.

Each fault is injected by `FaultStore` (tests/reliability/faultstore.py) into the stores the CLI
opens in this process, on every Nth call of one operation, for several N, so faults land on pack
puts, the backupdb export put, the root replace, prune's puts, and the ranged gets of restore,
verify and attach; a real hang is a Tahoe "node" that never answers. What must hold: a backup
either commits a snapshot that restores exactly or fails with one clear error and leaves the
previous snapshot restorable and verifiable; prune deletes nothing a snapshot needs; restore
never writes a wrong byte without naming the file; attach refuses a damaged export; a damaged
root pointer is one clear error. Every injected fault is counted, and counted as caught only
when that held.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

import deltagrid.commands.attach
import deltagrid.store.tahoe
from deltagrid.floor.errors import StoreError
from deltagrid.home import Home
from deltagrid.store import Store, open_store
from tests.helpers import Run, describe, restored_root
from tests.reliability.faultstore import Faults, FaultStore

PACK_SIZE = 256 << 10
PIECE_SIZE = 64 << 10
SIZES = [0, 100, 3_000, 40_000, 70_000, 150_000, 300_000]


class Switch:
    """The faults the stores opened from now on inject; None: a plain store."""

    faults: Faults | None = None


@pytest.fixture
def switch(monkeypatch: pytest.MonkeyPatch) -> Switch:
    """Wrap every store the CLI opens (Home.store and attach's) while `switch.faults` is set."""
    sw = Switch()
    home_store = Home.store

    def wrap(store: Store) -> Store:
        return store if sw.faults is None else FaultStore(store, sw.faults)

    def opener(url: str, create: bool = False, cap: str | None = None) -> Store:
        return wrap(open_store(url, create=create, cap=cap))

    monkeypatch.setattr(Home, "store", lambda home: wrap(home_store(home)))
    monkeypatch.setattr(deltagrid.commands.attach, "open_store", opener)
    return sw


@dataclass
class Nights:
    src: Path
    first: dict  # the tree as snapshot 1 holds it
    second: dict  # the tree on disk now, as snapshot 2 holds it
    home1: Path  # snapshot 1 committed; the second night not backed up yet
    home2: Path  # snapshots 1 and 2 committed
    forgot: Path  # home2 with snapshot 1 forgotten: prune has packs to write and delete


def _night1(src: Path) -> None:
    rng = random.Random(6)
    for i, size in enumerate(SIZES * 2):
        d = src / f"d{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:02}.bin").write_bytes(rng.randbytes(size))
    (src / "d0" / "link").symlink_to("f00.bin")


def _night2(src: Path) -> None:
    """Scattered edits to the big files (deltas), an append, a deletion, new files."""
    rng = random.Random(7)
    big = sorted(p for p in src.rglob("*.bin") if p.stat().st_size >= 150_000)
    for p in big[:3]:
        with open(p, "r+b") as f:
            for _ in range(3):
                f.seek(rng.randrange(p.stat().st_size - 100))
                f.write(rng.randbytes(100))
    with open(big[3], "ab") as f:
        f.write(rng.randbytes(120_000))
    (src / "d1" / "f01.bin").unlink()
    (src / "new").mkdir()
    for i, size in enumerate([500, 60_000, 200_000]):
        (src / "new" / f"n{i}.bin").write_bytes(rng.randbytes(size))


def copy_home(home: Path, dest: Path) -> Path:
    """A copy of `home` at `dest`, its config naming the copy's own store."""
    shutil.copytree(home, dest, symlinks=True)
    config = dest / "config.toml"
    config.write_text(config.read_text().replace(str(home), str(dest)))
    return dest


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Nights:
    """Two nights of a small tree in many small packs, backed up without faults once."""
    from deltagrid.cli import main

    base = tmp_path_factory.mktemp("nights")
    src, home1 = base / "src", base / "home1"
    home1.mkdir()
    (home1 / "config.toml").write_text(
        f"[upload]\npack_size = {PACK_SIZE}\npiece_size = {PIECE_SIZE}\n"
    )
    _night1(src)
    assert main(["--home", str(home1), "-q", "backup", str(src)]) == 0
    first = describe(src)
    _night2(src)
    home2 = copy_home(home1, base / "home2")
    assert main(["--home", str(home2), "-q", "backup", str(src)]) == 0
    forgot = copy_home(home2, base / "forgot")
    assert main(["--home", str(forgot), "-q", "forget", "--keep-last", "1"]) == 0
    return Nights(src, first, describe(src), home1, home2, forgot)


class Tally:
    """Faults injected and caught in one test, added to the suite's figures as it goes."""

    def __init__(self, figures, op: str, kind: str) -> None:
        self.figures = figures
        self.section = f"store faults: {op} {kind}"
        self.injected = 0
        self.caught = 0

    def add(self, injected: int, problems: list[str]) -> None:
        """`injected` faults hit one command; they were caught if it showed no `problems`."""
        caught = 0 if problems else injected
        self.injected += injected
        self.caught += caught
        for section in ("store faults", self.section):
            self.figures.count(section, "injected", injected)
            self.figures.count(section, "caught", caught)


def positions(every: int | None) -> Iterable[int]:
    """N = `every`, or with None N = 1, 2, ... (the caller stops once nothing was spoiled)."""
    return itertools.count(1) if every is None else [every]


def run_faulty(cli_in, switch: Switch, faults: Faults, home: Path, *args: str | Path) -> Run:
    switch.faults = faults
    try:
        return cli_in(home, *args)
    finally:
        switch.faults = None


def error_problems(run: Run, *fragments: str) -> list[str]:
    """What is wrong with `run` as a failure: exit 1 and exactly one clear error line."""
    lines = run.err.splitlines()
    if run.code != 1:
        return [f"exit {run.code}, not 1: {run.err!r}"]
    if "Traceback" in run.err or len(lines) != 1 or not lines[0].startswith("deltagrid: error: "):
        return [f"not one error line: {run.err!r}"]
    return [f"error line lacks {f!r}: {lines[0]}" for f in fragments if f not in lines[0]]


def restore_problems(cli_in, home: Path, snapshot: int, src: Path, expected: dict, target: Path):
    """What keeps `snapshot` from restoring exactly (none: it does)."""
    run = cli_in(home, "--json", "restore", "--snapshot", str(snapshot), target)
    if run.code != 0:
        return [f"restore of snapshot {snapshot} failed: {run.err}"]
    if describe(restored_root(target, src)) != expected:
        return [f"snapshot {snapshot} does not restore exactly"]
    return []


def published(cli_in, home: Path) -> list[int]:
    return [s["id"] for s in cli_in(home, "--json", "snapshots").json["snapshots"]]


# --- puts and the root replace during backup ------------------------------------------------


def backup_fault_problems(cli_in, nights: Nights, home: Path, run: Run, tmp: Path) -> list[str]:
    """After a backup that met a fault: it failed clearly, readers see only snapshot 1, which
    restores exactly and verifies; a rerun without faults commits the second night exactly."""
    problems = error_problems(run)
    if published(cli_in, home) != [1]:
        problems.append(f"snapshots after the failed backup: {published(cli_in, home)}")
    problems += restore_problems(cli_in, home, 1, nights.src, nights.first, tmp / "r1")
    verified = cli_in(home, "verify", "--read-data")
    if verified.code != 0:
        problems.append(f"verify --read-data after the failed backup: {verified.err}")
    rerun = cli_in(home, "-q", "backup", nights.src)
    if rerun.code != 0:
        return [*problems, f"rerun without faults failed: {rerun.err}"]
    problems += restore_problems(cli_in, home, 2, nights.src, nights.second, tmp / "r2")
    verified = cli_in(home, "verify")  # every pack, live or not, is there with its size
    if verified.code != 0:
        problems.append(f"verify after the rerun: {verified.err}")
    return problems


@pytest.mark.parametrize(
    ("op", "kind", "every"),
    [  # every None: N = 1, 2, ... until N passes the calls made, so each position meets it
        ("put", "fail", None),
        ("put", "lost", None),
        ("put", "hang", 2),
        ("size", "fail", 3),  # the check after each put that the store holds the object
        ("replace_root", "fail", 1),
        ("replace_root", "hang", 1),
        ("replace_root", "lost", 1),
    ],
)
def test_backup_meeting_a_fault_fails_cleanly_and_keeps_the_previous_snapshot(
    tmp_path: Path,
    nights: Nights,
    cli_in,
    switch: Switch,
    figures,
    op: str,
    kind: str,
    every: int | None,
) -> None:
    tally = Tally(figures, op, kind)
    for n in positions(every):
        home = copy_home(nights.home1, tmp_path / f"home-{n}")
        faults = Faults(op, kind, n)
        run = run_faulty(cli_in, switch, faults, home, "-q", "backup", nights.src)
        hits, injected = list(faults.hits), faults.take()
        if not injected:  # N beyond the calls made: nothing spoiled, a normal backup
            assert every is None and n > 3, f"only {n - 1} calls of {op} to spoil"
            assert run.code == 0, run.err
            break
        problems = backup_fault_problems(cli_in, nights, home, run, tmp_path / f"r-{n}")
        tally.add(injected, problems)
        assert not problems, (hits, problems)
    assert tally.caught == tally.injected > 0


@pytest.mark.parametrize(("kind", "every"), [("lost", None), ("fail", 3)])
def test_prune_meeting_a_lost_or_failed_put_deletes_nothing_the_snapshot_needs(
    tmp_path: Path,
    nights: Nights,
    cli_in,
    switch: Switch,
    figures,
    kind: str,
    every: int | None,
) -> None:
    """Prune puts rebuilt keyframes and repacked blobs, then deletes the packs they replace: a
    put that fails or is lost must stop it before it deletes anything."""
    tally = Tally(figures, "put (prune)", kind)
    for n in positions(every):
        home = copy_home(nights.forgot, tmp_path / f"home-{n}")
        faults = Faults("put", kind, n)
        run = run_faulty(cli_in, switch, faults, home, "-q", "prune", "--delete-now")
        hits, injected = list(faults.hits), faults.take()
        if not injected:
            assert every is None and n > 3, f"only {n - 1} puts to spoil"
            assert run.code == 0, run.err
            break
        problems = error_problems(run)
        target = tmp_path / f"r-{n}"
        problems += restore_problems(cli_in, home, 2, nights.src, nights.second, target)
        if cli_in(home, "verify", "--read-data").code != 0:
            problems.append("verify --read-data fails after the failed prune")
        if cli_in(home, "-q", "prune", "--delete-now").code or cli_in(home, "verify").code:
            problems.append("prune without faults does not finish cleanly")
        tally.add(injected, problems)
        assert not problems, (hits, problems)
    assert tally.caught == tally.injected > 0


# --- gets during restore, verify and attach ---------------------------------------------------


# N per kind: `hang` is `fail` after a wait, so it needs fewer positions (and fewer waits).
GET_FAULTS = [
    ("fail", 1),
    ("fail", 3),
    ("hang", 2),
    ("truncate", 1),
    ("truncate", 2),
    ("truncate", 4),
    ("bitflip", 1),
    ("bitflip", 2),
    ("bitflip", 4),
]


@pytest.mark.parametrize(("kind", "every"), GET_FAULTS)
def test_restore_through_bad_gets_names_every_file_it_did_not_restore_exactly(
    tmp_path: Path, nights: Nights, cli_in, switch: Switch, figures, kind: str, every: int
) -> None:
    """Each file is restored exactly or named; only a fault that spoiled bytes no file needs
    (between two blobs a span reads together) may leave the restore whole, and then exact."""
    tally = Tally(figures, "get (restore)", kind)
    faults = Faults("get", kind, every)
    target = tmp_path / "r"
    run = run_faulty(cli_in, switch, faults, nights.home2, "--json", "restore", target)
    hits, injected = list(faults.hits), faults.take()
    assert injected, "the restore made no gets to spoil"
    named = {e["path"] for e in json.loads(run.out)["errors"]}
    root = restored_root(target, nights.src)
    restored = describe(root) if root.exists() else {}
    problems = [] if run.code == (1 if named else 0) else [f"exit {run.code}, named {named}"]
    for rel, entry in nights.second.items():
        path = os.fsdecode(os.path.join(os.fsencode(nights.src), rel))
        if path in named:
            if rel in restored:
                problems.append(f"{path} is named as not restored, yet it is there")
        elif restored.get(rel) != entry:
            problems.append(f"{path} is not named, and not restored exactly")
    leftovers = sorted(set(restored) - set(nights.second))
    if leftovers or os.listdir(target) != [nights.src.parts[1]]:
        problems.append(f"left behind: {leftovers} {os.listdir(target)}")
    tally.add(injected, problems)
    assert not problems, (hits, problems)


@pytest.mark.parametrize(
    ("kind", "every"),
    [
        ("fail", 1),
        ("fail", 5),
        ("hang", 9),
        ("truncate", 1),
        ("truncate", 5),
        ("bitflip", 1),
        ("bitflip", 5),
        ("bitflip", 9),
    ],
)
def test_verify_read_data_through_bad_gets_names_the_damaged_files(
    nights: Nights, cli_in, switch: Switch, figures, kind: str, every: int
) -> None:
    tally = Tally(figures, "get (verify)", kind)
    faults = Faults("get", kind, every)
    run = run_faulty(cli_in, switch, faults, nights.home2, "--json", "verify", "--read-data")
    hits, injected = list(faults.hits), faults.take()
    assert injected, "verify made no gets to spoil"
    found = json.loads(run.out)["problems"]
    src = str(nights.src)
    named = [path for p in found for path in p.get("paths", [])]
    problems = [] if run.code == 1 else [f"verify exit {run.code}"]
    if len(found) < injected or not named or not all(p.startswith(src) for p in named):
        problems.append(f"{injected} faults, yet verify names: {found}")
    tally.add(injected, problems)
    assert not problems, (hits, problems)


def test_verify_names_a_pack_whose_size_cannot_be_read(
    nights: Nights, cli_in, switch: Switch, figures
) -> None:
    tally = Tally(figures, "size (verify)", "fail")
    faults = Faults("size", "fail", 2)
    run = run_faulty(cli_in, switch, faults, nights.home2, "--json", "verify")
    hits, injected = list(faults.hits), faults.take()
    found = json.loads(run.out)["problems"]
    problems = [] if run.code == 1 and len(found) == injected else [f"exit {run.code}: {found}"]
    problems += [f"not a pack problem: {p}" for p in found if "pack" not in p]
    tally.add(injected, problems)
    assert injected and not problems, (hits, problems)


@pytest.mark.parametrize("kind", ["fail", "hang", "truncate", "bitflip"])
@pytest.mark.parametrize("every", [1, 2])
def test_attach_refuses_a_damaged_export_and_keeps_the_backupdb(
    tmp_path: Path, nights: Nights, cli_in, switch: Switch, figures, kind: str, every: int
) -> None:
    """Attach reads the full export, then its delta: N = 1 spoils the first, N = 2 the second."""
    tally = Tally(figures, "get (attach)", kind)
    home = copy_home(nights.home2, tmp_path / "home")
    before = (home / "backupdb.sqlite").read_bytes()
    faults = Faults("get", kind, every)
    run = run_faulty(cli_in, switch, faults, home, "attach")
    hits, injected = list(faults.hits), faults.take()
    assert injected, "attach made no gets to spoil"
    problems = error_problems(run)
    if (home / "backupdb.sqlite").read_bytes() != before:
        problems.append("the backupdb changed")
    tally.add(injected, problems)
    assert not problems, (hits, problems)
    assert cli_in(home, "attach").code == 0
    assert published(cli_in, home) == [1, 2]


# --- the root pointer read ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fail", "truncate", "garbage"])
@pytest.mark.parametrize(
    "command", [["snapshots"], ["restore", "{tmp}/r"], ["verify"], ["backup", "{src}"], ["attach"]]
)
def test_a_bad_root_read_is_one_clear_error(
    tmp_path: Path, nights: Nights, cli_in, switch: Switch, figures, kind: str, command: list[str]
) -> None:
    tally = Tally(figures, "read_root", kind)
    home = copy_home(nights.home2, tmp_path / "home")
    root = (home / "store" / "root.json").read_bytes()
    args = [a.format(tmp=tmp_path, src=nights.src) for a in command]
    faults = Faults("read_root", kind, 1)
    run = run_faulty(cli_in, switch, faults, home, *args)
    hits, injected = list(faults.hits), faults.take()
    problems = error_problems(run, *([] if kind == "fail" else ["root pointer"]))
    if (home / "store" / "root.json").read_bytes() != root:
        problems.append("the root pointer changed")
    tally.add(injected, problems)
    assert injected == 1
    assert not problems, (hits, problems)
    assert published(cli_in, home) == [1, 2]


# --- a real hang: a Tahoe node that accepts connections and never answers -------------------


CAP = "URI:MDMF:aaaa:bbbb"  # what a root capability looks like; the node never sees it


@pytest.fixture
def silent_node(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL of a "Tahoe node" whose port accepts connections (the kernel's backlog does) and
    never answers; the store's read timeout and backoff are shrunk from 600 s and 0.5 s so the
    product's own timeout and retry path runs in well under a second."""
    monkeypatch.setattr(deltagrid.store.tahoe, "TIMEOUT", (1, 0.1))
    monkeypatch.setattr(deltagrid.store.tahoe, "BACKOFF", 0.001)
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield f"tahoe://127.0.0.1:{server.getsockname()[1]}"


def test_a_silent_node_is_asked_once_more_and_an_absent_one_with_every_retry(
    silent_node: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read timeout means ten minutes without a byte: retried TIMEOUT_RETRIES times, not
    RETRIES (which would keep a nightly run waiting over an hour). A refused connection (a
    node restarting) gets every retry, with backoff."""
    asked: list[str] = []
    real = requests.Session.request

    def request(self: requests.Session, method: str, url: str, **kw: Any) -> requests.Response:
        asked.append(url)
        return real(self, method, url, **kw)

    monkeypatch.setattr(requests.Session, "request", request)
    with pytest.raises(StoreError, match=r"not reachable \(ReadTimeout\)"):
        open_store(silent_node, cap=CAP).read_root()
    assert (
        len(asked) == 1 + deltagrid.store.tahoe.TIMEOUT_RETRIES < 1 + deltagrid.store.tahoe.RETRIES
    )
    asked.clear()
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    with pytest.raises(StoreError, match=r"not reachable \(ConnectionError\)"):
        open_store(f"tahoe://127.0.0.1:{port}", cap=CAP).read_root()
    assert len(asked) == 1 + deltagrid.store.tahoe.RETRIES


@pytest.mark.parametrize(
    "command",
    [
        ["snapshots"],
        ["restore", "{tmp}/r"],
        ["backup", "{src}"],
        ["attach", "--store", "{node}", "--cap", CAP],
    ],
)
def test_a_tahoe_node_that_never_answers_is_one_clear_error(
    tmp_path: Path, nights: Nights, cli_in, silent_node: str, figures, command: list[str]
) -> None:
    tally = Tally(figures, "tahoe node", "hang")
    home = copy_home(nights.home2, tmp_path / "home")
    file_store = Home(home).settings().store
    Home(home).write_config(silent_node, CAP)
    args = [a.format(tmp=tmp_path, src=nights.src, node=silent_node) for a in command]
    problems = error_problems(cli_in(home, *args), "not reachable (ReadTimeout)")
    Home(home).write_config(file_store, None)
    if published(cli_in, home) != [1, 2]:
        problems.append("the snapshots changed")
    tally.add(1, problems)
    assert not problems
