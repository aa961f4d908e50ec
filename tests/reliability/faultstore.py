"""A store that misbehaves on purpose: it wraps a real FileStore and spoils every Nth operation.

Modelled on restic's fault-injecting backends. One `Faults` plan names an operation and a kind
of fault; every store a command opens shares it, so "every Nth put" counts across the command.

    op            kinds
    put           fail, hang, lost       (put_file and put_bytes)
    get           fail, hang, truncate, bitflip
    size          fail
    read_root     fail, truncate, garbage
    replace_root  fail, hang, lost

`fail` raises the store's error type. `hang` models a request that stops answering: the file
store has no timeout of its own (a truly hung local disk would block deltagrid for good), so it
is modelled the way the Tahoe store meets one — a bounded wait, then a StoreError naming the
timeout. `lost` acknowledges a write and keeps nothing: a put returns the object's ref (the
file store names objects by BLAKE2b, so the ref is known without writing), a root replace
returns as if done. `truncate` returns the first half of what was read; `bitflip` flips one
bit in the middle; `garbage` returns bytes that are not a root document.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from deltagrid.floor.errors import ObjectMissing, StoreError
from deltagrid.store.base import Store
from deltagrid.store.filestore import FileStore

KINDS = {
    "put": {"fail", "hang", "lost"},
    "get": {"fail", "hang", "truncate", "bitflip"},
    "size": {"fail"},
    "read_root": {"fail", "truncate", "garbage"},
    "replace_root": {"fail", "hang", "lost"},
}
HANG_SECONDS = 0.05  # stands in for the Tahoe store's request timeout and retries


class Faults:
    """What to spoil (`op`, `kind`, every `every`th call) and a tally of what was spoiled."""

    def __init__(self, op: str, kind: str, every: int, hang_seconds: float = HANG_SECONDS) -> None:
        if kind not in KINDS.get(op, ()):
            raise ValueError(f"no {kind!r} fault for {op!r}")
        if every < 1:
            raise ValueError("every must be 1 or more")
        self.op = op
        self.kind = kind
        self.every = every
        self.hang_seconds = hang_seconds
        self.calls = 0  # calls of `op` seen
        self.injected = 0
        self.hits: list[str] = []  # what each injected fault spoiled, for failure messages
        self._lock = threading.Lock()  # restore fetches with several threads

    def due(self, op: str) -> bool:
        """Count a call of `op`; say whether this one is to be spoiled."""
        if op != self.op:
            return False
        with self._lock:
            self.calls += 1
            return self.calls % self.every == 0

    def record(self, what: str) -> None:
        with self._lock:
            self.injected += 1
            self.hits.append(f"{self.op}/{self.kind} #{self.calls}: {what}")

    def take(self) -> int:
        """The faults injected since the last take, and start counting calls afresh."""
        with self._lock:
            n, self.injected, self.calls, self.hits = self.injected, 0, 0, []
        return n


class FaultStore(Store):
    """`inner`, except where `faults` says an operation goes wrong."""

    def __init__(self, inner: FileStore, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults
        self.url = inner.url
        self.can_delete = inner.can_delete

    def _broken(self, what: str) -> None:
        """A `fail` or `hang` fault: the store's error, after a bounded wait for a hang."""
        self.faults.record(what)
        if self.faults.kind == "hang":
            time.sleep(self.faults.hang_seconds)
            raise StoreError(
                f"{self.url}: no answer to {what} within {self.faults.hang_seconds:g} s "
                "(injected hang)"
            )
        raise StoreError(f"{self.url}: {what} failed (injected fault)")

    def _put(self, data_ref: str, what: str) -> str:
        if self.faults.kind == "lost":
            try:
                self.inner.size(data_ref)
            except ObjectMissing:
                self.faults.record(f"{what} {data_ref[:12]} acknowledged, never stored")
                return data_ref
            return data_ref  # already stored: losing this put changes nothing, so no fault
        self._broken(f"{what} {data_ref[:12]}")
        raise AssertionError("unreachable")

    def put_file(self, path: Path) -> str:
        if not self.faults.due("put"):
            return self.inner.put_file(path)
        h = hashlib.blake2b(digest_size=32)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return self._put(h.hexdigest(), "put")

    def put_bytes(self, data: bytes) -> str:
        if not self.faults.due("put"):
            return self.inner.put_bytes(data)
        return self._put(hashlib.blake2b(data, digest_size=32).hexdigest(), "put")

    def get(self, ref: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(ref, offset, length)
        if not data or not self.faults.due("get"):
            return data
        what = f"get {ref[:12]} [{offset}+{len(data)}]"
        if self.faults.kind == "truncate":
            self.faults.record(what + " truncated")
            return data[: len(data) // 2]
        if self.faults.kind == "bitflip":
            self.faults.record(what + " bit flipped")
            middle = len(data) // 2
            return data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :]
        self._broken(what)
        raise AssertionError("unreachable")

    def size(self, ref: str) -> int:
        if self.faults.due("size"):
            self._broken(f"size of {ref[:12]}")
        return self.inner.size(ref)

    def read_root(self) -> bytes | None:
        data = self.inner.read_root()
        if data is None or not self.faults.due("read_root"):
            return data
        if self.faults.kind == "truncate":
            self.faults.record("root read truncated")
            return data[: len(data) // 2]
        if self.faults.kind == "garbage":
            self.faults.record("root read returned garbage")
            return hashlib.blake2b(data).digest() * 4
        self._broken("read of the root pointer")
        raise AssertionError("unreachable")

    def replace_root(self, data: bytes) -> None:
        if not self.faults.due("replace_root"):
            self.inner.replace_root(data)
        elif self.faults.kind == "lost":
            self.faults.record("root replace acknowledged, never stored")
        else:
            self._broken("replace of the root pointer")

    def list_refs(self) -> Iterator[str]:
        return self.inner.list_refs()

    def delete(self, ref: str) -> None:
        self.inner.delete(ref)

    def close(self) -> None:
        self.inner.close()
