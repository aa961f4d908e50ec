"""Giving restored entries their metadata: owner, extended attributes and ACLs, mode, times.

The order is the point. The owner comes first (a chown clears set-user-ID bits and file
capabilities), then the attributes, then the mode, then the times. An access ACL and the mode
describe the same permissions (the mode's group bits are the ACL's mask), so when both are set
they agree; when the ACL cannot be set, the mode is narrowed so that nobody gets more than the
ACL gave them (`mode_without_acl`). As non-root, an entry keeps its set-user-ID or set-group-ID
bit only if it really has the owner or group it had (tar's rule), and a directory restore must
write in but that is read-only is made writable for the restore and given its mode back after.
What cannot be set is a warning naming the path and the attribute, never silence.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from typing import Any

from deltagrid.backupdb.entries import KIND_DIR, KIND_LINK
from deltagrid.floor import xattrs
from deltagrid.floor.xattrs import ACL_ACCESS, ACL_DEFAULT

# The kernel's ACL xattr: a 4-byte version (2), then entries of tag, permissions, id
# (little-endian u16, u16, u32).
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_GONE = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)  # nothing there to remove


def acl_entries(value: bytes) -> list[tuple[int, int]] | None:
    """The (tag, permissions) of an access ACL's entries, or None if it is not one we read."""
    body = len(value) - _ACL_HEADER.size
    if body < 0 or body % _ACL_ENTRY.size or _ACL_HEADER.unpack_from(value)[0] != _ACL_VERSION:
        return None
    return [
        (tag, perm & 0o7) for tag, perm, _id in _ACL_ENTRY.iter_unpack(value[_ACL_HEADER.size :])
    ]


def mode_without_acl(mode: int, acl: bytes) -> int:
    """The mode for an entry that must do without its access ACL, granting nobody more than the
    ACL did. Without it, a named user falls into the group or the other class and a named
    group's member into the other class, so the group bits are the owning group's entry and
    every named user's, all under the mask, and the other bits the other entry and every named
    entry's under the mask. (The stored mode's group bits are the mask: kept as they are, they
    would give the owning group what only named entries had.) An ACL we cannot read leaves the
    owner's bits alone."""
    entries = acl_entries(acl)
    if entries is None:
        return mode & ~0o077
    perms: dict[int, int] = {}
    for tag, perm in entries:
        perms[tag] = perms.get(tag, 0o7) & perm
    mask = perms.get(_MASK, 0o7)
    named_users = perms.get(_USER, 0o7) & mask
    named_groups = perms.get(_GROUP, 0o7) & mask
    group = perms.get(_GROUP_OBJ, 0) & mask & named_users
    other = perms.get(_OTHER, 0) & named_users & named_groups
    owner = perms.get(_USER_OBJ, (mode >> 6) & 0o7)
    return (mode & ~0o777) | owner << 6 | group << 3 | other


class MetadataWriter:
    """Sets restored entries' metadata and keeps what could not be set; shared by the restore's
    threads (list appends only)."""

    def __init__(self) -> None:
        self.euid = os.geteuid()
        self.as_root = self.euid == 0
        self.warnings: list[tuple[bytes, str]] = []  # (restored path, what was not restored)
        self.setid_dropped: list[bytes] = []
        self.opened: dict[bytes, int] = {}  # read-only directories made writable: their mode

    def apply(self, where: int | bytes, shown: bytes, e: Any, follow: bool) -> None:
        """Give `where` (an open descriptor, or a path: followed only with `follow`) the
        metadata of entry `e`; `shown` names it in warnings."""
        kw = {} if isinstance(where, int) else {"follow_symlinks": follow}
        if self.as_root:
            os.chown(where, e.uid, e.gid, **kw)
        wanted = xattrs.decode(e.xattrs)
        if e.kind != KIND_LINK:
            self._drop_inherited(where, wanted, e.kind, kw)
        failed = self._set_xattrs(where, shown, wanted, kw)
        if e.kind != KIND_LINK:  # a symlink has no mode of its own
            mode = e.mode
            if ACL_ACCESS in failed:
                mode = mode_without_acl(mode, wanted[ACL_ACCESS])
            if mode & (stat.S_ISUID | stat.S_ISGID) and not self.as_root:
                mode = self._setid_kept(where, shown, e, mode, kw)
            os.chmod(where, mode, **kw)
            if isinstance(where, bytes):
                self.opened.pop(where, None)  # a directory of the restore: its mode is set
        os.utime(where, None, ns=(e.mtime_ns, e.mtime_ns), **kw)

    def _drop_inherited(
        self, where: int | bytes, wanted: dict[str, bytes], kind: str, kw: dict[str, bool]
    ) -> None:
        """Remove the ACLs a new entry inherited from a default ACL already in the target (a
        second restore): the source had none."""
        for name in (ACL_ACCESS, ACL_DEFAULT) if kind == KIND_DIR else (ACL_ACCESS,):
            if name not in wanted:
                try:
                    os.removexattr(where, name, **kw)
                except OSError as exc:
                    if exc.errno not in _GONE:
                        raise

    def _set_xattrs(
        self, where: int | bytes, shown: bytes, wanted: dict[str, bytes], kw: dict[str, bool]
    ) -> set[str]:
        """Set each attribute; the names of those the file system or our rights refused."""
        failed = set()
        for name, value in wanted.items():
            try:
                os.setxattr(where, name, value, **kw)
            except OSError as exc:
                failed.add(name)
                self.warnings.append((shown, f"{name} not restored: {exc.strerror or exc}"))
        return failed

    def _setid_kept(
        self, where: int | bytes, shown: bytes, e: Any, mode: int, kw: dict[str, bool]
    ) -> int:
        """`mode` without a set-user-ID or set-group-ID bit whose owner or group the entry
        does not have (a non-root restore owns what it writes)."""
        st = os.stat(where, **kw)
        kept = mode
        if st.st_uid != e.uid:
            kept &= ~stat.S_ISUID
        if st.st_gid != e.gid:
            kept &= ~stat.S_ISGID
        if kept != mode:
            self.setid_dropped.append(shown)
        return kept

    def make_writable(self, path: bytes, st: os.stat_result) -> None:
        """As non-root, make an existing directory of ours that restore must fill writable for
        now; `give_back` (or the directory's own metadata) sets its mode again."""
        if self.as_root or st.st_uid != self.euid or st.st_mode & 0o300 == 0o300:
            return
        os.chmod(path, stat.S_IMODE(st.st_mode) | 0o700)
        self.opened[path] = stat.S_IMODE(st.st_mode)

    def give_back(self) -> None:
        """The directories made writable and not restored get their mode back, deepest first."""
        for path in sorted(self.opened, reverse=True):
            try:
                os.chmod(path, self.opened[path])
            except OSError as exc:
                self.warnings.append((path, f"mode not given back: {exc.strerror or exc}"))
        self.opened.clear()
