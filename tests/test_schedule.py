"""`deltagrid schedule`: systemd user units and a crontab block that run this deltagrid on this
home, installed without touching the real systemd or crontab (fake `systemctl` / `crontab`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deltagrid.floor.errors import UsageError
from deltagrid.scheduling import Schedule, crontab_block, merge_crontab
from tests.helpers import Run, one_error

DELTAGRID = Path(sys.executable).parent / "deltagrid"  # the console script of this venv


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    """The installed `deltagrid` script itself, so argv[0] is what the units must name."""
    proc = subprocess.run(
        [str(DELTAGRID), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def fake_bin(tmp_path: Path, name: str, script: str) -> Path:
    """A directory holding one executable `name`, to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\n" + script)
    (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.fixture
def configured(home: Path, tmp_path: Path) -> Path:
    home.mkdir()
    (home / "config.toml").write_text(
        f'sources = ["{tmp_path}"]\n[retention]\nkeep_daily = 7\nkeep_weekly = 4\n'
    )
    return home


def test_systemd_units_run_this_deltagrid_on_this_home(configured: Path) -> None:
    done = run(configured, "--json", "schedule", "--at", "02:30", "--systemd")
    assert done.code == 0, done.err
    assert done.err == ""  # sources and retention are configured: nothing to warn about
    units = done.json["units"]
    prefix = f"ExecStart={DELTAGRID} --home {configured} --wait "
    backup = units["deltagrid-backup.service"]
    assert f"{prefix}3600 backup\n" in backup
    assert "Type=oneshot" in backup and "SuccessExitStatus=24" in backup
    timer = units["deltagrid-backup.timer"]
    assert "OnCalendar=*-*-* 02:30:00" in timer and "Persistent=true" in timer
    assert "WantedBy=timers.target" in timer
    maintenance = units["deltagrid-maintenance.service"]
    forget = maintenance.index(f"{prefix}14400 forget\n")
    assert forget < maintenance.index(f"{prefix}14400 prune\n")  # forget first, then prune
    assert "OnCalendar=Sun *-*-* 03:30:00" in units["deltagrid-maintenance.timer"]
    text = run(configured, "schedule", "--at", "02:30")  # systemd is the default
    for name, body in units.items():
        assert name in text.out and body in text.out


def test_the_weekly_job_an_hour_after_a_late_backup_falls_on_the_next_day(home: Path) -> None:
    done = run(home, "--json", "schedule", "--at", "23:45", "--weekly", "saturday")
    assert "OnCalendar=*-*-* 23:45:00" in done.json["units"]["deltagrid-backup.timer"]
    assert "OnCalendar=Sun *-*-* 00:45:00" in done.json["units"]["deltagrid-maintenance.timer"]
    # without sources or retention the jobs would fail: schedule says so
    assert "no `sources`" in done.err and "no [retention]" in done.err


def test_paths_with_spaces_and_percent_signs_are_quoted(tmp_path: Path) -> None:
    home = tmp_path / "my 100% home"
    units = run(home, "--json", "schedule", "--systemd").json["units"]
    assert f'--home "{tmp_path}/my 100%% home" --wait' in units["deltagrid-backup.service"]
    block = run(home, "--json", "schedule", "--cron").json["crontab"]
    assert f"--home '{tmp_path}/my 100\\% home' --wait" in block


def test_systemd_install_writes_the_units_and_enables_the_timers(
    configured: Path, tmp_path: Path
) -> None:
    log = tmp_path / "systemctl.log"
    bin_dir = fake_bin(tmp_path, "systemctl", f'echo "$@" >> {log}\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    printed = run(configured, "--json", "schedule", "--at", "01:15", env=env).json["units"]
    for _ in range(2):  # installing again rewrites the same files
        done = run(configured, "--json", "schedule", "--at", "01:15", "--install", env=env)
        assert done.code == 0, done.err
        assert done.json["installed"] and done.json["enabled"]
    unit_dir = tmp_path / "xdg" / "systemd" / "user"
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(printed)
    for name, body in printed.items():
        assert (unit_dir / name).read_text() == body
    timers = "deltagrid-backup.timer deltagrid-maintenance.timer"
    assert log.read_text().splitlines() == 2 * [
        "--user daemon-reload",
        f"--user enable --now {timers}",
    ]


def test_systemd_install_without_systemctl_says_what_to_run(
    configured: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PATH": str(empty)}
    done = run(configured, "schedule", "--install", env=env)
    assert done.code == 0, done.err
    assert "systemctl --user daemon-reload && systemctl --user enable --now" in done.out
    assert (tmp_path / "xdg" / "systemd" / "user" / "deltagrid-backup.timer").exists()


def test_a_failing_systemctl_is_reported_and_the_units_stay(
    configured: Path, tmp_path: Path
) -> None:
    bin_dir = fake_bin(tmp_path, "systemctl", 'echo "Failed to connect to bus" >&2\nexit 1\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = run(configured, "schedule", "--install", env=env)
    assert done.code == 1
    assert "Failed to connect to bus" in done.err and "enable them with" in done.err
    assert (tmp_path / "xdg" / "systemd" / "user" / "deltagrid-backup.service").exists()


def test_the_crontab_block_is_quiet_and_runs_forget_then_prune(configured: Path) -> None:
    block = run(configured, "--json", "schedule", "--cron", "--at", "02:30").json["crontab"]
    lines = block.splitlines()
    assert lines[0].startswith(f"# BEGIN deltagrid {configured} ")
    assert lines[-1] == f"# END deltagrid {configured}"
    base = f"{DELTAGRID} --home {configured} --wait"
    assert lines[1] == f"30 2 * * * {base} 3600 -q backup"
    assert lines[2] == f"30 3 * * 0 {base} 14400 -q forget && {base} 14400 -q prune"


def _schedule(home: str, hour: int = 2) -> Schedule:
    return Schedule(hour, 30, 6, ("/opt/bin/deltagrid",), Path(home))


def test_merging_the_crontab_keeps_other_lines_and_is_idempotent() -> None:
    mine = "MAILTO=me@example.org\n# my jobs\n0 * * * * /usr/bin/fetchmail\n"
    block = crontab_block(_schedule("/h"))
    once = merge_crontab(mine, block, Path("/h"))
    assert once.startswith(mine) and once.count("# BEGIN deltagrid /h") == 1
    assert merge_crontab(once, block, Path("/h")) == once
    later = crontab_block(_schedule("/h", hour=4))
    moved = merge_crontab(once + "15 1 * * * /usr/bin/other\n", later, Path("/h"))
    assert moved == mine + "\n" + later + "15 1 * * * /usr/bin/other\n"  # replaced in place
    other_home = merge_crontab(moved, crontab_block(_schedule("/h2")), Path("/h2"))
    assert other_home.startswith(moved) and "# BEGIN deltagrid /h2 " in other_home
    assert merge_crontab("", block, Path("/h")) == block
    assert merge_crontab("0 1 * * * x", block, Path("/h")) == "0 1 * * * x\n\n" + block
    with pytest.raises(UsageError, match="no '# END deltagrid /h'"):
        merge_crontab(mine + "# BEGIN deltagrid /h (x)\n", block, Path("/h"))


def test_cron_install_merges_into_the_users_crontab(configured: Path, tmp_path: Path) -> None:
    table = tmp_path / "crontab.txt"
    script = (
        f'if [ "$1" = "-l" ]; then\n'
        f'  [ -f {table} ] || {{ echo "no crontab for $(id -un)" >&2; exit 1; }}\n'
        f"  cat {table}\n"
        f'elif [ "$1" = "-" ]; then cat > {table}\nelse exit 2; fi\n'
    )
    env = {"PATH": f"{fake_bin(tmp_path, 'crontab', script)}:{os.environ['PATH']}"}
    first = run(configured, "--json", "schedule", "--cron", "--install", env=env)
    assert first.code == 0, first.err
    assert first.json["changed"] and table.read_text() == first.json["crontab"]
    table.write_text("0 5 * * * /usr/bin/mine\n" + table.read_text())
    again = run(configured, "--json", "schedule", "--cron", "--install", env=env)
    assert again.code == 0 and not again.json["changed"]
    assert table.read_text() == "0 5 * * * /usr/bin/mine\n" + first.json["crontab"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--at", "25:00"], "--at takes a time of day"), (["--weekly", "caturday"], "--weekly")],
)
def test_bad_times_and_days_are_usage_errors(cli, args: list[str], fragment: str) -> None:
    one_error(cli("schedule", *args), 2, fragment)


def test_on_a_tahoe_grid_the_weekly_job_renews_leases_after_prune(home: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_text(
        'store = "tahoe://127.0.0.1:3456"\nstore_cap = "URI:MDMF:x:y"\n'
        "[retention]\nkeep_daily = 7\n"
    )
    base = f"{DELTAGRID} --home {home} --wait 14400"
    units = run(home, "--json", "schedule", "--at", "02:30").json["units"]
    maintenance = units["deltagrid-maintenance.service"]
    prune = maintenance.index(f"ExecStart={base} prune\n")
    assert maintenance.index(f"ExecStart={base} check --renew-leases\n") > prune
    assert "renew leases" in maintenance
    block = run(home, "--json", "schedule", "--cron", "--at", "02:30").json["crontab"]
    weekly = block.splitlines()[2]
    assert weekly.endswith(f"{base} -q prune && {base} -q check --renew-leases")


def test_on_a_file_store_the_weekly_job_renews_no_leases(configured: Path) -> None:
    units = run(configured, "--json", "schedule").json["units"]
    assert "renew" not in units["deltagrid-maintenance.service"]
