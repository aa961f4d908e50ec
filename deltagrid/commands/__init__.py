"""One module per command; each registers its parser and its run function.

COMMANDS names them, in `--help` order, with their one-line help: the CLI lists every command
but imports only the one that runs (importing them all was most of a run's start-up time).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from types import ModuleType

COMMANDS = {
    "init": "create the repository",
    "scan": "queue what changed since the last backup",
    "upload": "upload the queue and commit a snapshot",
    "backup": "scan, then upload: the nightly run",
    "snapshots": "list snapshots",
    "ls": "list the entries of a snapshot",
    "diff": "what changed between snapshots",
    "restore": "restore a snapshot under TARGET",
    "status": "queue and spool state",
    "verify": "check the store against the backupdb",
    "attach": "rebuild the backupdb from the store",
    "forget": "forget snapshots outside a policy",
    "prune": "drop what no kept snapshot needs",
    "compact": "rewrite long delta chains as keyframes",
    "repair": "store again what damage broke, from the sources",
    "check": "grid health; renew leases, repair",
    "log": "the history of backup and maintenance runs",
    "report": "sizes, changes and runs, as text or HTML",
    "config": "show the effective settings",
    "schedule": "nightly backups: systemd timer or cron",
    "grid": "run a local Tahoe-LAFS grid for trying out",
}

# What `deltagrid COMMAND --help` ends with: an example or two to copy.
EXAMPLES = {
    "init": "deltagrid init\ndeltagrid --home ~/g init --store tahoe://127.0.0.1:3456",
    "scan": "deltagrid scan ~/docs\ndeltagrid -v scan   # the `sources` of config.toml",
    "upload": "deltagrid scan ~/docs && deltagrid upload",
    "backup": "deltagrid backup ~/docs\ndeltagrid backup --exclude '*.tmp' ~/docs ~/src",
    "snapshots": "deltagrid snapshots\ndeltagrid --json snapshots",
    "ls": "deltagrid ls                       # the latest snapshot\n"
    "deltagrid ls 3 ~/docs/report.odt",
    "diff": "deltagrid diff 3 4",
    "restore": "deltagrid restore /tmp/r          # the latest, under /tmp/r/home/me/...\n"
    "deltagrid restore --at 2d --path ~/docs/thesis /tmp/r\n"
    "deltagrid restore --path ~/docs --into /srv/mirror --swap",
    "status": "deltagrid status",
    "verify": "deltagrid verify\ndeltagrid verify --read-data --subset 10%",
    "repair": "deltagrid verify --read-data && deltagrid repair\n"
    "deltagrid repair   # a store that lost objects: upload again what the sources hold",
    "attach": "deltagrid attach                   # rebuild this home's backupdb\n"
    "deltagrid --home ~/new attach --store tahoe://127.0.0.1:3456 --cap URI:MDMF:...",
    "forget": "deltagrid forget --keep-daily 7 --keep-weekly 4 --dry-run\n"
    "deltagrid forget && deltagrid prune",
    "prune": "deltagrid prune --dry-run",
    "compact": "deltagrid compact --max-chain 4",
    "check": "deltagrid check",
    "log": "deltagrid log --last 5\ndeltagrid --json log",
    "report": "deltagrid report\ndeltagrid report --html report.html",
    "config": "deltagrid config show\ndeltagrid config path",
    "schedule": "deltagrid schedule --at 02:30 --install\ndeltagrid schedule --cron --install",
    "grid": "deltagrid grid start ~/grid\ndeltagrid grid stop ~/grid",
}


def load(name: str) -> ModuleType:
    """The module of command `name`, imported now."""
    return importlib.import_module(f"deltagrid.commands.{name}")


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `low` (and at most `high`), so that
    `--keep-last -3` is refused on the command line as config.toml refuses it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text}") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"takes {span}, not {text}")
        return value

    return parse


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"takes a number from 0 to 1, not {text}")
    return value
