"""What every maintenance command opens: the lock, the backupdb, the store, the publisher."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine

from deltagrid.guard import writable_store
from deltagrid.home import Config, Home
from deltagrid.maintenance.executor import Executor
from deltagrid.output import Output
from deltagrid.repository.publisher import Publisher
from deltagrid.store.base import Store


@dataclass
class Session:
    config: Config
    engine: Engine
    store: Store
    publisher: Publisher

    def executor(self, home: Home, out: Output) -> Executor:
        return Executor(
            self.engine,
            self.store,
            self.publisher,
            home.spool,
            self.config.upload.piece_size,
            self.config.upload.pack_size,
            out.warn,
        )


@contextmanager
def maintaining(home: Home) -> Iterator[Session]:
    """Hold the home's lock; check the store is this home's; finish any interrupted commit
    first, so we start from a published state."""
    with home.lock():
        config = home.config()
        store = writable_store(home)
        try:
            engine = home.engine()
        except BaseException:
            store.close()
            raise
        try:
            publisher = Publisher(home.db_path, store, home.state, config.upload.full_export_every)
            publisher.publish()
            yield Session(config, engine, store, publisher)
        finally:
            store.close()
            engine.dispose()
