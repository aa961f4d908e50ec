"""Restoring a snapshot (or paths in it) under a target directory.

Entries land at TARGET + their original absolute path. Nothing is written outside TARGET: every
path from the backupdb is checked component by component, directories under TARGET are created
by us and re-checked to be real directories (never symlinks) before anything is put in them,
files are written to a temporary name and renamed into place, and symlinks are created last, so
no link restored in this run can redirect a later write.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from sqlite3 import Connection
from typing import Any

from deltagrid.backupdb import restore_queries
from deltagrid.backupdb.entries import KIND_DIR, KIND_FILE, KIND_LINK
from deltagrid.floor.errors import DeltagridError
from deltagrid.floor.fs import sync_filesystem
from deltagrid.restore import sparse
from deltagrid.restore.background import Background
from deltagrid.restore.fetch import Fetcher, Piece
from deltagrid.restore.handles import Handles
from deltagrid.restore.rebuild import (
    IN_MEMORY,
    chain_ids,
    composes,
    load_chains,
    rebuild_in_one_pass,
)
from deltagrid.store.base import Store
from deltagrid.store.pack import digest_file

ENTRY_ERRORS = (DeltagridError, OSError, OverflowError)  # one entry fails (Overflow: a mode, time
# or id out of range), the restore goes on


class UnsafePath(DeltagridError):
    """A path from the backupdb would leave the target."""


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    linked: int = 0  # files hard-linked from --link-dest instead of written
    size: int = 0
    errors: list[tuple[bytes, str]] = field(default_factory=list)


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
    ) -> None:
        self.conn = conn
        self.store = store
        self.target = os.fsencode(os.path.abspath(target))
        self.on_progress = on_progress or (lambda _n: None)
        self.strip = check_path(strip) if strip else []
        self.link_dest = os.fsencode(os.path.abspath(link_dest)) if link_dest else None
        self.as_root = os.geteuid() == 0
        self.result = RestoreResult()
        self.made: set[bytes] = set()
        self.chains: dict[int, list[Any]] = {}  # content id -> its chain rows, from the plan
        self.token = os.urandom(6).hex().encode()  # names this restore's temporary entries
        self.names = itertools.count()
        self.workdirs: dict[bytes, Path] = {}
        self.on_total = on_total or (lambda _n: None)
        self.handles = Handles()

    def run(self, snapshot_id: int, prefixes: list[bytes]) -> RestoreResult:
        """Restore; files are rebuilt in store order, and made durable by one sync at the end."""
        try:
            return self._run(snapshot_id, prefixes)
        finally:
            self.handles.close()

    def _run(self, snapshot_id: int, prefixes: list[bytes]) -> RestoreResult:
        os.makedirs(self.target, exist_ok=True)
        dirs: list[Any] = []
        files: list[Any] = []
        links: list[Any] = []
        for e in restore_queries.versions_at(self.conn, snapshot_id, prefixes):
            {KIND_DIR: dirs, KIND_FILE: files, KIND_LINK: links}[e.kind].append(e)
        for e in dirs:
            self._guard(e, self._dir)
        files, plan, order = self._plan(files)
        work = Path(tempfile.mkdtemp(dir=os.fsdecode(self.target), prefix=".deltagrid-restore-"))
        self.source = Fetcher(self.store, work, plan, order)
        try:
            self._files(files)
        finally:
            self.source.close()
            shutil.rmtree(work, ignore_errors=True)
        for e in links:
            self._guard(e, self._symlink)
        for e in reversed(dirs):
            self._guard(e, self._dir_meta)
        sync_filesystem(self.target)
        return self.result

    def _files(self, files: list[Any]) -> None:
        """Rebuild and write the files in store order; large ones in the background."""
        linked: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self.background = Background(self._count_file, self._entry_failed)
        try:
            for e in files:
                self._guard(e, lambda e: self._file(e, linked))
                self.background.settle()
            self.background.settle(wait_all=True)
        except BaseException:
            self.source.stop()  # a large file in flight fails at its next read
            raise
        finally:
            self.background.close()

    def _plan(self, files: list[Any]) -> tuple[list[Any], dict[int, list[Piece]], list[int]]:
        """Order files by where their data lies in the store, and list the contents they read.

        A hard link to a file restored before it reads nothing; a file whose chain cannot be
        planned goes last and fails, named, when rebuilt.
        """
        contents = load_chains(self.conn, {e.content_id for e in files})
        rows = restore_queries.pieces_of_contents(self.conn, contents)
        plan = {c: [Piece.from_row(r) for r in rows.get(c, [])] for c in contents}
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

    def _parts(self, path: bytes) -> list[bytes]:
        """The checked components of `path` below the target."""
        parts = check_path(path)
        if parts[: len(self.strip)] != self.strip:
            raise UnsafePath("path is outside the subtree being restored")
        return parts[len(self.strip) :]

    def _parent(self, path: bytes) -> bytes:
        """Make sure every directory above `path` under the target is a real directory; the
        name to reach the last of them by (restore/handles.py: past PATH_MAX, a short one)."""
        parts = self._parts(path)
        current = self.target
        for part in parts[:-1]:
            current = self.handles.child(current, part)
            if current not in self.made:
                self._real_dir(current)
        return current

    def _real_dir(self, path: bytes) -> None:
        """Create `path`, or check it is a real directory (never a symlink); remember it."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o700)
            st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{os.fsdecode(path)} is in the way and not a directory")
        self.made.add(path)

    def _dest(self, path: bytes) -> bytes:
        parent = self._parent(path)
        parts = self._parts(path)
        return parent + b"/" + parts[-1] if parts else self.target

    def _leaf(self, path: bytes) -> bytes:
        """Where a file or symlink goes. Only a subtree restored as the target itself (--path P
        --into DIR) may put one there: anything else would work in the directory above it."""
        dest = self._dest(path)
        if dest == self.target and not self.strip:
            raise UnsafePath("only a directory can be restored as the target itself")
        return dest

    def _dir(self, e: Any) -> None:
        self._real_dir(self._dest(e.path))
        self.result.dirs += 1

    def _dir_meta(self, e: Any) -> None:
        dest = self._dest(e.path)
        if dest not in self.made or not stat.S_ISDIR(os.lstat(dest).st_mode):
            return  # _dir refused it (a symlink in the way?) and said so: never follow it
        self._set_meta(dest, e, follow=True)

    def _set_meta(self, dest: bytes, e: Any, follow: bool) -> None:
        if self.as_root:
            os.chown(dest, e.uid, e.gid, follow_symlinks=follow)
        if follow:
            os.chmod(dest, e.mode)
        os.utime(dest, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=follow)

    def _install_as(self, tmp: bytes, dest: bytes, e: Any, follow: bool) -> None:
        """Give the temporary entry its metadata and rename it into place; drop it on failure."""
        try:
            self._set_meta(tmp, e, follow=follow)
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

    def _temporary(self, parent: bytes, kind: bytes) -> bytes:
        """A new name in `parent` for an entry being made: created with O_EXCL (or link and
        symlink, which never follow), so a name already taken fails, never redirects."""
        return b"%s/.deltagrid-%s-%s-%d" % (parent, kind, self.token, next(self.names))

    def _file(self, e: Any, linked: dict[tuple[int, int], tuple[bytes, bytes]]) -> None:
        dest = self._leaf(e.path)
        parent = dest.rsplit(b"/", 1)[0]
        key = (e.dev, e.inode)
        first = linked.get(key) if e.nlink > 1 else None
        if first is not None and first[1] == e.content_hash:
            tmp = self._temporary(parent, b"link")
            os.link(first[0], tmp)
            self._install(tmp, dest)
            self.result.hardlinks += 1
            return
        if e.size > IN_MEMORY and e.nlink == 1 and e.content_id in self.chains:
            self.background.submit(e, self._new_file, e, dest)
            return
        from_link_dest = self._new_file(e, dest)
        if e.nlink > 1 and not from_link_dest:
            linked[key] = (dest, e.content_hash)
        self._count_file(e, linked=from_link_dest)

    def _new_file(self, e: Any, dest: bytes) -> bool:
        """Link the same file from link_dest (True), or rebuild it and write it; here or on the
        large files' thread."""
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
            self._write_new(functools.partial(_write_all, data=rebuilt), parent, dest, e)
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
        self.on_progress(e.size)

    def _write_new(self, fill: Callable[[int], None], parent: bytes, dest: bytes, e: Any) -> None:
        """Write a file (`fill` writes it into a descriptor) to a new name beside `dest`, give
        it its metadata through the open descriptor, and rename it into place: a few syscalls
        per file."""
        tmp = self._temporary(parent, b"file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            try:
                fill(fd)
                if self.as_root:
                    os.fchown(fd, e.uid, e.gid)
                os.fchmod(fd, e.mode)
                os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            finally:
                os.close(fd)
            self._install(tmp, dest)
        except BaseException:
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
            and (
                digest_file(Path(os.fsdecode(previous))) == e.content_hash
                if e.extents is None
                else sparse.same_file(previous, e.extents, e.size, e.content_hash)
            )
        ):
            return False
        tmp = self._temporary(parent, b"link")
        os.link(previous, tmp)
        self._install(tmp, dest)
        return True

    def _symlink(self, e: Any) -> None:
        dest = self._leaf(e.path)
        parent = dest.rsplit(b"/", 1)[0]
        tmp = self._temporary(parent, b"link")
        os.symlink(e.target, tmp)
        self._install_as(tmp, dest, e, follow=False)
        self.result.symlinks += 1


def _write_all(fd: int, data: bytes) -> None:
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
