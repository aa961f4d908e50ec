"""One module per command; each registers its parser and its run function."""

from deltagrid.commands import (
    attach,
    backup,
    diff,
    grid,
    init,
    ls,
    restore,
    scan,
    snapshots,
    status,
    upload,
    verify,
)

COMMANDS = [
    init,
    scan,
    upload,
    backup,
    snapshots,
    ls,
    diff,
    restore,
    status,
    verify,
    attach,
    grid,
]
