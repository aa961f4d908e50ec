"""Fuzzing every reader of bytes that come from the store or the disk.

Each reader gets random and mutated-valid inputs straight (unit level): it returns a valid value
or raises deltagrid's own error, never a raw IndexError, zstd, JSON or SQLite error, a hang or a
crash. Then damaged objects in a real file store, damaged catalog rows and a damaged local
backupdb go through the real commands: a non-zero exit, one `deltagrid: error:` line (or the
damaged file named), no traceback, nothing written outside the restore target.

`--runslow` runs ten times the examples. Cases run are counted under "fuzz" in the figures.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from deltagrid.backupdb import db, export, queries
from deltagrid.cli import main
from deltagrid.floor import rdiff
from deltagrid.floor.errors import CorruptData
from deltagrid.floor.rdiff import apply_delta
from deltagrid.repository.fetch import fetch_export
from deltagrid.repository.root import new_root, parse_root
from deltagrid.restore.compose import compose, keyframe_map, write_version
from deltagrid.store.filestore import FileStore
from deltagrid.store.pack import HEADER, TRAILER_MAGIC, decode_blob, digest, read_index
from tests.helpers import describe, dg, one_error, restored_root
from tests.reliability.fuzzing import fuzz_bytes, in_child, mutated

# --- a real repository to take valid inputs from -------------------------------------------------


@dataclass
class Repo:
    """A home with two snapshots: the second changed a big file (a delta) and the export (a
    delta too)."""

    home: Path
    src: Path
    store: FileStore
    root: bytes
    chain: list[dict[str, Any]]
    packs: list[bytes]
    export: bytes


def _backup(home: Path, src: Path) -> None:
    assert main(["--home", str(home), "-q", "backup", str(src)]) == 0


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    base = tmp_path_factory.mktemp("fuzzrepo")
    home, src = base / "home", base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "link").symlink_to("a.txt")
    big = bytearray(os.urandom(150_000))
    (src / "sub" / "big.bin").write_bytes(big)
    _backup(home, src)
    big[70_000:70_100] = os.urandom(100)
    (src / "sub" / "big.bin").write_bytes(big)
    (src / "b.txt").write_text("b\n")
    _backup(home, src)
    store = FileStore(home / "store")
    root = store.read_root()
    assert root is not None
    chain = json.loads(root)["backupdb"]
    assert [e["type"] for e in chain] == ["full", "delta"]
    tmp = base / "export.sqlite"
    fetch_export(store, json.loads(root), tmp)
    chain_refs = {e["ref"] for e in chain}
    packs = [store.get(r) for r in store.list_refs() if r not in chain_refs]
    assert packs and all(p.startswith(HEADER) for p in packs)
    return Repo(home, src, store, root, chain, packs, tmp.read_bytes())


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> int:
    """Ten times the examples with --runslow."""
    return 10 if request.config.getoption("--runslow") else 1


def fuzz(examples: int, **kwargs: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Hypothesis settings for a fuzz run: no example database in the checkout, and a deadline
    that flags a slow reader (the hard limit on a hang is in_child's timeout)."""
    return settings(
        max_examples=examples,
        database=None,
        deadline=kwargs.pop("deadline", 5000),
        suppress_health_check=kwargs.pop(
            "suppress_health_check", [HealthCheck.too_slow, HealthCheck.data_too_large]
        ),
        **kwargs,
    )


# --- the root pointer -----------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def _root_with_a_bad_field(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """The valid root with one field, at the top or in a chain entry, replaced or removed."""
    doc = json.loads(json.dumps(valid))
    where = doc if draw(st.booleans()) else draw(st.sampled_from(doc["backupdb"]))
    key = draw(st.sampled_from([*where, "x"]))
    if draw(st.booleans()):
        where.pop(key, None)
    else:
        where[key] = draw(_json)
    return json.dumps(doc).encode()


