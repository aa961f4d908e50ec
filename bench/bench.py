"""deltagrid's own benchmark: the nightly runs and a restore, timed through the real CLI.

Run on demand (about a minute and a half with the defaults on an idle 2-core machine):

    .venv/bin/python bench/bench.py [--files 3000] [--big-mb 64] [--runs 3] [--keep]

Each run starts from nothing in a temporary directory: it generates a tree (--files small files
of 100 B-256 KiB, half text-like and half random bytes, 20 to a directory two levels deep, plus
one --big-mb MiB file, all with month-old mtimes), then times, each as one `deltagrid --json`
subprocess with a fresh home:

    initial      `backup` of the whole tree
    no change    `backup` again, nothing changed
    churn        `backup` after 1% of the files were edited, 0.2% added, 0.2% deleted and one
                 directory renamed (mtimes ten minutes old, as after a day's work)
    big edits    `backup` after 100 edits of 100 bytes scattered over the large file
    restore      full `restore` of the latest snapshot into an empty directory

and prints one table: seconds (median over --runs), files/s, the JSON's bytes_read,
bytes_uploaded and backupdb_bytes, and the child's peak RSS (os.wait4's ru_maxrss, per
process; the largest over the runs). Nothing is asserted. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tables

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
PER_DIR = 20  # files in a leaf directory
LEAVES_PER_TOP = 10  # leaf directories in a top-level one
OLD = time.time() - 30 * 86400  # the tree's mtimes: long settled
RECENT = time.time() - 600  # edits: made during the day, before the nightly run
ROWS = ("initial", "no change", "churn", "big edits", "restore")


@dataclass
class Sample:
    seconds: float
    files: int  # files the run covered: the tree's for a backup, restored for a restore
    doc: dict
    rss_kib: int


@dataclass
class Tree:
    root: Path
    files: list[str] = field(default_factory=list)  # small files, relative to root
    big: str = "big/large.bin"
    bytes: int = 0


# --- the tree ---------------------------------------------------------------------------------


def _corpus(rng: random.Random) -> bytes:
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(2000)
    ]
    lines = []
    for _ in range(20000):
        lines.append(b" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    return b"\n".join(lines) + b"\n"


def _size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.70:
        return rng.randint(100, 4 << 10)
    if roll < 0.95:
        return rng.randint(4 << 10, 32 << 10)
    return rng.randint(64 << 10, 256 << 10)  # above delta_min_size: these get signatures


def _content(rng: random.Random, corpus: bytes, size: int) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(size)
    start = rng.randrange(len(corpus) - size)
    return corpus[start : start + size]


def _write(path: Path, data: bytes, mtime: float) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def make_tree(root: Path, files: int, big_mib: int, seed: int) -> Tree:
    rng = random.Random(seed)
    corpus = _corpus(rng)
    tree = Tree(root)
    for i in range(files):
        leaf, n = divmod(i, PER_DIR)
        rel = f"top{leaf // LEAVES_PER_TOP:03d}/leaf{leaf:04d}/file{n:02d}.dat"
        if n == 0:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        data = _content(rng, corpus, _size(rng))
        _write(root / rel, data, OLD)
        tree.files.append(rel)
        tree.bytes += len(data)
    (root / tree.big).parent.mkdir(parents=True)
    with open(root / tree.big, "wb") as f:
        for _ in range(big_mib):
            f.write(rng.randbytes(MiB))
    os.utime(root / tree.big, (OLD, OLD))
    tree.bytes += big_mib * MiB
    for dirpath, _dirs, _names in os.walk(root):
        os.utime(dirpath, (OLD, OLD))
    return tree


def churn(tree: Tree, seed: int) -> None:
    """1% of the files edited, 0.2% added, 0.2% deleted, one leaf directory renamed."""
    rng = random.Random(seed)
    n = len(tree.files)
    picked = rng.sample(range(n), max(1, n // 100) + max(1, n // 500))
    edited, deleted = picked[: max(1, n // 100)], picked[max(1, n // 100) :]
    for i in edited:
        path = tree.root / tree.files[i]
        data = bytearray(path.read_bytes())
        at = rng.randrange(max(1, len(data) - 64))
        data[at : at + 64] = rng.randbytes(64)
        _write(path, bytes(data) + b"edited\n", RECENT)
    gone = {tree.files[i] for i in deleted}
    for rel in gone:
        (tree.root / rel).unlink()
    for k in range(max(1, n // 500)):
        rel = str(Path(tree.files[rng.randrange(n)]).parent / f"added{k:04d}.dat")
        _write(tree.root / rel, rng.randbytes(rng.randint(100, 8 << 10)), RECENT)
        tree.files.append(rel)
    tree.files = [rel for rel in tree.files if rel not in gone]
    leaf = Path(rng.choice(tree.files)).parent
    renamed = leaf.with_name(leaf.name + "-renamed")
    os.rename(tree.root / leaf, tree.root / renamed)
    prefix = f"{leaf}/"
    tree.files = [
        f"{renamed}/{rel[len(prefix) :]}" if rel.startswith(prefix) else rel for rel in tree.files
    ]


def edit_big(tree: Tree, seed: int, edits: int = 100, length: int = 100) -> None:
    rng = random.Random(seed)
    path = tree.root / tree.big
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for _ in range(edits):
            f.seek(rng.randrange(max(1, size - length)))
            f.write(rng.randbytes(length))
    os.utime(path, (RECENT, RECENT))


# --- running the CLI --------------------------------------------------------------------------


def deltagrid(home: Path, *args: str | Path) -> tuple[float, dict, int]:
    """One `deltagrid --json` subprocess: (wall seconds, its JSON document, peak RSS in KiB)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "deltagrid", "--home", str(home), "--json", *map(str, args)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(
            f"bench: `deltagrid {' '.join(map(str, args))}` failed (exit {proc.returncode}):\n"
            + stderr.decode(errors="replace")[-3000:]
        )
    return elapsed, json.loads(stdout), usage.ru_maxrss  # KiB on Linux


