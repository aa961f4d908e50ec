"""Nightly backups and weekly maintenance, as systemd user units or a crontab block.

Two jobs: `backup` every night at a given time, and `forget` (the config's [retention]) then
`prune` once a week, an hour later; on a Tahoe grid the weekly job then renews the leases of
every live object (`check --renew-leases`), so a grid that collects garbage keeps them. Both
name the deltagrid executable and the home by absolute path, and pass `--wait`, so a job that
starts while the other still runs waits for the home's lock instead of failing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from deltagrid.floor.errors import UsageError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
BACKUP_WAIT = 3600  # a backup waits this long for a running prune
MAINTENANCE_WAIT = 4 * 3600  # forget/prune wait this long for a running backup
UNITS = (
    "deltagrid-backup.service",
    "deltagrid-backup.timer",
    "deltagrid-maintenance.service",
    "deltagrid-maintenance.timer",
)
TIMERS = ("deltagrid-backup.timer", "deltagrid-maintenance.timer")


@dataclass(frozen=True)
class Schedule:
    hour: int
    minute: int
    weekday: int  # 0 = Monday: the day of the weekly forget + prune
    program: tuple[str, ...]  # how to run deltagrid: an absolute path, or python -m deltagrid
    home: Path
    renew_leases: bool = False  # a Tahoe store: its objects' leases run out unless renewed

    def command(self, wait: int, *args: str) -> list[str]:
        return [*self.program, "--home", str(self.home), "--wait", str(wait), *args]

    def weekly(self, *quiet: str) -> list[list[str]]:
        """The weekly job's commands, in order."""
        steps = [["forget"], ["prune"]] + (
            [["check", "--renew-leases"]] if self.renew_leases else []
        )
        return [self.command(MAINTENANCE_WAIT, *quiet, *step) for step in steps]

    @property
    def maintenance(self) -> tuple[int, int, int]:
        """(weekday, hour, minute) of the weekly job: an hour after that day's backup."""
        total = self.hour * 60 + self.minute + 60
        return (self.weekday + total // 1440) % 7, total % 1440 // 60, total % 60


def parse_time(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise UsageError(f"--at takes a time of day like 02:30, not {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_day(text: str) -> int:
    """0 for mon/Monday ... 6 for sun/Sunday."""
    key = text.strip().lower()
    for i, day in enumerate(FULL_DAYS):
        if len(key) >= 3 and day.startswith(key):
            return i
    raise UsageError(f"--weekly takes a day like Sun or monday, not {text!r}")


def program() -> tuple[str, ...]:
    """The absolute command that runs this deltagrid: the script we were started as, this
    interpreter with `-m deltagrid` when started so, else the deltagrid on PATH."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0).startswith("deltagrid") and os.path.isfile(argv0):
        return (os.path.abspath(argv0),)
    module = (os.path.abspath(sys.executable), "-m", "deltagrid")
    if argv0.endswith(os.path.join("deltagrid", "__main__.py")):
        return module
    found = shutil.which("deltagrid")
    return (os.path.abspath(found),) if found else module


# --- systemd ----------------------------------------------------------------------------------


def systemd_quote(args: list[str]) -> str:
    """A command line for ExecStart=: words with spaces or quotes in double quotes, `%` doubled
    (systemd expands %-specifiers), backslashes escaped."""
    words = []
    for arg in args:
        arg = arg.replace("%", "%%")
        if re.search(r"[\s\"'\\;$]", arg) or not arg:
            arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
        words.append(arg)
    return " ".join(words)


def systemd_units(s: Schedule) -> dict[str, str]:
    """File name -> contents of the four user units."""
    head = "# Written by 'deltagrid schedule'; run it again to change the times.\n"
    day, hour, minute = s.maintenance
    return {
        "deltagrid-backup.service": head
        + "[Unit]\n"
        + f"Description=deltagrid backup of the configured sources ({s.home})\n\n"
        + "[Service]\n"
        + "Type=oneshot\n"
        + f"ExecStart={systemd_quote(s.command(BACKUP_WAIT, 'backup'))}\n"
        + "# 24: some files vanished while being backed up; the snapshot is complete otherwise\n"
        + "SuccessExitStatus=24\n"
        + "Nice=10\n"
        + "IOSchedulingClass=idle\n",
        "deltagrid-backup.timer": head
        + "[Unit]\n"
        + f"Description=deltagrid backup every night at {s.hour:02d}:{s.minute:02d}\n\n"
        + "[Timer]\n"
        + f"OnCalendar=*-*-* {s.hour:02d}:{s.minute:02d}:00\n"
        + "# a night missed while the machine was off runs at the next boot\n"
        + "Persistent=true\n\n"
        + "[Install]\n"
        + "WantedBy=timers.target\n",
        "deltagrid-maintenance.service": head
        + "[Unit]\n"
        + f"Description=deltagrid {_weekly_words(s)} ({s.home})\n\n"
        + "[Service]\n"
        + "Type=oneshot\n"
        + "".join(f"ExecStart={systemd_quote(c)}\n" for c in s.weekly())
        + "Nice=10\n"
        + "IOSchedulingClass=idle\n",
        "deltagrid-maintenance.timer": head
        + "[Unit]\n"
        + f"Description=deltagrid forget and prune every {DAYS[day]} at {hour:02d}:{minute:02d}\n\n"
        + "[Timer]\n"
        + f"OnCalendar={DAYS[day]} *-*-* {hour:02d}:{minute:02d}:00\n"
        + "Persistent=true\n\n"
        + "[Install]\n"
        + "WantedBy=timers.target\n",
    }


def _weekly_words(s: Schedule) -> str:
    words = "forget (config.toml [retention]) and prune"
    return words + ", then renew leases" if s.renew_leases else words


def systemd_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(config) / "systemd" / "user"


SYSTEMCTL = (
    ["systemctl", "--user", "daemon-reload"],
    ["systemctl", "--user", "enable", "--now", *TIMERS],
)


# --- cron -------------------------------------------------------------------------------------


def cron_quote(args: list[str]) -> str:
    """A shell command line for a crontab: shell-quoted, `%` escaped (cron turns it into a
    newline)."""
    return " ".join(shlex.quote(a) for a in args).replace("%", "\\%")


def cron_markers(home: Path) -> tuple[str, str]:
    return f"# BEGIN deltagrid {home}", f"# END deltagrid {home}"


def crontab_block(s: Schedule) -> str:
    """The lines for `crontab`: quiet runs (-q), so cron mails only errors."""
    begin, end = cron_markers(s.home)
    day, hour, minute = s.maintenance
    cron_day = (day + 1) % 7  # cron counts from Sunday = 0
    weekly = " && ".join(cron_quote(c) for c in s.weekly("-q"))
    return (
        f"{begin} (written by 'deltagrid schedule --cron'; run it again to change)\n"
        f"{s.minute} {s.hour} * * * {cron_quote(s.command(BACKUP_WAIT, '-q', 'backup'))}\n"
        f"{minute} {hour} * * {cron_day} {weekly}\n"
        f"{end}\n"
    )


def merge_crontab(existing: str, block: str, home: Path) -> str:
    """`existing` crontab text with this home's block replaced (where it stood) or appended.

    Everything outside the markers is kept byte for byte, so merging twice changes nothing.
    """
    begin, end = cron_markers(home)
    lines = existing.splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if ln.startswith(begin + " ") or ln.strip() == begin]
    if not starts:
        text = existing
        if text and not text.endswith("\n"):
            text += "\n"
        return text + ("\n" if text.strip() else "") + block
    first = starts[0]
    stop = next((i for i in range(first, len(lines)) if lines[i].strip() == end), None)
    if stop is None:
        raise UsageError(f"the crontab has '{begin}' but no '{end}': fix it with 'crontab -e'")
    return "".join(lines[:first]) + block + "".join(lines[stop + 1 :])
