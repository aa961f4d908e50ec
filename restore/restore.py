"""Restoring a snapshot (or paths in it) under a target directory.

Entries land at TARGET + their original absolute path. Nothing is written outside TARGET: every
path from the backupdb is checked component by component, directories under TARGET are created
by us and re-checked to be real directories (never symlinks) before anything is put in them,
files are written to a temporary name and renamed into place, and symlinks are created last, so
no link restored in this run can redirect a later write. What is already in the target is judged
by `--overwrite` (restore/policy.py); `--delete` removes what the snapshot lacks
(restore/extras.py).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import file_digest
from pathlib import Path
from sqlite3 import Connection
from typing import Any

from deltagrid.backupdb import restore_queries
from deltagrid.backupdb.entries import KIND_DIR, KIND_FILE, KIND_LINK, SPECIALS, TYPE_BITS
from deltagrid.floor import xattrs
from deltagrid.floor.errors import CorruptData, DeltagridError, ObjectMissing
from deltagrid.floor.fs import sync_filesystem
from deltagrid.restore import sparse
from deltagrid.restore.background import Background
from deltagrid.restore.extras import remove_extras
from deltagrid.restore.fetch import Fetcher, Piece
from deltagrid.restore.handles import Handles
from deltagrid.restore.leftovers import clear as clear_leftovers
from deltagrid.restore.leftovers import tagged
from deltagrid.restore.metadata import MetadataWriter
from deltagrid.restore.policy import DEFAULT, Verdict, judge
from deltagrid.restore.rebuild import (
    IN_MEMORY,
    chain_ids,
    composes,
    load_chains,
    rebuild_in_one_pass,
)
from deltagrid.restore.writes import Writes
from deltagrid.store.base import Store
from deltagrid.store.pack import digest_file

ENTRY_ERRORS = (DeltagridError, OSError, OverflowError)  # one entry fails (Overflow: a mode, time
# or id out of range), the restore goes on


class UnsafePath(DeltagridError):
    """A path from the backupdb would leave the target."""


class Blocked(Exception):
    """The entry lies below one the target keeps in place of a directory: it is not restored."""


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0  # FIFOs and device nodes
    hardlinks: int = 0
    linked: int = 0  # files hard-linked from --link-dest instead of written
    size: int = 0  # bytes of the files now in the target as the snapshot has them
    written: int = 0  # ... of which written by this run
    same: int = 0  # files found identical (size, mtime, hash), not written
    skipped: int = 0  # their bytes
    kept: list[bytes] = field(default_factory=list)  # entries in the way, kept (--overwrite)
    blocked: int = 0  # entries below a kept one, not restored
    deleted: list[bytes] = field(default_factory=list)  # removed by --delete
    errors: list[tuple[bytes, str]] = field(default_factory=list)
    warnings: list[tuple[bytes, str]] = field(default_factory=list)  # attributes not restored
    setid_dropped: int = 0  # set-user/group-ID bits dropped: the owner could not be restored
    damaged: set[int] = field(default_factory=set)  # contents the store gave wrong or no bytes of
    missing: set[bytes] = field(default_factory=set)  # paths failed for an object not in the store


def check_path(path: bytes) -> list[bytes]:
    """The components of an absolute backupdb path, refusing anything that could escape."""
    if not path.startswith(b"/") or b"\0" in path:
        raise UnsafePath("not an absolute path")
    parts = path.split(b"/")[1:]
    if path == b"/":
        return []
    if any(p in (b"", b".", b"..") for p in parts):
        raise UnsafePath("path has an empty, '.' or '..' component")
    return parts


class Restorer:
    """Restores entries under `target`: at TARGET + their path, or, with `strip`, the subtree
    `strip` as TARGET itself. With `link_dest`, a file identical (content hash and metadata) to
    the one at the same place under that directory is hard-linked instead of written."""

    def __init__(
        self,
        conn: Connection,
        store: Store,
        target: Path,
        on_progress: Callable[[int], None] | None = None,
        strip: bytes | None = None,
        link_dest: Path | None = None,
        on_total: Callable[[int], None] | None = None,
        overwrite: str = DEFAULT,
        delete: bool = False,
    ) -> None:
        self.conn = conn
        self.store = store
        self.target = os.fsencode(os.path.abspath(target))
        self.on_progress = on_progress or (lambda _n: None)
        self.strip = check_path(strip) if strip else []
        self.link_dest = os.fsencode(os.path.abspath(link_dest)) if link_dest else None
        self.as_root = os.geteuid() == 0
        self.meta = MetadataWriter()
        self.result = RestoreResult()
        self.made: set[bytes] = set()
        self.chains: dict[int, list[Any]] = {}  # content id -> its chain rows, from the plan
        self.token = os.urandom(6).hex().encode()  # names this restore's temporary entries
        self.work: Path | None = None  # this restore's work directory, in the target
        self.names = itertools.count()
        self.workdirs: dict[bytes, Path] = {}
        self.on_total = on_total or (lambda _n: None)
        self.overwrite = overwrite
        self.delete = delete
        self.blocked: set[bytes] = set()  # directories of the snapshot kept as something else
        # A directory's path -> its name under the target, once checked: a directory is blocked
        # (or not) before any path below it is looked at, and what is made stays made.
        self.parents: dict[bytes, bytes] = {}
        self.handles = Handles()

    def run(self, snapshot_id: int, prefixes: list[bytes]) -> RestoreResult:
        """Restore; files are rebuilt in store order, and made durable by one sync at the end."""
        try:
            return self._run(snapshot_id, prefixes)
        finally:
            self.handles.close()

    def _run(self, snapshot_id: int, prefixes: list[bytes]) -> RestoreResult:
        os.makedirs(self.target, exist_ok=True)
        try:
            self.meta.make_writable(self.target, os.stat(self.target))
            clear_leftovers(self.target)  # a killed restore's work directory, its temporaries
            self._entries(snapshot_id, prefixes)
        except KeyboardInterrupt:  # and SIGTERM, SIGHUP (floor.errors.Interrupted)
            self._sweep_temporaries()
            raise
        finally:
            self.meta.give_back()  # read-only directories made writable, not restored
            self.result.warnings = self.meta.warnings
            self.result.setid_dropped = len(self.meta.setid_dropped)
        sync_filesystem(self.target)
        return self.result

    def _entries(self, snapshot_id: int, prefixes: list[bytes]) -> None:
        dirs: list[Any] = []
        files: list[Any] = []
        links: list[Any] = []
        specials: list[Any] = []
        by_kind = {KIND_DIR: dirs, KIND_FILE: files, KIND_LINK: links}
        for e in restore_queries.versions_at(self.conn, snapshot_id, prefixes):
            by_kind.get(e.kind, specials).append(e)
        for e in dirs:
            self._guard(e, self._dir)
        files, plan, order = self._plan(files)
        where, prefix = os.fsdecode(self.target), tagged(".deltagrid-restore")
        self.work = work = Path(tempfile.mkdtemp(dir=where, prefix=prefix))
        self.source = Fetcher(self.store, work, plan, order)
        try:
            self._files(files)
        finally:
            try:
                self.source.close()
            finally:  # even when a signal lands in the close
                shutil.rmtree(work, ignore_errors=True)
        for e in specials:
            self._guard(e, self._special)
        for e in links:
            self._guard(e, self._symlink)
        if self.delete:
            self._remove_extras(dirs + files + specials + links, dirs)
        for e in reversed(dirs):
            self._guard(e, self._dir_meta)

    def _files(self, files: list[Any]) -> None:
        """Rebuild and write the files in store order; large ones in the background."""
        linked: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self.background = Background(self._count_file, self._entry_failed)
        self.writes = Writes(self._write_bytes, self._count_file, self._entry_failed)
        try:
            for e in files:
                self._guard(e, lambda e: self._file(e, linked))
                self.background.settle()
            self.writes.finish()
            self.background.settle(wait_all=True)
        except BaseException:
            self.source.stop()  # a large file in flight fails at its next read
            raise
        finally:
            try:
                self.writes.close()
            finally:
                self.background.close()

    def _plan(self, files: list[Any]) -> tuple[list[Any], dict[int, list[Piece]], list[int]]:
        """Order files by where their data lies in the store, and list the contents they read.

        A hard link to a file restored before it reads nothing; a file whose chain cannot be
        planned goes last and fails, named, when rebuilt.
        """
        contents = load_chains(self.conn, {e.content_id for e in files})
        pieces = restore_queries.pieces_of_contents(self.conn, contents, Piece.from_row)
        plan = {c: pieces.get(c, []) for c in contents}
        seen_links: set[tuple[int, int, bytes]] = set()
        readers: list[tuple[int, Any, list[int]]] = []
        others: list[Any] = []
        for e in files:
            link_key = (e.dev, e.inode, e.content_hash)
            if e.nlink > 1 and link_key in seen_links:
                others.append(e)
                continue
            seen_links.add(link_key)
            try:
                chain = chain_ids(contents, e.content_id)
                self.chains[e.content_id] = [contents[c] for c in chain]
            except DeltagridError:
                others.append(e)
                continue
            if len(chain) == 1:  # most files: no deltas
                first = plan[chain[0]][0].blob_id if plan[chain[0]] else 0
            else:
                first = min((plan[c][0].blob_id for c in chain if plan[c]), default=0)
            readers.append((first, e, chain))
        readers.sort(key=lambda r: r[0])
        self.on_total(sum(e.size for e in files))
        order = [c for _first, e, chain in readers for c in self._read_order(e, chain)]
        return [e for _first, e, _chain in readers] + others, plan, order

    def _read_order(self, e: Any, chain: list[int]) -> list[int]:
        """The contents of a chain in the order rebuilding reads them."""
        return chain[1:] + chain[:1] if composes(self.chains[e.content_id]) else chain

    def _guard(self, entry: Any, action: Callable[[Any], None]) -> None:
        try:
            action(entry)
        except Blocked:
            self.result.blocked += 1
        except ENTRY_ERRORS as exc:
            self._failed(entry, exc)

    def _entry_failed(self, entry: Any, exc: BaseException) -> bool:
        """Record an entry's error and go on; False for any other exception."""
        if not isinstance(exc, ENTRY_ERRORS):
            return False
        self._failed(entry, exc)
        return True

    def _failed(self, entry: Any, exc: BaseException) -> None:
        message = str(exc) if not isinstance(exc, OSError) else (exc.strerror or str(exc))
        self.result.errors.append((entry.path, message))
        if isinstance(exc, CorruptData | ObjectMissing) and entry.kind == KIND_FILE:
            self.result.damaged.add(entry.content_id)
        if isinstance(exc, ObjectMissing):
            self.result.missing.add(entry.path)

    def _parts(self, path: bytes) -> list[bytes]:
        """The checked components of `path` below the target."""
        parts = check_path(path)
        if parts[: len(self.strip)] != self.strip:
            raise UnsafePath("path is outside the subtree being restored")
        return parts[len(self.strip) :]

    def _parent(self, parts: list[bytes]) -> bytes:
        """Make sure every directory above `parts` (a path's, from `_parts`) under the target is
        a real directory; the name to reach the last of them by (restore/handles.py: past
        PATH_MAX, a short one)."""
        current = self.target
        for part in parts[:-1]:
            current = self.handles.child(current, part)
            if current in self.blocked:
                raise Blocked()
            if current not in self.made:
                self._real_dir(current)
        return current

    def _real_dir(self, path: bytes) -> None:
        """Create `path`, or check it is a real directory (never a symlink); remember it. In
        one that was there, remove the temporaries a killed restore left (restore/leftovers.py)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o700)
            st = os.lstat(path)
            found = False
        else:
            found = True
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{os.fsdecode(path)} is in the way and not a directory")
        self.meta.make_writable(path, st)  # a read-only one an earlier restore left
        if found:
            clear_leftovers(path)
        self.made.add(path)

    def _dest(self, path: bytes) -> bytes:
        parts = self._parts(path)
        if not parts:
            return self.target
        above = path.rpartition(b"/")[0]
        parent = self.parents.get(above)
        if parent is None:
            parent = self.parents[above] = self._parent(parts)
        return parent + b"/" + parts[-1]

    def _leaf(self, path: bytes) -> bytes:
        """Where a file or symlink goes. Only a subtree restored as the target itself (--path P
        --into DIR) may put one there: anything else would work in the directory above it."""
        dest = self._dest(path)
        if dest == self.target and not self.strip:
            raise UnsafePath("only a directory can be restored as the target itself")
        return dest

    def _dir(self, e: Any) -> None:
        dest = self._dest(e.path)
        if dest != self.target and self._existing(e, dest) is Verdict.KEEP:
            self.blocked.add(dest)
            return
        self._real_dir(dest)
        self.result.dirs += 1

    def _dir_meta(self, e: Any) -> None:
        dest = self._dest(e.path)
        if dest not in self.made or not stat.S_ISDIR(os.lstat(dest).st_mode):
            return  # _dir refused it (a symlink in the way?) and said so: never follow it
        self.meta.apply(dest, dest, e, follow=True)

    def _install_as(self, tmp: bytes, dest: bytes, e: Any, follow: bool) -> None:
        """Give the temporary entry its metadata and rename it into place; drop it on failure."""
        try:
            self.meta.apply(tmp, dest, e, follow)
            self._install(tmp, dest)
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise

    def _install(self, tmp: bytes, dest: bytes) -> None:
        try:
            os.rename(tmp, dest)  # a file or symlink never replaces a directory: EISDIR
        except IsADirectoryError:
            raise UnsafePath(f"{os.fsdecode(dest)} is a directory in the way") from None

    def _temporary(self, parent: bytes, kind: str) -> bytes:
        """A new name in `parent` for an entry being made: created with O_EXCL (or link and
        symlink, which never follow), so a name already taken fails, never redirects."""
        prefix = tagged(".deltagrid-" + kind).encode()
        return b"%s/%s%s-%d" % (parent, prefix, self.token, next(self.names))

    def _sweep_temporaries(self) -> None:
        """Remove what an interruption may have caught between creating one of this run's
        temporary entries and renaming or removing it (each step cleans up after itself; this
        catches the moment in between). Only names carrying this run's token are touched."""
        if self.work is not None:  # a signal that landed while it was being removed
            shutil.rmtree(self.work, ignore_errors=True)
        mark, token = b".deltagrid-", self.token
        for directory in self.made | {self.target}:
            try:
                with os.scandir(directory) as entries:
                    ours = [e.path for e in entries if e.name.startswith(mark) and token in e.name]
            except OSError:
                continue
            for path in ours:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _file(self, e: Any, linked: dict[tuple[int, int], tuple[bytes, bytes]]) -> None:
        dest = self._leaf(e.path)
        parent = dest.rsplit(b"/", 1)[0]
        key = (e.dev, e.inode)
        first = linked.get(key) if e.nlink > 1 else None
        if first is not None and first[1] == e.content_hash:
            if not self._wanted(e, dest, lambda: _same_inode(dest, first[0]), self._count_link):
                return
            tmp = self._temporary(parent, "link")
            os.link(first[0], tmp)
            self._install(tmp, dest)
            self._count_link(e)
            return
        if not self._wanted(e, dest, lambda: self._same_bytes(e, dest), self._count_same):
            if e.nlink > 1 and dest not in self.result.kept:
                linked[key] = (dest, e.content_hash)  # found identical: later names join it
            return
        if e.size > IN_MEMORY and e.nlink == 1 and e.content_id in self.chains:
            self.background.submit(e, self._new_file, e, dest)
            return
        if e.nlink == 1 and e.extents is None and e.size <= IN_MEMORY and self.link_dest is None:
            self._new_file(e, dest, self.writes.add)  # counted once written
            return
        from_link_dest = self._new_file(e, dest)
        if e.nlink > 1 and not from_link_dest:
            linked[key] = (dest, e.content_hash)
        self._count_file(e, linked=from_link_dest)

    def _new_file(
        self, e: Any, dest: bytes, write: Callable[[Any, bytes, bytes, bytes], None] | None = None
    ) -> bool:
        """Link the same file from link_dest (True), or rebuild it and write it: here, or on the
        large files' thread; one rebuilt in memory by `write` if given (restore/writes.py)."""
        parent = dest.rsplit(b"/", 1)[0]
        if self._link_previous(e, dest, parent):
            return True
        rebuilt = rebuild_in_one_pass(
            self.conn,
            self.source,
            e.content_id,
            self._workdir(parent),
            self.chains.get(e.content_id),
        )
        if e.extents is not None:  # a sparse file: its data, laid out around its holes
            try:
                fill = functools.partial(
                    sparse.lay_out, content=rebuilt, extents=e.extents, size=e.size
                )
                self._write_new(fill, parent, dest, e)
            finally:
                if isinstance(rebuilt, Path):
                    rebuilt.unlink()
        elif isinstance(rebuilt, bytes):
            (write or self._write_bytes)(e, parent, dest, rebuilt)
        else:
            self._install_as(os.fsencode(rebuilt), dest, e, follow=True)
        return False

    def _workdir(self, parent: bytes) -> Path:
        """`parent` as the Path rebuild puts temporary files in: the same filesystem as the file."""
        path = self.workdirs.get(parent)
        if path is None:
            path = self.workdirs[parent] = Path(os.fsdecode(parent))
        return path

    def _count_file(self, e: Any, linked: bool) -> None:
        self.result.files += 1
        self.result.linked += linked
        self.result.size += e.size
        self.result.written += 0 if linked else e.size
        self.on_progress(e.size)

    def _write_bytes(self, e: Any, parent: bytes, dest: bytes, data: bytes) -> None:
        self._write_new(functools.partial(_write_all, data=data), parent, dest, e)

    def _write_new(self, fill: Callable[[int], None], parent: bytes, dest: bytes, e: Any) -> None:
        """Write a file (`fill` writes it into a descriptor) to a new name beside `dest`, give
        it its metadata through the open descriptor, and rename it into place: a few syscalls
        per file."""
        tmp = self._temporary(parent, "file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            try:
                fill(fd)
                self.meta.apply(fd, dest, e, follow=True)
            finally:
                os.close(fd)
            self._install(tmp, dest)
        except BaseException:  # a signal may land just after the rename: tmp is gone then
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _link_previous(self, e: Any, dest: bytes, parent: bytes) -> bool:
        """With link_dest: hard-link the same file of the previous tree, if it is identical."""
        if self.link_dest is None:
            return False
        if not dest.startswith(self.target + b"/"):
            return False  # reached through a descriptor (past PATH_MAX): no such PREV_DIR path
        previous = self.link_dest + dest[len(self.target) :]
        if not os.path.realpath(previous).startswith(os.path.realpath(self.link_dest) + b"/"):
            return False  # a symlinked directory in PREV_DIR leads elsewhere: never link there
        try:
            st = os.lstat(previous)
        except OSError:
            return False
        if not (
            stat.S_ISREG(st.st_mode)
            and (st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
            == (e.size, e.mtime_ns, e.mode)
            and (not self.as_root or (st.st_uid, st.st_gid) == (e.uid, e.gid))
            and xattrs.read(previous) == e.xattrs
            and (
                digest_file(Path(os.fsdecode(previous))) == e.content_hash
                if e.extents is None
                else sparse.same_file(previous, e.extents, e.size, e.content_hash)
            )
        ):
            return False
        tmp = self._temporary(parent, "link")
        os.link(previous, tmp)
        self._install(tmp, dest)
        return True

    def _symlink(self, e: Any) -> None:
        dest = self._leaf(e.path)
        if not self._wanted(e, dest, lambda: os.readlink(dest) == e.target, self._count_same):
            return
        parent = dest.rsplit(b"/", 1)[0]
        tmp = self._temporary(parent, "link")
        os.symlink(e.target, tmp)
        self._install_as(tmp, dest, e, follow=False)
        self.result.symlinks += 1

    def _special(self, e: Any) -> None:
        """A FIFO or device node, made at a temporary name (mknod never follows a symlink) and
        never opened: opening a FIFO waits for a writer, and opening some devices acts (a tape
        rewinds). Making a device node takes root (CAP_MKNOD): otherwise an error names it."""
        if e.kind not in SPECIALS:  # a catalog this deltagrid did not write
            raise CorruptData(f"unknown entry kind {e.kind!r}")
        dest = self._leaf(e.path)
        if not self._wanted(
            e, dest, lambda: os.lstat(dest).st_rdev == (e.rdev or 0), self._count_same
        ):
            return
        tmp = self._temporary(dest.rsplit(b"/", 1)[0], "special")
        os.mknod(tmp, 0o600 | TYPE_BITS[e.kind], e.rdev or 0)
        self._install_as(tmp, dest, e, follow=True)
        self.result.specials += 1

    # --- what is already in the target: --overwrite and --delete -------------------------------

    def _existing(self, e: Any, dest: bytes, same: Callable[[], bool] | None = None) -> Verdict:
        """Judge what is at `dest` for entry `e` (restore/policy.py); note a kept entry, and
        clear one of the other kind (file or directory) that is to be replaced."""
        if dest in self.made and e.kind != KIND_DIR:
            raise UnsafePath(f"{os.fsdecode(dest)} is a directory in the way")  # of the snapshot's
        try:
            found: os.stat_result | None = os.lstat(dest)
        except FileNotFoundError:
            found = None
        verdict = judge(self.overwrite, e.kind, e.size, e.mtime_ns, found, same or (lambda: False))
        if verdict is Verdict.KEEP:
            self.result.kept.append(dest)
        elif verdict is Verdict.REPLACE and found is not None:
            if stat.S_ISDIR(found.st_mode):
                self._clear_dir(dest)
            elif e.kind == KIND_DIR:
                os.unlink(dest)  # a file or symlink where the snapshot has a directory
        return verdict

    def _wanted(
        self, e: Any, dest: bytes, same: Callable[[], bool], count: Callable[[Any], None]
    ) -> bool:
        """Whether file or symlink `e` is to be written at `dest`; when it is already there,
        give it the snapshot's metadata if the mode says so, and `count` it."""
        if dest == self.target:
            return True  # --into: the fresh staging directory itself, nothing of the user's
        verdict = self._existing(e, dest, same)
        if verdict in (Verdict.WRITE, Verdict.REPLACE):
            return True
        if verdict is Verdict.META:
            self._meta_in_place(e, dest)
        if verdict is not Verdict.KEEP:
            count(e)
        return False

    def _same_bytes(self, e: Any, dest: bytes) -> bool:
        """Whether the regular file at `dest` holds exactly `e`'s bytes (hashed, not assumed);
        a file that cannot be read is not the same."""
        try:
            fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            if e.extents is not None:  # a sparse file's hash is its data runs' (sparse.py)
                return sparse.same_file(dest, e.extents, e.size, e.content_hash)
            try:
                return bool(file_digest(f, _hasher).digest() == e.content_hash)
            except OSError:
                return False

    def _meta_in_place(self, e: Any, dest: bytes) -> None:
        """Give the entry found at `dest` the snapshot's metadata, through a descriptor opened
        without following a symlink (a symlink's own through l-calls, a FIFO's or device's
        through its path)."""
        if e.kind == KIND_LINK:
            self.meta.apply(dest, dest, e, follow=False)
            return
        if e.kind in SPECIALS:  # never opened (_special says why)
            self.meta.apply(dest, dest, e, follow=True)
            return
        fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.meta.apply(fd, dest, e, follow=True)
        finally:
            os.close(fd)

    def _clear_dir(self, dest: bytes) -> None:
        """Remove the directory at `dest` to put a file or symlink there: an empty one always,
        one with entries only with --delete (without following symlinks)."""
        try:
            os.rmdir(dest)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if not self.delete:
                raise DeltagridError(
                    f"{os.fsdecode(dest)} is a directory in the way, not empty "
                    "(--delete replaces it)"
                ) from None
            shutil.rmtree(dest)
            self.result.deleted.append(dest)

    def _count_link(self, _e: Any) -> None:
        self.result.hardlinks += 1

    def _count_same(self, e: Any) -> None:
        if e.kind == KIND_FILE:
            self.result.files += 1
            self.result.same += 1
            self.result.size += e.size
            self.result.skipped += e.size
            self.on_progress(e.size)
        elif e.kind == KIND_LINK:
            self.result.symlinks += 1
        else:
            self.result.specials += 1

    def _remove_extras(self, entries: list[Any], dirs: list[Any]) -> None:
        """--delete: below the topmost restored directories, what the snapshot does not have."""
        where = {e.path: self._where(e.path) for e in entries}
        dir_paths = {e.path for e in dirs}
        roots = [
            where[e.path]
            for e in dirs
            if e.path.rsplit(b"/", 1)[0] not in dir_paths and where[e.path] in self.made
        ]
        remove_extras(
            self.target,
            [r for r in roots if r is not None],
            {w for w in where.values() if w is not None},
            {w for p, w in where.items() if p in dir_paths and w in self.made},
            self.result.deleted.append,
            lambda path, exc: self.result.errors.append((path, exc.strerror or str(exc))),
        )

    def _where(self, path: bytes) -> bytes | None:
        """Where a backupdb path lands under the target (None: a path restore refused)."""
        try:
            parts = self._parts(path)
        except UnsafePath:
            return None
        return b"/".join([self.target, *parts]) if parts else self.target


def _same_inode(a: bytes, b: bytes) -> bool:
    sa, sb = os.lstat(a), os.lstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _hasher() -> Any:
    return hashlib.blake2b(digest_size=32)


def _write_all(fd: int, data: bytes) -> None:
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
