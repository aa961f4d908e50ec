"""Restore reads the store in spans fetched ahead of use. A damaged blob in one file must name that
file alone while every other file, those sharing its span included, comes back byte-identical;
hard links must still join the file restored before them; spans are fetched ahead only as far as
memory holds them (a span spilled to a temporary file costs a second write and read); and
nothing of that work is left in the target."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import deltagrid.restore.fetch
from tests.helpers import restored_root

MiB = 1 << 20


def make_tree(src: Path) -> dict[str, bytes]:
    """Files small, compressible and random across many spans, one above the in-memory limit."""
    rng = random.Random(11)
    files: dict[str, bytes] = {}
    for i in range(80):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 5_000))
        elif kind == 1:
            data = (f"line {i}\n" * rng.randrange(1, 20_000)).encode()
        else:
            data = rng.randbytes(rng.randrange(20_000, 300_000))
        files[f"d{i % 7}/f{i:03d}"] = data
    files["big/huge.bin"] = rng.randbytes(17 << 20)
    write_tree(src, files)
    for name in ("d1/link-a", "d6/link-b"):  # a hard-link group whose first name is mid-tree
        os.link(src / "d3/f045", src / name)
        files[name] = files["d3/f045"]
    return files


def write_tree(src: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)


@pytest.fixture
def backed_up(tmp_path: Path, cli) -> tuple[Path, dict[str, bytes]]:
    """The tree of make_tree, backed up: its source and its files."""
    src = tmp_path / "src"
    files = make_tree(src)
    assert cli("backup", src).code == 0
    return src, files


def damage(store: Path, data: bytes) -> None:
    """Flip a byte of the stored (incompressible, so stored verbatim) copy of `data`."""
    needle = data[len(data) // 2 : len(data) // 2 + 64]
    for obj in (store / "objects").rglob("*"):
        if obj.is_file() and needle in (raw := obj.read_bytes()):
            at = raw.index(needle)
            obj.chmod(0o644)
            with open(obj, "r+b") as f:
                f.seek(at)
                f.write(bytes([raw[at] ^ 0xFF]))
            return
    raise AssertionError("the blob to damage was not found in the store")


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "victim",
    [
        "d2/f058",  # a random file in the middle of the third window
        "big/huge.bin",  # above the in-memory limit: rebuilt on the large files' thread
    ],
)
def test_a_damaged_blob_names_its_file_and_every_other_file_restores(
    tmp_path: Path, home: Path, cli, backed_up: tuple[Path, dict[str, bytes]], victim: str
) -> None:
    src, files = backed_up
    damage(home / "store", files[victim])

    target = tmp_path / "r"
    run = cli("--json", "restore", target)

    assert run.code == 1, run.err
    assert "Traceback" not in run.err
    assert [e["path"] for e in run.json["errors"]] == [str(src / victim)]
    root = restored_root(target, src)
    expected = {rel: data for rel, data in files.items() if rel != victim}
    assert read_tree(root) == expected
    assert run.json["files"] == len(files) - 3  # two of the group are hard links
    assert run.json["hardlinks"] == 2
    inodes = {os.stat(root / rel).st_ino for rel in ("d3/f045", "d1/link-a", "d6/link-b")}
    assert len(inodes) == 1
    assert not [p for p in target.rglob(".deltagrid-*")]


def test_restore_into_a_fresh_tree_is_exact_and_leaves_no_work_files(
    tmp_path: Path, cli, backed_up: tuple[Path, dict[str, bytes]]
) -> None:
    src, files = backed_up
    into = tmp_path / "mirror"

    run = cli("--json", "restore", "--path", src, "--into", into)

    assert run.code == 0, run.err
    assert run.json["errors"] == []
    assert read_tree(into) == files
    assert os.stat(into / "d1/link-a").st_ino == os.stat(into / "d3/f045").st_ino
    assert sorted(p.name for p in into.iterdir()) == ["big"] + [f"d{i}" for i in range(7)]


@pytest.fixture
def spilled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Where spans were spilled to a temporary file during the test (a spy: still written)."""
    where: list[str] = []
    real_mkstemp = deltagrid.restore.fetch.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if kwargs.get("prefix") == "span-":
            where.append(kwargs["dir"])
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(deltagrid.restore.fetch.tempfile, "mkstemp", mkstemp)
    return where


