"""What the catalog holds of the hashes an upload meets: asked many at a time, then remembered.

Only this run adds contents and blobs while it holds the home's lock, and it tells the cache
each time (`added_*`), so an answer stays true for the whole run, a "not there" included. A
backupdb that held no contents or blobs when the run began (a first backup) is never asked
about a hash this run did not add: it is not there. On a large run the answers are dropped once
they hold `_MAX` hashes, so memory stays flat; on a first backup the first 8 bytes of what was
added are kept (a few dozen bytes a hash, not a few hundred), so a hash whose prefix was never
added is still known to be new without asking, and only a real copy (or a rare shared prefix)
is asked about.

Nor does a first backup keep the catalog's hash indexes up to date while it adds (each of its
transactions would write most of their pages again: at a million tiny files, more than the rest
of the recording): it drops them, and builds them once at its end (`build_indexes`), or as soon
as the catalog must be asked for a hash. An upload after one that was killed builds them first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from deltagrid.backupdb import connection, upload_queries

_MAX = 200_000
_UNKNOWN = -1  # no id


class CatalogCache:
    def __init__(self, conn: sqlite3.Connection, ready: Callable[[], Iterable[bytes]]) -> None:
        """`ready`: hashes likely asked for soon (the read-ahead's), asked along with a miss."""
        self.conn = conn
        self.ready = ready
        self.contents: dict[bytes, int | None] = {}
        self.blobs: dict[bytes, int | None] = {}
        # On a first backup: a hash not answered, whose prefix is not in `added`, is not there.
        self.complete = upload_queries.holds_no_contents(conn)
        self.added: set[int] = set()  # prefixes of the hashes added, once the answers were dropped
        self.indexed = False
        if self.complete:
            connection.drop_hash_indexes(conn)
        else:
            self.build_indexes()

    def content(self, digest: bytes) -> int | None:
        """The id of the content with these bytes, if the catalog has one."""
        return self._known(self.contents, digest)

    def blob(self, digest: bytes) -> int | None:
        """The id of a stored blob with these raw bytes, if the catalog has one."""
        return self._known(self.blobs, digest)

    def blob_if_known(self, digest: bytes) -> tuple[bool, int | None]:
        """Whether the answer is known without asking, and the blob's id if there is one. Safe
        on another thread (the big files' reader): a dict or set lookup, and `_bound` adds the
        prefixes before it drops the answers."""
        blob_id = self.blobs.get(digest, _UNKNOWN)
        if blob_id != _UNKNOWN:
            return True, blob_id
        return not self._unknown(digest), None

    def build_indexes(self) -> None:
        """Build the hash indexes a first backup dropped, if they are not built."""
        if not self.indexed:
            connection.build_hash_indexes(self.conn)
        self.indexed = True

    def stored_blobs(self, digests: Iterable[bytes]) -> dict[bytes, int]:
        """Those of `digests` the catalog has a blob for, asked in one query."""
        wanted = set(digests)
        if any(self._may_hold(self.blobs, d) for d in wanted):
            self._ask(wanted, contents=False)
        found = {d: self.blobs.get(d) for d in wanted}
        return {d: blob_id for d, blob_id in found.items() if blob_id is not None}

    def added_contents(self, pairs: Iterable[tuple[bytes, int]]) -> None:
        self._bound()
        self.contents.update(pairs)

    def added_blobs(self, pairs: Iterable[tuple[bytes, int]]) -> None:
        self._bound()
        self.blobs.update(pairs)

    def _known(self, answers: dict[bytes, int | None], digest: bytes) -> int | None:
        if self._may_hold(answers, digest):
            self._ask({digest, *self.ready()})
        return answers.get(digest)

    def _may_hold(self, answers: dict[bytes, int | None], digest: bytes) -> bool:
        """Whether the catalog must be asked: the answer is not known."""
        return digest not in answers and self._unknown(digest)

    def _unknown(self, digest: bytes) -> bool:
        """Whether the catalog may hold a hash the answers do not have."""
        return not self.complete or (bool(self.added) and _prefix(digest) in self.added)

    def _ask(self, wanted: set[bytes], contents: bool = True) -> None:
        """Ask about many hashes, one query for blobs and (unless not `contents`) one for
        contents: a query a file cost ~0.2 ms, not 0.02, as each hands the GIL to the reader
        threads and waits to get it back. What is already known is left out by looking each
        hash up: `wanted - answers.keys()` walks the whole cache (a set minus a dict view
        copies the set, then discards every key of the view), a cost per miss that grew with
        the run and made a million-file backup superlinear."""
        self._bound()
        self.build_indexes()
        if contents:
            asked = {d for d in wanted if d not in self.contents}
            found = upload_queries.contents_by_hash(self.conn, asked)
            self.contents.update((d, found[d].id if d in found else None) for d in asked)
        asked = {d for d in wanted if d not in self.blobs}
        blobs = upload_queries.blobs_by_hash(self.conn, asked)
        self.blobs.update((d, blobs.get(d)) for d in asked)

    def _bound(self) -> None:
        """Drop the answers once past `_MAX` hashes (before adding, so what is added stays);
        on a first backup keep the prefixes of what was found, so new hashes stay known new."""
        if len(self.contents) + len(self.blobs) > _MAX:
            if self.complete:
                for answers in (self.contents, self.blobs):
                    self.added.update(_prefix(d) for d, i in answers.items() if i is not None)
            self.contents.clear()
            self.blobs.clear()


def _prefix(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "little")