def _check_root(doc: dict[str, Any]) -> None:
    """What every consumer of a parsed root relies on."""
    assert isinstance(doc["snapshot"], int) and doc["snapshot"] >= 0
    for entry in doc["backupdb"]:
        assert entry["type"] in ("full", "delta")
        assert isinstance(entry["ref"], str) and isinstance(entry["hash"], str)
        assert isinstance(entry["size"], int) and entry["size"] >= 0


def test_parse_root(repo: Repo, scale: int, figures) -> None:
    valid = json.loads(repo.root)
    deep = st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n)
    inputs = st.one_of(
        fuzz_bytes(repo.root),
        _json.map(lambda v: json.dumps(v).encode()),
        _root_with_a_bad_field(valid),
        deep,
    )

    @fuzz(300 * scale)
    @given(inputs)
    def check(raw: bytes) -> None:
        figures.count("fuzz", "root pointer cases")
        try:
            doc = parse_root(raw)
        except CorruptData:
            return
        assert doc is not None
        _check_root(doc)

    check()


# --- the backupdb export and its delta chain ------------------------------------------------------

_MAGIC = struct.pack(">I", rdiff.DELTA_MAGIC)


def _uint(value: int, width: int) -> bytes:
    return value.to_bytes(width, "big")


@st.composite
def _rdiff(draw: st.DrawFn, basis_size: int) -> bytes:
    """An rdiff delta of LITERAL and COPY commands (some reaching past the basis), stray
    command bytes, with or without its END."""
    out = [_MAGIC if draw(st.integers(0, 9)) else draw(st.binary(min_size=4, max_size=4))]
    near = st.integers(0, basis_size + 64)
    huge = st.integers(0, (1 << 63) - 1)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["literal", "copy", "copy", "stray"]))
        if op == "literal":
            data = draw(st.binary(min_size=1, max_size=80))
            if len(data) <= 0x40 and draw(st.booleans()):
                out.append(bytes([len(data)]) + data)
            else:
                w = draw(st.sampled_from([1, 2, 4, 8]))
                length = len(data) if len(data) < 1 << (8 * w) else (1 << (8 * w)) - 1
                out.append(bytes([0x41 + [1, 2, 4, 8].index(w)]) + _uint(length, w) + data)
        elif op == "copy":
            pos, length = draw(near | huge), draw(near | huge)
            wp = next(w for w in (1, 2, 4, 8) if pos < 1 << (8 * w))
            wl = next(w for w in (1, 2, 4, 8) if length < 1 << (8 * w))
            cmd = 0x45 + 4 * [1, 2, 4, 8].index(wp) + [1, 2, 4, 8].index(wl)
            out.append(bytes([cmd]) + _uint(pos, wp) + _uint(length, wl))
        else:
            out.append(draw(st.binary(min_size=1, max_size=3)))
    if draw(st.integers(0, 4)):
        out.append(b"\0")
    return b"".join(out)


def _applies(basis: bytes, delta: bytes, limit: int) -> bytes | None:
    out = io.BytesIO()
    try:
        apply_delta(io.BytesIO(basis), io.BytesIO(delta), out, limit)
    except CorruptData:
        return None
    assert len(out.getvalue()) <= limit
    return out.getvalue()


def _composes(basis: bytes, delta: bytes, limit: int) -> bytes | None:
    """The bytes restore's one-pass composition makes, or None for CorruptData."""
    try:
        segments = compose(keyframe_map(len(basis)), memoryview(delta), limit)
    except CorruptData:
        return None
    parts: list[bytes | memoryview] = []
    write_version(segments, lambda at, n: basis[at : at + n], parts.append)
    return b"".join(parts)


