"""deltagrid side by side with restic, borg, rdiff-backup and duplicity: the targets of issue 7.

Run on demand (about 20 minutes with the defaults on a quiet 2-core machine; `--scale 0.1
--nights 2 --runs 1` for a look in about two minutes):

    .venv/bin/python bench/compare.py [--scale 1] [--runs 3] [--nights 30]
        [--tools deltagrid,restic,borg,rdiff-backup,duplicity] [--source DIR]
        [--deltagrid-src DIR] [--seed 1] [--keep]

The tree is a copy of a real one, by default the standard library of the Python running this
(sysconfig's `stdlib`, without site-packages: about 7,700 files, 250 MB for CPython 3.11), plus
one file of 256 MiB of random bytes. `--scale` below 1 copies a subset chosen deterministically
(in sorted order every 1/scale-th file, or the next one that keeps the running total under its
pro-rata share of scale x the tree's bytes plus 4 MiB; so the largest files stay out) and a big
file, churn counts and edits scaled alike.

Each of `--runs` runs copies the tree afresh, gives every tool a fresh repository and times,
tools in turn (the first one rotating from run to run):

    initial          the first backup
    no change        a second backup, nothing changed (the nightly case: stat and compare)
    churn            after 1% of the files edited (64 random bytes overwritten, a line
                     appended), 200 added (random bytes, sizes of files in the tree), 200
                     deleted, one directory of 10-200 files renamed; counts x --scale
    scattered edits  after 100 overwrites of 100 bytes at random offsets in the big file

The last run then goes on for --nights nights (a churn as above and 10 scattered edits, then a
backup with every tool) and restores the latest snapshot with each tool into an empty
directory, --runs times; the first restore of each tool is compared with the source (every
file's BLAKE2b, the set of files and directories).

Every timed command starts after a `sync` and its time includes a `sync` right after it, so a
tool that leaves its writes in the page cache pays for them like one that fsyncs; the page cache
is warm for all. Columns: seconds (median of the runs), of which the final sync, bytes added to
the repository (`du -sb` before and after, median), the child's peak RSS (ru_maxrss, largest),
and the ratios deltagrid / restic the issue's targets use. The command lines are in peers.py;
every deltagrid row is a `deltagrid --json` subprocess with a fresh home. Nothing is asserted.
See bench/README.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import tables
from peers import (
    CLASSES,
    TOOLS,
    Child,
    Deltagrid,
    Failed,
    Tool,
    add_binary_options,
    compare,
    snapshot,
    use_binaries,
)

from bench import ROOT, MiB, human

BIG = "big/large.bin"
BIG_MIB = 256
ADDED = DELETED = 200  # files added and deleted by a churn, at scale 1
BIG_EDITS = 100  # 100-byte overwrites in the scattered-edits row
NIGHT_BIG_EDITS = 10  # ... and on each night
RENAMED_DIR = (10, 200)  # files below the directory a churn renames
SLACK = 4 * MiB  # how far a scaled-down selection may run ahead of its pro-rata bytes
ROWS = ("initial", "no change", "churn", "scattered edits", "restore")

# (what, row, measure, reference tool, the most deltagrid may be as a multiple of it)
TARGETS = (
    ("initial backup, time", "initial", "seconds", "restic", 1.0),
    ("no-change run, time", "no change", "seconds", "restic", 0.5),
    ("churn run, time", "churn", "seconds", "restic", 1.0),
    ("churn run, bytes added", "churn", "added", "restic", 1.0),
    ("scattered edits, bytes added", "scattered edits", "added", "rdiff-backup", 1.0),
    ("restore after the nights, time", "restore", "seconds", "restic", 1.0),
)


# --- the tree ---------------------------------------------------------------------------------


def default_source() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def select(source: Path, scale: float) -> list[tuple[str, int]]:
    """(path relative to source, size) of the regular files to copy, sorted, site-packages out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if d != "site-packages")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.isfile(path) and not os.path.islink(path) and os.access(path, os.R_OK):
                found.append((os.path.relpath(path, source), st.st_size))
    if scale >= 1:
        return found
    want_files = max(1, round(len(found) * scale))
    want_bytes = sum(size for _, size in found) * scale
    picked: list[tuple[str, int]] = []
    total, due = 0, 0.0
    for rel, size in found:  # every 1/scale-th file, or the next one that fits under the line
        due += scale
        if due >= 1 and total + size <= want_bytes * (len(picked) + 1) / want_files + SLACK * scale:
            picked.append((rel, size))
            total, due = total + size, due - 1
    return picked


