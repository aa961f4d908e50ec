"""Files larger than a piece are read on a thread of their own (uploader/bigfiles.py) while the
main thread records small files, and are taken up out of queue order when their pass is done.
What that must not change: the last scan's view of a path wins, a copy of a stored big
file puts nothing, a big file gone or replaced before its pass is reported for itself, and every
file restores to its own bytes."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import deltagrid.uploader.bigfiles
import deltagrid.uploader.upload
from deltagrid.backupdb import connection
from deltagrid.floor import rdiff
from deltagrid.uploader.bigfiles import BigReader, PieceSigner
from deltagrid.uploader.catalog import CatalogCache
from deltagrid.uploader.pieces import Squeezer
from deltagrid.uploader.reader import sign, signature_args
from deltagrid.uploader.settings import UploadSettings
from deltagrid.uploader.sigcache import SigCache
from tests.helpers import describe, restored_root, watch_opening

PIECE_SIZE = 64 << 10
PACK_SIZE = 256 << 10


@pytest.fixture
def src(tmp_path: Path, cli) -> Path:
    """Small files around three big ones (each several side packs), in small pieces and packs."""
    assert cli("init").code == 0
    with open(tmp_path / "home" / "config.toml", "a") as f:
        f.write(f"\n[upload]\npiece_size = {PIECE_SIZE}\npack_size = {PACK_SIZE}\n")
    rng = random.Random(5)
    root = tmp_path / "src"
    for d in "abc":
        (root / d).mkdir(parents=True)
        (root / d / "big.bin").write_bytes(rng.randbytes(900_000))
        for i in range(40):
            (root / d / f"small{i:02d}").write_bytes(rng.randbytes(rng.randrange(0, 9_000)))
    return root


def restores_exactly(cli, target: Path, src: Path) -> None:
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)


def test_a_big_file_scanned_twice_before_an_upload_is_stored_as_last_scanned(
    tmp_path: Path, cli, src: Path
) -> None:
    assert cli("backup", src).code == 0
    big = src / "b" / "big.bin"
    with open(big, "r+b") as f:
        f.write(b"first edit")
    assert cli("scan", src).code == 0
    big.write_bytes(b"small now")  # the second scan supersedes the first one's row
    assert cli("scan", src).code == 0

    upload = cli("--json", "upload")
    assert upload.code == 0, upload.err
    restores_exactly(cli, tmp_path / "r", src)
    listed = [e for e in cli("--json", "ls").json["entries"] if e["path"] == str(big)]
    assert [e["size"] for e in listed] == [len(b"small now")]
    assert cli("verify", "--read-data").code == 0


def test_a_copy_of_a_stored_big_file_puts_nothing(tmp_path: Path, cli, src: Path) -> None:
    first = cli("--json", "backup", src)
    assert first.code == 0, first.err
    assert first.json["packs"] >= 3 * 3  # each big file fills side packs of its own
    shutil.copy2(src / "a" / "big.bin", src / "c" / "copy.bin")

    second = cli("--json", "backup", src)
    assert second.code == 0, second.err
    assert second.json["counts"]["deduplicated"] == 1
    assert (second.json["packs"], second.json["bytes_uploaded"]) == (0, 0)
    restores_exactly(cli, tmp_path / "r", src)


@pytest.mark.usefixtures("batches")
def test_a_copy_of_a_stored_big_file_edited_in_place_puts_only_the_edited_piece(
    tmp_path: Path, cli, src: Path
) -> None:
    """A new big file is cut into side packs as it is read: a piece the catalog has (here, all
    but one) must not go into them again."""
    assert cli("backup", src).code == 0
    edited = src / "c" / "edited.bin"
    shutil.copy2(src / "a" / "big.bin", edited)
    with open(edited, "r+b") as f:
        f.seek(5 * PIECE_SIZE + 100)
        f.write(b"an edit in the sixth piece")

    second = cli("--json", "backup", src)
    assert second.code == 0, second.err
    assert second.json["packs"] == 1
    assert PIECE_SIZE < second.json["bytes_uploaded"] < PIECE_SIZE + 4096
    restores_exactly(cli, tmp_path / "r", src)


@pytest.mark.parametrize("signatures", ["at hand", "lost"])
def test_an_edited_big_file_is_read_once_for_its_delta(
    tmp_path: Path, cli, src: Path, monkeypatch: pytest.MonkeyPatch, signatures: str
) -> None:
    """A big file with a previous version: its pass makes the rdiff delta as it reads (a
    thread of its own, fed by a ByteStream), so the main thread does not read it a second time.
    Without the previous version's signature at hand the main thread rebuilds it from the store
    and reads the file again for the delta, as before. The new signature is the whole file's,
    also for the 5 MB file, whose 2 KiB blocks divide a piece: it is signed piece by piece."""
    (src / "d").mkdir()
    (src / "d" / "big.bin").write_bytes(random.Random(6).randbytes(5_000_000))
    assert signature_args(5_000_000, 2048)[1] == 2048
    assert cli("backup", src).code == 0
    bigs = {os.fsencode(src / d / "big.bin") for d in "abcd"}
    for path in bigs:
        with open(path, "r+b") as f:
            f.seek(3 * PIECE_SIZE + 7)
            f.write(b"a scattered edit")
    if signatures == "lost":
        shutil.rmtree(tmp_path / "home" / "sigs")
    opened = watch_opening(monkeypatch)
    second = cli("--json", "backup", src)
    monkeypatch.undo()
    assert second.code == 0, second.err
    assert second.json["counts"]["deltas"] == 4
    assert second.json["bytes_uploaded"] < 4 * 4096
    reads = 1 if signatures == "at hand" else 2
    assert {path: opened.count(path) for path in bigs} == {path: reads for path in bigs}
    cache = SigCache(tmp_path / "home" / "sigs")  # made piece by piece: the whole file's
    for path in bigs:
        data = Path(os.fsdecode(path)).read_bytes()
        whole = io.BytesIO()
        sign(io.BytesIO(data), whole, len(data), 2048)
        assert cache.get(hashlib.blake2b(data, digest_size=32).digest()) == whole.getvalue()
    cache.close()
    restores_exactly(cli, tmp_path / "r", src)
    assert cli("verify", "--read-data").code == 0


@pytest.fixture(params=["one batch", "small batches"])
def batches(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The uploader's queue batches: all rows in one, or 8 rows each, so that big files are
    started by the look-ahead, batches before the main thread reaches their rows."""
    if request.param == "small batches":
        monkeypatch.setattr(deltagrid.uploader.upload, "_BATCH", 8)
        monkeypatch.setattr(deltagrid.uploader.upload, "_BIG_AHEAD", 2)


