"""One module per command; each registers its parser and its run function."""

from deltagrid.commands import (
    attach,
    backup,
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

COMMANDS = [init, scan, upload, backup, snapshots, ls, restore, status, verify, grid, attach]
