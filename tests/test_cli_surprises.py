"""What a new user runs into, through the real CLI: mistakes in settings and arguments, a fresh
home set up as the README shows, several sources with one missing, and what the messages say.

Each test runs `deltagrid` in a subprocess and checks the exit code, the one-line error, that no
traceback appears, and what is on disk afterwards. Read-only homes: tests/test_readonly_home.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import Run, dg, one_error, settle, unprivileged


@pytest.fixture
def src(tmp_path: Path) -> Path:
    tree = tmp_path / "src"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a\n")
    (tree / "sub" / "b.txt").write_text("b\n")
    settle(tree)
    return tree


def clean(run: Run) -> None:
    assert "Traceback" not in run.err + run.out, run.err


def snapshot_ids(home: Path) -> list[int]:
    run = dg(home, "--json", "snapshots")
    assert run.code == 0, run.err
    return [s["id"] for s in run.json["snapshots"]]


# --- 1. nothing in config.toml ends in a traceback ----------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "value", "says"),
    [
        ("upload", "zstd_level", "99", "from 1 to 22"),
        ("upload", "zstd_level", "0", "from 1 to 22"),
        ("upload", "piece_size", "1", "from 4,096 to"),
        ("upload", "pack_size", str(1 << 40), "to 1,073,741,824 (bytes)"),
        ("upload", "max_chain", "-5", "from 1 to"),
        ("upload", "max_chain", "0", "from 1 to"),
        ("upload", "max_chain_ratio", "0", "above 0"),
        ("upload", "max_chain_ratio", "nan", "above 0"),
        ("upload", "delta_min_size", "-1", "from 0 to"),
        ("upload", "full_export_every", "-1", "from 0 to"),
        ("upload", "block_max", "1", "from 64 to"),
        ("retention", "keep_daily", "-1", "0 or more"),
    ],
)
def test_a_setting_out_of_range_names_file_line_and_key(
    home: Path, src: Path, table: str, key: str, value: str, says: str
) -> None:
    home.mkdir()
    config = home / "config.toml"
    config.write_text(f"# mine\n[{table}]\n{key} = {value}\n")
    for args in (["backup", src], ["config", "show"]):
        one_error(dg(home, *args), 2, f"{config}, line 3: {table}.{key}: must be", says)
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]  # nothing was created


def test_a_config_that_is_not_utf8_is_one_line(home: Path, src: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_bytes(b'sources = ["/tmp"]\nexcludes = ["caf\xe9"]\n')
    for args in (["backup", src], ["ls"], ["config", "show"]):
        one_error(dg(home, *args), 2, f"{home / 'config.toml'}, line 2: not UTF-8", "0xe9")


def test_a_home_the_user_cannot_read_is_one_line_with_no_traceback() -> None:
    with unprivileged() as (work, dg_as):
        src = work / "src"
        src.mkdir()
        home = work / "home"
        assert dg_as(home, "backup", src).code == 0
        os.chmod(home, 0)
        try:
            for args in (["backup", src], ["scan", src], ["ls"], ["log"], ["status"]):
                one_error(dg_as(home, *args), 1, "Permission denied", str(home))
        finally:
            os.chmod(home, 0o700)


# --- 2 and 7. the README's Settings example on a fresh home ---------------------------------------


def readme_settings(tmp_path: Path) -> str:
    """The Settings block of README.md, its paths pointed at this test's directories."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("## Settings", 1)[1].split("## ", 1)[0]
    lines = [ln[4:] for ln in block.splitlines() if ln.startswith("    ")]
    text = "\n".join(lines) + "\n"
    assert 'store = "file:///home/me/.local/share/deltagrid/store"' in text
    text = text.replace("/home/me/.local/share/deltagrid/store", str(tmp_path / "store"))
    return text.replace('["~/Documents", "~/src"]', json.dumps([str(tmp_path / "src")]))


@pytest.mark.parametrize("command", ["backup", "scan", "init"])
def test_the_readme_settings_work_on_a_fresh_home(
    tmp_path: Path, home: Path, src: Path, command: str
) -> None:
    home.mkdir()
    text = readme_settings(tmp_path)
    (home / "config.toml").write_text(text)
    run = dg(home, command)
    clean(run)
    assert run.code == 0, run.err
    assert f"created repository in {home}, store file://{tmp_path / 'store'}" in run.out
    assert (tmp_path / "store" / "objects").is_dir()
    assert (home / "config.toml").read_text() == text  # every line kept, the store named already
    if command != "backup":
        assert dg(home, "backup").code == 0
    assert snapshot_ids(home) == [1]
    assert (tmp_path / "store" / "root.json").exists()
    one_error(dg(home, "init"), 1, "already holds a deltagrid repository")