def one_run(workdir: Path, files: int, big_mib: int, seed: int) -> dict[str, Sample]:
    src, home, target = workdir / "src", workdir / "home", workdir / "restore"
    started = time.perf_counter()
    tree = make_tree(src, files, big_mib, seed)
    generated = time.perf_counter() - started
    count = len(tree.files) + 1
    samples: dict[str, Sample] = {}

    def backup(label: str) -> None:
        seconds, doc, rss = deltagrid(home, "backup", src)
        samples[label] = Sample(seconds, len(tree.files) + 1, doc, rss)

    backup("initial")
    backup("no change")
    churn(tree, seed + 1)
    backup("churn")
    edit_big(tree, seed + 2)
    backup("big edits")
    seconds, doc, rss = deltagrid(home, "restore", target)
    samples["restore"] = Sample(seconds, doc["files"], doc, rss)
    if doc["files"] != len(tree.files) + 1 or doc["errors"]:
        print(
            f"  note: restore reported {doc['files']} files and {len(doc['errors'])} errors; "
            f"the tree has {len(tree.files) + 1} files",
            file=sys.stderr,
        )
    print(
        f"  run done: {count} files, {tree.bytes / MiB:.1f} MiB (made in {generated:.1f}s); "
        + ", ".join(f"{k} {s.seconds:.1f}s" for k, s in samples.items()),
        file=sys.stderr,
    )
    return samples


# --- the table --------------------------------------------------------------------------------


def human(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def table(runs: list[dict[str, Sample]]) -> str:
    header = ("run", "seconds", "files/s", "bytes read", "uploaded", "backupdb", "peak RSS")
    lines = [header]
    for label in ROWS:
        samples = [r[label] for r in runs]
        seconds = statistics.median(s.seconds for s in samples)
        files = samples[-1].files
        doc = samples[-1].doc
        restore = label == "restore"
        lines.append(
            (
                label,
                f"{seconds:.2f}",
                f"{files / seconds:,.0f}" if seconds > 0 else "-",
                human(None if restore else doc["bytes_read"]),
                human(None if restore else doc["bytes_uploaded"]),
                human(None if restore else doc["backupdb_bytes"]),
                f"{max(s.rss_kib for s in samples) / 1024:.0f} MiB",
            )
        )
    return tables.render(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=3000, help="small files (default 3000)")
    parser.add_argument("--big-mb", type=int, default=64, help="large file, MiB (default 64)")
    parser.add_argument("--runs", type=int, default=3, help="runs; seconds are their median")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.files < 100 or args.big_mb < 1 or args.runs < 1:
        parser.error("--files must be at least 100, --big-mb and --runs at least 1")

    base = Path(tempfile.mkdtemp(prefix="deltagrid-bench-"))
    print(
        f"deltagrid bench: {args.files} small files + {args.big_mb} MiB file, {args.runs} runs, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, in {base}",
        file=sys.stderr,
    )
    runs = []
    try:
        for r in range(args.runs):
            runs.append(one_run(base / f"run{r}", args.files, args.big_mb, args.seed))
            if not args.keep:
                shutil.rmtree(base / f"run{r}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{args.files} small files + one {args.big_mb} MiB file; "
        f"seconds: median of {args.runs} runs, each a fresh home and tree\n"
    )
    print(table(runs))


if __name__ == "__main__":
    main()