@dataclass
class Tree:
    root: Path
    files: list[str] = field(default_factory=list)  # the copied files, relative to root

    def dirs_below(self) -> dict[str, int]:
        """Each directory (relative, "" excluded) with the number of files below it."""
        counts: dict[str, int] = defaultdict(int)
        for rel in self.files:
            parent = os.path.dirname(rel)
            while parent:
                counts[parent] += 1
                parent = os.path.dirname(parent)
        return counts


def make_tree(
    root: Path, source: Path, chosen: list[tuple[str, int]], scale: float, seed: int
) -> Tree:
    """Copy the chosen files (with their times and modes) and write the big file."""
    tree = Tree(root)
    for rel, _size in chosen:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, root / rel)
        tree.files.append(rel)
    rng = random.Random(f"{seed}-big")
    (root / BIG).parent.mkdir(parents=True)
    with open(root / BIG, "wb") as f:
        for _ in range(max(1, round(BIG_MIB * scale))):
            f.write(rng.randbytes(MiB))
    month_ago = time.time() - 30 * 86400
    os.utime(root / BIG, (month_ago, month_ago))
    return tree


def churn(tree: Tree, rng: random.Random, scale: float, tag: str) -> None:
    """1% of the files edited, ADDED added, DELETED deleted, one directory renamed."""
    when = time.time() - 600  # edited during the day, before the nightly run
    edited = max(1, round(len(tree.files) / 100))
    added, deleted = max(1, round(ADDED * scale)), max(1, round(DELETED * scale))
    picked = rng.sample(tree.files, edited + deleted)
    for rel in picked[:edited]:
        path = tree.root / rel
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.seek(rng.randrange(max(1, size - 64)))
            f.write(rng.randbytes(min(64, size)))
            f.seek(0, os.SEEK_END)
            f.write(f"\n# edited {tag}\n".encode())
        os.utime(path, (when, when))
    gone = set(picked[edited:])
    for rel in gone:
        (tree.root / rel).unlink()
    tree.files = [rel for rel in tree.files if rel not in gone]
    for i in range(added):
        like = rng.choice(tree.files)
        rel = os.path.join(os.path.dirname(like), f"added-{tag}-{i:03d}.bin")
        size = min((tree.root / like).stat().st_size, 256 << 10) or 1
        (tree.root / rel).write_bytes(rng.randbytes(size))
        os.utime(tree.root / rel, (when, when))
        tree.files.append(rel)
    low, high = RENAMED_DIR
    dirs = sorted(d for d, n in tree.dirs_below().items() if low <= n <= high)
    if dirs:
        old = rng.choice(dirs)
        new = f"{old}-{tag}"
        os.rename(tree.root / old, tree.root / new)
        prefix = old + "/"
        tree.files = [
            new + rel[len(old) :] if rel.startswith(prefix) else rel for rel in tree.files
        ]


def scatter(tree: Tree, rng: random.Random, edits: int, scale: float) -> None:
    """`edits` x scale overwrites of 100 random bytes at random offsets in the big file."""
    path = tree.root / BIG
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for _ in range(max(1, round(edits * scale))):
            f.seek(rng.randrange(size - 100))
            f.write(rng.randbytes(100))
    when = time.time() - 600
    os.utime(path, (when, when))


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float  # the command plus the sync after it
    sync: float
    added: int | None  # bytes added to the repository; None for a restore
    rss_kib: int


