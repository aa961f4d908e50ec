"""Carrying out a maintenance plan: new keyframes, repacked packs, dropped rows, then commit.

The order is what makes a crash at any line harmless:
1. new packs (keyframes rebuilt from the store or, for a repair, read again from the source;
   live blobs copied out of mostly-dead packs) are written to the spool and put to the store —
   unreferenced until step 2, so a crash leaves only orphans that a later prune removes;
2. one transaction rewrites the catalog: new keyframes and blob locations, then every row no kept
   snapshot needs is deleted, and the store objects the catalog and root no longer name (packs,
   the backupdb exports of the old root, orphans of killed runs) are recorded as `unreferenced`;
3. the backupdb is published as a full export and the root pointer moves; then the unreferenced
   objects recorded before it are stamped with the time (their grace period starts);
4. only then are the objects unreferenced for longer than `delete_after` (all of them with
   `--delete-now`) deleted, and their rows dropped, once no reader on this machine that began
   before step 2 is still reading (`alone`: the home's readers' lock, taken exclusively; readers
   left running past the wait keep them until a later run). Readers on other machines, which no
   lock here reaches, have `delete_after` to finish.
Until step 3 the store's root still names the old catalog, whose objects all still exist; an
object is deleted only after a root that does not name it has stood for `delete_after`.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Connection, Engine

from deltagrid.backupdb import queries, unreferenced
from deltagrid.floor.errors import DeltagridError
from deltagrid.repository.publisher import Publisher
from deltagrid.repository.root import parse_root
from deltagrid.restore.rebuild import DirectSource, chain_ids, load_chains, materialize
from deltagrid.store.base import Store
from deltagrid.store.pack import digest
from deltagrid.uploader.packing import Packer
from deltagrid.uploader.spool import MAINTENANCE_PREFIX, clear_leftovers


@dataclass
class Plan:
    """What a maintenance run will change (ids in the backupdb)."""

    keyframes: set[int] = field(default_factory=set)  # contents to store whole again
    dead_versions: set[int] = field(default_factory=set)
    dead_contents: set[int] = field(default_factory=set)
    dead_blobs: set[int] = field(default_factory=set)
    dead_packs: set[int] = field(default_factory=set)  # no live blob: deleted
    repack: set[int] = field(default_factory=set)  # mostly dead: live blobs copied out
    # keyframes read from a source file rather than rebuilt from the store: (path, content hash)
    sources: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)


@dataclass
class Outcome:
    keyframes_written: int = 0
    versions_dropped: int = 0
    contents_dropped: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_freed: int = 0  # pack bytes the catalog no longer references
    bytes_written: int = 0
    objects_deleted: int = 0
    objects_kept: int = 0  # due, but readers here were still reading: a later run deletes them
    objects_waiting: int = 0  # unreferenced for less than delete_after: a later run deletes them


class Executor:
    def __init__(
        self,
        engine: Engine,
        store: Store,
        publisher: Publisher,
        spool: Path,
        piece_size: int,
        pack_size: int,
        warn: Callable[[str], None],
        alone: Callable[[], AbstractContextManager[bool]],
        delete_after_ns: int,
    ) -> None:
        self.engine = engine
        self.store = store
        self.publisher = publisher
        self.spool = spool
        self.piece_size = piece_size
        self.warn = warn
        self.alone = alone  # the readers' lock, exclusively: False when readers stay too long
        self.delete_after_ns = delete_after_ns  # 0: as soon as the root no longer names them
        self.outcome = Outcome()
        self.packer = Packer(spool, pack_size)
        self.written: list[tuple[str, int, list[tuple[Any, Any]]]] = []  # ref, size, blobs
        self.pending: list[Any] = []  # what each blob of the open pack is, in order

    # --- step 1: new packs ---------------------------------------------------------------------

    def _add(self, what: Any, frame: bytes | None, raw: bytes | None, meta: Any = None) -> None:
        if frame is not None:
            self.packer.add_frame(frame, meta.raw_length, meta.hash)
        else:
            assert raw is not None
            self.packer.add(raw, digest(raw))
        self.pending.append(what)
        if self.packer.full:
            self._flush()

    def _flush(self) -> None:
        pack = self.packer.finish()
        if pack is None:
            return
        try:
            ref = pack.put(self.store)
        except BaseException:
            pack.writer.discard()
            raise
        entries = [blob.entry for blob in pack.blobs]
        self.written.append((ref, pack.size, list(zip(self.pending, entries, strict=True))))
        self.outcome.packs_written += 1
        self.outcome.bytes_written += pack.size
        self.pending = []

    def _keyframe(self, conn: Connection, content_id: int, work: Path) -> None:
        rebuilt = materialize(queries.driver(conn), DirectSource(self.store), content_id, work)
        try:
            with open(rebuilt, "rb") as f:
                self._pieces(content_id, f)
        finally:
            rebuilt.unlink()

    def _pieces(self, content_id: int, f: BinaryIO) -> bytes:
        """Add a keyframe's pieces from `f`; the hash of its bytes."""
        h = hashlib.blake2b(digest_size=32)
        seq = 0
        while raw := f.read(self.piece_size):
            h.update(raw)
            self._add(("key", content_id, seq), None, raw)
            seq += 1
        return h.digest()

    def _keyframe_from(self, content_id: int, path: bytes, content_hash: bytes) -> None:
        """A keyframe read from a source file that held the content's bytes when the plan was
        made. If it changed since, the run stops before the catalog is touched."""
        try:
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
                found = self._pieces(content_id, f)
        except OSError as exc:
            found = str(exc).encode()
        if found != content_hash:
            raise DeltagridError(
                f"{os.fsdecode(path)} changed while it was read; run the command again"
            )

    def _copy_out(self, conn: Connection, pack_ids: set[int], live: set[int]) -> None:
        packs = {p.id: p for p in queries.all_packs(conn)}
        by_pack: dict[int, list[Any]] = {}
        for b in queries.all_blobs(conn):
            if b.pack_id in pack_ids and b.id in live:
                by_pack.setdefault(b.pack_id, []).append(b)
        for pack_id, members in by_pack.items():
            data = self.store.get(packs[pack_id].ref)
            for b in sorted(members, key=lambda b: b.offset):
                self._add(("move", b.id), data[b.offset : b.offset + b.length], None, b)

    # --- steps 2 to 4 --------------------------------------------------------------------------

    def run(self, plan: Plan, live_blobs: set[int], snapshot_id: int) -> Outcome:
        """Steps 2 to 4; whatever the run leaves in the spool (a pack a signal caught between
        two steps) goes at its end, as the next writer would drop it (we hold the lock)."""
        try:
            return self._run(plan, live_blobs, snapshot_id)
        finally:
            clear_leftovers(self.spool)

    def _run(self, plan: Plan, live_blobs: set[int], snapshot_id: int) -> Outcome:
        clear_leftovers(self.spool)
        old_refs = self._referenced_refs()
        # Listed before anything is put: what the catalog and root do not name is a killed
        # run's orphan (we hold the home's lock: no upload is under way).
        stored = set(self.store.list_refs()) if self.store.can_delete else set()
        with (
            self.engine.connect() as conn,
            tempfile.TemporaryDirectory(dir=self.spool, prefix=MAINTENANCE_PREFIX) as tmp,
        ):
            try:
                for content_id in sorted(plan.keyframes):
                    if content_id in plan.sources:
                        self._keyframe_from(content_id, *plan.sources[content_id])
                    else:
                        self._keyframe(conn, content_id, Path(tmp))
                self._copy_out(conn, plan.repack, live_blobs)
                self._flush()
            finally:
                self.packer.discard()
            conn.commit()
            self._rewrite_catalog(conn, plan, snapshot_id)
            if self.store.can_delete:
                now_named = {p.ref for p in queries.all_packs(conn)}
                unreferenced.record(queries.driver(conn), (old_refs | stored) - now_named)
            conn.commit()
        self.publisher.publish(again=True, full=True)
        if self.store.can_delete:
            self._delete_unreferenced(time.time_ns())
        return self.outcome

    def _rewrite_catalog(self, conn: Connection, plan: Plan, snapshot_id: int) -> None:
        new_key_blobs: dict[int, list[tuple[int, int]]] = {}
        for ref, size, members in self.written:
            pack_id = queries.add_pack(conn, ref, size, snapshot_id)
            for what, e in members:
                if what[0] == "move":
                    queries.relocate_blob(conn, what[1], pack_id, e.offset)
                else:
                    blob_id = queries.add_blob(
                        conn, pack_id, e.offset, e.length, e.raw_length, e.hash
                    )
                    new_key_blobs.setdefault(what[1], []).append((what[2], blob_id))
        if plan.keyframes:
            self._rechain(conn, plan.keyframes, new_key_blobs)
        queries.drop_versions(conn, plan.dead_versions)
        queries.drop_contents(conn, plan.dead_contents)
        queries.drop_blobs(conn, plan.dead_blobs)
        freed = {p.id: p.size for p in queries.all_packs(conn)}
        self.outcome.bytes_freed = sum(freed.get(p, 0) for p in plan.dead_packs | plan.repack)
        queries.drop_packs(conn, plan.dead_packs | plan.repack)
        self.outcome.keyframes_written = len(plan.keyframes)
        self.outcome.versions_dropped = len(plan.dead_versions)
        self.outcome.contents_dropped = len(plan.dead_contents)
        self.outcome.packs_deleted = len(plan.dead_packs)
        self.outcome.packs_repacked = len(plan.repack)

    def _rechain(
        self, conn: Connection, keyframes: set[int], new_blobs: dict[int, list[tuple[int, int]]]
    ) -> None:
        """Make `keyframes` keyframes, and fix depth and chain bytes of the deltas above them."""
        rows = {r.id: r for r in queries.all_contents(conn)}
        delta_size = {
            c: r.chain_bytes - (rows[r.basis_id].chain_bytes if r.basis_id else 0)
            for c, r in rows.items()
        }
        new: dict[int, tuple[int | None, int, int]] = {}

        def placed(c: int) -> tuple[int | None, int, int]:
            if c not in new:
                r = rows[c]
                if c in keyframes or r.basis_id is None:
                    new[c] = (None, 0, 0)
                else:
                    _b, depth, chain = placed(r.basis_id)
                    new[c] = (r.basis_id, depth + 1, chain + delta_size[c])
            return new[c]

        changed = set(keyframes)
        for c in sorted(rows, key=lambda c: rows[c].depth):
            if rows[c].basis_id in changed:
                changed.add(c)
        for c in sorted(changed, key=lambda c: rows[c].depth):
            basis, depth, chain = placed(c)
            blobs = [b for _s, b in sorted(new_blobs.get(c, []))] if c in keyframes else None
            queries.set_chain(conn, c, basis, depth, chain, blobs)

    def _referenced_refs(self) -> set[str]:
        with self.engine.connect() as conn:
            refs = {p.ref for p in queries.all_packs(conn)}
        root = parse_root(self.store.read_root())
        return refs | {e["ref"] for e in (root or {}).get("backupdb", [])}

    def _delete_unreferenced(self, published_ns: int) -> None:
        """After the root moved: stamp what it stopped naming, then delete what has been
        unreferenced for `delete_after`, once the readers here that may still read it are done."""
        named = self._referenced_refs()
        with self.engine.begin() as conn:
            raw = queries.driver(conn)
            unreferenced.drop(raw, unreferenced.waiting(raw) & named)  # named again: kept
            unreferenced.stamp(raw, published_ns)
            doomed = unreferenced.due(raw, time.time_ns() - self.delete_after_ns)
            self.outcome.objects_waiting = len(unreferenced.waiting(raw)) - len(doomed)
        self.outcome.objects_deleted += self.store.clear_temporaries()  # killed puts' leftovers
        if not doomed:
            return
        with self.alone() as alone:
            if not alone:
                self.outcome.objects_kept = len(doomed)
                self.warn(
                    f"{len(doomed)} store objects nothing references any more are kept: "
                    "a restore, verify, ls or diff is still reading; the next prune deletes them "
                    "(or pass --wait SECONDS to wait for it)"
                )
                return
            for ref in doomed:
                self.store.delete(ref)
                self.outcome.objects_deleted += 1
        with self.engine.begin() as conn:
            unreferenced.drop(queries.driver(conn), doomed)


def needed_versions(spans: list[Any], kept: list[int]) -> set[int]:
    """Versions live in at least one kept snapshot (`kept` sorted)."""
    needed = set()
    for v in spans:
        i = bisect.bisect_left(kept, v.valid_from)
        if i < len(kept) and (v.valid_until is None or kept[i] < v.valid_until):
            needed.add(v.id)
    return needed


def chains_of(conn: Connection, content_ids: set[int]) -> dict[int, list[int]]:
    rows = load_chains(queries.driver(conn), content_ids)
    return {c: chain_ids(rows, c) for c in content_ids}
