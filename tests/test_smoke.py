"""The tour in the README, as a test: back up, change, back up, restore."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import describe, restored_root


def test_backup_twice_then_restore_is_byte_identical(tmp_path: Path, cli) -> None:
    src = tmp_path / "docs"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 1000)
    assert cli("backup", src).code == 0
    (src / "a.txt").write_text("hello again\n")
    (src / "c.txt").write_text("new\n")
    second = cli("--json", "backup", src)
    assert second.code == 0
    assert second.json["snapshot_id"] == 2
    target = tmp_path / "restore"
    assert cli("restore", target).code == 0
    assert describe(restored_root(target, src)) == describe(src)