class Bench:
    """The tools of one run, the samples of every run, and the notes."""

    def __init__(self, names: list[str]) -> None:
        self.names = names  # tools still in the race, deltagrid first
        self.samples: dict[str, dict[str, list[Sample]]] = {r: defaultdict(list) for r in ROWS}
        self.notes: list[str] = []
        self.loads: list[float] = []
        self.final: list[Tool] = []  # the tools that made it to the end, for the last table

    def log(self, message: str) -> None:
        self.loads.append(os.getloadavg()[0])
        print(message, file=sys.stderr, flush=True)

    def attempt(self, tools: list[Tool], tool: Tool, step: Callable[[], object]) -> bool:
        """Run one step of a tool; a peer that fails is dropped from the rest of the bench."""
        try:
            step()
            return True
        except Failed as exc:
            if tool.name == "deltagrid":
                sys.exit(f"compare: deltagrid failed: {exc}")
            self.log(f"  {tool.name} failed, dropped: {exc}")
            self.notes.append(f"{tool.name} dropped: {str(exc).splitlines()[0]}")
            tools.remove(tool)
            self.names.remove(tool.name)
            return False

    def timed(self, tool: Tool, row: str, action: Callable[[], Child], repo: bool) -> None:
        """One sample of `row`: the action between two syncs; bytes added if `repo`."""
        os.sync()  # nobody pays for the dirty pages of the tool before
        before = tool.repo_bytes() if repo else 0
        child = action()
        started = time.perf_counter()
        os.sync()
        sync = time.perf_counter() - started
        added = tool.repo_bytes() - before if repo else None
        self.samples[row][tool.name].append(
            Sample(child.seconds + sync, sync, added, child.rss_kib)
        )

    def backup_row(self, tools: list[Tool], row: str, k: int, first: int) -> None:
        for t in tools[first:] + tools[:first]:
            self.attempt(tools, t, partial(self.timed, t, row, partial(t.backup, k), True))
        got = ", ".join(f"{t.name} {self.samples[row][t.name][-1].seconds:.1f}s" for t in tools)
        self.log(f"  {row}: {got}")


def restore_rows(bench: Bench, tools: list[Tool], base: Path, src: Path, k: int, runs: int):
    """Each tool restores backup k `runs` times; its first restore is checked against src.

    The restored trees are removed only once all are timed: a restore right after deleting a
    tree of as many files is slower, whichever tool it is (on ext4 without a journal, inode
    allocation skips inodes freed in the last minute, `recently_deleted`), so deleting each one
    at once slowed whichever tool came next."""
    source = snapshot(src)
    landed: dict[str, Path] = {}

    def restore(tool: Tool, target: Path) -> Child:
        landed[tool.name] = tool.restore(target, k)
        return tool.restores[-1]

    for r in range(runs):
        for t in tools[r % len(tools) :] + tools[: r % len(tools)]:
            target = base / "restore" / f"{t.name}-{r}"
            step = partial(bench.timed, t, "restore", partial(restore, t, target), False)
            if bench.attempt(tools, t, step) and r == 0:
                t.verdict, mtimes = compare(source, snapshot(landed[t.name]))
                if mtimes:
                    bench.notes.append(f"{t.name}: {mtimes}")
        got = ", ".join(f"{t.name} {t.restores[-1].seconds:.1f}s" for t in tools)
        bench.log(f"  restore run {r}: {got}")
    shutil.rmtree(base / "restore", ignore_errors=True)