def test_rdiff_patch(scale: int, figures) -> None:
    """librsync's patch and restore's composition, fed crafted deltas: before the fix a COPY
    past the basis's end made librsync ask for the missing bytes forever. Each example runs in
    a child under a timeout. Whatever the composition accepts, librsync patches the same way."""
    valid_basis = os.urandom(3000)
    new = valid_basis[:1000] + b"changed" + valid_basis[1200:]
    sig, valid_delta = io.BytesIO(), io.BytesIO()
    magic, _block, strong = rdiff.signature_args(len(valid_basis))
    rdiff.signature(io.BytesIO(valid_basis), sig, strong, magic, 512)
    sig.seek(0)
    rdiff.delta(io.BytesIO(new), sig, valid_delta)
    assert in_child(lambda: _applies(valid_basis, valid_delta.getvalue(), len(new))).value == new
    basis = st.binary(max_size=300)

    @fuzz(150 * scale)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        figures.count("fuzz", "rdiff patch cases")
        if data.draw(st.booleans()):
            b = data.draw(basis)
            delta = data.draw(_rdiff(len(b)))
        else:
            b, delta = valid_basis, data.draw(mutated(valid_delta.getvalue()))
        limit = data.draw(st.sampled_from([0, 100, 1 << 20]))
        outcome = in_child(lambda: _applies(b, delta, limit))
        assert outcome.error is None, outcome.trace
        composed = in_child(lambda: _composes(b, delta, limit))
        assert composed.error is None, composed.trace
        assert composed.value is None or composed.value == outcome.value

    check()


@st.composite
def _export_chain(
    draw: st.DrawFn, repo: Repo, store: FileStore
) -> list[tuple[dict[str, Any], bytes]]:
    """A backupdb chain (entry, object bytes) with one part damaged or crafted, put to `store`."""
    full, delta = repo.chain
    objects = [repo.store.get(full["ref"]), repo.store.get(delta["ref"])]
    zstd = zstandard.ZstdCompressor()
    base_export = zstandard.ZstdDecompressor().decompress(objects[0])
    how = draw(
        st.sampled_from(["full bytes", "delta bytes", "delta raw", "crafted delta", "full raw"])
    )
    entries = [dict(full), dict(delta)]
    if how == "full bytes":
        objects[0] = draw(fuzz_bytes(objects[0]))
    elif how == "delta bytes":
        objects[1] = draw(fuzz_bytes(objects[1]))
    elif how == "full raw":  # a damaged export whose hash was recorded: it must not load
        raw = draw(mutated(base_export))
        objects, entries = [zstd.compress(raw)], [dict(full, hash=digest(raw).hex())]
    else:
        raw = zstandard.ZstdDecompressor().decompress(objects[1])
        raw = draw(mutated(raw)) if how == "delta raw" else draw(_rdiff(len(base_export)))
        objects[1] = zstd.compress(raw)
    for entry, obj in zip(entries, objects, strict=True):
        entry["ref"], entry["size"] = store.put_bytes(obj), len(obj)
    return list(zip(entries, objects, strict=True))


def _fetch(store: FileStore, root: bytes, dest: Path) -> bytes | None:
    doc = parse_root(root)
    assert doc is not None
    try:
        fetch_export(store, doc, dest)
    except CorruptData:
        return None
    data = dest.read_bytes()
    assert digest(data).hex() == doc["backupdb"][-1]["hash"]
    return data


def test_fetch_export(repo: Repo, tmp_path: Path, scale: int, figures) -> None:
    store = FileStore(tmp_path / "store", create=True)

    @fuzz(60 * scale, suppress_health_check=list(HealthCheck))
    @given(_export_chain(repo, store))
    def check(chain: list[tuple[dict[str, Any], bytes]]) -> None:
        figures.count("fuzz", "backupdb export chain cases")
        root = new_root(2, [entry for entry, _ in chain], "5" * 32, 1)
        outcome = in_child(lambda: _fetch(store, root, tmp_path / "export.sqlite"))
        assert outcome.error is None, outcome.trace

    check()


def _crafted_export(valid: bytes, path: Path, statement: str) -> None:
    path.write_bytes(valid)
    with sqlite3.connect(path) as conn:
        conn.executescript(statement)
    conn.close()


