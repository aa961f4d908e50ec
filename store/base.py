"""The one small interface every store backend implements.

Objects are immutable: `put` returns a ref that names the bytes forever. The root pointer is the
only mutable thing, and replacing it is the atomic commit of a snapshot.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path


class Store(abc.ABC):
    """An object store with one mutable root pointer."""

    url: str

    @abc.abstractmethod
    def put_file(self, path: Path) -> str:
        """Store the bytes of the file at `path` as an immutable object; return its ref."""

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

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections."""