def one_run(
    bench: Bench, base: Path, args: argparse.Namespace, chosen: list[tuple[str, int]], r: int
) -> None:
    """Run r: the four backup rows; the last run adds the nights and the restores."""
    work = base / f"run{r}"
    started = time.perf_counter()
    tree = make_tree(work / "src", args.source, chosen, args.scale, args.seed)
    bench.log(f"run {r}: tree copied in {time.perf_counter() - started:.1f}s")
    tools = [CLASSES[n](work / "tools", tree.root) for n in bench.names]
    for t in list(tools):
        bench.attempt(tools, t, t.init)
    first = r % len(tools)
    rng = random.Random(f"{args.seed}-rows")  # every run makes the same changes
    bench.backup_row(tools, "initial", 0, first)
    bench.backup_row(tools, "no change", 1, first)
    churn(tree, rng, args.scale, "churn")
    bench.backup_row(tools, "churn", 2, first)
    scatter(tree, rng, BIG_EDITS, args.scale)
    bench.backup_row(tools, "scattered edits", 3, first)
    if r < args.runs - 1:
        shutil.rmtree(work)
        return
    k = 3
    for night in range(1, args.nights + 1):
        k += 1
        nightly = random.Random(f"{args.seed}-night-{night}")
        churn(tree, nightly, args.scale, f"n{night}")
        scatter(tree, nightly, NIGHT_BIG_EDITS, args.scale)
        for t in list(tools):
            os.sync()  # as for the timed rows: nobody pays for another's dirty pages
            bench.attempt(tools, t, partial(t.backup, k))
        got = ", ".join(f"{t.name} {t.backups[-1].seconds:.1f}s" for t in tools)
        bench.log(f"  night {night}: {got}")
    for t in tools:
        t.sizes = (t.repo_bytes(), t.local_bytes())
    restore_rows(bench, tools, work, tree.root, k, args.runs)
    bench.final = tools


# --- the tables -------------------------------------------------------------------------------


def median(samples: list[Sample], measure: str) -> float | None:
    values = [getattr(s, measure) for s in samples]
    return statistics.median(values) if values and None not in values else None


def ratio(mine: float | None, theirs: float | None) -> float | None:
    return mine / theirs if mine is not None and theirs else None


def signed(n: float) -> str:
    """Bytes, human-readable; negative when a repository shrank (rdiff-backup's mirror can)."""
    return "-" + human(round(-n)) if n < 0 else human(round(n))


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def measurements(bench: Bench, names: list[str]) -> str:
    header = ("row", "tool", "seconds", "sync", "added", "peak RSS", "s ÷ restic", "B ÷ restic")
    lines = [header]
    for row in ROWS:
        restic = bench.samples[row].get("restic", [])
        for name in names:
            samples = bench.samples[row].get(name)
            if not samples:
                continue
            added = median(samples, "added")
            lines.append(
                (
                    row if name == names[0] else "",
                    name,
                    fmt(median(samples, "seconds")),
                    fmt(median(samples, "sync")),
                    "-" if added is None else signed(added),
                    f"{max(s.rss_kib for s in samples) / 1024:.0f} MiB",
                    fmt(ratio(median(samples, "seconds"), median(restic, "seconds"))),
                    fmt(ratio(added, median(restic, "added"))),
                )
            )
    return tables.render(lines, left=(0, 1))


def targets(bench: Bench, nights: int) -> str:
    header = ("target", "deltagrid", "reference", "ratio", "wanted", "met")
    lines = [header]
    for what, row, measure, peer, most in TARGETS:
        mine = median(bench.samples[row].get("deltagrid", []), measure)
        theirs = median(bench.samples[row].get(peer, []), measure)
        show = (lambda v: fmt(v) + " s") if measure == "seconds" else signed
        got = ratio(mine, theirs)
        lines.append(
            (
                what.replace("the nights", f"{nights} nights"),
                "-" if mine is None else show(mine),
                f"{peer} " + ("-" if theirs is None else show(theirs)),
                fmt(got),
                f"≤ {most:.1f}",
                "-" if got is None else ("yes" if got <= most else "no"),
            )
        )
    return tables.render(lines, left=(0, 2, 5))


def after_nights(tools: list[Tool]) -> str:
    lines = [("tool", "nightly s", "repo", "local", "restore check")]
    for t in tools:
        nights = sum(c.seconds for c in t.backups[4:])
        lines.append((t.name, f"{nights:.1f}", human(t.sizes[0]), human(t.sizes[1]), t.verdict))
    return tables.render(lines, left=(0, 4))


