"""An entry's extended attributes, POSIX ACLs included, as one value the catalog stores.

Every attribute the process can read is kept, by its full name (`user.*`; `trusted.*` and
`security.*` as root; `system.posix_acl_access` and `system.posix_acl_default` hold the ACLs in
the kernel's own binary form, which is the same on every Linux, so they are stored as they are).
The stored form is the attributes sorted by name, each as its name, a NUL, its value's length
as 4 bytes big-endian, and the value: the same set always encodes to the same bytes, so two
versions compare by equality. An entry without attributes stores nothing (NULL).
"""

from __future__ import annotations

import errno
import os
import struct

from deltagrid.floor import longpath
from deltagrid.floor.errors import CorruptData

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
_LENGTH = struct.Struct(">I")
# The file system keeps no attributes at all: nothing to back up.
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)
# Listed but not to be read: removed since listed, or not ours to read.
_UNREADABLE = (errno.ENODATA, errno.EPERM, errno.EACCES, *_UNSUPPORTED)


def read(path: bytes) -> bytes | None:
    """The encoded attributes of `path` (never following a symlink), or None when it has none.

    An attribute the process may not read is left out, as it would be by any reader; an error
    on the entry itself (gone, unreadable) is raised. A path past PATH_MAX is reached through
    its directory's descriptor (longpath.py)."""
    return longpath.at(path, _read)


def read_fd(fd: int) -> bytes | None:
    """`read` of the entry open as `fd`: the reader threads read a file's attributes on the
    descriptor they read its bytes from, with no lookup by path."""
    return _collect(fd, follow=True)  # a descriptor is the entry itself: nothing to follow


def _read(name: bytes, fd: int | None) -> bytes | None:
    return _collect(name if fd is None else b"/proc/self/fd/%d/%s" % (fd, name), follow=False)


def _collect(where: bytes | int, follow: bool) -> bytes | None:
    try:
        names = os.listxattr(where, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return None
        raise
    found: dict[str, bytes] = {}
    for attribute in names:
        try:
            found[attribute] = os.getxattr(where, attribute, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in _UNREADABLE:
                raise
    return encode(found)


def encode(attributes: dict[str, bytes]) -> bytes | None:
    """The stored form of a set of attributes (None for none)."""
    if not attributes:
        return None
    out = bytearray()
    for name in sorted(attributes, key=os.fsencode):
        value = attributes[name]
        out += os.fsencode(name) + b"\0" + _LENGTH.pack(len(value)) + value
    return bytes(out)


def decode(stored: bytes | None) -> dict[str, bytes]:
    """The attributes of a stored value, by name, in stored order."""
    found: dict[str, bytes] = {}
    pos = 0
    while stored is not None and pos < len(stored):
        end = stored.find(b"\0", pos)
        start = end + 1 + _LENGTH.size
        if end < 0 or start > len(stored):
            raise CorruptData("the backupdb holds a damaged set of extended attributes")
        (length,) = _LENGTH.unpack_from(stored, end + 1)
        if start + length > len(stored):
            raise CorruptData("the backupdb holds a damaged set of extended attributes")
        found[os.fsdecode(stored[pos:end])] = stored[start : start + length]
        pos = start + length
    return found
