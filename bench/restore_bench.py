"""Restore after a month of nights: deltagrid against restic, borg, rdiff-backup and duplicity.

Run on demand (about 8 minutes with the defaults on a 2-core machine, up to about 18 when it is
busy; `--nights 5` for a quick look of about three):

    .venv/bin/python bench/restore_bench.py [--files 3000] [--small-mb 100] [--big-mb 64]
        [--nights 30] [--runs 3] [--tools deltagrid,restic,...] [--seed 1] [--keep]

It generates a tree in a temporary directory (--files files, 100 B-512 KiB before scaling so
that they sum to --small-mb MiB, half text-like and half random bytes, in nested directories up
to four deep, plus one --big-mb MiB file of random bytes), backs it up with every tool into its
own fresh repository, then simulates --nights nights of churn, each followed by one backup per
tool:

    1% of the files edited in place (1-4 overwrites of 8-64 bytes at random offsets),
    10 files added, 10 deleted, 20 overwrites of 100 bytes scattered over the big file,
    and every 10th night one directory renamed.

Then it restores the latest snapshot with each tool into a fresh directory, --runs times
(tools interleaved, `sync` before each so no tool pays for another's dirty pages), and prints
one table: restore seconds (median), MiB/s and files/s of the tree, the ratio to deltagrid
(peer seconds / deltagrid seconds: above 1, deltagrid is faster), the restore's peak RSS, the
initial backup's seconds and the sum over the nights, the repository's size (`du -sb`) and the
client-side state kept outside it (deltagrid's home minus its store, restic's and borg's caches,
duplicity's archive dir), and whether the first restore equals the source (content hash of every
file, and the set of files and directories; OK or MISMATCH, never asserted).

Each tool is run as a user would run it, with its defaults: the command lines are in peers.py.
Only deltagrid syncs what it restored (one syncfs at the end, 0.02-0.2 s here);
restic, borg, rdiff-backup and duplicity do not. Duplicity never gets a new full backup, so its
restore replays every incremental. A tool that is not installed is skipped with a note; one whose
command fails is dropped from the table with the command's error. The text corpus comes from
bench.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tables
from peers import (
    CLASSES,
    TOOLS,
    Failed,
    Tool,
    add_binary_options,
    compare,
    du,
    snapshot,
    use_binaries,
)

from bench import MiB, _corpus, human

DAY = 86400
MAX_DEPTH = 4
BIG = "big/large.bin"
ADDED = 10  # files added each night
DELETED = 10  # files deleted each night
BIG_EDITS = 20  # 100-byte overwrites of the big file each night
RENAME_EVERY = 10  # nights between directory renames


# --- the tree ---------------------------------------------------------------------------------


@dataclass
class Tree:
    root: Path
    base: float  # mtime of the generated tree; night k's edits are dated base + (k + 1) days
    files: list[str] = field(default_factory=list)  # small files, relative to root
    dirs: list[str] = field(default_factory=list)  # directories, relative to root ("" excluded)
    scale: float = 1.0  # applied to drawn sizes so that the initial tree has the asked size
    corpus: bytes = b""


def _draw_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.60:
        return rng.randint(100, 8 << 10)
    if roll < 0.90:
        return rng.randint(8 << 10, 64 << 10)
    return rng.randint(64 << 10, 512 << 10)  # above deltagrid's delta_min_size


def _data(tree: Tree, rng: random.Random, size: int) -> bytes:
    if rng.random() < 0.5 and size < len(tree.corpus) - 1:
        start = rng.randrange(len(tree.corpus) - size)
        return tree.corpus[start : start + size]
    return rng.randbytes(size)


def _put(path: Path, data: bytes, mtime: float) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def make_tree(root: Path, files: int, small_mib: int, big_mib: int, nights: int, seed: int) -> Tree:
    rng = random.Random(seed)
    tree = Tree(root, base=time.time() - (nights + 2) * DAY, corpus=_corpus(rng))
    depth = {"": 0}
    for i in range(max(1, files // 20)):
        parent = rng.choice([d for d in [""] + tree.dirs if depth[d] < MAX_DEPTH])
        rel = f"{parent}/d{i:03d}" if parent else f"d{i:03d}"
        depth[rel] = depth[parent] + 1
        tree.dirs.append(rel)
        (root / rel).mkdir(parents=True)
    sizes = [_draw_size(rng) for _ in range(files)]
    tree.scale = small_mib * MiB / sum(sizes)
    for i, drawn in enumerate(sizes):
        rel = f"{rng.choice(tree.dirs)}/f{i:05d}.dat"
        _put(root / rel, _data(tree, rng, max(1, round(drawn * tree.scale))), tree.base)
        tree.files.append(rel)
    (root / BIG).parent.mkdir()
    with open(root / BIG, "wb") as f:
        for _ in range(big_mib):
            f.write(rng.randbytes(MiB))
    os.utime(root / BIG, (tree.base, tree.base))
    for dirpath, _dirs, _names in os.walk(root):
        os.utime(dirpath, (tree.base, tree.base))
    return tree


def night(tree: Tree, k: int, seed: int) -> None:
    """Night k's churn: see the module docstring."""
    rng = random.Random(seed * 1000 + k)
    when = tree.base + k * DAY
    picked = rng.sample(tree.files, max(1, len(tree.files) // 100) + DELETED)
    edited, gone = picked[:-DELETED], set(picked[-DELETED:])
    for rel in edited:
        path = tree.root / rel
        size = path.stat().st_size
        with open(path, "r+b") as f:
            for _ in range(rng.randint(1, 4)):
                length = min(size, rng.randint(8, 64))
                f.seek(rng.randrange(size - length + 1))
                f.write(rng.randbytes(length))
        os.utime(path, (when, when))
    for rel in gone:
        (tree.root / rel).unlink()
    tree.files = [rel for rel in tree.files if rel not in gone]
    for n in range(ADDED):
        rel = f"{rng.choice(tree.dirs)}/n{k:03d}-{n:02d}.dat"
        _put(tree.root / rel, _data(tree, rng, max(1, round(_draw_size(rng) * tree.scale))), when)
        tree.files.append(rel)
    path = tree.root / BIG
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for _ in range(BIG_EDITS):
            f.seek(rng.randrange(size - 100))
            f.write(rng.randbytes(100))
    os.utime(path, (when, when))
    if k % RENAME_EVERY == 0:
        old = rng.choice(tree.dirs)
        new = f"{old}-r{k}"
        os.rename(tree.root / old, tree.root / new)

        def moved(rel: str) -> str:
            return new + rel[len(old) :] if rel == old or rel.startswith(old + "/") else rel

        tree.dirs = [moved(d) for d in tree.dirs]
        tree.files = [moved(f) for f in tree.files]


# --- the benchmark ----------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def drop(tools: list[Tool], tool: Tool, exc: Failed, notes: list[str]) -> None:
    if tool.name == "deltagrid":
        sys.exit(f"restore_bench: deltagrid failed: {exc}")
    log(f"  {tool.name} failed, dropped: {exc}")
    notes.append(f"{tool.name} dropped: {str(exc).splitlines()[0]}")
    tools.remove(tool)


def table(tools: list[Tool], tree_bytes: int, tree_files: int) -> str:
    header = (
        "tool", "restore s", "MiB/s", "files/s", "vs deltagrid", "restore RSS",
        "initial s", "nightly s", "repo", "local", "verify",
    )  # fmt: skip
    base = statistics.median(c.seconds for c in tools[0].restores)
    lines = [header]
    for t in tools:
        seconds = statistics.median(c.seconds for c in t.restores)
        lines.append(
            (
                t.name,
                f"{seconds:.2f}",
                f"{tree_bytes / MiB / seconds:.1f}",
                f"{tree_files / seconds:,.0f}",
                "1.00" if t is tools[0] else f"{seconds / base:.2f}",
                f"{max(c.rss_kib for c in t.restores) / 1024:.0f} MiB",
                f"{t.backups[0].seconds:.1f}",
                f"{sum(c.seconds for c in t.backups[1:]):.1f}",
                human(t.sizes[0]),
                human(t.sizes[1]),
                t.verdict,
            )
        )
    return tables.render(lines, left=(0, len(header) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=3000, help="small files (default 3000)")
    parser.add_argument("--small-mb", type=int, default=100, help="their total, MiB (default 100)")
    parser.add_argument("--big-mb", type=int, default=64, help="the large file, MiB (default 64)")
    parser.add_argument("--nights", type=int, default=30, help="nights of churn (default 30)")
    parser.add_argument("--runs", type=int, default=3, help="restores per tool; median is shown")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    add_binary_options(parser)
    args = parser.parse_args()
    use_binaries(args)
    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    if unknown := set(names) - set(TOOLS):
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if "deltagrid" not in names:
        parser.error("--tools must include deltagrid: ratios are against it")
    if args.files < 100 or args.small_mb < 1 or args.big_mb < 1 or args.runs < 1:
        parser.error("--files must be at least 100; --small-mb, --big-mb, --runs at least 1")
    if args.nights < 0:
        parser.error("--nights must be at least 0")

    base = Path(tempfile.mkdtemp(prefix="deltagrid-restore-bench-"))
    notes: list[str] = []
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        src = base / "src"
        tree = make_tree(src, args.files, args.small_mb, args.big_mb, args.nights, args.seed)
        tools: list[Tool] = []
        for name in [n for n in TOOLS if n in names]:
            if CLASSES[name].available():
                tools.append(CLASSES[name](base / "tools", src))
            else:
                notes.append(f"{name} skipped: not installed")
        versions = "; ".join(t.version() for t in tools)
        log(
            f"restore bench in {base}: {len(tree.files) + 1} files, {du(src) / MiB:.0f} MiB, "
            f"{args.nights} nights, {args.runs} runs, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs\n  {versions}"
        )
        for t in list(tools):
            try:
                t.init()
                t.backup(0)
            except Failed as exc:
                drop(tools, t, exc, notes)
        log(
            "  night 0 (initial): "
            + ", ".join(f"{t.name} {t.backups[0].seconds:.1f}s" for t in tools)
        )
        for k in range(1, args.nights + 1):
            night(tree, k, args.seed)
            for t in list(tools):
                try:
                    t.backup(k)
                except Failed as exc:
                    drop(tools, t, exc, notes)
            log(
                f"  night {k}: " + ", ".join(f"{t.name} {t.backups[k].seconds:.1f}s" for t in tools)
            )

        for t in tools:
            t.sizes = (t.repo_bytes(), t.local_bytes())
        source = snapshot(src)
        tree_bytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        tree_files = len(source[0])
        for r in range(args.runs):
            order = tools[r % len(tools) :] + tools[: r % len(tools)]  # who goes first rotates
            for t in order:
                target = base / "restore" / f"{t.name}-{r}"
                os.sync()  # nobody pays for the dirty pages of the tool before
                try:
                    landed = t.restore(target, args.nights)
                except Failed as exc:
                    drop(tools, t, exc, notes)
                    shutil.rmtree(target, ignore_errors=True)
                    continue
                if r == 0:
                    t.verdict, mtimes = compare(source, snapshot(landed))
                    if mtimes:
                        notes.append(f"{t.name}: {mtimes}")
            times = ", ".join(f"{t.name} {t.restores[-1].seconds:.2f}s" for t in tools)
            log(f"  restore run {r}: {times}")
        # Removed once all are timed: a restore right after deleting as many files is slower,
        # whichever tool it is (compare.py's restore_rows says why).
        shutil.rmtree(base / "restore", ignore_errors=True)
    finally:
        if args.keep:
            log(f"  kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    print(
        f"\n{tree_files} files, {tree_bytes / MiB:.0f} MiB (one of them the {args.big_mb} MiB "
        f"file) after {args.nights} nights; restore: median of {args.runs} runs into an empty "
        f"directory, warm page cache; whole run {(time.perf_counter() - started) / 60:.1f} min, "
        f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n"
        f"  {versions}\n"
    )
    print(table(tools, tree_bytes, tree_files))
    print(
        "\nvs deltagrid: tool's restore seconds / deltagrid's (above 1: deltagrid is faster). "
        "initial s: first backup; nightly s: the nights' backups summed. repo: du -sb of the "
        "repository; local: client-side state outside it (caches, deltagrid's backupdb)."
    )
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
