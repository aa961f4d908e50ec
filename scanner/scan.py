"""The nightly scanner: walk the roots, compare each entry with its live version, queue changes.

The walk is iterative (os.scandir, never following symlinks) and compares one directory's entries
against the backupdb in one query. Queue rows are committed in batches; the scan's last
transaction marks it complete and drops what older scans left pending below the same roots, so a
killed scan is simply run again.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from deltagrid.backupdb import scan_queries
from deltagrid.backupdb.entries import (
    DEVICES,
    KIND_DIR,
    KIND_FILE,
    KIND_LINK,
    Meta,
    kind_of,
    time_to_db,
)
from deltagrid.backupdb.scan_queries import STAT_KEY
from deltagrid.floor import fs, longpath
from deltagrid.floor.errors import UsageError
from deltagrid.scanner.excludes import Excludes
from deltagrid.scanner.pseudo import pseudo_devices

# Queue rows a commit (an fsync): a kill loses nothing of a scan that counts, as the next one
# abandons an unfinished scan's rows; 10,000 tuples are a few MB.
BATCH = 10_000
# The first batches are smaller, doubling up to BATCH: an upload beside the scan (beside.py)
# starts on the first, and each lands before the upload has taken the one before.
FIRST_BATCH = 1_000
REASONS = ("new", "changed", "meta", "deleted")
_name = attrgetter("name")


class _FarEntry:
    """An entry of a directory past PATH_MAX, as os.DirEntry has it: stat'ed through its
    directory's descriptor."""

    __slots__ = ("name", "path", "fd")

    def __init__(self, name: bytes, directory: bytes, fd: int) -> None:
        self.name = name
        self.path = directory + b"/" + name
        self.fd = fd

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(self.name, dir_fd=self.fd, follow_symlinks=follow_symlinks)


def _list(directory: bytes) -> tuple[list[Any], int | None]:
    """A directory's entries by name, and the descriptor they need (the caller closes it): a
    directory whose entries' paths may pass PATH_MAX is opened by descriptors
    (floor/longpath.py) and listed through one."""
    if len(directory) < longpath.NEAR:
        with os.scandir(directory) as it:
            return sorted(it, key=_name), None
    fd = longpath.open_dir(directory)
    try:
        names = [os.fsencode(name) for name in os.listdir(fd)]  # str from a descriptor
        return sorted((_FarEntry(n, directory, fd) for n in names), key=_name), fd
    except BaseException:
        os.close(fd)
        raise


class NotMounted(Exception):
    def __str__(self) -> str:
        return (
            "empty, and on another file system than at the last backup (a disk not mounted?); "
            "its backed-up entries are kept"
        )


def _empty(directory: bytes) -> bool:
    try:
        with os.scandir(directory) as it:
            return next(it, None) is None
    except OSError:
        return False  # listing it fails again in the walk, where the error is reported


@dataclass
class ScanResult:
    scan_id: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    unchanged: int = 0
    skipped: list[bytes] = field(default_factory=list)  # sockets
    errors: list[tuple[bytes, str]] = field(default_factory=list)
    own: list[bytes] = field(default_factory=list)  # deltagrid's own folders met, left out
    notes: list[str] = field(default_factory=list)  # a source followed, a pseudo fs skipped


def normalise_roots(sources: list[str]) -> list[bytes]:
    """Absolute, normalised roots; a root inside another is dropped; a missing one is an error."""
    roots: list[bytes] = []
    for src in sources:
        path = os.path.abspath(os.fsencode(src))
        if not os.path.lexists(path):
            raise UsageError(f"source not found: {src}")
        roots.append(path)
    roots.sort()
    kept: list[bytes] = []
    for root in roots:
        if not any(root == k or root.startswith(k.rstrip(b"/") + b"/") for k in kept):
            kept.append(root)
    return kept


