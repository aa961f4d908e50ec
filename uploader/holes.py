"""Reading a sparse file's data runs (floor/sparse.py), never its holes.

The runs' bytes, one after the other, are the file's content: read once, hashed as read, and
kept in memory up to the reader's memory limit, else in a private copy (a sparse file is rarely
read twice: a copy of its data costs what its data costs, not its size).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_CHUNK = 1 << 20


def read_runs(
    fd: int, runs: list[tuple[int, int]], memory_limit: int, workdir: Path
) -> tuple[bytes | Path, bytes, list[tuple[int, int]]]:
    """The data of `runs` (bytes, or a new temporary file under `workdir` the caller owns), its
    BLAKE2b-256, and the runs as read: a run cut short (the file shrank meanwhile) is recorded
    as far as it was read, so the map always describes the data. Raises OSError on a read."""
    h = hashlib.blake2b(digest_size=32)
    parts: list[bytes] = []
    got: list[tuple[int, int]] = []
    out = None
    if sum(length for _offset, length in runs) > memory_limit:
        out = tempfile.NamedTemporaryFile(dir=workdir, prefix="sparse-", delete=False)  # noqa: SIM115 - returned
    try:
        for offset, length in runs:
            done = 0
            while done < length:
                data = os.pread(fd, min(_CHUNK, length - done), offset + done)
                if not data:
                    break
                h.update(data)
                if out is None:
                    parts.append(data)
                else:
                    out.write(data)
                done += len(data)
            if done:
                got.append((offset, done))
        if out is None:
            return b"".join(parts), h.digest(), got
        out.close()
    except BaseException:
        if out is not None:
            out.close()
            Path(out.name).unlink()
        raise
    return Path(out.name), h.digest(), got
