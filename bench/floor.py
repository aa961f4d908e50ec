"""The floor: what CPython itself pays per tiny file, with none of deltagrid's logic.

    .venv/bin/python bench/floor.py [--tree DIR] [--runs 3]

Backing up a small file needs at least: its lstat in the walk; open, fstat, read, its extended
attributes and close; a hash and a compressed frame; and its rows in the catalog. This times
each step alone, as plain loops over the tree (default: bench/scale.py's first 100,000-file
part, generated if missing), so deltagrid's own cost per file can be read against the
interpreter's: `bench/scale.py` times deltagrid and restic on the same tree. The catalog step
writes four rows a file (content, blob, path, version; a unique index on each hash and path) in
one transaction to a fresh SQLite file in WAL mode, once in the walk's order and once with the
rows sorted by hash. Medians of --runs, wall seconds (CPU seconds in brackets). Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import stat
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tables
import zstandard

_SCHEMA = """
CREATE TABLE contents (id INTEGER PRIMARY KEY, hash BLOB UNIQUE, size INTEGER);
CREATE TABLE blobs (id INTEGER PRIMARY KEY, hash BLOB UNIQUE, pack INTEGER, at INTEGER,
                    len INTEGER);
CREATE TABLE paths (id INTEGER PRIMARY KEY, path BLOB UNIQUE, parent INTEGER);
CREATE TABLE versions (id INTEGER PRIMARY KEY, path_id INTEGER, content_id INTEGER,
                       mode INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER);
CREATE INDEX versions_path ON versions (path_id);
"""
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_BATCH = 64  # files a thread's task


def walk(root: bytes) -> list[tuple[bytes, os.stat_result]]:
    found, stack = [], [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    found.append((entry.path, st))
    return found


def read(paths: list[bytes]) -> list[tuple[bytes, os.stat_result]]:
    out = []
    for path in paths:
        fd = os.open(path, _FLAGS)
        try:
            st = os.fstat(fd)
            data = os.read(fd, st.st_size + 1)
            os.listxattr(fd)
        finally:
            os.close(fd)
        out.append((data, st))
    return out


def read_threads(paths: list[bytes]) -> list[tuple[bytes, os.stat_result]]:
    batches = [paths[i : i + _BATCH] for i in range(0, len(paths), _BATCH)]
    with ThreadPoolExecutor(2) as pool:
        return [item for batch in pool.map(read, batches) for item in batch]


def frames(datas: list[bytes]) -> list[tuple[bytes, bytes]]:
    compressor = zstandard.ZstdCompressor(level=2)
    return [(hashlib.blake2b(d, digest_size=32).digest(), compressor.compress(d)) for d in datas]


def catalog(files: list[tuple[bytes, os.stat_result, bytes]], work: Path) -> None:
    db = work / f"floor-{time.monotonic_ns()}.db"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO contents (hash, size) VALUES (?, ?)", ((h, s.st_size) for _, s, h in files)
        )
        conn.executemany(
            "INSERT INTO blobs (hash, pack, at, len) VALUES (?, 1, 0, ?)",
            ((h, s.st_size) for _, s, h in files),
        )
        conn.executemany(
            "INSERT INTO paths (path, parent) VALUES (?, 1)", ((p,) for p, _, _ in files)
        )
        conn.executemany(
            "INSERT INTO versions (path_id, content_id, mode, size, mtime_ns, ctime_ns) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                (i, i, s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
                for i, (_, s, _) in enumerate(files, 1)
            ),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


def timed(step: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `runs` calls."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, help="the tree to read (default: scale.py's)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.tree is None:
        import scale

        args.tree = scale.ensure_parts(scale.CACHE, 1, "wide")[0]
    root = os.fsencode(args.tree)
    rows: list[list[str]] = [["step", "seconds (CPU)", "µs a file"]]
    with tempfile.TemporaryDirectory(prefix="dg-floor-") as work:
        files = walk(root)
        if not files:
            sys.exit(f"floor: no regular files below {args.tree}")
        paths = [path for path, _ in files]
        steps: list[tuple[str, Callable[[], object]]] = [
            ("walk: scandir + lstat", lambda: walk(root)),
            ("read: open, fstat, read, xattrs, close", lambda: read(paths)),
            (f"read on 2 threads, {_BATCH} files a task", lambda: read_threads(paths)),
        ]
        datas = [data for data, _ in read(paths)]
        steps.append(("BLAKE2b + zstd frame", lambda: frames(datas)))
        hashed = [(p, s, h) for (p, s), (h, _) in zip(files, frames(datas), strict=True)]
        steps.append(("catalog rows, walk order", lambda: catalog(hashed, Path(work))))
        by_hash = sorted(hashed, key=lambda f: f[2])
        steps.append(("catalog rows, hash order", lambda: catalog(by_hash, Path(work))))
        for name, step in steps:
            wall, cpu = timed(step, args.runs)
            rows.append([name, f"{wall:.2f} ({cpu:.2f})", f"{wall / len(files) * 1e6:.1f}"])
    print(
        f"{len(files):,} files below {args.tree}; Python {sys.version.split()[0]}; "
        f"load {os.getloadavg()[0]:.1f}; medians of {args.runs}\n"
    )
    print(tables.render(rows))


if __name__ == "__main__":
    main()
