"""`deltagrid schedule [--at HH:MM] [--weekly DAY] [--systemd | --cron] [--install]`.

Prints (or, with --install, installs) a nightly `backup` of the configured sources and a weekly
`forget` + `prune` (+ `check --renew-leases` on a Tahoe grid): systemd user units (the default)
or a crontab block. See docs/everyday.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess

from deltagrid.floor.errors import EXIT_ERROR, EXIT_OK, DeltagridError
from deltagrid.floor.fs import atomic_write
from deltagrid.home import Home
from deltagrid.output import Output
from deltagrid.scheduling import (
    SYSTEMCTL,
    Schedule,
    crontab_block,
    merge_crontab,
    parse_day,
    parse_time,
    program,
    systemd_dir,
    systemd_units,
)


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("schedule", parents=[common], help="nightly backups: systemd timer or cron")
    p.add_argument("--at", default="02:30", metavar="HH:MM", help="nightly backup time (02:30)")
    p.add_argument(
        "--weekly",
        default="Sun",
        metavar="DAY",
        help="day of the weekly forget + prune, an hour after the backup (Sun)",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--systemd", action="store_true", help="systemd user units (the default)")
    kind.add_argument("--cron", action="store_true", help="a crontab block")
    p.add_argument(
        "--install",
        action="store_true",
        help="write the units to ~/.config/systemd/user and enable the timers, or merge the "
        "block into your crontab",
    )
    p.set_defaults(run=run)


def _warn_about_config(home: Home, out: Output) -> None:
    settings = home.settings()
    if not settings.sources:
        out.warn(f"no `sources` in {home.config_path}: the nightly backup fails until you add some")
    if settings.retention.policy().empty():
        out.warn(
            f"no [retention] in {home.config_path}: the weekly forget fails (and prune does not "
            "run) until you add one"
        )


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    hour, minute = parse_time(args.at)
    tahoe = (home.settings().store or "").startswith("tahoe://")
    schedule = Schedule(hour, minute, parse_day(args.weekly), program(), home.path, tahoe)
    _warn_about_config(home, out)
    if args.cron:
        return _cron(schedule, args.install, out)
    return _systemd(schedule, args.install, out)


def _systemd(schedule: Schedule, install: bool, out: Output) -> int:
    units = systemd_units(schedule)
    where = systemd_dir()
    commands = " && ".join(" ".join(c) for c in SYSTEMCTL)
    doc: dict[str, object] = {"format": "systemd", "dir": str(where), "units": units}
    if not install:
        for name, text in units.items():
            out.line(f"# --- {where / name}")
            out.line(text)
        out.info(f"# install: deltagrid schedule --install  (writes these, then {commands})")
        out.document({**doc, "installed": False, "enabled": False})
        return EXIT_OK
    where.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        atomic_write(where / name, text.encode(), 0o644)
    out.info(f"wrote {', '.join(units)} to {where}")
    enabled, code = False, EXIT_OK
    if shutil.which("systemctl") is None:
        out.info(f"systemctl is not on PATH; on a systemd machine run: {commands}")
    else:
        for command in SYSTEMCTL:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                reason = (done.stderr or done.stdout).strip().splitlines()
                out.warn(f"{' '.join(command)} failed: {reason[-1] if reason else done.returncode}")
                out.warn(f"the units are written; enable them with: {commands}")
                code = EXIT_ERROR
                break
        else:
            enabled = True
            out.info(f"enabled {schedule.hour:02d}:{schedule.minute:02d} nightly backups")
            out.info("user timers run only while you are logged in, unless: loginctl enable-linger")
    out.document({**doc, "installed": True, "enabled": enabled})
    return code


def _cron(schedule: Schedule, install: bool, out: Output) -> int:
    block = crontab_block(schedule)
    doc: dict[str, object] = {"format": "cron", "crontab": block}
    if not install:
        out.line(block.rstrip("\n"))
        out.info("# install: deltagrid schedule --cron --install  (merges it into crontab -l)")
        out.document({**doc, "installed": False})
        return EXIT_OK
    if shutil.which("crontab") is None:
        raise DeltagridError("crontab is not on PATH; add the lines above with 'crontab -e'")
    listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    if listed.returncode != 0 and "no crontab" not in listed.stderr.lower():
        raise DeltagridError(f"crontab -l failed: {listed.stderr.strip()}")
    existing = listed.stdout if listed.returncode == 0 else ""
    merged = merge_crontab(existing, block, schedule.home)
    changed = merged != existing
    if changed:
        put = subprocess.run(["crontab", "-"], input=merged, capture_output=True, text=True)
        if put.returncode != 0:
            raise DeltagridError(f"crontab - failed: {put.stderr.strip()}")
    out.info("crontab updated" if changed else "crontab already holds this schedule")
    out.document({**doc, "installed": True, "changed": changed})
    return EXIT_OK