_CRAFTED = [
    "UPDATE schema_version SET version = 'three'",
    "UPDATE schema_version SET version = x'03'",
    "UPDATE schema_version SET version = 99",
    "DELETE FROM schema_version",
    "DROP TABLE schema_version",
    "DROP TABLE paths",
    "DROP TABLE paths; CREATE VIEW paths AS SELECT 1 AS id",
    "DROP TABLE versions; CREATE TABLE versions (id INTEGER PRIMARY KEY)",
    "CREATE TABLE extra (x); INSERT INTO extra VALUES (1)",
    "UPDATE paths SET path = 'text, not bytes'",
    "INSERT INTO paths (parent_id, path) SELECT parent_id, path FROM paths LIMIT 1",
]


def test_export_load(repo: Repo, tmp_path: Path, scale: int, figures) -> None:
    """A hash-checked export still comes from the store: damaged or crafted, it loads or says it
    is damaged."""
    counter = iter(range(1 << 30))
    inputs = st.one_of(
        fuzz_bytes(repo.export).map(lambda b: ("bytes", b)),
        st.sampled_from(_CRAFTED).map(lambda s: ("sql", s)),
    )

    @fuzz(60 * scale)
    @given(inputs)
    def check(case: tuple[str, Any]) -> None:
        figures.count("fuzz", "backupdb export load cases")
        work = tmp_path / str(next(counter))
        work.mkdir()
        exported = work / "export.sqlite"
        if case[0] == "bytes":
            exported.write_bytes(case[1])
        else:
            _crafted_export(repo.export, exported, case[1])
        try:
            export.load(exported, work / "backupdb.sqlite")
        except CorruptData:
            return
        finally:
            shutil.rmtree(work, ignore_errors=True)

    check()


def test_export_whose_schema_error_is_not_utf8_is_damaged(repo: Repo, tmp_path: Path) -> None:
    """Found by the --runslow fuzz run: SQLite's error message quotes a damaged schema, bytes
    that do not decode as UTF-8."""
    exported = tmp_path / "export.sqlite"
    _crafted_export(repo.export, exported, "CREATE TABLE crafted (x NOT NULL)")
    crafted = exported.read_bytes().replace(b"x NOT NULL", b"x NOT \x80ULL")
    exported.write_bytes(crafted)
    with pytest.raises(CorruptData, match="does not open"):
        export.load(exported, tmp_path / "backupdb.sqlite")


# --- packs ----------------------------------------------------------------------------------------


def _crafted_pack(draw: st.DrawFn, valid: bytes) -> bytes:
    """A pack with valid framing around a random or slightly wrong index."""
    body = valid[: struct.unpack("<Q", valid[-20:-12])[0]]
    entries = draw(
        st.lists(
            st.tuples(
                st.integers(0, len(body) + 8),
                st.integers(0, (1 << 32) - 1),
                st.integers(0, (1 << 64) - 1),
                st.binary(min_size=32, max_size=32),
            ),
            max_size=5,
        )
    )
    raw = b"".join(struct.pack("<QIQ32s", *e) for e in entries) + draw(st.binary(max_size=60))
    index = zstandard.ZstdCompressor().compress(raw)
    offset = len(body) if draw(st.integers(0, 4)) else draw(st.integers(0, (1 << 64) - 1))
    return body + index + struct.pack("<QI8s", offset, len(index), TRAILER_MAGIC)


def test_read_index_and_decode_blob(repo: Repo, scale: int, figures) -> None:
    @fuzz(300 * scale)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        figures.count("fuzz", "pack cases")
        valid = data.draw(st.sampled_from(repo.packs))
        if data.draw(st.booleans()):
            pack = data.draw(fuzz_bytes(valid))
        else:
            pack = _crafted_pack(data.draw, valid)
        try:
            entries = read_index(pack)
        except CorruptData:
            entries = read_index(valid)
        for e in entries[:3]:
            frame = pack[e.offset : e.offset + e.length]
            raw_length = data.draw(st.sampled_from([e.raw_length, 0, 1 << 40, (1 << 63) - 1]))
            try:
                raw = decode_blob(frame, raw_length, e.hash)
            except CorruptData:
                continue
            assert len(raw) == raw_length and digest(raw) == e.hash

    check()


