"""Local cache of librsync signatures, by content hash.

Signatures are what a delta is computed against; they never go to the store (a 256 MB file's
signature would cost megabytes a night). A missing or damaged one is rebuilt from the store.
Each file ends with the BLAKE2b of the signature, so a torn or rotten file is never used.

Because of that check, and because a lost signature only costs a rebuild, a signature is written
straight to its name *without* fsync: two fsyncs per file were a third of an initial backup (about
10 ms each here), and a crash can only leave a file the check rejects, so neither a temporary name
nor a rename buys anything. Only the uploader, under the home's lock, writes here.
"""

from __future__ import annotations

from pathlib import Path

from store.pack import digest


class SigCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: set[Path] = set()  # fan-out directories known to exist: one mkdir each

    def _path(self, content_hash: bytes) -> Path:
        name = content_hash.hex()
        return self.root / name[:2] / name

    def get(self, content_hash: bytes) -> bytes | None:
        try:
            data = self._path(content_hash).read_bytes()
        except OSError:
            return None
        sig, check = data[:-32], data[-32:]
        return sig if len(data) >= 32 and digest(sig) == check else None

    def put(self, content_hash: bytes, sig: bytes) -> None:
        path = self._path(content_hash)
        if path.parent not in self.made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.made.add(path.parent)
        with open(path, "wb") as f:
            f.write(sig)
            f.write(digest(sig))

    def discard(self, content_hash: bytes) -> None:
        self._path(content_hash).unlink(missing_ok=True)