def test_a_configured_store_that_holds_backups_is_attached_not_overwritten(
    tmp_path: Path, home: Path, src: Path
) -> None:
    """A config copied to a new machine names a store with backups: backup and init point to
    attach, and attach takes the store from the config."""
    store = tmp_path / "store"
    assert dg(tmp_path / "first", "init", "--store", f"file://{store}").code == 0
    assert dg(tmp_path / "first", "backup", src).code == 0
    home.mkdir()
    (home / "config.toml").write_text(f'store = "file://{store}"\n')
    for command in ("backup", "init"):
        one_error(dg(home, command, *([src] if command == "backup" else [])), 1, "attach")
    one_error(dg(home, "ls"), 1, f"config.toml names store file://{store}", "attach")
    run = dg(home, "attach")
    assert run.code == 0, run.err
    assert snapshot_ids(home) == [1]


def test_scan_on_a_fresh_home_creates_the_repository(home: Path, src: Path) -> None:
    run = dg(home, "scan", src)
    clean(run)
    assert run.code == 0 and f"created repository in {home}" in run.out
    assert dg(home, "upload").code == 0
    assert snapshot_ids(home) == [1]


# --- 4. typos -----------------------------------------------------------------------------------


def test_a_path_or_snapshot_the_snapshot_lacks_is_an_error(
    tmp_path: Path, home: Path, src: Path
) -> None:
    assert dg(home, "backup", src).code == 0
    target = tmp_path / "t"
    one_error(dg(home, "restore", "--path", "/no/such/path", target), 1, "nothing at /no/such/path")
    assert not target.exists()
    one_error(dg(home, "ls", "1", "/typo"), 2, "snapshot 1 has nothing at /typo")
    one_error(dg(home, "ls", "abc"), 2, "nothing at", "abc", "a SNAPSHOT is a number or 'latest'")
    for args in (["ls", "7"], ["restore", "--snapshot", "7", target], ["diff", "1", "7"]):
        one_error(dg(home, *args), 2, "no snapshot 7")
    assert not target.exists()
    assert dg(home, "ls", "1", src / "sub").code == 0  # what is there still lists


# --- 5. several sources, one missing --------------------------------------------------------------


def test_a_missing_source_among_several_is_reported_and_the_rest_committed(
    tmp_path: Path, home: Path, src: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / "photo.jpg").write_bytes(b"jpeg")
    settle(disk)
    (home.parent / "home").mkdir()
    (home / "config.toml").write_text(f"sources = {json.dumps([str(src), str(disk)])}\n")
    assert dg(home, "backup").code == 0
    disk.rename(tmp_path / "unplugged")
    (src / "new.txt").write_text("new\n")
    run = dg(home, "backup")
    clean(run)
    assert run.code == 23
    assert run.err == f"deltagrid: warning: cannot read {disk}: No such file or directory\n"
    assert snapshot_ids(home) == [1, 2]
    listed = dg(home, "--json", "ls", "2").json["entries"]
    paths = {e["path"] for e in listed}
    assert str(src / "new.txt") in paths  # the others are backed up
    assert str(disk / "photo.jpg") in paths  # the unplugged disk: as last backed up
    logged = dg(home, "--json", "log", "--last", "1").json["runs"][0]
    assert logged["exit_code"] == 23 and logged["errors"][0]["path"] == str(disk)


def test_an_empty_source_on_another_file_system_is_not_read_as_everything_deleted(
    tmp_path: Path, home: Path
) -> None:
    """A disk not mounted shows its empty mount point, on the parent's file system. Here the
    source is a symlink (followed: its tree is backed up) moved from a full directory to an
    empty one on another file system, as a mount point is seen when its disk is away."""
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    disk, source = tmp_path / "disk", tmp_path / "photos"
    disk.mkdir()
    (disk / "photo.jpg").write_bytes(b"jpeg")
    settle(disk)
    source.symlink_to(disk)
    assert dg(home, "backup", source).code == 0
    with tempfile.TemporaryDirectory(dir=other) as mount_point:
        source.unlink()
        source.symlink_to(mount_point)
        run = dg(home, "backup", source)
        clean(run)
        assert run.code == 23, run.err
        assert f"cannot read {source}: empty, and on another file system" in run.err
        listed = dg(home, "--json", "ls", "2").json["entries"]
        assert str(source / "photo.jpg") in {e["path"] for e in listed}  # kept, not deleted
    source.unlink()
    source.symlink_to(disk)  # the disk is back
    assert dg(home, "backup", source).code == 0
    (disk / "photo.jpg").unlink()  # emptied where it is: recorded as it is
    assert dg(home, "backup", source).code == 0
    listed = dg(home, "--json", "ls", "4").json["entries"]
    assert str(source / "photo.jpg") not in {e["path"] for e in listed}


