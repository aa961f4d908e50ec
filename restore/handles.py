"""Short names for the directories of a restore that lie deeper than PATH_MAX lets a path reach.

Restore names every entry by a path under the target. Where that path would grow too long for
the kernel (ENAMETOOLONG past 4096 bytes), the directory reached so far is opened — with
O_NOFOLLOW, as it was just made or checked to be a real directory — and held open for the rest
of the restore; below it, paths start from `/proc/self/fd/N`, the kernel's name for that
descriptor. Every call restore makes by path then works unchanged, relative to the descriptor
(as openat would), and the depth is limited by the file system alone. Linux, with /proc mounted.
"""

from __future__ import annotations

import os

_LONGEST = 3000  # a directory's name, at most: room left for a name (255) and temporary names
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Handles:
    def __init__(self) -> None:
        self.fds: dict[bytes, int] = {}  # a directory's name -> its descriptor, held open

    def child(self, directory: bytes, name: bytes) -> bytes:
        """The name to use for `name` in `directory` (itself a name this gave, or the target):
        the plain join while it is short, else a join to the directory's descriptor. The same
        arguments give the same name for the whole restore."""
        if len(directory) + 1 + len(name) <= _LONGEST:
            return directory + b"/" + name
        fd = self.fds.get(directory)
        if fd is None:
            fd = self.fds[directory] = os.open(directory, _DIR)
        return b"/proc/self/fd/%d/%s" % (fd, name)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
