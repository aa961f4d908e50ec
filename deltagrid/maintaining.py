"""What every maintenance command opens: the lock, the backupdb, the store, the publisher."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine

from deltagrid.floor.units import human_bytes
from deltagrid.guard import writable_store
from deltagrid.home import Config, Home
from deltagrid.maintenance.executor import Executor, Outcome
from deltagrid.output import Output
from deltagrid.repository.publisher import Publisher
from deltagrid.store.base import Store


@dataclass
class Session:
    config: Config
    engine: Engine
    store: Store
    publisher: Publisher

    def executor(self, home: Home, out: Output, delete_now: bool = False) -> Executor:
        """`delete_now`: delete what nothing names at once, not after `delete_after`."""
        delete_after = 0 if delete_now else self.config.maintenance.delete_after_ns()
        executor = Executor(
            self.engine,
            self.store,
            self.publisher,
            home.spool,
            self.config.upload.piece_size,
            self.config.upload.pack_size,
            out.warn,
            alone=lambda: home.alone(out.warn),
            delete_after_ns=delete_after,
        )
        out.so_far = lambda: _rewritten_so_far(executor.outcome)
        return executor


def _rewritten_so_far(o: Outcome) -> dict[str, object]:
    """An interrupted prune's or compact's figures: what it had written and deleted. Until the
    root moved, the catalog is as it was; a rerun plans again and finishes the job."""
    return {
        "files": o.keyframes_written,
        "bytes_uploaded": o.bytes_written,
        "summary": (
            f"{o.packs_written} packs written ({human_bytes(o.bytes_written)}), "
            f"{o.objects_deleted} store objects deleted; the next run finishes the job"
        ),
    }


@contextmanager
def maintaining(home: Home, repairing: bool = False) -> Iterator[Session]:
    """Hold the home's lock; check the store is this home's (`repairing`: one that lost objects
    or fell behind is accepted, to be mended); finish any interrupted commit first, so we start
    from a published state."""
    with home.lock():
        config = home.config()
        store = writable_store(home, repairing)
        try:
            engine = home.engine()
        except BaseException:
            store.close()
            raise
        try:
            publisher = Publisher(
                home.db_path, store, home.state, config.upload.full_export_every, repairing
            )
            publisher.publish()
            yield Session(config, engine, store, publisher)
        finally:
            store.close()
            engine.dispose()
