"""An entry as deltagrid records it: its kind and its metadata, the columns of a version."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, fields
from typing import Any

KIND_FILE = "f"
KIND_DIR = "d"
KIND_LINK = "l"


def kind_of(mode: int) -> str | None:
    """The entry kind deltagrid stores for an st_mode, or None for sockets, FIFOs and devices."""
    if stat.S_ISREG(mode):
        return KIND_FILE
    if stat.S_ISDIR(mode):
        return KIND_DIR
    if stat.S_ISLNK(mode):
        return KIND_LINK
    return None


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

    @classmethod
    def from_stat(cls, st: os.stat_result, target: bytes | None = None) -> Meta:
        kind = kind_of(st.st_mode)
        if kind is None:
            raise ValueError("not a file, directory or symlink")
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
        )

    @classmethod
    def from_row(cls, row: Any) -> Meta:
        return cls(*(getattr(row, name) for name in META_COLUMNS))

    def columns(self) -> dict[str, Any]:
        """The `versions` columns this record fills."""
        return dict(vars(self))  # the fields, in META_COLUMNS order


# The metadata columns of a `versions` row, in Meta's order: the one list of them.
META_COLUMNS = tuple(f.name for f in fields(Meta))
