"""A delta chain composed into one pass (restore/compose.py) must give the bytes librsync's
patching gives, refuse a damaged delta with CorruptData, and, wired into restore, never cost a
wrong file: when the composed result fails its hash, restore patches step by step instead."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

import deltagrid.restore.compose
from deltagrid.floor import rdiff
from deltagrid.floor.errors import CorruptData
from deltagrid.restore.compose import (
    InOrder,
    compose,
    in_order,
    keyframe_map,
    size_of,
    write_version,
)
from tests.helpers import restored_root, settle


def make_delta(old: bytes, new: bytes, block: int = 256) -> bytes:
    """The rdiff delta that makes `new` from `old`, as the uploader makes it."""
    sig, delta = io.BytesIO(), io.BytesIO()
    magic, _block, strong = rdiff.signature_args(len(old))
    rdiff.signature(io.BytesIO(old), sig, strong, magic, block)
    sig.seek(0)
    rdiff.delta(io.BytesIO(new), sig, delta)
    return delta.getvalue()


def edited(rng: random.Random, data: bytes, cut: bool = True) -> bytes:
    """`data` after a few overwrites, insertions, deletions and a change at one end (maybe a
    cut, which can leave it too small to be worth a delta)."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 8)):
        at = rng.randrange(len(buf) + 1)
        how = rng.choice(["overwrite", "insert", "delete"])
        if how == "overwrite":
            buf[at : at + 100] = rng.randbytes(100)
        elif how == "insert":
            buf[at:at] = rng.randbytes(rng.randrange(1, 3000))
        else:
            del buf[at : at + rng.randrange(1, 3000)]
    if rng.random() < 0.3:
        buf += rng.randbytes(rng.randrange(1, 5000))
    elif cut and rng.random() < 0.3:
        del buf[rng.randrange(len(buf) + 1) :]
    return bytes(buf)


def render(segments: list[deltagrid.restore.compose.Segment], keyframe: bytes) -> bytes:
    parts: list[bytes | memoryview] = []
    write_version(segments, lambda at, n: keyframe[at : at + n], parts.append)
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(12))
def test_a_composed_chain_gives_every_version_exactly(seed: int) -> None:
    rng = random.Random(seed)
    versions = [rng.randbytes(rng.randrange(0, 200_000))]
    for _ in range(8):
        versions.append(edited(rng, versions[-1]))
    segments = keyframe_map(len(versions[0]))
    for old, new in zip(versions, versions[1:], strict=False):
        segments = compose(segments, memoryview(make_delta(old, new)), len(new))
        assert size_of(segments) == len(new)
        assert render(segments, versions[0]) == new


def test_a_keyframe_read_in_order_spans_its_blobs() -> None:
    keyframe = bytes(range(256)) * 40
    blobs = [keyframe[i : i + 1000] for i in range(0, len(keyframe), 1000)]
    segments = [keyframe_map(len(keyframe))[0]._replace(length=2500)]
    segments.append(segments[0]._replace(start=2500, length=100, source=2900))
    assert in_order(segments)
    reader = InOrder(iter(blobs))
    assert bytes(reader.read(0, 2500)) == keyframe[:2500]
    assert bytes(reader.read(2900, 3000)) == keyframe[2900:5900]
    with pytest.raises(ValueError, match="out of order"):
        reader.read(100, 10)
    with pytest.raises(CorruptData, match="shorter than its map"):
        reader.read(5900, 10_000)
    assert not in_order([segments[1], segments[0]._replace(start=100)])


def _copy(offset: int, length: int) -> bytes:
    return bytes([0x45 + 4 * 3 + 3]) + offset.to_bytes(8, "big") + length.to_bytes(8, "big")


@pytest.mark.parametrize(
    ("delta", "limit", "message"),
    [
        (b"rs\x026" + _copy(900, 200) + b"\0", 10_000, "past the end of its basis"),
        (b"rs\x026" + _copy(0, 1000) + _copy(0, 1000) + b"\0", 1500, "more bytes than recorded"),
        (b"rs\x026" + b"\x05abc", 100, "inside a literal"),
        (b"rs\x026" + b"\x41\x09abc", 100, "inside a literal"),
        (b"rs\x026" + b"\x46\x00", 100, "inside a command"),
        (b"rs\x026" + b"\x03abc", 100, "without its end command"),
        (b"rs\x026" + b"\x03abc\0junk", 100, "after the delta's end"),
        (b"rs\x026" + b"\x55\0", 100, "unknown delta command 0x55"),
        (b"rs\x026" + b"\x45\x00\x00\0", 100, "copies nothing"),
        (b"rs\x016" + b"\0", 100, "not an rdiff delta"),
    ],
)
def test_a_damaged_delta_is_corrupt_data(delta: bytes, limit: int, message: str) -> None:
    with pytest.raises(CorruptData, match=message):
        compose(keyframe_map(1000), memoryview(delta), limit)


def test_restore_of_a_long_chain_is_exact_and_a_wrong_composition_is_caught(
    tmp_path: Path, home: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big file (rebuilt through temporary files), a small one (in memory) and one whose
    keyframe is read out of order, each four deltas from its keyframe; then the same restore
    with the composition made to err."""
    rng = random.Random(3)
    src = tmp_path / "src"
    src.mkdir()
    files = {"big.bin": rng.randbytes(17 << 20), "small.bin": rng.randbytes(300_000)}
    files["swapped.bin"] = rng.randbytes(200_000)  # its halves swap: read its keyframe backwards
    for night in range(5):
        if night:
            files = {name: edited(rng, data, cut=False) for name, data in files.items()}
        if night == 2:
            swapped = files["swapped.bin"]
            files["swapped.bin"] = swapped[100_000:] + swapped[:100_000]
        for name, data in files.items():
            (src / name).write_bytes(data)
        settle(src, age_s=3600 * (10 - night))
        run = cli("--json", "backup", src)
        assert run.code == 0, run.err
        assert night == 0 or run.json["counts"]["deltas"] == 3

    real_in_order, orders = deltagrid.restore.compose.in_order, []
    monkeypatch.setattr(
        deltagrid.restore.compose,
        "in_order",
        lambda segs: orders.append(real_in_order(segs)) or orders[-1],
    )
    assert cli("restore", tmp_path / "r1").code == 0
    assert sorted(orders) == [False, True, True]  # the swapped file's keyframe went to a file
    root = restored_root(tmp_path / "r1", src)
    assert {name: (root / name).read_bytes() for name in files} == files

    real, calls = deltagrid.restore.compose.write_version, []

    def wrong(segments, read_keyframe, write) -> None:  # the first byte written is flipped
        flipped = False  # per call: a large file is composed on a thread of its own

        def flip(data) -> None:
            nonlocal flipped
            if not flipped and len(data):
                data, flipped = bytes([data[0] ^ 0xFF]) + bytes(data[1:]), True
            write(data)

        real(segments, read_keyframe, flip)
        calls.append(flipped)

    monkeypatch.setattr(deltagrid.restore.compose, "write_version", wrong)
    assert cli("restore", tmp_path / "r2").code == 0
    assert calls == [True] * 3  # every file was composed, wrongly, then patched step by step
    root = restored_root(tmp_path / "r2", src)
    assert {name: (root / name).read_bytes() for name in files} == files
    assert sorted(p.name for p in (tmp_path / "r2").rglob("*") if p.is_file()) == sorted(files)
