"""The home: config, local backupdb, signature cache, spool and (by default) the store itself.

HOME/config.toml        store URL and settings (mode 0600: a Tahoe writecap lives here)
HOME/backupdb.sqlite    the backupdb (WAL)
HOME/sigs/              librsync signatures of live contents, by content hash
HOME/spool/             the pack being filled
HOME/state/             signature of the last uploaded backupdb export; the store id, generation
                        and snapshot of the root this home last wrote (store.json)
HOME/store/             the embedded file:// store, when init is given no --store
HOME/lock               held by the one process that may write; says which (pid, command)
HOME/readers            held shared by every reader while it reads; prune and compact take it
                        exclusively before they delete packs (see `reader` and `alone`)
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltagrid.config import Config, ConfigError, read, set_top_level
from deltagrid.floor.errors import DeltagridError, Locked, NotInitialised, UsageError, naming
from deltagrid.floor.fs import atomic_write
from deltagrid.floor.pools import shut_down
from deltagrid.floor.units import human_duration
from deltagrid.uploader.sigcache import SigCache

if TYPE_CHECKING:  # the backupdb and store modules pull in SQLAlchemy, requests...: imported
    from sqlalchemy import Connection, Engine  # where used, so a command loads only its own

    from deltagrid.store import Store


def default_home() -> Path:
    env = os.environ.get("DELTAGRID_HOME")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "deltagrid"


class Home:
    def __init__(self, path: Path, wait: float = 0.0, command: str = "deltagrid") -> None:
        self.path = path.absolute()
        self.config_path = self.path / "config.toml"
        self.db_path = self.path / "backupdb.sqlite"
        self.lock_path = self.path / "lock"
        self.readers_path = self.path / "readers"
        self.spool = self.path / "spool"
        self.state = self.path / "state"
        self.sigcache = SigCache(self.path / "sigs")
        self.wait = wait  # seconds lock() retries before giving up
        self.command = command  # what the lock file says holds it
        self.checked = False  # the backupdb passed its page-level check in this process

    def initialised(self) -> bool:
        """A repository exists: a backupdb beside a config naming its store, or a backupdb
        holding anything. A config.toml written by hand before the first backup (sources, even
        the store, as the README shows) is not one yet, nor is the empty backupdb a kill during
        `init` leaves before the config names the store: `init` (or a first `backup` or `scan`)
        creates it."""
        return (bool(self.settings().store) and self.db_path.exists()) or self._db_holds_anything()

    def _db_holds_anything(self) -> bool:
        """Whether the backupdb has a snapshot, a pack or a scan; one that does not open as an
        empty backupdb counts as holding something, so nothing replaces it."""
        if not self.db_path.exists():
            return False
        try:
            with closing(sqlite3.connect(self.db_path)) as conn:
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM snapshots) OR EXISTS (SELECT 1 FROM packs) "
                    "OR EXISTS (SELECT 1 FROM scans)"
                ).fetchone()
        except sqlite3.Error:
            return True
        return bool(row[0])

    def check_is_home(self) -> None:
        """Refuse to make a home in a folder that holds anything else: a repository written
        among the user's files would be backed up, moved or deleted with them. A home is a
        folder that is absent, empty, holds a config.toml or a backupdb, or only what a first
        run killed early leaves."""
        try:
            names = set(os.listdir(self.path))
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise UsageError(f"--home {self.path} is not a directory") from None
        own = {"lock", "spool", "sigs", "state", "store"}  # what a killed first run may leave
        if names - own and not names & {self.config_path.name, self.db_path.name}:
            raise UsageError(
                f"--home {self.path} is a folder with other files in it, not a deltagrid home; "
                "name a new or empty folder (--home or DELTAGRID_HOME)"
            )

    def own_dirs(self) -> list[Path]:
        """The folders deltagrid writes to that a backup must never hold: the home, and a
        file:// store wherever it lies."""
        from deltagrid.store import file_store_path  # no backend is loaded for this

        store = file_store_path(self.settings().store or self.default_store_url())
        return [self.path] + ([store] if store is not None and store.is_absolute() else [])

    def default_store_url(self) -> str:
        return "file://" + str(self.path / "store")

    def settings(self) -> Config:
        """Everything config.toml says, checked; the defaults when there is no file yet."""
        try:
            return read(self.config_path)
        except FileNotFoundError:
            return Config()

    def config(self) -> Config:
        """The settings of an initialised repository (a store is named)."""
        if not self.initialised():
            named = self.settings().store
            raise NotInitialised(
                f"no deltagrid repository in {self.path} "
                + (
                    f"yet, though config.toml names store {named} (run 'deltagrid backup' or "
                    "'deltagrid init' to create it, or 'deltagrid attach' if it holds backups)"
                    if named
                    else "(run 'deltagrid init' or 'deltagrid backup')"
                )
            )
        config = self.settings()
        if not config.store:
            raise ConfigError(f"{self.config_path}: store: missing (the URL of the store)")
        return config

    def write_config(self, store_url: str, cap: str | None = None) -> None:
        """Set the store (and capability) in config.toml, keeping every other line; mode 0600,
        as it may hold a capability that grants writing, and replaced atomically."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            text = self.config_path.read_text()
        except FileNotFoundError:
            text = ""
        text = set_top_level(text, {"store": store_url, "store_cap": cap})
        atomic_write(self.config_path, text.encode(), 0o600)

    def create_db(self) -> sqlite3.Connection:
        """A new, empty backupdb, made on plain sqlite3 (the first backup imports no SQLAlchemy)."""
        from deltagrid.backupdb import connection

        return connection.create(self.db_path)

    def engine(self, writer: bool = True) -> Engine:
        self.config()
        from deltagrid.backupdb import db

        return db.open_db(
            self.db_path, writer, check=self._check_once(), read_only=self.read_only()
        )

    def connect(self) -> sqlite3.Connection:
        """The backupdb on a plain sqlite3 connection: a night's scan, upload and commit, and
        restore's reads."""
        self.config()
        from deltagrid.backupdb import connection

        return connection.open_checked(
            self.db_path, check=self._check_once(), read_only=self.read_only()
        )

    def read_only(self) -> bool:
        """Whether this process cannot write the home (a read-only mount, recovery media, another
        user's home): its readers then open the backupdb read-only, and writers refuse."""
        if not self.path.is_dir():
            return False
        return not os.access(self.path, os.W_OK) or (
            self.db_path.exists() and not os.access(self.db_path, os.W_OK)
        )

    @contextmanager
    def checked_beside(self) -> Iterator[None]:
        """The page-level check on a thread of its own while the block runs (backup opens the
        store and scans meanwhile), awaited at its end: damage it finds fails the run there,
        before anything is uploaded or committed. A query of the block that fails on the
        damaged file is answered by the check's one-line error, not SQLite's."""
        if not self._check_once():
            yield
            return
        from deltagrid.backupdb import connection

        pool = ThreadPoolExecutor(1, thread_name_prefix="dg-check")
        checking = pool.submit(connection.check_pages, self.db_path)
        try:
            try:
                yield
            except connection.DAMAGE:
                checking.result()  # damage: its error instead
                raise
            checking.result()
        finally:
            shut_down(pool)

    def _check_once(self) -> bool:
        """The page-level check reads every page (seconds at a million files): once a run is
        enough, though `backup` opens the backupdb for its scan and again for its upload."""
        first, self.checked = not self.checked, True
        return first

    def store(self) -> Store:
        config = self.config()
        from deltagrid.store import open_store

        return open_store(config.store, cap=config.cap)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the home's write lock (flock: the kernel drops it when its holder dies, however).

        Another holder makes this wait up to `self.wait` seconds, then fail with `Locked` naming
        it. While held, the lock file says who holds it: pid, command, since when.
        """
        if self.read_only():
            raise DeltagridError(
                f"the home {self.path} is read-only: {self.command} writes to it (snapshots, "
                "ls, diff, restore, verify, log and report read it as it is)"
            )
        self.check_is_home()
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise Locked(self._locked_message()) from None
                    time.sleep(min(0.1, left))
            holder = {"pid": os.getpid(), "command": self.command, "since_ns": time.time_ns()}
            os.ftruncate(fd, 0)
            with naming(self.lock_path):
                os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # still ours: nobody reads a stale holder after us
        finally:
            os.close(fd)

    @contextmanager
    def reader(self) -> Iterator[None]:
        """Hold the readers' lock shared while reading, taken before the read transaction that
        pins the catalog: a prune that rewrote the catalog before it finds this reader and waits
        for it before deleting packs the reader's catalog names. Readers never wait for one
        another or for a writer (only a deleting step, which is short, holds it exclusively).
        A home this process cannot write to (another user's, read-only) is read without it."""
        fd = self._open_readers()
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _open_readers(self) -> int | None:
        try:
            return os.open(self.readers_path, os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError:
            try:
                return os.open(self.readers_path, os.O_RDONLY)
            except OSError:
                return None

    @contextmanager
    def alone(self, say: Callable[[str], None]) -> Iterator[bool]:
        """Hold the readers' lock exclusively, so no reader that began before now is still
        reading: True. With readers at it, wait up to `self.wait` seconds (saying so), then give
        up: False, and the caller leaves its deletions to a later run."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.readers_path, os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            yield self._take_exclusively(fd, say)
        finally:
            os.close(fd)

    def _take_exclusively(self, fd: int, say: Callable[[str], None]) -> bool:
        deadline = time.monotonic() + self.wait
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not said:
                    say(
                        f"waiting up to {human_duration(left)} for readers of {self.path} "
                        "(restore, verify, ls, diff...) to finish before deleting packs"
                    )
                    said = True
                time.sleep(min(0.1, left))

    def lock_holder(self) -> dict[str, Any] | None:
        """Who the lock file says holds the lock, if that process is still alive."""
        try:
            holder = json.loads(self.lock_path.read_text() or "null")
            pid = int(holder["pid"])
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a record left by a killed holder; the kernel released its lock
        except PermissionError:
            pass  # alive, another user's
        except (OSError, ValueError, TypeError, KeyError):
            return None
        try:  # a dead holder's pid may since have been given to another program
            if b"deltagrid" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        except OSError:
            pass  # no /proc here: trust the pid
        return holder

    def _locked_message(self) -> str:
        holder = self.lock_holder()
        who = ""
        if holder is not None:
            since = datetime.fromtimestamp(holder.get("since_ns", 0) / 1e9).astimezone()
            who = (
                f": held by pid {holder['pid']} ({holder.get('command', 'deltagrid')}) "
                f"since {since.isoformat(timespec='seconds')}"
            )
        waited = f" (waited {self.wait:g} s)" if self.wait else ""
        return (
            f"another deltagrid process is writing to {self.path}{who}{waited}; "
            "try again later, or pass --wait SECONDS"
        )


@contextmanager
def reading(home: Home) -> Iterator[tuple[Connection, Store, int]]:
    """A read-only view for snapshots/diff/verify: connection, store, published snapshot."""
    engine = home.engine(writer=False)
    try:
        with home.reader(), _published(home) as (store, published), engine.connect() as conn:
            yield conn, store, published
    finally:
        engine.dispose()


@contextmanager
def plain_reading(home: Home) -> Iterator[tuple[sqlite3.Connection, Store, int]]:
    """As `reading`, on a plain sqlite3 connection, for restore (which never imports SQLAlchemy)
    and ls. Their reads share one transaction, as on SQLAlchemy's (a backup committing meanwhile
    is not seen halfway); a read transaction takes no lock that a writer waits for."""
    conn = home.connect()
    try:
        with home.reader(), _published(home) as (store, published):
            conn.execute("BEGIN")
            yield conn, store, published
    finally:
        conn.close()  # ends the read transaction


@contextmanager
def _published(home: Home) -> Iterator[tuple[Store, int]]:
    """The store, and the snapshot its root pointer publishes."""
    from deltagrid.repository.root import published_snapshot

    store = home.store()
    try:
        yield store, published_snapshot(store)
    finally:
        store.close()
