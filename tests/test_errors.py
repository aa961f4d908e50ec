"""User mistakes and damaged repositories: one clear line on stderr, the right exit, no traceback.

Also: `verify` names damage in the store, and `restore` never writes outside its target.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from deltagrid.backupdb import db, queries
from tests.helpers import describe, dg, one_error, restored_root


@pytest.fixture
def repo(tmp_path: Path, cli) -> Path:
    """A home with one snapshot of a small tree; returns the tree."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    assert cli("backup", src).code == 0
    return src


# --- the command line ---------------------------------------------------------------------------


def test_missing_source_is_a_usage_error_and_creates_nothing(tmp_path: Path, home: Path) -> None:
    run = dg(home, "backup", tmp_path / "nowhere")
    one_error(run, 2, f"source not found: {tmp_path / 'nowhere'}")
    assert not home.exists()


def test_missing_source_among_others_in_scan(tmp_path: Path, cli, repo: Path) -> None:
    run = cli("scan", repo, tmp_path / "nowhere")  # the others are scanned: exit 23, as rsync
    assert run.code == 23
    assert f"cannot read {tmp_path / 'nowhere'}: No such file or directory" in run.err
    one_error(cli("scan", tmp_path / "nowhere"), 2, "source not found")


def test_unknown_command_or_option_is_a_usage_error(home: Path, cli) -> None:
    one_error(dg(home, "frobnicate"), 2, "invalid choice: 'frobnicate'", "see 'deltagrid --help'")
    for args in (["backup", "--frobnicate", "x"], ["ls", "-z"], ["restore"], []):
        one_error(cli(*args), 2, "see 'deltagrid --help'")


@pytest.mark.parametrize(
    "args",
    [["upload"], ["ls"], ["restore", "TARGET"], ["snapshots"], ["status"], ["verify"]],
)
def test_uninitialised_home(tmp_path: Path, home: Path, cli, args: list[str]) -> None:
    args = [str(tmp_path / "t") if a == "TARGET" else a for a in args]
    one_error(cli(*args), 1, f"no deltagrid repository in {home}", "deltagrid init")
    assert not (home / "config.toml").exists()


def test_uninitialised_home_in_a_subprocess_and_as_json(home: Path) -> None:
    one_error(dg(home, "upload"), 1, "no deltagrid repository")
    run = dg(home, "--json", "ls")
    one_error(run, 1, "no deltagrid repository")
    assert run.json == {"error": run.err.split("error: ", 1)[1].strip(), "exit_code": 1}


@pytest.mark.parametrize(
    ("url", "message"),
    [("s3://bucket/backups", "unknown store URL"), ("file:relative/dir", "absolute path")],
)
def test_bad_store_url_on_init(home: Path, url: str, message: str) -> None:
    one_error(dg(home, "init", "--store", url), 2, message)
    assert not (home / "config.toml").exists()


def test_init_twice(cli) -> None:
    assert cli("init").code == 0
    one_error(cli("init"), 1, "already holds a deltagrid repository")


def test_bad_restore_time(tmp_path: Path, cli, repo: Path) -> None:
    for at in ("next tuesday", "3x", "2026-13-45"):
        one_error(cli("restore", "--at", at, tmp_path / "t"), 2, f"cannot read time {at!r}")
    one_error(cli("restore", "--at", "2001-01-01", tmp_path / "t"), 1, "no snapshot was committed")
    one_error(cli("restore", "--snapshot", "99", tmp_path / "t"), 2, "no snapshot 99")
    assert not (tmp_path / "t").exists()


def test_bad_excludes(tmp_path: Path, cli, repo: Path) -> None:
    one_error(cli("scan", "--exclude-from", tmp_path / "none", repo), 2, "cannot read exclude")
    one_error(cli("scan", "--exclude", "/", repo), 2, "empty exclude pattern")


def test_a_second_writer_is_refused(home: Path, cli, repo: Path) -> None:
    fd = os.open(home / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        one_error(dg(home, "backup", repo), 75, "another deltagrid process is writing")
    finally:
        os.close(fd)
    assert dg(home, "backup", repo).code == 0


# --- a damaged home -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        'store = "file:///x\n',  # not TOML
        "store = 5\n",
        "[upload]\npack_size = 1\n",  # no store at all
        "STORE\n[upload]\nfrobs = 1\n",
        'STORE\n[upload]\npack_size = "big"\n',
        "STORE\n[upload]\npiece_size = 0\n",
        "STORE\n[upload]\nmax_chain = 2.5\n",
    ],
)
def test_malformed_config_names_the_file(home: Path, cli, repo: Path, config: str) -> None:
    store = f'store = "file://{home / "store"}"'
    (home / "config.toml").write_text(config.replace("STORE", store))
    for args in (["backup", repo], ["ls"]):
        one_error(cli(*args), 2, str(home / "config.toml"))


