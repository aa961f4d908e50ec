"""config.toml: configured sources, excludes and retention; what the command line overrides;
`config show`; one clear line naming the key and the line for every mistake in the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import deltagrid.commands.scan
from deltagrid.config import line_of, set_top_level
from deltagrid.scanner.beside import ScanBeside
from tests.helpers import dg, one_error


def tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "x.tmp").write_text("scratch\n")
    (root / "keep.tmp").write_text("kept anyway\n")
    (root / "b.log").write_text("log\n")
    (root / "sub" / "c.txt").write_text("c\n")
    return root


def listed(cli, root: Path, snapshot: str = "latest") -> set[str]:
    entries = cli("--json", "ls", snapshot).json["entries"]
    prefix = str(root) + "/"
    return {e["path"][len(prefix) :] for e in entries if e["path"].startswith(prefix)}


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text)
    return path


def test_backup_with_no_source_backs_up_the_configured_sources(
    tmp_path: Path, home: Path, cli
) -> None:
    docs, more = tree(tmp_path / "docs"), tree(tmp_path / "more")
    config = write_config(
        home,
        "# written by hand before the first backup\n"
        f'sources = ["{docs}", "{more}"]\n'
        'excludes = ["*.tmp"]\n\n'
        "[retention]\nkeep_last = 3\n",
    )
    run = cli("--json", "backup")
    assert run.code == 0, run.err
    assert set(run.json["scan"]["queued"]) and run.json["snapshot_id"] == 1
    assert listed(cli, docs) == {"a.txt", "b.log", "sub", "sub/c.txt"}
    assert listed(cli, more) == {"a.txt", "b.log", "sub", "sub/c.txt"}
    # The first backup created the repository and added the store, keeping every hand-made line.
    text = config.read_text()
    assert text.startswith("# written by hand before the first backup\n")
    assert f'store = "file://{home / "store"}"' in text
    assert 'excludes = ["*.tmp"]' in text and "[retention]\nkeep_last = 3" in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert cli("scan").code == 0  # scan alone uses them too


def test_sources_in_config_may_start_with_a_tilde(
    tmp_path: Path, home: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    tree(tmp_path / "docs")
    write_config(home, 'sources = ["~/docs"]\n')
    assert cli("backup").code == 0
    assert "a.txt" in listed(cli, tmp_path / "docs")


def test_no_source_and_none_configured_is_a_usage_error_that_creates_nothing(
    tmp_path: Path, home: Path, cli
) -> None:
    one_error(dg(home, "backup"), 2, "no SOURCE given and no `sources`", str(home / "config.toml"))
    assert not home.exists()
    assert cli("backup", tree(tmp_path / "docs")).code == 0
    one_error(cli("scan"), 2, "no SOURCE given")
    one_error(cli("backup"), 2, "no SOURCE given")


def test_a_missing_configured_source_is_named_with_the_config(
    tmp_path: Path, home: Path, cli
) -> None:
    write_config(home, f'sources = ["{tmp_path / "gone"}"]\n')
    one_error(cli("backup"), 2, f"source not found: {tmp_path / 'gone'}", "in `sources` of")
    assert not (home / "backupdb.sqlite").exists()


def test_source_arguments_replace_configured_sources_and_excludes_add_up(
    tmp_path: Path, home: Path, cli
) -> None:
    docs, other = tree(tmp_path / "docs"), tree(tmp_path / "other")
    write_config(home, f'sources = ["{docs}"]\nexcludes = ["*.tmp"]\n')
    run = cli("--json", "backup", other, "--exclude", "*.log", "--exclude", "!keep.tmp")
    assert run.code == 0, run.err
    assert listed(cli, docs) == set()  # the configured source was replaced, not added to
    # configured *.tmp, then --exclude *.log, then the re-include of keep.tmp (last match wins)
    assert listed(cli, other) == {"a.txt", "keep.tmp", "sub", "sub/c.txt"}


def test_one_file_system_comes_from_the_config_unless_the_command_line_says(
    tmp_path: Path, home: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tree(tmp_path / "docs")
    write_config(home, f'sources = ["{docs}"]\none_file_system = true\n')
    seen: list[bool] = []
    real = deltagrid.commands.scan.Scanner
    real_beside = ScanBeside.start

    def scanner(*args, **kwargs):
        seen.append(kwargs["one_file_system"])
        return real(*args, **kwargs)

    def beside(self, roots, options):  # a first backup scans in a process of its own
        seen.append(options["one_file_system"])
        return real_beside(self, roots, options)

    monkeypatch.setattr(deltagrid.commands.scan, "Scanner", scanner)
    monkeypatch.setattr(ScanBeside, "start", beside)
    for args in (["backup"], ["backup", "--no-one-file-system"], ["scan", "--one-file-system"]):
        assert cli(*args).code == 0
    assert seen == [True, False, True]


def test_forget_without_keep_options_uses_the_retention_table(
    tmp_path: Path, home: Path, cli
) -> None:
    docs = tree(tmp_path / "docs")
    for night in range(4):
        (docs / "a.txt").write_text(f"night {night}\n")
        assert cli("backup", docs).code == 0
    one_error(cli("forget"), 2, "at least one --keep-* option", "[retention]")
    with open(home / "config.toml", "a") as f:
        f.write("\n[retention]\nkeep_last = 3\n")
    dry = cli("--json", "forget", "--dry-run")
    assert dry.code == 0 and dry.json["forgotten"] == [1]
    # a --keep-* option replaces the whole table for this run
    assert cli("--json", "forget", "--dry-run", "--keep-last", "1").json["forgotten"] == [1, 2, 3]
    assert cli("--json", "forget").json["forgotten"] == [1]
    assert [s["id"] for s in cli("--json", "snapshots").json["snapshots"]] == [2, 3, 4]


def test_config_show_prints_the_effective_settings_with_secrets_masked(
    home: Path, cli, tmp_path: Path
) -> None:
    write_config(
        home,
        f'store = "file://{tmp_path / "store"}"\nstore_cap = "URI:MDMF:secretwrite:fingerprint"\n'
        'sources = ["~/docs"]\n[retention]\nkeep_daily = 7\nkeep_within = "2w"\n'
        '[upload]\npack_size = 65536\n[maintenance]\ndelete_after = "12h"\n',
    )
    text = cli("config", "show")
    assert text.code == 0, text.err
    assert "secretwrite" not in text.out and "URI:MDMF:******" in text.out
    assert "--show-secrets" in text.out
    assert f'sources = ["{os.path.expanduser("~/docs")}"]' in text.out
    assert "keep_daily = 7" in text.out and 'keep_within = "2w"' in text.out
    assert "pack_size = 65536" in text.out and "max_chain = 16" in text.out  # defaults filled in
    doc = cli("--json", "config", "show").json
    assert "secretwrite" not in doc["store_cap"]
    assert doc["retention"] == {"keep_daily": 7, "keep_within": "2w"}
    assert doc["upload"]["pack_size"] == 65536 and doc["upload"]["max_chain"] == 16
    assert doc["maintenance"] == {"delete_after": "12h"} and 'delete_after = "12h"' in text.out
    shown = cli("--json", "config", "show", "--show-secrets").json
    assert shown["store_cap"] == "URI:MDMF:secretwrite:fingerprint"
    assert cli("config", "path").out.strip() == str(home / "config.toml")


def test_config_show_on_a_new_home_shows_the_defaults(home: Path, cli) -> None:
    doc = cli("--json", "config", "show").json
    assert doc["initialised"] is False
    assert doc["store"] == f"file://{home / 'store'}"
    assert doc["sources"] == [] and doc["retention"] == {}
    assert doc["maintenance"] == {"delete_after": "1d"}
    assert not home.exists()


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [
        ('store = "file:///x\n', 1, ["not valid TOML", 'store = "file:///x']),
        ('\n\nsources = "/home"\n', 3, ["sources: must be a list of strings"]),
        ('sources = ["docs"]\n', 1, ["sources:", "'docs' is not an absolute path"]),
        ('excludes = ["*.o", "/"]\n', 1, ["excludes:", "empty exclude pattern"]),
        ('one_file_system = "yes"\n', 1, ["one_file_system: must be true or false"]),
        ("# comment\nfrobnicate = 1\n", 2, ["frobnicate: unknown key"]),
        ("[retention]\nkeep_last = 2\nkeep_daily = 'seven'\n", 3, ["retention.keep_daily"]),
        ("[retention]\nkeep_within = 'forever'\n", 2, ["retention.keep_within", "7d"]),
        ("[retention]\nkeep_yearly = -1\n", 2, ["retention.keep_yearly", "0 or more"]),
        ("[retention]\nkeep_hours = 3\n", 2, ["retention.keep_hours: unknown key"]),
        ("\n[upload]\nfrobs = 1\n", 3, ["upload.frobs: unknown key"]),
        ('[upload]\npack_size = "big"\n', 2, ["upload.pack_size: must be an integer"]),
        ("[upload]\n\npiece_size = 0\n", 3, ["upload.piece_size: must be from 4,096 to"]),
        ("retention = 5\n", 1, ["retention: must be a table"]),
        ("[maintenance]\ndelete_after = 'soon'\n", 2, ["maintenance.delete_after", "7d"]),
        ("[maintenance]\ndelete_after = 3\n", 2, ["maintenance.delete_after: must be a string"]),
        ("[maintenance]\nkeep = 1\n", 2, ["maintenance.keep: unknown key"]),
    ],
)
def test_a_mistake_in_the_config_names_the_key_and_the_line(
    home: Path, cli, tmp_path: Path, text: str, line: int, fragments: list[str]
) -> None:
    path = write_config(home, text)
    for args in (["backup", tmp_path], ["config", "show"], ["forget"]):
        one_error(cli(*args), 2, f"{path}, line {line}: ", *fragments)


def test_init_and_attach_keep_the_rest_of_the_config(tmp_path: Path, home: Path, cli) -> None:
    docs = tree(tmp_path / "docs")
    config = write_config(home, f'# mine\nsources = ["{docs}"]\n\n[retention]\nkeep_last = 5\n')
    assert cli("init").code == 0
    assert cli("backup").code == 0
    assert cli("attach").code == 0  # rewrites the store line
    text = config.read_text()
    assert text.count("store = ") == 1
    assert f'sources = ["{docs}"]' in text and "[retention]\nkeep_last = 5" in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert [s["id"] for s in cli("--json", "snapshots").json["snapshots"]] == [1]


def test_setting_top_level_keys_edits_only_their_lines() -> None:
    text = '# head\nstore = "old"\nsources = ["/a"]\n\n[upload]\nstore = "not top level"\n'
    edited = set_top_level(text, {"store": "file:///new", "store_cap": "URI:X"})
    assert edited == (
        '# head\nstore_cap = "URI:X"\nstore = "file:///new"\nsources = ["/a"]\n\n'
        '[upload]\nstore = "not top level"\n'
    )
    assert set_top_level(edited, {"store_cap": None}) == edited.replace('store_cap = "URI:X"\n', "")
    assert set_top_level("", {"store": 'we"ird\\'}) == 'store = "we\\"ird\\\\"\n'


def test_line_of_a_key_follows_table_headers() -> None:
    text = 'store = "x"\n[upload]\npack_size = 1\n[retention]\n  "keep_last" = 2\n'
    assert line_of(text, "store") == 1
    assert line_of(text, "upload.pack_size") == 3
    assert line_of(text, "retention.keep_last") == 5
    assert line_of(text, "retention.keep_daily") == 4  # not set: its table's line
    assert line_of(text, "sources") is None
