"""The spool (HOME/spool): where writers fill packs before putting them, and keep their work.

Writers hold the home's lock, so whatever carries a writer's prefix there when one starts was
left by a killed writer: its packs were never recorded and its work files are rebuilt. A reader's
work directory (verify --read-data rebuilds versions in one) has another prefix and stays.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from deltagrid.store.pack import LEVEL, PackWriter

PACK_PREFIX = "pack-"  # a pack being filled, by an upload or a maintenance run
WORK_PREFIX = "work-"  # an upload's private directory: signatures, deltas, copies of changing files
MAINTENANCE_PREFIX = "maint-"  # where a maintenance run rebuilds keyframes


def clear_leftovers(spool: Path) -> None:
    """Drop what killed writers left in the spool (creating it if need be)."""
    spool.mkdir(parents=True, exist_ok=True)
    for leftover in spool.iterdir():
        if leftover.name.startswith((WORK_PREFIX, MAINTENANCE_PREFIX)) and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.name.startswith(PACK_PREFIX) and leftover.is_file():
            leftover.unlink(missing_ok=True)


def new_pack(spool: Path, level: int = LEVEL) -> PackWriter:
    """An empty pack to fill, under a name the next writer's `clear_leftovers` knows."""
    fd, name = tempfile.mkstemp(dir=spool, prefix=PACK_PREFIX)
    os.close(fd)
    return PackWriter(Path(name), level)
