"""One module per command; each registers its parser and its run function."""

from deltagrid.commands import (
    attach,
    backup,
    check,
    compact,
    diff,
    forget,
    grid,
    init,
    ls,
    prune,
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
    forget,
    prune,
    compact,
    check,
    grid,
]