def _damage_an_index(path: Path) -> bytes:
    """The backupdb with the root page of its paths index overwritten: opening the database and
    reading the schema still work, the first lookup of a path does not."""
    conn = sqlite3.connect(path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        sql = "SELECT rootpage FROM sqlite_master WHERE name = 'paths_by_path'"
        (root,) = conn.execute(sql).fetchone()
    finally:
        conn.close()
    data = path.read_bytes()
    start = (root - 1) * page_size
    return data[:start] + b"\xff" * page_size + data[start + page_size :]


def _unreadable_table_name(data: bytes) -> bytes:
    """The backupdb with a byte of a table's name in the schema made one that is not UTF-8:
    SQLite quotes the name in its error, which the sqlite3 module cannot decode."""
    at = data.index(b"tablepathspaths") + len(b"tablep")
    return data[:at] + b"\x80" + data[at + 1 :]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "index-page", "table-name"])
def test_corrupt_backupdb_points_to_attach(home: Path, cli, repo: Path, damage: str) -> None:
    path = home / "backupdb.sqlite"
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    data = path.read_bytes()
    damaged = {
        "garbage": lambda: os.urandom(len(data)),
        "truncated": lambda: data[:5000],
        "empty": lambda: b"",
        "index-page": lambda: _damage_an_index(path),  # the rest of the file is fine
        "table-name": lambda: _unreadable_table_name(data),
    }
    path.write_bytes(damaged[damage]())
    one_error(dg(home, "backup", repo), 1, f"backupdb {path}", "deltagrid attach")
    for args in (["upload"], ["ls"], ["restore", home / "t"], ["verify"], ["status"]):
        one_error(cli(*args), 1, f"backupdb {path}", "deltagrid attach")


def test_store_directory_removed(home: Path, cli, repo: Path) -> None:
    shutil.rmtree(home / "store")
    one_error(dg(home, "backup", repo), 1, f"no deltagrid store at {home / 'store'}")
    for args in (["upload"], ["ls"], ["restore", home / "t"], ["verify"]):
        one_error(cli(*args), 1, f"no deltagrid store at {home / 'store'}")


# --- verify -------------------------------------------------------------------------------------


@pytest.fixture
def packs(home: Path, cli, repo: Path) -> list[tuple[Path, int, int]]:
    """A second snapshot in small packs; each pack's file, and its first blob (offset, length)."""
    with open(home / "config.toml", "a") as f:
        f.write("\n[upload]\npack_size = 65536\npiece_size = 32768\n")
    (repo / "c.bin").write_bytes(os.urandom(300_000))
    assert cli("backup", repo).code == 0
    conn = sqlite3.connect(home / "backupdb.sqlite")
    try:
        rows = conn.execute(
            "SELECT p.ref, b.offset, b.length FROM packs p JOIN blobs b ON b.pack_id = p.id "
            "WHERE b.offset = (SELECT min(offset) FROM blobs WHERE pack_id = p.id) ORDER BY p.id"
        ).fetchall()
    finally:
        conn.close()
    assert len(rows) > 3
    return [(home / "store" / "objects" / ref[:2] / ref, off, n) for ref, off, n in rows]


def test_verify_a_clean_repository(cli, packs: list) -> None:
    for args in (["verify"], ["verify", "--read-data"]):
        run = cli(*args)
        assert run.code == 0, run.err
        assert run.err == ""
    assert cli("--json", "verify", "--read-data").json["problems"] == []


def test_verify_finds_a_missing_pack(cli, packs: list) -> None:
    pack = packs[-1][0]
    pack.unlink()
    run = cli("--json", "verify")
    assert run.code == 1
    assert [p["pack"] for p in run.json["problems"]] == [pack.name]
    assert "missing" in run.json["problems"][0]["error"]
    assert f"deltagrid: warning: damaged pack {pack.name}: object {pack.name} is missing" in run.err


def test_verify_finds_a_truncated_pack(cli, packs: list) -> None:
    pack = packs[1][0]
    size = pack.stat().st_size
    os.truncate(pack, size - 100)
    run = cli("verify")
    assert run.code == 1
    assert f"damaged pack {pack.name}: size {size - 100}, expected {size}" in run.err
    assert cli("verify", "--read-data").code == 1


