"""The real local Tahoe-LAFS grid the grid tests share: 1 introducer, 4 storage servers, 1 client.

Import `grid` and `healthy` into a test module to use them. Each module that imports a
session-scoped fixture gets a fixture definition of its own, so the grid itself is kept here: the
first module to ask starts it, every later one gets the same grid, and it stops at the session's
end.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltagrid.store.tahoe_grid import LocalGrid

needs_tahoe = pytest.mark.skipif(
    shutil.which("tahoe") is None and not (Path(sys.executable).parent / "tahoe").exists(),
    reason="the tahoe executable is not installed (pip install -e '.[test]' installs it)",
)

_running: list[LocalGrid] = []  # the session's one grid, once started


@pytest.fixture(scope="session")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGrid]:
    if _running:
        yield _running[0]
        return
    g = LocalGrid(tmp_path_factory.mktemp("grid"), tied=True)  # its nodes end with this run
    g.create(servers=4)
    g.start()
    _running.append(g)
    try:
        yield g
    finally:
        _running.clear()
        g.stop()


@pytest.fixture
def healthy(grid: LocalGrid) -> Iterator[LocalGrid]:
    """The grid with every node running, before and after the test."""
    grid.start()
    yield grid
    grid.start()