# --- catalog rows a restore trusts ----------------------------------------------------------------

_COLUMNS = ("kind", "mode", "uid", "gid", "size", "mtime_ns", "ctime_ns", "inode", "dev", "nlink")


def _copy_home(repo: Repo, dest: Path, with_store: bool) -> Path:
    """A new home with the repository's backupdb, and its own copy of the store if asked."""
    dest.mkdir(parents=True)
    for name in ("backupdb.sqlite", "backupdb.sqlite-wal"):
        if (repo.home / name).exists():
            shutil.copy(repo.home / name, dest / name)
    config = (repo.home / "config.toml").read_text()
    if with_store:
        shutil.copytree(repo.home / "store", dest / "store")
        shutil.copytree(repo.home / "state", dest / "state")
        config = config.replace(str(repo.home), str(dest))
    (dest / "config.toml").write_text(config)
    return dest


_NAMES = [b"..", b".", b"", b"sub", b"a.txt", b"big.bin", b"link", b"d", b"x\0y", b"\xff"]


@st.composite
def _evil_rows(draw: st.DrawFn, src: bytes, outside: bytes) -> dict[bytes, dict[str, Any]]:
    """Versions to add to the latest snapshot: paths with '..', '.', empty parts, NULs,
    relative or absolute beginnings; files, directories, symlinks (pointing outside too),
    FIFOs, device nodes (odd numbers too) and kinds no deltagrid writes."""
    rows: dict[bytes, dict[str, Any]] = {}
    for _ in range(draw(st.integers(1, 5))):
        parts = draw(
            st.lists(
                st.sampled_from(_NAMES) | st.binary(min_size=1, max_size=4), min_size=1, max_size=4
            )
        )
        start = draw(st.sampled_from([src + b"/", src, b"/", b"", b"/../"]))
        kind = draw(st.sampled_from(["f", "f", "d", "l", "p", "c", "b", "s", ""]))
        row: dict[str, Any] = {"kind": kind}
        if kind == "l":
            row["target"] = draw(st.sampled_from([outside, b"../../../..", b"/", b"a.txt"]))
            row["size"] = 0
        if kind not in ("f", "d", "l"):
            row["size"] = 0
            row["rdev"] = draw(
                st.sampled_from([None, os.makedev(1, 3), -1, 1 << 40, (1 << 63) - 1])
            )
        if draw(st.integers(0, 3)) == 0:
            row["mode"] = draw(st.sampled_from([0, 0o7777, 0o170777, -1, (1 << 32) + 0o644]))
        if draw(st.integers(0, 3)) == 0:
            row["mtime_ns"] = draw(st.sampled_from([0, -1, (1 << 63) - 1, -(1 << 63)]))
        rows[start + b"/".join(parts)] = row
    if draw(st.booleans()):  # a symlink, then a file through it
        rows[src + b"/d"] = {"kind": "l", "target": outside, "size": 0}
        rows[src + b"/d/evil.txt"] = {"kind": "f"}
    return rows