# --- main -------------------------------------------------------------------------------------


def machine(where: Path) -> str:
    """CPU, RAM, the filesystem under `where`, kernel and Python: what the figures depend on."""
    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    with open("/proc/meminfo") as f:
        ram_kib = int(f.readline().split()[1])
    df = ["df", "--output=fstype,source", str(where)]
    fstype, device = subprocess.run(df, capture_output=True, text=True).stdout.split()[-2:]
    return (
        f"{models[0] if models else '?'} x {os.cpu_count()}, {ram_kib / (1 << 20):.0f} GiB RAM, "
        f"{fstype} on {device}, Linux {platform.release()}, Python {platform.python_version()}"
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="tree, big file, churn (0-1]")
    parser.add_argument("--runs", type=int, default=3, help="runs per row; medians (default 3)")
    parser.add_argument("--nights", type=int, default=30, help="nights before the restore")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset")
    parser.add_argument("--source", type=Path, default=default_source(), help="the real tree")
    parser.add_argument(
        "--deltagrid-src", type=Path, default=ROOT, help="the deltagrid checkout to run"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    add_binary_options(parser)
    args = parser.parse_args()
    use_binaries(args)
    args.names = [n.strip() for n in args.tools.split(",") if n.strip()]
    if unknown := set(args.names) - set(TOOLS):
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if "deltagrid" not in args.names:
        parser.error("--tools must include deltagrid")
    if not 0 < args.scale <= 1 or args.runs < 1 or args.nights < 0:
        parser.error("--scale must be in (0, 1], --runs at least 1, --nights at least 0")
    if not args.source.is_dir():
        parser.error(f"--source {args.source} is not a directory")
    if not (args.deltagrid_src / "deltagrid" / "__main__.py").is_file():
        parser.error(f"--deltagrid-src {args.deltagrid_src} holds no deltagrid package")
    return args


def main() -> None:
    args = parse()
    Deltagrid.root = args.deltagrid_src.resolve()
    wanted = [n for n in TOOLS if n in args.names]
    bench = Bench([n for n in wanted if CLASSES[n].available()])
    bench.notes += [f"{n} skipped: not installed" for n in wanted if n not in bench.names]
    names = list(bench.names)
    chosen = select(args.source, args.scale)
    tree_bytes = sum(size for _, size in chosen)
    big_mib = max(1, round(BIG_MIB * args.scale))
    base = Path(tempfile.mkdtemp(prefix="deltagrid-compare-"))
    started = time.perf_counter()
    try:
        versions = "; ".join(CLASSES[n].version() for n in names)
        host = machine(base)
        bench.log(
            f"compare in {base}: {len(chosen)} files, {tree_bytes / MiB:.0f} MiB from "
            f"{args.source} + a {big_mib} MiB file; {args.runs} runs, {args.nights} nights\n"
            f"  {host}\n  {versions}"
        )
        for r in range(args.runs):
            one_run(bench, base, args, chosen, r)
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    loads = bench.loads
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\n{len(chosen)} files, {tree_bytes / MiB:.0f} MiB (from {args.source}) + one "
        f"{big_mib} MiB file; seconds and bytes: median of {args.runs} runs; restore after "
        f"{args.nights} nights, warm page cache; whole run {minutes:.1f} min, 1-minute load "
        f"average {min(loads):.1f}-{max(loads):.1f} "
        f"(median {statistics.median(loads):.1f})\n  {host}\n"
        f"  {versions}\n"
    )
    print(measurements(bench, names))
    print()
    print(targets(bench, args.nights))
    print()
    print(after_nights(bench.final))
    print(
        "\nseconds: the command plus a sync after it (sync: that part). added: du -sb of the "
        "repository after minus before. ÷ restic: deltagrid's (or a peer's) value over restic's. "
        "nightly s: the nights' backups summed; repo, local: du -sb of the repository and of the "
        "client-side state outside it after the nights."
    )
    for note in bench.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