def test_a_disk_mounted_inside_a_source_and_not_mounted_tonight_keeps_its_entries(
    tmp_path: Path, home: Path
) -> None:
    """`backup ~` with a USB disk mounted at ~/usb one night and not the next: its mount point
    is an empty directory on the home's file system. A real tmpfs mount (skipped where this
    process may not mount)."""
    src, mount_point = tmp_path / "src", tmp_path / "src" / "usb"
    mount_point.mkdir(parents=True)
    (src / "notes.txt").write_text("on the home's disk\n")
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(mount_point)]).returncode != 0:
        pytest.skip("needs to mount a tmpfs")
    try:
        (mount_point / "photo.jpg").write_bytes(b"jpeg")
        settle(src)
        assert dg(home, "backup", src).code == 0
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    run = dg(home, "backup", src)
    clean(run)
    assert run.code == 23, run.err
    assert f"cannot read {mount_point}: empty, and on another file system" in run.err
    listed = {e["path"] for e in dg(home, "--json", "ls", "2").json["entries"]}
    assert {str(mount_point), str(mount_point / "photo.jpg"), str(src / "notes.txt")} <= listed


def test_every_source_missing_commits_nothing(tmp_path: Path, home: Path, src: Path) -> None:
    assert dg(home, "backup", src).code == 0
    gone = [tmp_path / "gone1", tmp_path / "gone2"]
    one_error(dg(home, "backup", *gone), 2, f"no source found: {gone[0]}, {gone[1]}")
    one_error(dg(home, "scan", gone[0]), 2, f"source not found: {gone[0]}")
    assert snapshot_ids(home) == [1]


# --- 6. counts on the command line --------------------------------------------------------------


def test_forget_refuses_negative_and_explains_zero(home: Path, src: Path) -> None:
    for _ in range(3):
        (src / "a.txt").write_text(f"{time.time_ns()}\n")
        assert dg(home, "backup", src).code == 0
    one_error(dg(home, "forget", "--keep-last", "-3"), 2, "--keep-last", "0 or more, not -3")
    one_error(dg(home, "forget", "--keep-last", "0"), 2, "keep no snapshot", "1 or more")
    one_error(dg(home, "log", "--last", "0"), 2, "--last", "1 or more")
    assert snapshot_ids(home) == [1, 2, 3]


# --- 8. messages --------------------------------------------------------------------------------


SUMMARY = re.compile(
    r"^snapshot \d+: [\d,]+ files?; .+; read [\d.]+ \S+, uploaded [\d.]+ \S+ in [\d,]+ packs? "
    r"\+ [\d.]+ \S+ backupdb; took [\d.]+ s$"
)


def test_backup_and_upload_summaries_share_one_shape(tmp_path: Path, home: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "only.txt").write_text("x" * 5)
    settle(one)
    backup = dg(home, "backup", one)
    assert backup.out.splitlines()[-1].startswith("snapshot 1: 1 file; ")  # no "1 files"
    (one / "only.txt").write_text("y" * 9)
    assert dg(home, "scan", one).code == 0
    upload = dg(home, "upload")
    for run in (backup, upload):
        assert run.code == 0 and SUMMARY.match(run.out.splitlines()[-1]), run.out
    assert " of " not in backup.out  # "uploaded X of Y read" said X > Y for 5 bytes


def test_quiet_prints_nothing_but_errors(tmp_path: Path, home: Path, src: Path) -> None:
    for args in (["backup", src], ["restore", tmp_path / "t"], ["verify"], ["diff", "1", "1"]):
        run = dg(home, "-q", *args)
        assert run.code == 0 and run.err == "", run.err
        if args[0] != "diff":  # a listing's result is what it was asked for
            assert run.out == "", args
    assert (tmp_path / "t" / str(src / "a.txt").lstrip("/")).read_text() == "a\n"


def test_usage_errors_as_json_and_unknown_global_options_named(home: Path) -> None:
    run = dg(home, "--json", "ls", "--frobnicate")
    one_error(run, 2, "unrecognized arguments: --frobnicate")
    assert run.json == {"error": run.err.split("error: ", 1)[1].strip(), "exit_code": 2}
    run = dg(home, "--json", "forget", "--keep-last", "-3")
    assert run.code == 2 and "-3" in run.json["error"]
    run = dg(home, "--homee", "x", "backup")
    one_error(run, 2, "unknown option --homee (did you mean --home?)")
    assert "invalid choice" not in run.err
    assert not home.exists()


