"""The one small interface every store backend implements.

Objects are immutable: `put` returns a ref that names the bytes forever. The root pointer is the
only mutable thing, and replacing it is the atomic commit of a snapshot.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path

from deltagrid.floor.errors import ObjectMissing, StoreError


class Store(abc.ABC):
    """An object store with one mutable root pointer."""

    url: str

    @abc.abstractmethod
    def put_file(self, path: Path) -> str:
        """Store the bytes of the file at `path` as an immutable object; return its ref."""

    def move_file(self, path: Path, digest: bytes) -> str:
        """Store the file at `path` and remove it: the caller is done with it (a spool pack).
        The caller has fsynced it, and `digest` is the BLAKE2b-256 of its bytes, so a store on
        the same filesystem can rename it into place instead of reading and copying it. Here,
        for any store: a copy, then the file goes."""
        ref = self.put_file(path)
        path.unlink()
        return ref

    @abc.abstractmethod
    def put_bytes(self, data: bytes) -> str:
        """Store `data` as an immutable object; return its ref."""

    @abc.abstractmethod
    def get(self, ref: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read `length` bytes (all when None) of object `ref` from `offset`.

        Raises ObjectMissing when the object is absent, CorruptData when it is too short.
        """

    @abc.abstractmethod
    def size(self, ref: str) -> int:
        """The object's size in bytes; raises ObjectMissing when it is absent."""

    def holds(self, ref: str, size: int) -> bool:
        """Whether the store still holds the whole object, asked of what it keeps rather than of
        the name: one cheap request, the probe of the check that a store did not lose objects."""
        try:
            return self.size(ref) == size
        except ObjectMissing:
            return False

    @abc.abstractmethod
    def read_root(self) -> bytes | None:
        """The current root pointer document, or None when none was ever written."""

    @abc.abstractmethod
    def replace_root(self, data: bytes) -> None:
        """Atomically replace the root pointer: readers see the old or the new one, never a mix."""

    @abc.abstractmethod
    def list_refs(self) -> Iterator[str]:
        """Every object ref in the store, where the backend can enumerate them."""

    can_delete = False

    def delete(self, ref: str) -> None:
        """Remove an object no snapshot needs any more, where the backend can."""
        raise NotImplementedError

    def clear_temporaries(self) -> int:
        """Remove the half-written objects of killed puts, where the backend keeps any; the
        caller holds the home's lock, so no put of ours is under way. Returns how many."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections."""


def check_stored(store: Store, ref: str, size: int) -> str:
    """Make sure an acknowledged put left the whole object in the store, before anything names
    it: a lost or torn write would otherwise be committed as a snapshot that cannot be read."""
    try:
        stored: int | None = store.size(ref)
    except ObjectMissing:
        stored = None
    if stored != size:
        held = "nothing" if stored is None else f"{stored} bytes"
        raise StoreError(f"{store.url} acknowledged object {ref} of {size} bytes but holds {held}")
    return ref
