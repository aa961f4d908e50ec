"""An entry as deltagrid records it: its kind and its metadata, the columns of a version."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

KIND_FILE = "f"
KIND_DIR = "d"
KIND_LINK = "l"
KIND_FIFO = "p"
KIND_CHAR = "c"  # a character device node
KIND_BLOCK = "b"  # a block device node
DEVICES = (KIND_CHAR, KIND_BLOCK)
SPECIALS = (KIND_FIFO, *DEVICES)  # kept as metadata alone, never opened
# The file-type bits of each kind, for comparing a stat's st_mode with a version's mode.
TYPE_BITS = {
    KIND_FILE: stat.S_IFREG,
    KIND_DIR: stat.S_IFDIR,
    KIND_LINK: stat.S_IFLNK,
    KIND_FIFO: stat.S_IFIFO,
    KIND_CHAR: stat.S_IFCHR,
    KIND_BLOCK: stat.S_IFBLK,
}

_NS_RANGE = range(-(1 << 63), 1 << 63)  # SQLite's INTEGER: 1677-09-21 to 2262-04-11 in ns


def time_to_db(ns: int) -> int | bytes:
    """A time in ns as the catalog stores it: an INTEGER when it fits SQLite's 64 bits, else its
    decimal digits as a BLOB (a BLOB, as SQLite turns digits given as TEXT into a lossy REAL).
    So any time a file system can hold is stored exactly."""
    return ns if ns in _NS_RANGE else str(ns).encode()


def time_from_db(value: int | bytes) -> int:
    """The time in ns a catalog column holds (`time_to_db`)."""
    return value if type(value) is int else int(value)


def with_times(entry: Any) -> Any:
    """A row NamedTuple with `mtime_ns` and `ctime_ns` as ints, however the catalog stored them."""
    if type(entry.mtime_ns) is int and type(entry.ctime_ns) is int:
        return entry
    return entry._replace(
        mtime_ns=time_from_db(entry.mtime_ns), ctime_ns=time_from_db(entry.ctime_ns)
    )


_KINDS = {bits: kind for kind, bits in TYPE_BITS.items()}


def kind_of(mode: int) -> str | None:
    """The entry kind deltagrid stores for an st_mode, or None for a socket: a socket is made
    by the program that listens on it, and means nothing without it (tar and rsync skip them
    too)."""
    return _KINDS.get(stat.S_IFMT(mode))


@dataclass(frozen=True)
class Meta:
    """An entry's metadata as the scanner compares it and restore sets it. `from_stat` leaves
    `xattrs` unread: only the uploader reads them, for entries whose ctime moved."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    dev: int
    nlink: int
    target: bytes | None = None
    xattrs: bytes | None = None  # extended attributes and ACLs, as floor/xattrs.py stores them
    extents: bytes | None = None  # a sparse file's data runs (floor/sparse.py); None: no holes
    rdev: int | None = None  # a device node's device number; None for every other kind

    @classmethod
    def from_stat(
        cls, st: os.stat_result, target: bytes | None = None, extents: bytes | None = None
    ) -> Meta:
        kind = kind_of(st.st_mode)
        if kind is None:
            raise ValueError("a socket: not backed up")
        return cls(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind == KIND_FILE else 0,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            inode=st.st_ino,
            dev=st.st_dev,
            nlink=st.st_nlink,
            target=target,
            extents=extents,
            rdev=st.st_rdev if kind in DEVICES else None,
        )

    @classmethod
    def from_row(cls, row: Any) -> Meta:
        values = {name: getattr(row, name) for name in META_COLUMNS}
        values["mtime_ns"] = time_from_db(values["mtime_ns"])
        values["ctime_ns"] = time_from_db(values["ctime_ns"])
        return cls(**values)

    def values(self) -> tuple[Any, ...]:
        """The `versions` columns this record fills, in META_COLUMNS order."""
        values: tuple[Any, ...] = _values(self)
        if self.mtime_ns in _NS_RANGE and self.ctime_ns in _NS_RANGE:  # as nearly always
            return values
        columns = dict(zip(META_COLUMNS, values, strict=True))
        columns["mtime_ns"] = time_to_db(self.mtime_ns)
        columns["ctime_ns"] = time_to_db(self.ctime_ns)
        return tuple(columns.values())


# The metadata columns of a `versions` row, in Meta's order: the one list of them.
META_COLUMNS = tuple(f.name for f in fields(Meta))
_values = attrgetter(*META_COLUMNS)