def test_verify_read_data_finds_a_flipped_byte_and_restore_names_the_file(
    tmp_path: Path, cli, repo: Path, packs: list
) -> None:
    pack, offset, length = packs[0]
    data = bytearray(pack.read_bytes())
    data[offset + length // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    run = cli("--json", "verify", "--read-data")
    assert run.code == 1
    assert len(run.json["problems"]) >= 1
    problem = run.json["problems"][0]
    assert "content" in problem and problem["snapshots"]
    assert "does not match" in problem["error"] or "does not decompress" in problem["error"]
    assert problem["paths"] and all(p.startswith(str(repo)) for p in problem["paths"])
    assert f"deltagrid: warning: damaged {problem['paths'][0]}" in run.err

    # Restore names the damaged file, restores every other one, and exits 1.
    restore = cli("--json", "restore", tmp_path / "t")
    assert restore.code == 1
    damaged = [e["path"] for e in restore.json["errors"]]
    assert damaged and all(p.startswith(str(repo)) for p in damaged)
    assert f"deltagrid: warning: cannot restore {damaged[0]}" in restore.err
    restored = describe(restored_root(tmp_path / "t", repo))
    expected = describe(repo)
    for path in damaged:
        del expected[os.fsencode(os.path.relpath(path, repo))]
    assert {k: v for k, v in restored.items() if v[0] == "f"} == {
        k: v for k, v in expected.items() if v[0] == "f"
    }


# --- restore stays inside its target ------------------------------------------------------------


def _add_versions(home: Path, like: Path, rows: dict[bytes, dict]) -> None:
    """Add versions to the latest snapshot directly in the backupdb, copying `like`'s version."""
    engine = db.open_db(home / "backupdb.sqlite")
    try:
        with engine.begin() as conn:
            template = queries.live_version(conn, os.fsencode(like))
            assert template is not None
            snapshot = queries.last_snapshot_id(conn)
            for path, changes in rows.items():
                columns = {c: getattr(template, c) for c in _COLUMNS} | changes
                content = template.content_id if columns["kind"] == "f" else None
                path_id = queries.ensure_path(conn, path)
                queries.add_version(conn, path_id, snapshot, columns, content, False)
    finally:
        engine.dispose()


def assert_untouched(path: Path, before: os.stat_result) -> None:
    after = os.stat(path)
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_mode,
        before.st_uid,
        before.st_gid,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )


_COLUMNS = ("kind", "mode", "uid", "gid", "size", "mtime_ns", "ctime_ns", "inode", "dev", "nlink")
_COLUMNS += ("target",)


def test_restore_refuses_dot_dot_paths_from_the_backupdb(
    tmp_path: Path, home: Path, cli, repo: Path
) -> None:
    target = tmp_path / "deep" / "target"
    evil = [b"/../../escape-1.txt", os.fsencode(repo) + b"/../../../../../../escape-2.txt"]
    evil.append(b"/a/./escape-3.txt")
    _add_versions(home, repo / "a.txt", dict.fromkeys(evil, {}))
    run = cli("--json", "restore", target)
    assert run.code == 1
    errors = {os.fsencode(e["path"]): e["error"] for e in run.json["errors"]}
    assert errors == dict.fromkeys(evil, "path has an empty, '.' or '..' component")
    for path in evil:
        assert f"cannot restore {os.fsdecode(path)}" in run.err
        assert not os.path.lexists(os.path.normpath(os.fsencode(target) + path))
    assert list(tmp_path.rglob("escape-*")) == []
    # Everything else is restored.
    assert describe(restored_root(target, repo)) == describe(repo)