@pytest.mark.usefixtures("batches")
def test_each_big_file_is_read_once_whichever_batch_starts_it(
    tmp_path: Path, cli, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In small batches the look-ahead starts big files before their batch: the batch must not
    start them again (a second pass would cut and put their pieces twice)."""
    started: list[bytes] = []
    real = BigReader.submit

    def submit(self: BigReader, path: bytes, *args):
        started.append(path)
        return real(self, path, *args)

    monkeypatch.setattr(BigReader, "submit", submit)
    assert cli("backup", src).code == 0
    assert sorted(started) == [os.fsencode(src / d / "big.bin") for d in "abc"]
    restores_exactly(cli, tmp_path / "r", src)


@pytest.mark.usefixtures("batches")
def test_big_files_gone_or_replaced_before_their_pass_are_reported_for_themselves(
    tmp_path: Path, cli, src: Path
) -> None:
    assert cli("backup", src).code == 0
    for d in "abc":
        with open(src / d / "big.bin", "r+b") as f:
            f.write(b"edited")
    (src / "c" / "new.bin").write_bytes(os.urandom(500_000))
    assert cli("scan", src).code == 0
    (src / "a" / "big.bin").unlink()
    (src / "c" / "new.bin").unlink()
    (src / "b" / "big.bin").unlink()
    (src / "b" / "big.bin").symlink_to("small00")

    upload = cli("--json", "upload")
    assert upload.code == 24, upload.err
    assert sorted(upload.json["vanished"]) == [
        str(src / "a" / "big.bin"),
        str(src / "c" / "new.bin"),
    ]
    listed = {e["path"]: e for e in cli("--json", "ls").json["entries"]}
    assert str(src / "a" / "big.bin") not in listed
    assert listed[str(src / "b" / "big.bin")]["type"] == "l"

    assert cli("backup", src).code == 0
    restores_exactly(cli, tmp_path / "r", src)


@pytest.mark.parametrize("size", [2 * 65_536, 5_000_000, (8 << 20) + 123])
def test_a_signature_made_piece_by_piece_is_the_whole_files(size: int) -> None:
    """What PieceSigner relies on: librsync signs each block on its own."""
    data = random.Random(size).randbytes(size)
    whole = io.BytesIO()
    sign(io.BytesIO(data), whole, size, 2048)
    pieced = io.BytesIO()
    signer = PieceSigner(ThreadPoolExecutor(2), pieced, signature_args(size, 2048))
    for i in range(0, size, 65_536):
        signer.add(data[i : i + 65_536])
    signer.finish()
    assert pieced.getvalue() == whole.getvalue()


def test_passes_waiting_hold_a_bounded_amount_of_basis_signatures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huge file's signature runs to hundreds of MB: passes queued behind the one under way
    are handed one only while those waiting hold less than _SIGNATURES_HELD; the others' deltas
    are left to the main thread. What a pass made is the delta of the file against its basis."""
    rng = random.Random(7)
    basis = rng.randbytes(1 << 20)
    signature = io.BytesIO()
    sign(io.BytesIO(basis), signature, len(basis), 2048)
    sig = signature.getvalue()
    paths = []
    for i in range(3):
        path = tmp_path / f"big{i}.bin"
        path.write_bytes(basis[:1000] + bytes([i]) * 100 + basis[1100:])
        paths.append(path)
    monkeypatch.setattr(deltagrid.uploader.bigfiles, "_SIGNATURES_HELD", len(sig) + 1)
    settings = UploadSettings(piece_size=PIECE_SIZE)
    squeezer = Squeezer(1)
    db = tmp_path / "backupdb.sqlite"
    conn = connection.create(db)
    catalog = CatalogCache(conn, lambda: ())
    reader = BigReader(settings, squeezer, tmp_path, tmp_path, str(db), catalog)
    gate = threading.Event()
    reader.pool.submit(gate.wait)  # nothing runs until all three are queued
    futures = [reader.submit(os.fsencode(path), False, (i, sig)) for i, path in enumerate(paths)]
    assert reader.holding == len(sig)
    gate.set()
    try:
        made = [future.result(timeout=60).delta for future in futures]
        assert [m is not None for m in made] == [True, False, False]
        assert made[0] is not None and made[0][0] == 0
        expected = io.BytesIO()
        rdiff.delta(io.BytesIO(paths[0].read_bytes()), io.BytesIO(sig), expected)
        made[0][1].seek(0)
        assert made[0][1].read() == expected.getvalue()
        assert reader.holding == 0
    finally:
        for future in futures:
            prepared = future.result()
            for f in (prepared.signature, prepared.delta[1] if prepared.delta else None):
                if f is not None:
                    f.close()
        reader.close()
        squeezer.close()
        conn.close()
