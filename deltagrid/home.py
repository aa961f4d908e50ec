"""The home: config, local backupdb, signature cache, spool and (by default) the store itself.

HOME/config.toml        store URL and settings (mode 0600: a Tahoe writecap lives here)
HOME/backupdb.sqlite    the backupdb (WAL)
HOME/sigs/              librsync signatures of live contents, by content hash
HOME/spool/             the pack being filled
HOME/state/             signature of the last uploaded backupdb export
HOME/store/             the embedded file:// store, when init is given no --store
HOME/lock               held by the one process that may write
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
from sqlalchemy import Connection, Engine

from backupdb import db
from deltagrid.errors import Locked, NotInitialised, UsageError
from store import Store, open_store
from store.filestore import atomic_write
from uploader.commit import published_snapshot
from uploader.settings import UploadSettings
from uploader.sigcache import SigCache


def default_home() -> Path:
    env = os.environ.get("DELTAGRID_HOME")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "deltagrid"


@dataclass
class Config:
    store: str
    cap: str | None = None  # a Tahoe store's root capability (a writecap lets backups run)
    upload: UploadSettings = field(default_factory=UploadSettings)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class Home:
    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.config_path = self.path / "config.toml"
        self.db_path = self.path / "backupdb.sqlite"
        self.spool = self.path / "spool"
        self.state = self.path / "state"
        self.sigcache = SigCache(self.path / "sigs")

    def initialised(self) -> bool:
        return self.config_path.exists()

    def default_store_url(self) -> str:
        return "file://" + str(self.path / "store")

    def config(self) -> Config:
        if not self.initialised():
            raise NotInitialised(
                f"no deltagrid repository in {self.path} "
                "(run 'deltagrid init' or 'deltagrid backup')"
            )
        try:
            doc = tomllib.loads(self.config_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{self.config_path}: {exc}") from None
        store, cap = doc.get("store"), doc.get("store_cap")
        if not isinstance(store, str):
            raise UsageError(f"{self.config_path}: 'store' must be a URL string")
        if cap is not None and not isinstance(cap, str):
            raise UsageError(f"{self.config_path}: 'store_cap' must be a string")
        try:
            upload = UploadSettings.from_mapping(doc.get("upload", {}))
        except KeyError as exc:
            raise UsageError(f"{self.config_path}: unknown key upload.{exc.args[0]}") from None
        except TypeError as exc:
            raise UsageError(f"{self.config_path}: [upload] {exc}") from None
        return Config(store, cap, upload)

    def write_config(self, store_url: str, cap: str | None = None) -> None:
        """Write the config, mode 0600: it may hold a capability that grants writing."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = f"store = {_toml_string(store_url)}\n"
        if cap:
            text += f"store_cap = {_toml_string(cap)}\n"
        atomic_write(self.config_path, text.encode(), 0o600)

    def create_db(self) -> Engine:
        return db.create(self.db_path)

    def engine(self, writer: bool = True) -> Engine:
        self.config()
        return db.open_db(self.db_path, writer)

    def store(self) -> Store:
        config = self.config()
        return open_store(config.store, cap=config.cap)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the home's write lock; a second writer fails at once with a clear message."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Locked(f"another deltagrid process is writing to {self.path}") from None
            yield
        finally:
            os.close(fd)


@contextmanager
def reading(home: Home) -> Iterator[tuple[Connection, Store, int]]:
    """A read-only view for snapshots/ls/restore/verify: connection, store, published snapshot."""
    engine = home.engine(writer=False)
    store = home.store()
    try:
        published = published_snapshot(store)
        with engine.connect() as conn:
            yield conn, store, published
    finally:
        store.close()
        engine.dispose()
