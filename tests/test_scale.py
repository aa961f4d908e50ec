"""The quiet night at scale: the scanner's no-change path never skips what the full comparison
would queue, and the CLI imports only the command that runs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from deltagrid.cli import build_parser
from deltagrid.commands import COMMANDS, load
from tests.helpers import dg
from tests.test_scanner import queued, reasons, write


def test_a_version_flagged_recheck_is_queued_though_its_stat_matches(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    fresh = src / "fresh.txt"
    write(src / "settled.txt", "old\n")
    fresh.write_text("its mtime is ahead of the clock\n")
    ahead = (os.stat(fresh).st_mtime_ns + 3600 * 10**9,) * 2
    os.utime(fresh, ns=ahead)  # not older than the read by a second: the uploader flags it
    assert cli("backup", src).code == 0
    with sqlite3.connect(tmp_path / "home" / "backupdb.sqlite") as db:
        flags = dict(
            db.execute(
                "SELECT p.path, v.recheck FROM versions v JOIN paths p ON p.id = v.path_id"
            ).fetchall()
        )
    db.close()
    assert flags[os.fsencode(fresh)] == 1 and flags[os.fsencode(src / "settled.txt")] == 0
    run = cli("--json", "-v", "scan", src)
    assert queued(run) == reasons(changed=1, unchanged=2)
    assert [e["path"] for e in run.json["errors"]] == []
    with sqlite3.connect(tmp_path / "home" / "backupdb.sqlite") as db:
        rows = db.execute("SELECT path, reason FROM queue WHERE done = 0").fetchall()
    db.close()
    assert rows == [(os.fsencode(fresh), "changed")]


def test_an_edit_deep_in_unchanged_directories_is_found(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    deep = [
        write(src / f"a{i}" / "b" / "c" / f"f{j}.txt", f"{i} {j}\n")
        for i in range(3)
        for j in range(3)
    ]
    for d in sorted({p.parent for p in deep} | {p.parent.parent for p in deep}, reverse=True):
        os.utime(d, ns=(1_600_000_000 * 10**9,) * 2)
    assert cli("backup", src).code == 0
    target = deep[4]
    before = os.stat(target.parent)
    with open(target, "r+b") as f:  # in place: no directory above it changes
        f.write(b"X")
    assert os.stat(target.parent).st_mtime_ns == before.st_mtime_ns
    assert queued(cli("--json", "scan", src)) == reasons(changed=1, unchanged=len(deep) + 9)


def test_a_file_replaced_by_a_directory_and_back_is_seen(tmp_path: Path, cli) -> None:
    src = tmp_path / "src"
    write(src / "x" / "inner.txt", "inside\n")
    write(src / "y.txt", "a file\n")
    assert cli("backup", src).code == 0
    (src / "x" / "inner.txt").unlink()
    (src / "x").rmdir()
    write(src / "x", "now a file\n")
    (src / "y.txt").unlink()
    write(src / "y.txt" / "inside.txt", "now a directory\n")
    assert queued(cli("--json", "scan", src)) == reasons(changed=2, new=1, deleted=1, meta=1)


def _modules_after(*args: str) -> set[str]:
    """The deltagrid.commands modules and heavy libraries a real CLI process imported."""
    code = (
        "import sys\n"
        "from deltagrid.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('imported:', *(m for m in sys.modules if m.startswith('deltagrid.commands.')"
        " or m in ('sqlalchemy', 'requests', 'tqdm', 'pyrsync')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(proc.stdout.splitlines()[-1].split()[1:])


def test_only_the_command_that_runs_is_imported(tmp_path: Path) -> None:
    assert _modules_after("--version") == set()
    assert _modules_after("--help") == set()
    home = tmp_path / "home"
    assert _modules_after("--home", str(home), "config", "show") == {"deltagrid.commands.config"}
    src = tmp_path / "src"
    src.mkdir()
    assert dg(home, "backup", src).code == 0
    status = _modules_after("--home", str(home), "status")
    assert status == {"deltagrid.commands.status"}  # the root pointer is read without librsync


def test_every_command_is_listed_with_the_help_its_module_gives(tmp_path: Path) -> None:
    listing = dg(tmp_path / "home", "--help")
    assert listing.code == 0
    for name, help_ in COMMANDS.items():
        sub = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
        del sub._name_parser_map[name]
        load(name).add(sub, sub.common)
        assert [a.help for a in sub._choices_actions if a.dest == name][-1] == help_
        assert help_ in listing.out
    assert sorted(COMMANDS) == sorted(
        p.stem for p in Path(load("init").__file__).parent.glob("*.py") if p.stem != "__init__"
    )