def reason_for(prev: Any, meta: Meta, checksum: bool) -> str | None:
    """Why an entry must be queued, or None when its live version still describes it."""
    if prev is None:
        return "new"
    if prev.kind != meta.kind:
        return "changed"
    if meta.kind == KIND_FILE and (
        checksum
        or prev.recheck
        or (prev.size, prev.mtime_ns, prev.inode) != (meta.size, meta.mtime_ns, meta.inode)
        # ctime alone moved: maybe a write that put the mtime back. A chmod/chown moves ctime
        # too, and is only `meta` (the uploader still re-reads it, as its ctime moved).
        or (
            prev.ctime_ns != meta.ctime_ns
            and (prev.mode, prev.uid, prev.gid) == (meta.mode, meta.uid, meta.gid)
        )
    ):
        return "changed"
    if meta.kind == KIND_LINK and prev.target != meta.target:
        return "changed"
    if meta.kind in DEVICES and prev.rdev != meta.rdev:
        return "changed"
    if checksum:  # everything looked at again: attributes too (a backupdb older than them)
        return "meta"
    if (prev.mode, prev.uid, prev.gid, prev.mtime_ns, prev.ctime_ns, prev.inode) != (
        meta.mode,
        meta.uid,
        meta.gid,
        meta.mtime_ns,
        meta.ctime_ns,
        meta.inode,
    ):
        return "meta"
    return None


