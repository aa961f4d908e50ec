"""Night after night: edits of every kind, and what each night costs in bytes uploaded."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tests.helpers import backed_up, describe, restored_root

OLD = 1_600_000_000  # mtimes well in the past: no file is re-read for being recent
DAY = 86_400


def _random_file(path: Path, size: int, night: int = 0) -> None:
    path.write_bytes(os.urandom(size))
    _stamp(path, night)


def _stamp(path: Path, night: int) -> None:
    """Give `path` the mtime it would have had if edited on `night`."""
    t = (OLD + night * DAY) * 10**9 + 123_456_789
    os.utime(path, ns=(t, t), follow_symlinks=False)


def _patch(path: Path, edits: list[tuple[int, bytes]], night: int) -> None:
    """Overwrite bytes in place: same inode, same size unless an edit runs past the end."""
    with open(path, "r+b") as f:
        for offset, data in edits:
            f.seek(offset)
            f.write(data)
    _stamp(path, night)


def _set_upload(cli, home: Path, **settings: int) -> None:
    assert cli("init").code == 0
    with open(home / "config.toml", "a") as f:
        f.write("\n[upload]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))


def _restore_each(cli, tmp_path: Path, src: Path, nights: list[dict[bytes, tuple]]) -> None:
    """Restore every snapshot into its own target; each must equal that night's tree."""
    for night, expected in enumerate(nights, start=1):
        target = tmp_path / f"restore-{night}"
        run = cli("--json", "restore", "--snapshot", night, target)
        assert run.code == 0, run.err
        assert run.json["snapshot_id"] == night
        assert describe(restored_root(target, src)) == expected, f"snapshot {night}"


