"""One module per command; each registers its parser and its run function.

COMMANDS names them, in `--help` order, with their one-line help: the CLI lists every command
but imports only the one that runs (importing them all was most of a run's start-up time).
"""

from __future__ import annotations

import importlib
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


def load(name: str) -> ModuleType:
    """The module of command `name`, imported now."""
    return importlib.import_module(f"deltagrid.commands.{name}")
