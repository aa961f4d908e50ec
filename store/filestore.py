"""`file://DIR`: objects named by their BLAKE2b hash under a two-level fan-out of directories.

Every write goes to a temporary name, is fsynced, then renamed into place, and the directory is
fsynced, so a crash leaves either no object or a whole one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from deltagrid.floor.errors import CorruptData, NoStore, ObjectMissing, naming
from deltagrid.floor.fs import atomic_write, fsync_dir
from deltagrid.store.base import Store

_REF = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class FileStore(Store):
    """A store in a local directory: the embedded default."""

    def __init__(self, root: Path, create: bool = False) -> None:
        self.root = root
        self.url = "file://" + str(root)
        self.objects = root / "objects"
        if create:
            self.objects.mkdir(parents=True, exist_ok=True)
        elif not self.objects.is_dir():
            raise NoStore(str(root))

    def _path(self, ref: str) -> Path:
        if not _REF.match(ref):
            raise CorruptData(f"not a file-store object name: {ref!r}")
        return self.objects / ref[:2] / ref

    def _install(self, tmp: Path, ref: str) -> str:
        dest = self._path(ref)
        self._fan_out(dest.parent)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return ref

    def _fan_out(self, directory: Path) -> None:
        """Create an object's directory durably: an object renamed into a directory whose own
        entry a crash lost would be lost with it."""
        if not directory.is_dir():
            directory.mkdir(exist_ok=True)
            fsync_dir(self.objects)

    def _intact(self, ref: str) -> bool:
        """Whether the object `ref` is in the store with the bytes its name says. A put of
        bytes already stored is skipped only then: a copy damaged on disk (verify found it) is
        replaced by the put that brings them again, as `repair` does, not kept."""
        try:
            with open(self._path(ref), "rb") as f:
                found = hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=32))
        except FileNotFoundError:
            return False
        return found.hexdigest() == ref

    def _tempfile(self) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(dir=self.objects, prefix=".tmp-")
        return fd, Path(name)

    def put_bytes(self, data: bytes) -> str:
        ref = hashlib.blake2b(data, digest_size=32).hexdigest()
        if self._intact(ref):
            return ref
        fd, tmp = self._tempfile()
        try:
            with naming(tmp), os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._install(tmp, ref)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_file(self, path: Path) -> str:
        h = hashlib.blake2b(digest_size=32)
        fd, tmp = self._tempfile()
        try:
            with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    with naming(tmp):
                        dst.write(chunk)
                with naming(tmp):
                    dst.flush()
                    os.fsync(dst.fileno())
            ref = h.hexdigest()
            if self._intact(ref):
                tmp.unlink()
                return ref
            return self._install(tmp, ref)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def move_file(self, path: Path, digest: bytes) -> str:
        """Rename the fsynced file into place when it lies on the store's filesystem (the
        embedded store beside the spool): no second read, write and fsync of the pack. Across
        filesystems it is copied like any put."""
        ref = digest.hex()
        dest = self._path(ref)
        if self._intact(ref):
            path.unlink()
            return ref
        self._fan_out(dest.parent)
        try:
            os.rename(path, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return super().move_file(path, digest)
        fsync_dir(dest.parent)
        return ref

    def get(self, ref: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            with open(self._path(ref), "rb") as f:
                f.seek(offset)
                data = f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise ObjectMissing(f"object {ref} is missing from {self.url}") from None
        if length is not None and len(data) != length:
            raise CorruptData(f"object {ref} is truncated (wanted {offset}+{length})")
        return data

    def size(self, ref: str) -> int:
        try:
            return self._path(ref).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(f"object {ref} is missing from {self.url}") from None

    def read_root(self) -> bytes | None:
        try:
            return (self.root / "root.json").read_bytes()
        except FileNotFoundError:
            return None

    def replace_root(self, data: bytes) -> None:
        atomic_write(self.root / "root.json", data)

    can_delete = True

    def delete(self, ref: str) -> None:
        self._path(ref).unlink(missing_ok=True)

    def clear_temporaries(self) -> int:
        cleared = 0
        for directory in (self.root, self.objects):
            for entry in directory.glob(".tmp-*"):
                entry.unlink(missing_ok=True)
                cleared += 1
        return cleared

    def list_refs(self) -> Iterator[str]:
        for sub in sorted(self.objects.iterdir()):
            if sub.is_dir():
                for obj in sorted(sub.iterdir()):
                    if _REF.match(obj.name):
                        yield obj.name