def test_restore_does_not_follow_a_symlink_already_in_the_target(
    tmp_path: Path, cli, repo: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    first = Path(str(repo.absolute())).parts[1]  # e.g. "tmp": the top of the restored tree
    target.mkdir()
    (target / first).symlink_to(outside)
    before = os.stat(outside)
    run = cli("--json", "restore", target)
    assert run.code == 1
    assert {e["path"] for e in run.json["errors"]} == {
        str(p) for p in (repo, repo / "a.txt", repo / "sub", repo / "sub" / "b.bin")
    }
    assert all("is in the way and not a directory" in e["error"] for e in run.json["errors"])
    assert list(outside.iterdir()) == []
    assert_untouched(outside, before)


def test_restore_leaves_a_directory_where_a_file_goes_and_names_it(
    tmp_path: Path, cli, repo: Path
) -> None:
    target = tmp_path / "target"
    in_the_way = restored_root(target, repo) / "a.txt" / "kept"
    in_the_way.mkdir(parents=True)
    run = cli("--json", "restore", "--overwrite", "always", target)
    assert run.code == 1
    assert [e["path"] for e in run.json["errors"]] == [str(repo / "a.txt")]
    assert "is a directory in the way" in run.json["errors"][0]["error"]
    assert in_the_way.is_dir()
    restored = restored_root(target, repo)
    assert (restored / "sub" / "b.bin").read_bytes() == (repo / "sub" / "b.bin").read_bytes()
    assert list(target.rglob(".deltagrid-*")) == []


def test_restore_does_not_follow_a_symlink_below_the_top(tmp_path: Path, cli, repo: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("not yours\n")
    target = tmp_path / "target"
    root = restored_root(target, repo)
    root.mkdir(parents=True)
    (root / "sub").symlink_to(outside)  # a directory's place
    (root / "a.txt").symlink_to(outside / "victim.txt")  # a file's place
    os.chmod(outside, 0o751)
    before, victim = os.stat(outside), os.stat(outside / "victim.txt")
    kept = cli("--json", "restore", target)  # --overwrite never: both links kept as they are
    assert kept.code == 0, kept.err
    assert sorted(kept.json["kept"]) == [str(root / "a.txt"), str(root / "sub")]
    assert kept.json["not_restored_below_kept"] == 1  # sub/b.bin
    assert (root / "a.txt").is_symlink() and (root / "sub").is_symlink()
    run = cli("--json", "restore", "--overwrite", "always", target)  # replaced, not followed
    assert run.code == 0, run.err
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert (outside / "victim.txt").read_text() == "not yours\n"
    assert_untouched(outside, before)  # not even the restored directory's mode or times
    assert_untouched(outside / "victim.txt", victim)
    assert not (root / "a.txt").is_symlink()
    assert (root / "a.txt").read_text() == "a\n"
    assert not (root / "sub").is_symlink()
    assert (root / "sub" / "b.bin").read_bytes() == (repo / "sub" / "b.bin").read_bytes()


def test_restore_puts_no_file_through_a_symlink_of_the_same_snapshot(
    tmp_path: Path, home: Path, cli, repo: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    base = os.fsencode(repo)
    _add_versions(
        home,
        repo / "a.txt",
        {
            base + b"/d": {"kind": "l", "target": os.fsencode(outside), "size": 0},
            base + b"/d/evil.txt": {},
        },
    )
    target = tmp_path / "target"
    run = cli("--json", "restore", target)
    assert run.code == 1
    assert [e["path"] for e in run.json["errors"]] == [str(repo / "d")]
    assert list(outside.iterdir()) == []
    restored = restored_root(target, repo)
    assert (restored / "d").is_dir() and not (restored / "d").is_symlink()
    assert (restored / "d" / "evil.txt").read_text() == "a\n"


@pytest.mark.parametrize("btree", ["versions", "paths", "paths_by_parent", "contents_by_hash_key"])
def test_backup_on_a_damaged_backupdb_fails_in_one_line_and_commits_nothing(
    tmp_path: Path, home: Path, btree: str
) -> None:
    """The page-level check runs beside the scan: whether the scan's own queries meet the
    damage first or the check finds it, the run fails with the check's line, before anything
    is uploaded or committed. The damage: the root page of a table or index, overwritten."""
    src = tmp_path / "src"
    for i in range(300):
        (src / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 7}" / f"f{i}").write_text(f"file {i}\n" * (i % 13))
    assert dg(home, "backup", src).code == 0
    (src / "d0" / "new").write_text("a change for the next night\n")
    db_file = home / "backupdb.sqlite"
    with closing(sqlite3.connect(db_file)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root_page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (btree,))
    with open(db_file, "r+b") as f:
        f.seek((root_page[0] - 1) * page_size)
        f.write(os.urandom(page_size))
    root = (home / "store" / "root.json").read_bytes()
    objects = sorted((home / "store").rglob("*"))
    one_error(dg(home, "backup", src), 1, str(db_file), "is damaged", "deltagrid attach")
    assert (home / "store" / "root.json").read_bytes() == root
    assert sorted((home / "store").rglob("*")) == objects  # nothing uploaded
