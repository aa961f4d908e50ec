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
    "check": "grid health; renew leases, repair",
    "log": "the history of backup and maintenance runs",
    "report": "sizes, changes and runs, as text or HTML",
    "config": "show the effective settings",
    "schedule": "nightly backups: systemd timer or cron",
    "grid": "run a local Tahoe-LAFS grid for trying out",
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