def test_every_command_help_has_an_example_and_every_argument_help() -> None:
    from deltagrid.cli import build_parser
    from deltagrid.commands import COMMANDS

    parser = build_parser()
    for name in COMMANDS:
        run = subprocess.run(
            [sys.executable, "-m", "deltagrid", name, "--help"], capture_output=True, text=True
        )
        assert run.returncode == 0 and "\nexamples:\n  deltagrid " in run.stdout, name
        with pytest.raises(SystemExit):  # loads the command's real parser, as a run does
            parser.parse_args([name, "--help"])
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if not action.option_strings:
                assert action.help, f"{name} {action.metavar or action.dest} has no help"


def test_a_closed_stdout_ends_listings_quietly(home: Path, src: Path) -> None:
    for i in range(300):
        (src / f"file-{i:04d}-with-a-longish-name.txt").write_text(str(i))
    assert dg(home, "backup", src).code == 0
    for args in (["ls"], ["--json", "ls"], ["snapshots"], ["log"], ["diff", "1", "1"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "deltagrid", "--home", str(home), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # `| head -0`: the reader is gone before the first line
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, (args, err)
        assert err == "", (args, err)


def test_ls_escapes_control_characters_unambiguously(tmp_path: Path, home: Path) -> None:
    tree = tmp_path / "odd"
    tree.mkdir()
    names = [b"new\nline", b"back\\slash", b"tab\there", b"latin\xff", b"plain"]
    for name in names:
        open(os.path.join(os.fsencode(tree), name), "wb").close()
    assert dg(home, "backup", tree).code == 0
    run = subprocess.run(  # bytes: a name that is not UTF-8 is printed as its own bytes
        [sys.executable, "-m", "deltagrid", "--home", home, "ls", "1", tree], capture_output=True
    )
    assert run.returncode == 0 and run.stderr == b""
    lines = run.stdout.decode("utf-8", "surrogateescape").splitlines()
    assert len(lines) == 1 + len(names)  # the directory and one line per entry
    shown = sorted(ln.rsplit(f"{tree}/", 1)[1] for ln in lines[1:])
    raw = os.fsdecode(b"latin\xff")  # a byte that is not UTF-8: printed as itself
    assert shown == sorted(["new\\nline", "back\\\\slash", "tab\\there", raw, "plain"])
    as_json = {e["path"] for e in dg(home, "--json", "ls", "1", tree).json["entries"]}
    assert os.fsdecode(os.fsencode(tree) + b"/new\nline") in as_json  # JSON: the name itself


def test_status_shows_the_queue_without_waiting_for_a_stopped_node(home: Path, src: Path) -> None:
    assert dg(home, "backup", src).code == 0
    with socket.socket() as s:  # a port nothing listens on: a stopped Tahoe node
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cap = "URI:MDMF:" + "a" * 26 + ":" + "b" * 52
    (home / "config.toml").write_text(f'store = "tahoe://127.0.0.1:{port}"\nstore_cap = "{cap}"\n')
    began = time.monotonic()
    run = dg(home, "status")
    assert time.monotonic() - began < 15  # a backup's retries would take over 30 s
    clean(run)
    assert run.code == 0
    assert run.out.startswith("queue: 0 entries, 0 B to read\n")
    assert f"store: tahoe://127.0.0.1:{port} (not checked: " in run.out
    assert "latest snapshot: 1 (recorded here; the store did not say)" in run.out


def test_log_keeps_long_paths_out_of_its_table(tmp_path: Path, home: Path, src: Path) -> None:
    deep = tmp_path / ("d" * 200) / ("e" * 200) / "unplugged"
    run = dg(home, "backup", src, deep)
    assert run.code == 23
    text = dg(home, "log")
    assert max(len(line) for line in text.out.splitlines()) < 300
    assert "…" in text.out
    assert dg(home, "--json", "log").json["runs"][0]["errors"][0]["path"] == str(deep)


def test_errors_name_the_users_path_not_a_repr_or_a_temporary() -> None:
    """A restore the file system refuses names the target as text, whatever its bytes, and
    never the temporary directory or staging tree it was writing into."""
    with unprivileged() as (work, dg_as):
        tree = work / "src"
        tree.mkdir()
        (tree / "f.txt").write_text("f\n")
        home = work / "home"
        assert dg_as(home, "backup", tree).code == 0
        locked = Path(os.fsdecode(os.path.join(os.fsencode(work), b"caf\xe9-ro")))
        locked.mkdir(mode=0o555)
        for args in (["restore", locked], ["restore", "--path", tree, "--into", locked / "m"]):
            run = dg_as(home, *args)
            line = one_error(run, 1, "Permission denied", str(locked))
            assert "b'" not in line and ".deltagrid-" not in line and ".tmp-" not in line, line
        assert list(locked.iterdir()) == []