def test_every_night_of_edits_restores_exactly(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    src.mkdir()
    nights: list[dict[bytes, tuple]] = []
    uploaded: list[dict] = []

    def night_done() -> None:
        uploaded.append(backed_up(cli, src))
        nights.append(describe(src))

    # night 1: the first tree
    (src / "log.txt").write_text("night 1\n")
    _random_file(src / "data.bin", 300 << 10)
    _random_file(src / "shrinks.bin", 200 << 10)
    _random_file(src / "empties.bin", 100 << 10)
    (src / "doomed.txt").write_text("deleted on night 2\n")
    (src / "mover.txt").write_text("moves around\n")
    (src / "album").mkdir()
    for i in range(5):
        _random_file(src / "album" / f"photo-{i}.jpg", 20 << 10)
    (src / "album" / "nested").mkdir()
    (src / "album" / "nested" / "deep.txt").write_text("inside a moved dir\n")
    (src / "becomes-dir").write_text("a file today\n")
    (src / "becomes-file").mkdir()
    (src / "becomes-file" / "child.txt").write_text("goes when the dir goes\n")
    (src / "becomes-file" / "grand").mkdir()
    (src / "becomes-file" / "grand" / "child2.txt").write_text("so do I\n")
    (src / "tool.sh").write_text("#!/bin/sh\n")
    (src / "tool.sh").chmod(0o644)
    (src / "shared").mkdir()
    (src / "shared").chmod(0o755)
    os.symlink("log.txt", src / "pointer")
    night_done()

    # night 2: append, in-place edit, truncation, delete, add, file move
    with open(src / "log.txt", "a") as f:
        f.write("night 2\n")
    _patch(src / "data.bin", [(1000, b"X" * 100), (150_000, b"Y" * 50)], 2)
    with open(src / "shrinks.bin", "r+b") as f:
        f.truncate(120 << 10)
    (src / "doomed.txt").unlink()
    (src / "fresh.txt").write_text("new on night 2\n")
    (src / "drafts").mkdir()
    (src / "mover.txt").rename(src / "drafts" / "mover.txt")
    night_done()

    # night 3: directory move, a file replaced by a directory and vice versa, a hard link
    (src / "album").rename(src / "drafts" / "album-2024")
    (src / "becomes-dir").unlink()
    (src / "becomes-dir").mkdir()
    (src / "becomes-dir" / "now-inside.txt").write_text("the path is a dir now\n")
    shutil.rmtree(src / "becomes-file")
    (src / "becomes-file").write_text("the path is a file now\n")
    os.link(src / "data.bin", src / "shared" / "data-link.bin")
    _patch(src / "data.bin", [(200_000, b"Z" * 300)], 3)
    night_done()

    # night 4: mode changes only; truncate to nothing; retarget a symlink; grow by appending
    (src / "tool.sh").chmod(0o755)
    (src / "shared").chmod(0o700)
    with open(src / "empties.bin", "r+b") as f:
        f.truncate(0)
    (src / "pointer").unlink()
    os.symlink("drafts/mover.txt", src / "pointer")
    with open(src / "data.bin", "ab") as f:
        f.write(os.urandom(5000))
    _stamp(src / "data.bin", 4)
    night_done()

    # night 5: undo the hard link, turn the directory back into a file, move a file back,
    # delete a whole directory
    (src / "shared" / "data-link.bin").unlink()
    shutil.rmtree(src / "becomes-dir")
    (src / "becomes-dir").write_text("a file again\n")
    (src / "drafts" / "mover.txt").rename(src / "mover.txt")
    shutil.rmtree(src / "drafts" / "album-2024" / "nested")
    with open(src / "log.txt", "a") as f:
        f.write("night 5\n")
    night_done()

    # night 6: nothing happens
    night_done()

    assert [u["snapshot_id"] for u in uploaded] == [1, 2, 3, 4, 5, 6]
    assert uploaded[1]["counts"]["deleted"] == 2  # doomed.txt, and mover.txt at its old name
    assert uploaded[1]["counts"]["deltas"] == 2  # the in-place edit and the truncation
    assert uploaded[2]["counts"]["deduplicated"] == 6  # the moved album's files
    assert uploaded[5]["bytes_uploaded"] == 0
    _restore_each(cli, tmp_path, src, nights)
    assert cli("verify", "--read-data").code == 0


def test_a_chain_past_max_chain_gets_a_keyframe(tmp_path: Path, home: Path, cli) -> None:
    _set_upload(cli, home, max_chain=3)
    src = tmp_path / "src"
    src.mkdir()
    big = src / "ledger.bin"
    _random_file(big, 256 << 10, 1)
    os.utime(src, (OLD, OLD))

    nights = []
    counts = []
    for night in range(1, 8):
        if night > 1:
            _patch(big, [(night * 10_000, os.urandom(100))], night)
        doc = backed_up(cli, src)
        counts.append(doc["counts"])
        nights.append(describe(src))

    def kinds(c: dict) -> tuple[int, int, int]:
        return c.get("keyframes", 0), c.get("deltas", 0), c.get("keyframes_by_bound", 0)

    # night 1: the first copy; nights 2-4: three deltas; night 5: the 4th edit would make the
    # chain 4 long, so it is stored whole; nights 6-7: deltas on the new keyframe
    assert [kinds(c) for c in counts] == [
        (1, 0, 0),
        (0, 1, 0),
        (0, 1, 0),
        (0, 1, 0),
        (1, 0, 1),
        (0, 1, 0),
        (0, 1, 0),
    ]
    _restore_each(cli, tmp_path, src, nights)
    assert cli("verify", "--read-data").code == 0


def test_a_scattered_edit_in_a_large_file_uploads_a_small_delta(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "disk.img"
    size = 32 << 20
    _random_file(big, size)
    first = backed_up(cli, src)
    assert first["bytes_uploaded"] > size
    before = describe(src)

    step = size // 20
    _patch(big, [(i * step + 777, os.urandom(100)) for i in range(20)], 1)
    second = backed_up(cli, src)
    assert second["counts"]["deltas"] == 1
    assert second["counts"].get("keyframes", 0) == 0
    assert second["bytes_read"] == size
    assert second["bytes_uploaded"] < 0.02 * size
    _restore_each(cli, tmp_path, src, [before, describe(src)])


def test_renaming_a_directory_uploads_no_file_data(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    photos = src / "photos"
    photos.mkdir(parents=True)
    for i in range(99):
        _random_file(photos / f"img-{i:03}.raw", 1000 + 37 * i)
    _random_file(photos / "panorama.raw", 1 << 20)  # above delta_min_size too
    first = backed_up(cli, src)
    assert first["counts"]["files"] == 100
    before = describe(src)

    photos.rename(src / "photos-2024")
    second = backed_up(cli, src)
    assert second["counts"]["files"] == 100
    assert second["counts"]["deduplicated"] == 100
    assert second["counts"]["deleted"] == 101  # the old directory and its files
    assert second["bytes_uploaded"] < 4096
    assert second["bytes_read"] == first["bytes_read"]  # read to hash, but not stored
    _restore_each(cli, tmp_path, src, [before, describe(src)])


def test_a_file_moved_then_edited_uploads_a_delta(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    (src / "inbox").mkdir(parents=True)
    report = src / "inbox" / "report.bin"
    size = 2 << 20
    _random_file(report, size)
    backed_up(cli, src)
    before = describe(src)

    (src / "archive" / "2024").mkdir(parents=True)
    moved = src / "archive" / "2024" / "report-final.bin"
    report.rename(moved)
    _patch(moved, [(size // 2, b"final edit" * 10)], 1)
    second = backed_up(cli, src)
    assert second["counts"]["deltas"] == 1
    assert second["counts"].get("keyframes", 0) == 0
    assert second["counts"]["deleted"] == 1
    assert second["bytes_uploaded"] < size // 50
    _restore_each(cli, tmp_path, src, [before, describe(src)])


def test_a_rewrite_of_most_of_a_file_is_stored_whole(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    src.mkdir()
    doc = src / "doc.bin"
    _random_file(doc, 256 << 10)
    backed_up(cli, src)
    before = describe(src)

    _patch(doc, [(0, os.urandom(160 << 10))], 1)  # a delta would outweigh half the file
    second = backed_up(cli, src)
    assert second["counts"]["keyframes"] == 1
    assert second["counts"]["keyframes_by_bound"] == 1
    assert second["counts"].get("deltas", 0) == 0
    _restore_each(cli, tmp_path, src, [before, describe(src)])


def test_a_small_file_is_always_stored_whole(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    src.mkdir()
    small = src / "small.txt"
    small.write_bytes(b"line\n" * 10_000)  # 50 000 bytes, below delta_min_size
    _stamp(small, 0)
    backed_up(cli, src)
    before = describe(src)

    _patch(small, [(100, b"edit")], 1)
    second = backed_up(cli, src)
    assert second["counts"]["keyframes"] == 1
    assert second["counts"].get("deltas", 0) == 0
    assert second["counts"].get("keyframes_by_bound", 0) == 0
    _restore_each(cli, tmp_path, src, [before, describe(src)])


def test_a_lost_signature_cache_still_gives_a_delta(tmp_path: Path, home: Path, cli) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    _random_file(big, 1 << 20)
    backed_up(cli, src)
    before = describe(src)

    shutil.rmtree(home / "sigs")  # the basis signature is rebuilt from the store
    _patch(big, [(5000, b"changed")], 1)
    second = backed_up(cli, src)
    assert second["counts"]["deltas"] == 1
    assert second["bytes_uploaded"] < 16 << 10
    _restore_each(cli, tmp_path, src, [before, describe(src)])


def _still_tree(src: Path) -> None:
    """A small tree whose every entry has an mtime in the past."""
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "note.txt").write_text("note\n")
    _random_file(src / "a" / "b" / "blob.bin", 200 << 10)
    (src / "empty").write_bytes(b"")
    os.symlink("a/note.txt", src / "link")
    for p in [src / "link", src / "a" / "note.txt", src / "empty", src / "a" / "b", src / "a"]:
        _stamp(p, 0)
    os.utime(src, (OLD, OLD))


def test_a_night_with_no_changes_uploads_nothing_and_still_commits(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    _still_tree(src)
    first = backed_up(cli, src)
    assert first["counts"]["files"] == 3
    before = describe(src)

    second = backed_up(cli, src)
    assert second["snapshot_id"] == 2
    assert second["scan"]["queued"] == {"new": 0, "changed": 0, "meta": 0, "deleted": 0}
    assert second["counts"] == {}
    assert (second["bytes_read"], second["bytes_uploaded"], second["packs"]) == (0, 0, 0)
    assert second["backupdb_bytes"] > 0  # the snapshot itself is still published
    snaps = cli("--json", "snapshots").json["snapshots"]
    assert [(s["id"], s["files"], s["bytes_added"]) for s in snaps][1] == (2, 3, 0)
    _restore_each(cli, tmp_path, src, [before, before])


def test_a_file_written_just_before_a_backup_is_read_once_more_then_left_alone(
    tmp_path: Path, cli
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hot.txt").write_text("written a moment ago\n")
    _random_file(src / "cold.bin", 100 << 10)  # an old mtime: trusted at once
    os.utime(src, (OLD, OLD))
    backed_up(cli, src)
    time.sleep(1.1)  # the next run is more than a second after the write

    second = backed_up(cli, src)
    assert second["scan"]["queued"]["changed"] == 1
    assert second["bytes_read"] == len("written a moment ago\n")
    assert second["bytes_uploaded"] == 0

    third = backed_up(cli, src)
    assert third["scan"]["queued"]["changed"] == 0
    assert (third["bytes_read"], third["bytes_uploaded"]) == (0, 0)
    target = tmp_path / "restore"
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)