def _add_versions(home: Path, like: bytes, rows: dict[bytes, dict[str, Any]]) -> None:
    """Add versions to the latest snapshot straight into the backupdb, copying `like`'s."""
    engine = db.open_db(home / "backupdb.sqlite")
    try:
        with engine.begin() as conn:
            template = queries.live_version(conn, like)
            snapshot = queries.last_snapshot_id(conn)
            for path, changes in rows.items():
                columns = {c: getattr(template, c) for c in (*_COLUMNS, "target")} | changes
                content = template.content_id if columns["kind"] == "f" else None
                if path.startswith(b"/"):
                    path_id = queries.ensure_path(conn, path)
                else:  # no parent to hang it below: straight into the table
                    sql = text("INSERT INTO paths (parent_id, path) VALUES (NULL, :p)")
                    path_id = conn.execute(sql, {"p": path}).lastrowid
                queries.add_version(conn, path_id, snapshot, columns, content, False)
    finally:
        engine.dispose()


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under `root` but `skip`, with mode, size and mtime: what must not change."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if d != skip.name]
        for name in dirnames + filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            found[os.path.join(dirpath, name)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return found


def test_restore_stays_inside_its_target(repo: Repo, tmp_path: Path, cli_in, scale, figures):
    """Crafted catalog rows restore or are refused one by one; nothing lands outside TARGET."""
    src = os.fsencode(repo.src)
    counter = iter(range(1 << 30))
    big = (repo.src / "sub" / "big.bin").read_bytes()

    @fuzz(15 * scale, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        figures.count("fuzz", "catalog rows restore cases")
        n = next(counter)
        sandbox = tmp_path / f"s{n}"
        outside, target = sandbox / "outside", sandbox / "deep" / "er" / "target"
        outside.mkdir(parents=True)
        target.mkdir(parents=True)
        (outside / "victim.txt").write_text("not yours\n")
        home = _copy_home(repo, tmp_path / f"h{n}", with_store=False)
        rows = data.draw(_evil_rows(src, os.fsencode(outside)))
        _add_versions(home, src + b"/a.txt", rows)
        before = _tree(sandbox, target)
        run = cli_in(home, "--json", "restore", target)
        assert "Traceback" not in run.err
        assert run.code in (0, 1), run.err
        assert _tree(sandbox, target) == before
        big_path = src + b"/sub/big.bin"  # restores unless a row is at or above it, or below
        if not any(big_path.startswith(p) or p.startswith(big_path + b"/") for p in rows if p):
            assert (Path(os.fsdecode(os.fsencode(target) + big_path))).read_bytes() == big
        shutil.rmtree(sandbox)
        shutil.rmtree(home)

    check()


# --- the local backupdb ---------------------------------------------------------------------------

_READERS = [["snapshots"], ["ls"], ["status"], ["verify"], ["log"], ["diff", "1", "2"]]
_READERS += [["restore", "{target}"], ["upload"], ["forget", "--keep-last", "1"]]


@st.composite
def _damage(draw: st.DrawFn, size: int) -> tuple[str, int, bytes]:
    """(what, offset, bytes): the header's magic or page size, a random page, or a cut."""
    what = draw(st.sampled_from(["magic", "page size", "page", "truncate"]))
    if what == "magic":
        return what, draw(st.integers(0, 15)), draw(st.binary(min_size=1, max_size=16))
    if what == "page size":
        return what, 16, draw(st.sampled_from([b"\x00\x01", b"\x03\x00", b"\xff\xff", b"\0\0"]))
    if what == "page":
        page = draw(st.integers(0, size // 4096 - 1))
        return (
            what,
            page * 4096 + draw(st.integers(0, 4000)),
            draw(st.binary(min_size=1, max_size=200)),
        )
    return what, draw(st.integers(0, size - 1)), b""


def _apply(valid: bytes, damage: tuple[str, int, bytes]) -> bytes:
    what, at, run = damage
    if what == "truncate":
        return valid[:at]
    return valid[:at] + run + valid[at + len(run) :]


def _structurally_damaged(path: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            ok = conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError):  # its error quotes damaged bytes
        return True
    return not ok


def test_damaged_backupdb_names_attach(repo: Repo, tmp_path: Path, cli_in, scale, figures):
    """Random damage to the local backupdb: a command either works, or fails in one line; when
    SQLite finds the file damaged that line names `deltagrid attach` (the header's magic and
    page size always are)."""
    valid = (repo.home / "backupdb.sqlite").read_bytes()
    assert not (repo.home / "backupdb.sqlite-wal").exists()
    counter = iter(range(1 << 30))

    @fuzz(30 * scale, deadline=None)
    @given(_damage(len(valid)), st.sampled_from(_READERS))
    def check(damage: tuple[str, int, bytes], args: list[str]) -> None:
        home = tmp_path / f"h{next(counter)}"
        damaged = _apply(valid, damage)
        figures.count("fuzz", "local backupdb damage cases")
        home.mkdir()
        (home / "backupdb.sqlite").write_bytes(damaged)
        (home / "config.toml").write_text((repo.home / "config.toml").read_text())
        broken = _structurally_damaged(home / "backupdb.sqlite")
        run = cli_in(home, *(a.format(target=home / "t") for a in args))
        assert "Traceback" not in run.err
        if damage[0] in ("magic", "page size") and damaged != valid:
            one_error(run, 1, "deltagrid attach")
        elif run.code != 0 and broken:
            errors = [line for line in run.err.splitlines() if "deltagrid: error:" in line]
            assert len(errors) == 1 and "deltagrid attach" in errors[0], run.err
        if run.code != 0:
            figures.count("fuzz", "local backupdb damage refused")
        shutil.rmtree(home)

    check()


# --- damaged store objects, end to end ------------------------------------------------------------

_COMMANDS = [["restore", "{target}"], ["attach"], ["verify", "--read-data"], ["snapshots"]]


def _store_object(repo: Repo, home: Path, which: str) -> Path:
    if which == "root":
        return home / "store" / "root.json"
    if which == "pack":
        ref = digest(repo.packs[0]).hex()
    else:
        ref = repo.chain[0 if which == "full export" else 1]["ref"]
    return home / "store" / "objects" / ref[:2] / ref


def assert_clean_failure(err: str) -> None:
    """A failed run says why in one `deltagrid: error:` line, or names what is damaged in
    warnings; never a traceback or other output on stderr."""
    assert "Traceback" not in err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("deltagrid: error: ")]
    if errors:
        assert lines == errors and len(errors) == 1, err
    else:
        assert lines and all(line.startswith("deltagrid: warning: ") for line in lines), err


def test_damaged_store_objects(repo: Repo, tmp_path: Path, cli_in, scale: int, figures) -> None:
    """A mutated root pointer, export or pack in a real file store, then a real command: it
    works (restoring the right bytes) or fails cleanly."""
    counter = iter(range(1 << 30))
    which = st.sampled_from(["root", "full export", "delta export", "pack"])
    expected = describe(repo.src)

    @fuzz(24 * scale, deadline=None)
    @given(which, st.sampled_from(_COMMANDS), st.data())
    def check(which: str, args: list[str], data: st.DataObject) -> None:
        figures.count("fuzz", "damaged store object runs")
        home = _copy_home(repo, tmp_path / f"h{next(counter)}", with_store=True)
        path = _store_object(repo, home, which)
        path.write_bytes(data.draw(fuzz_bytes(path.read_bytes())))
        target = home / "t"
        run = cli_in(home, *(a.format(target=target) for a in args))
        if run.code != 0:
            figures.count("fuzz", "damaged store object refused")
            assert run.code == 1, run.err
            assert_clean_failure(run.err)
        elif args[0] == "restore":
            assert describe(restored_root(target, repo.src)) == expected
        shutil.rmtree(home)

    check()


def test_damaged_store_objects_in_a_real_process(repo: Repo, tmp_path: Path, figures) -> None:
    """The same through `python -m deltagrid`: real stderr, so a C library's own complaints
    (librsync prints its errors) would show."""
    home = _copy_home(repo, tmp_path / "home", with_store=True)
    store = FileStore(home / "store")
    crafted = zstandard.ZstdCompressor().compress(_MAGIC + b"\x60\x00")  # a bogus command
    delta = repo.chain[1]
    (home / "store" / "root.json").write_text(
        json.dumps(
            json.loads(repo.root)
            | {"backupdb": [repo.chain[0], dict(delta, ref=store.put_bytes(crafted))]}
        )
    )
    one_error(dg(home, "attach"), 1, "backupdb delta does not apply")
    (home / "store" / "root.json").write_bytes(b"[" * 100_000)
    one_error(dg(home, "restore", tmp_path / "t"), 1, "root pointer is not JSON")
    figures.count("fuzz", "damaged store object runs", 2)
