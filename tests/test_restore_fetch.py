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

import restore.fetch
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


def test_a_damaged_blob_names_its_file_and_every_other_file_restores(
    tmp_path: Path, home: Path, cli, backed_up: tuple[Path, dict[str, bytes]]
) -> None:
    src, files = backed_up
    victim = "d2/f058"  # a random file in the middle of the third window
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


def test_spans_are_fetched_ahead_only_as_far_as_memory_holds_them(
    tmp_path: Path, home: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("init").code == 0
    with open(home / "config.toml", "a") as f:
        f.write(f"\n[upload]\npack_size = {MiB}\npiece_size = {MiB // 4}\n")
    src = tmp_path / "src"
    rng = random.Random(5)
    files = {f"f{i:02d}": rng.randbytes(600_000) for i in range(24)}  # ~14 one-MiB packs
    write_tree(src, files)
    assert cli("backup", src).code == 0
    spilled: list[str] = []
    real_mkstemp = restore.fetch.tempfile.mkstemp

    def mkstemp(*args, **kwargs):  # a spy: the span is still written to the file it makes
        if kwargs.get("prefix") == "span-":
            spilled.append(kwargs["dir"])
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(restore.fetch.tempfile, "mkstemp", mkstemp)
    run = cli("--json", "restore", tmp_path / "r")
    monkeypatch.undo()

    assert run.code == 0, run.err
    assert read_tree(restored_root(tmp_path / "r", src)) == files
    assert len(list((home / "store" / "objects").rglob("*"))) > restore.fetch.AHEAD
    assert spilled == []
