"""Store backends behind one interface; `open_store` picks one from a URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from deltagrid.floor.errors import UsageError
from deltagrid.store.base import Store
from deltagrid.store.filestore import FileStore

__all__ = ["Store", "FileStore", "open_store"]


def open_store(url: str, create: bool = False, cap: str | None = None) -> Store:
    """Open the store named by `url`: `file:///abs/dir`, or `tahoe://HOST:PORT` with `cap`, the
    capability of its root pointer."""
    parsed = urlparse(url)
    if parsed.scheme == "tahoe":
        if not parsed.hostname or not parsed.port or parsed.path not in ("", "/"):
            raise UsageError(f"a tahoe:// store is tahoe://HOST:PORT, not {url}")
        from deltagrid.store.tahoe import (
            TahoeStore,  # only here: it loads requests, a tenth of a second
        )

        return TahoeStore(f"http://{parsed.hostname}:{parsed.port}", cap)
    path = file_store_path(url)
    if path is not None:
        if not path.is_absolute():
            raise UsageError(f"a file:// store needs an absolute path: {url}")
        return FileStore(path, create=create)
    raise UsageError(f"unknown store URL {url!r} (expected file:///DIR or tahoe://HOST:PORT)")


def file_store_path(url: str) -> Path | None:
    """The directory of a `file://` store URL; None for any other."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(parsed.netloc + parsed.path) if parsed.netloc else Path(parsed.path)