def test_spans_are_fetched_ahead_only_as_far_as_memory_holds_them(
    tmp_path: Path, home: Path, cli, spilled: list[str]
) -> None:
    assert cli("init").code == 0
    with open(home / "config.toml", "a") as f:
        f.write(f"\n[upload]\npack_size = {MiB}\npiece_size = {MiB // 4}\n")
    src = tmp_path / "src"
    rng = random.Random(5)
    files = {f"f{i:02d}": rng.randbytes(600_000) for i in range(24)}  # ~14 one-MiB packs
    write_tree(src, files)
    assert cli("backup", src).code == 0
    run = cli("--json", "restore", tmp_path / "r")

    assert run.code == 0, run.err
    assert read_tree(restored_root(tmp_path / "r", src)) == files
    assert len(list((home / "store" / "objects").rglob("*"))) > deltagrid.restore.fetch.AHEAD
    assert spilled == []


def test_a_pack_read_early_for_a_delta_and_late_for_its_other_files_is_not_held_between(
    tmp_path: Path, home: Path, cli, spilled: list[str]
) -> None:
    """Each night's pack holds a delta of an old file, restored early with its keyframe, and
    new files, restored late: fetching that pack once for both would hold every night's pack
    in memory across the restore, and spill them once they outgrow the budget."""
    assert cli("init").code == 0
    with open(home / "config.toml", "a") as f:
        f.write(f"\n[upload]\npack_size = {MiB}\npiece_size = {MiB // 4}\n")
    src = tmp_path / "src"
    rng = random.Random(6)
    files = {f"old/f{i:02d}": rng.randbytes(600_000) for i in range(24)}
    write_tree(src, files)
    assert cli("backup", src).code == 0
    for night in range(8):
        old = f"old/f{night:02d}"
        at = rng.randrange(len(files[old]) - 100)
        files[old] = files[old][:at] + rng.randbytes(100) + files[old][at + 100 :]
        files.update({f"new{night}/g{i}": rng.randbytes(500_000) for i in range(2)})
        write_tree(src, files)
        os.utime(src / old, (1e9 + night, 1e9 + night))
        run = cli("--json", "backup", src)
        assert run.code == 0 and run.json["counts"]["deltas"] == 1, run.err
    run = cli("--json", "restore", tmp_path / "r")

    assert run.code == 0, run.err
    assert read_tree(restored_root(tmp_path / "r", src)) == files
    assert spilled == []


def piece(ref: str, offset: int, length: int = 100) -> deltagrid.restore.fetch.Piece:
    return deltagrid.restore.fetch.Piece(offset, ref, offset, length, length, b"")


def test_spans_join_pieces_of_a_pack_read_together_and_split_those_read_apart() -> None:
    early = [piece("a", 0), piece("a", 150), piece("b", 0)]
    between = [piece("c", i * 1000, 1000) for i in range(20)]  # 20,000 bytes of other reading
    late = [piece("a", 300), piece("a", 10_000_000)]
    reads = early + between + late + [piece("a", 0)]  # the first piece read once more, at the end

    spans, where = deltagrid.restore.fetch.plan_spans(reads, gap=1000, window=10_000)

    a0, a150, b0 = (where[p] for p in early)
    assert a0 is a150 and (a0.start, a0.end) == (0, 250)
    assert b0 is not a0
    assert len({id(where[p]) for p in between}) == 1  # read one after another: one span
    assert where[late[0]] is not a0  # read long after: not held with the early pieces
    assert where[late[1]] is not where[late[0]]  # more than a gap apart
    assert where[reads[-1]] is a0  # a piece read again keeps its span
    assert spans[0] is a0 and len(spans) == 5  # in the order first read
