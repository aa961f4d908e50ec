"""Store backends behind one interface; `open_store` picks one from a URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from deltagrid.errors import UsageError
from store.base import Store
from store.filestore import FileStore

__all__ = ["Store", "FileStore", "open_store"]


def open_store(url: str, create: bool = False) -> Store:
    """Open the store named by `url` (`file:///abs/dir`)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(parsed.netloc + parsed.path) if parsed.netloc else Path(parsed.path)
        if not path.is_absolute():
            raise UsageError(f"a file:// store needs an absolute path: {url}")
        return FileStore(path, create=create)
    raise UsageError(f"unknown store URL {url!r} (expected file:///DIR)")
