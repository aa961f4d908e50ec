"""Records that cross module boundaries."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
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
        return cls(
            kind=row.kind,
            mode=row.mode,
            uid=row.uid,
            gid=row.gid,
            size=row.size,
            mtime_ns=row.mtime_ns,
            ctime_ns=row.ctime_ns,
            inode=row.inode,
            dev=row.dev,
            nlink=row.nlink,
            target=row.target,
            xattrs=row.xattrs,
        )

    def columns(self) -> dict[str, Any]:
        """The `versions` columns this record fills."""
        return {
            "kind": self.kind,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "inode": self.inode,
            "dev": self.dev,
            "nlink": self.nlink,
            "target": self.target,
            "xattrs": self.xattrs,
        }