class Scanner:
    """One scan run over a set of roots, on a plain sqlite3 connection to the backupdb."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        excludes: Excludes,
        checksum: bool = False,
        one_file_system: bool = False,
        on_entries: Callable[[int], None] | None = None,
        warn: Callable[[str], None] | None = None,
        own: list[bytes] | None = None,
        include_pseudo_fs: bool = False,
        on_flushed: Callable[[], None] | None = None,
    ) -> None:
        """`own`: deltagrid's folders (the home, a file:// store), never backed up wherever
        they lie: told by device and inode, so another path to them is caught too.
        `on_flushed`: called once each batch of queue rows is committed (an upload beside the
        scan takes them from there)."""
        self.conn = conn
        self.own_paths = own or []
        self.own: dict[int, int] = {}  # inode -> device
        self.excludes = excludes
        self.checksum = checksum
        self.one_file_system = one_file_system
        self.include_pseudo_fs = include_pseudo_fs
        self.pseudo: dict[int, tuple[bytes, str]] = {}  # st_dev -> (mount point, type)
        self.on_entries = on_entries or (lambda _n: None)  # progress: entries listed
        self.warn = warn or (lambda _msg: None)
        self.on_flushed = on_flushed or (lambda: None)
        self.rows: list[tuple[Any, ...]] = []  # scan_queries.QUEUE_COLUMNS
        self.batch = FIRST_BATCH
        self._errors_saved = 0  # scan errors already in the backupdb

    def run(self, roots: list[bytes]) -> ScanResult:
        conn = self.conn
        self.result = ScanResult(scan_queries.begin_scan(conn, [os.fsdecode(r) for r in roots]))
        for path in self.own_paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            self.own[st.st_ino] = st.st_dev
        if not self.include_pseudo_fs:
            self.pseudo = pseudo_devices()
        for root in roots:
            self._scan_root(conn, root)
        self._flush(conn)
        scan_queries.finish_scan(
            conn, self.result.scan_id, roots, self.result.counts, len(self.result.errors)
        )
        return self.result

    def _queue(
        self, conn: sqlite3.Connection, path: bytes, reason: str, meta: Any, prev: Any
    ) -> None:
        self.result.counts[reason] += 1
        self.rows.append(
            (
                self.result.scan_id,
                path,
                reason,
                meta.kind,
                meta.size,
                time_to_db(meta.mtime_ns),
                meta.inode,
                meta.dev,
                prev.id if prev is not None else None,
            )
        )
        if len(self.rows) >= self.batch:
            self._flush(conn)

    def _flush(self, conn: sqlite3.Connection) -> None:
        errors = self.result.errors[self._errors_saved :]
        scan_queries.enqueue(conn, self.result.scan_id, self.rows, errors)
        self._errors_saved += len(errors)
        self.rows = []
        self.batch = min(2 * self.batch, BATCH)
        self.on_flushed()

    def _error(self, path: bytes, exc: Exception) -> None:
        """One entry cannot be read: it is named, keeps its live version, and the scan goes on."""
        message = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        self.result.errors.append((path, message))
        self.warn(f"cannot read {os.fsdecode(path)}: {message}")

    def _delete(self, conn: sqlite3.Connection, prev: Any) -> None:
        """Queue a vanished entry and, for a directory, everything that was below it."""
        self._queue(conn, prev.path, "deleted", prev, prev)
        self._delete_below(conn, prev)

    def _delete_below(self, conn: sqlite3.Connection, prev: Any) -> None:
        if prev.kind == KIND_DIR:
            for below in scan_queries.live_entries_below(conn, prev.path):
                self._queue(conn, below.path, "deleted", below, below)

    def _visit(
        self, conn: sqlite3.Connection, path: bytes, st: os.stat_result, prev: Any
    ) -> tuple[Meta, bool] | None:
        """Compare one entry with its live version; return its Meta and whether to descend."""
        if kind_of(st.st_mode) is None:
            self.result.skipped.append(path)
            self.warn(f"skipping socket {os.fsdecode(path)}")
            if prev is not None:
                self._delete(conn, prev)
            return None
        target = None
        if stat.S_ISLNK(st.st_mode):
            try:
                target = fs.read_link(path)
            except FileNotFoundError:
                return None
            except OSError as exc:  # EACCES (/proc/1/cwd), EINVAL (now a file)...
                self._error(path, exc)
                return None
        meta = Meta.from_stat(st, target)
        reason = reason_for(prev, meta, self.checksum)
        if reason is None:
            self.result.unchanged += 1
        else:
            if prev is not None and meta.kind != KIND_DIR:
                self._delete_below(conn, prev)
            self._queue(conn, path, reason, meta, prev)
        return meta, meta.kind == KIND_DIR

    def _is_own(self, path: bytes, st: os.stat_result) -> bool:
        """Whether `path` is one of deltagrid's own folders; noted once if so."""
        if self.own.get(st.st_ino) != st.st_dev or not stat.S_ISDIR(st.st_mode):
            return False
        self.result.own.append(path)
        return True

    def _inside_own(self, root: bytes) -> bool:
        real = os.path.realpath(root)
        return any(
            real == own or real.startswith(own.rstrip(b"/") + b"/")
            for own in map(os.path.realpath, self.own_paths)
        )

    def _scan_root(self, conn: sqlite3.Connection, root: bytes) -> None:
        try:
            st = self._root_stat(root)
        except OSError as exc:
            self._error(root, exc)
            return
        if self._inside_own(root):
            self.result.own.append(root)
            return
        prev = scan_queries.live_entry_at(conn, root)
        if self._unmounted(conn, root, st, prev):
            return
        self.on_entries(1)
        visited = self._visit(conn, root, st, prev)
        if visited is None or not visited[1]:
            return
        # The directories to walk, and whether the catalog has them (else nothing below is live)
        stack: list[tuple[bytes, bool]] = [(root, prev is not None)]
        while stack:
            directory, recorded = stack.pop()
            try:
                entries, fd = _list(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed (or made a file) mid-walk; the next scan of its parent sees it
            except OSError as exc:
                self._error(directory, exc)
                continue
            try:
                self.on_entries(len(entries))
                live = scan_queries.live_children(conn, directory) if recorded else {}
                self._compare(conn, root, st.st_dev, entries, live, stack)
            finally:
                if fd is not None:
                    os.close(fd)
            for row in live.values():
                self._delete_live(conn, row)

    def _unmounted(
        self, conn: sqlite3.Connection, path: bytes, st: os.stat_result, prev: Any
    ) -> bool:
        """A directory (a source, or one below it) found empty, on another file system than at
        the last backup, that held entries then: most likely a disk not mounted, its mount
        point seen instead. Read as it looks, the next snapshot would show everything deleted,
        and retention would in time drop the last copies. It is an error that names it, and
        it and its entries keep their live versions; a directory emptied where it was (same
        file system) is recorded. Below a source this is met only on the full comparison: a
        mount point's inode changes with what is mounted on it."""
        if prev is None or prev.kind != KIND_DIR or not stat.S_ISDIR(st.st_mode):
            return False
        if prev.dev == st.st_dev or not _empty(path):
            return False
        if not scan_queries.live_children(conn, prev.path):
            return False
        self._error(path, NotMounted())
        return True

    def _root_stat(self, root: bytes) -> os.stat_result:
        """A source's lstat; for a symlink to a directory, the directory's stat: the source is
        that tree, recorded under the path given (docs/everyday.md has the rule)."""
        st = os.lstat(root)
        if stat.S_ISLNK(st.st_mode):
            try:
                followed = os.stat(root)
            except OSError:
                return st  # dangling: the link is what there is
            if stat.S_ISDIR(followed.st_mode):
                target = os.fsdecode(fs.read_link(root))
                self.note(f"{os.fsdecode(root)} is a symlink to {target}: backing up its tree")
                return followed
        return st

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def _compare(
        self,
        conn: sqlite3.Connection,
        root: bytes,
        root_dev: int,
        entries: list[Any],
        live: dict[bytes, tuple[Any, ...]],
        stack: list[tuple[bytes, bool]],
    ) -> None:
        """Compare a directory's entries with their live versions (popped from `live`); push
        the subdirectories to walk onto `stack`.

        The hot loop of a quiet night: an unchanged file costs one lstat, one dict lookup and
        one tuple comparison (scan_queries.STAT_KEY); anything else goes through `_visit`.
        """
        quick = not self.checksum
        excludes = self.excludes if self.excludes.patterns else None
        for entry in entries:
            path = entry.path
            row = live.pop(path, None)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                if row is not None:
                    self._delete_live(conn, row)
                continue
            except OSError as exc:
                self._error(path, exc)
                continue
            if (
                excludes is not None
                and excludes.excluded(path[len(root) :].lstrip(b"/"), stat.S_ISDIR(st.st_mode))
            ) or (st.st_ino in self.own and self._is_own(path, st)):
                if row is not None:
                    self._delete_live(conn, row)
                continue
            if (
                quick
                and row is not None
                and row[STAT_KEY]
                == (
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_ino,
                )
            ):
                self.result.unchanged += 1
                if stat.S_ISDIR(st.st_mode):
                    self._descend(stack, path, st, root_dev, True)
                continue
            prev = None if row is None else scan_queries.live_entry_at(conn, path)
            if self._unmounted(conn, path, st, prev):
                continue
            try:
                visited = self._visit(conn, path, st, prev)
            except (OSError, OverflowError, ValueError) as exc:  # one odd entry, not the night
                self._error(path, exc)
                continue
            if visited is None or not visited[1]:
                continue
            self._descend(stack, path, st, root_dev, prev is not None and prev.kind == KIND_DIR)

    def _descend(
        self,
        stack: list[tuple[bytes, bool]],
        path: bytes,
        st: os.stat_result,
        root_dev: int,
        recorded: bool,
    ) -> None:
        """Walk into the directory `path` later, unless --one-file-system keeps us out of it or
        it is a pseudo file system below the source (noted; what was backed up of it goes)."""
        if self.one_file_system and st.st_dev != root_dev:
            return
        if st.st_dev in self.pseudo and st.st_dev != root_dev:
            fstype = self.pseudo[st.st_dev][1]
            self.note(f"skipped {os.fsdecode(path)}: a {fstype} file system (--include-pseudo-fs)")
            for below in scan_queries.live_entries_below(self.conn, path):
                self._queue(self.conn, below.path, "deleted", below, below)
            return
        stack.append((path, recorded))

    def _delete_live(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
        """A live child (a scan_queries.live_children row) is no longer there."""
        prev = scan_queries.live_entry_at(conn, row[0])
        if prev is not None:
            self._delete(conn, prev)
