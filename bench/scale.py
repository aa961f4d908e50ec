"""deltagrid at scale: a million small files, timed through the real CLI.

    .venv/bin/python bench/scale.py [--sizes 100000,300000,1000000] [--cache DIR] [--no-restic]

The tree is generated once into --cache (default /tmp/dg-scale-cache) as parts of 100,000 small
files each (0-300 bytes, month-old mtimes; per part 20 × 20 directories of 10 leaf directories
of 25 files, with a few shallower files), and reused by later runs; `--drop-cache` deletes it at
the end. A size of N backs up the first N / 100,000 parts as N sources. For each size, in a
fresh home, one `deltagrid --json` subprocess per row:

    initial      `backup` of the whole tree
    no-change    `scan` with nothing changed (the scanner alone), then `backup` (the nightly run:
                 scan, an empty upload, the commit)
    churn        `backup` after 1% of the files were rewritten in place

and prints one table: seconds, files/s, the child's peak RSS (os.wait4's ru_maxrss), the
backupdb's size (checkpointed), the zstd'ed full export, and the churn night's export delta and
backupdb growth. Then start-up times (`--version`, `status`) and, unless --no-restic, a quiet
night on a 7,700-file tree against `restic backup`. Nothing is asserted. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tables
from peers import Deltagrid, Restic, add_binary_options, du, use_binaries

ROOT = Path(__file__).resolve().parent.parent
PART = 100_000  # files in one generated part
FANOUT = (20, 20, 10)  # directories per level of a part
PER_LEAF = 25  # files in a leaf directory (the shallower files come on top)
WIDE_DIRS, WIDE_FILES = 100, 1_000  # the wide shape: a part is 100 directories of 1,000 files
OLD = time.time() - 30 * 86400
CACHE = Path("/tmp/dg-scale-cache")  # the generated trees, kept between runs
DELTAGRID = (sys.executable, "-m", "deltagrid")  # this checkout's code, whatever is installed
ENV = dict(
    os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
)


@dataclass
class Child:
    seconds: float
    cpu: float  # user + system seconds: steadier than wall time on a shared machine
    doc: dict
    rss_mib: float


def run(*argv: str | Path, env: dict[str, str] | None = None) -> Child:
    """One subprocess: wall seconds, its JSON stdout (if any) and its own peak RSS. It starts
    with nothing of the run before still being written back (`os.sync`): otherwise a run pays
    for its predecessor's writes, and the order of the tools decides the ratio."""
    os.sync()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(a) for a in argv], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(
            f"scale: {argv[:4]}... failed ({code}):\n{stderr.decode(errors='replace')[-2000:]}"
        )
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = {}
    return Child(elapsed, usage.ru_utime + usage.ru_stime, doc, usage.ru_maxrss / 1024)


def deltagrid(home: Path, *args: str | Path) -> Child:
    return run(*DELTAGRID, "--home", home, "--json", *args, env=ENV)


# --- the tree ---------------------------------------------------------------------------------


def leaf_dirs(part: Path) -> list[Path]:
    a, b, c = FANOUT
    return [
        part / f"proj{i:02d}" / f"mod{j:02d}" / f"pkg{k}"
        for i in range(a)
        for j in range(b)
        for k in range(c)
    ]


def part_files(part: Path, files: int) -> list[Path]:
    """Where a part's files go: 25 a leaf directory, the rest one level up (as in real trees)."""
    leaves = leaf_dirs(part)
    names = [leaf / f"f{n:02d}.txt" for leaf in leaves for n in range(PER_LEAF)]
    extra = files - len(names)
    names += [leaves[i % len(leaves)].parent / f"readme{i}.md" for i in range(max(0, extra))]
    return names[:files]


def generate(part: Path, files: int, seed: int) -> None:
    rng = random.Random(seed)
    text = b"".join(bytes([97 + (i * 7) % 26]) for i in range(4096))
    made: set[Path] = set()
    for path in part_files(part, files):
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        at = rng.randrange(3800)
        path.write_bytes(text[at : at + rng.randint(0, 300)])
        os.utime(path, (OLD, OLD))
    for directory in made:
        os.utime(directory, (OLD, OLD))


def generate_wide(group: Path, g: int) -> None:
    """One group of the wide shape: WIDE_DIRS directories of WIDE_FILES files of 15 bytes, each
    file's bytes its own (no two alike, so every file is new content)."""
    rng = random.Random(g)
    for d in range(WIDE_DIRS):
        directory = group / f"d{d:02d}"
        directory.mkdir(parents=True)
        for f in range(WIDE_FILES):
            path = directory / f"f{f:03d}"
            path.write_bytes(b"%04d/%03d %05d\n" % (g * WIDE_DIRS + d, f, rng.randrange(10**5)))
            os.utime(path, (OLD, OLD))
        os.utime(directory, (OLD, OLD))
    os.utime(group, (OLD, OLD))


def ensure_parts(cache: Path, parts: int, shape: str = "parts") -> list[Path]:
    """The first `parts` parts of the cache, generating the missing ones."""
    found = []
    for p in range(parts):
        name = f"part{p:02d}" if shape == "parts" else f"wide{p:02d}"
        part, stamp = cache / name, cache / f"{name}.done"
        if not stamp.exists():
            shutil.rmtree(part, ignore_errors=True)
            started = time.perf_counter()
            if shape == "parts":
                generate(part, PART, seed=p)
            else:
                generate_wide(part, p)
            stamp.touch()
            say(f"generated {part} in {time.perf_counter() - started:.0f} s")
        found.append(part)
    return found


def churn(parts: list[Path], fraction: float, seed: int) -> int:
    """Rewrite `fraction` of the files in place (new bytes, a fresh mtime)."""
    rng = random.Random(seed)
    edited = 0
    now = time.time() - 600
    for part in parts:
        files = sorted(p for p in part.rglob("*") if p.is_file())
        for path in rng.sample(files, int(PART * fraction)):
            path.write_bytes(rng.randbytes(rng.randint(1, 300)))
            os.utime(path, (now, now))
            edited += 1
    return edited


# --- measuring --------------------------------------------------------------------------------


def db_bytes(home: Path) -> int:
    path = home / "backupdb.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.stat().st_size


def export_bytes(home: Path) -> int:
    """The uncompressed export's size, written the way a commit writes it."""
    sys.path.insert(0, str(ROOT))
    from deltagrid.backupdb import export

    with tempfile.TemporaryDirectory() as tmp:
        export.write(home / "backupdb.sqlite", Path(tmp) / "export.sqlite")
        return (Path(tmp) / "export.sqlite").stat().st_size


def measure(size: int, parts: list[Path], work: Path, repeat: int) -> list[str]:
    home = work / f"home-{size}"
    shutil.rmtree(home, ignore_errors=True)
    initial = deltagrid(home, "backup", *parts)
    say(f"{size:,}: initial backup {initial.seconds:.1f} s")
    scans = [deltagrid(home, "scan", *parts) for _ in range(repeat)]
    nights = [deltagrid(home, "backup", *parts) for _ in range(repeat)]
    for child in scans + nights:
        queued = child.doc.get("queued") or child.doc["scan"]["queued"]
        if any(queued.values()):
            say(f"  note: a no-change run queued {queued}")
    scan_s, scan_cpu = median_times(scans)
    night_s, night_cpu = median_times(nights)
    say(f"{size:,}: no-change scan {scan_s:.1f} s ({scan_cpu:.1f} CPU), backup {night_s:.1f} s")
    before = db_bytes(home)
    full_export = initial.doc["backupdb_bytes"]
    raw_export = export_bytes(home)
    churn(parts, 0.01, seed=int(time.time()))
    churned = deltagrid(home, "backup", *parts)
    after = db_bytes(home)
    say(f"{size:,}: churn backup {churned.seconds:.1f} s")
    shutil.rmtree(home)
    return [
        f"{size:,}",
        f"{initial.seconds:.1f} ({initial.cpu:.1f})",
        f"{size / initial.seconds:,.0f}",
        f"{scan_s:.2f} ({scan_cpu:.2f})",
        f"{size / scan_s:,.0f} ({size / scan_cpu:,.0f})",
        f"{night_s:.2f} ({night_cpu:.2f})",
        f"{size / night_s:,.0f} ({size / night_cpu:,.0f})",
        f"{max(c.rss_mib for c in scans + nights):.0f}",
        f"{initial.rss_mib:.0f}",
        mib(before),
        f"{mib(raw_export)} / {mib(full_export)}",
        f"{churned.seconds:.1f}",
        kib(churned.doc["backupdb_bytes"]),
        f"{100 * churned.doc['backupdb_bytes'] / before:.2f}%",
        mib(after - before),
    ]


def median_times(children: list[Child]) -> tuple[float, float]:
    """Median wall and CPU seconds."""
    return (
        statistics.median(c.seconds for c in children),
        statistics.median(c.cpu for c in children),
    )


def startup(home: Path, repeat: int = 5) -> list[list[str]]:
    rows = []
    for args in (["--version"], ["--home", str(home), "status"]):
        child = [run(*DELTAGRID, *args, env=ENV) for _ in range(repeat)]
        rows.append(
            [
                f"deltagrid {' '.join(a for a in args if a != str(home))}",
                "{:.3f} ({:.3f})".format(*median_times(child)),
                f"{max(c.rss_mib for c in child):.0f}",
            ]
        )
    return rows


def against_restic(cache: Path, work: Path, repeat: int) -> list[str] | None:
    if not Restic.available():
        say("restic not installed: no comparison")
        return None
    tree = cache / "small"
    if not (cache / "small.done").exists():
        shutil.rmtree(tree, ignore_errors=True)
        generate(tree, 7_700, seed=99)
        (cache / "small.done").touch()
    home = work / "home-small"
    repo = ResticRepo(work / "restic-small")
    repo.backup(tree)
    deltagrid(home, "backup", tree)
    ours = [deltagrid(home, "backup", tree).seconds for _ in range(repeat)]
    theirs = [repo.backup(tree).seconds for _ in range(repeat)]
    d, r = statistics.median(ours), statistics.median(theirs)
    return ["7,700 files, no change", f"{d:.2f}", f"{r:.2f}", f"{d / r:.2f}"]


class ResticRepo:
    """A fresh restic repository (and cache) under `work`, with the binary peers.py names."""

    def __init__(self, work: Path) -> None:
        shutil.rmtree(work, ignore_errors=True)
        self.repo = work / "repo"
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(self.repo))
        self.env["RESTIC_CACHE_DIR"] = str(work / "cache")
        run(Restic.binary, "init", env=self.env)

    def backup(self, *sources: Path) -> Child:
        return run(Restic.binary, "backup", "-q", *sources, env=self.env)


def versus(
    size: int, sources: list[Path], work: Path, rounds: int, repeat: int, cold: bool
) -> list[list]:
    """deltagrid and restic side by side, interleaved (deltagrid, then restic, `rounds` times)
    so both see the same load: the initial backup into a fresh home and repository, then
    `repeat` no-change nights each, again interleaved. Rows: one a tool. With `cold`, each
    initial backup starts with the tree's file data out of the page cache (`evict`)."""
    seen: dict[str, dict[str, list[Child]]] = {"deltagrid": defaultdict(list)}
    seen["restic"] = defaultdict(list)
    stored = {}
    loads = [os.getloadavg()[0]]
    if not cold:
        warm(sources)
    for r in range(rounds):
        home = work / f"home-{size}"
        shutil.rmtree(home, ignore_errors=True)
        if cold:
            evict(sources)
        seen["deltagrid"]["initial"].append(deltagrid(home, "backup", *sources))
        repo = ResticRepo(work / f"restic-{size}")
        if cold:
            evict(sources)
        seen["restic"]["initial"].append(repo.backup(*sources))
        stored = {"deltagrid": du(home / "store"), "restic": du(repo.repo)}
        loads.append(os.getloadavg()[0])
        d, t = (seen[n]["initial"][-1].seconds for n in ("deltagrid", "restic"))
        say(f"{size:,} round {r}: deltagrid {d:.1f} s, restic {t:.1f} s (load {loads[-1]:.1f})")
    for _ in range(repeat):
        seen["deltagrid"]["night"].append(deltagrid(home, "backup", *sources))
        seen["restic"]["night"].append(repo.backup(*sources))
    loads.append(os.getloadavg()[0])
    d, t = (statistics.median(c.seconds for c in seen[n]["night"]) for n in ("deltagrid", "restic"))
    say(f"{size:,}: no-change night deltagrid {d:.2f} s, restic {t:.2f} s")
    shutil.rmtree(home)
    shutil.rmtree(work / f"restic-{size}")
    rows = []
    for name, rows_of in seen.items():
        initial, night = rows_of["initial"], rows_of["night"]
        init_s = statistics.median(c.seconds for c in initial)
        init_cpu = statistics.median(c.cpu for c in initial)
        rows.append(
            [
                f"{size:,}" if name == "deltagrid" else "",
                name,
                f"{init_s:.1f} / {min(c.seconds for c in initial):.1f}",
                f"{init_cpu:.1f}",
                f"{size / init_s:,.0f} ({size / init_cpu:,.0f})",
                f"{max(c.rss_mib for c in initial):.0f}",
                mib(stored[name]),
                "{:.2f} / {:.2f}".format(*median_min(night)),
                f"{max(c.rss_mib for c in night):.0f}",
                f"{min(loads):.1f}-{max(loads):.1f}",
            ]
        )
    for what in ("initial", "night"):
        ratio = median_min(seen["deltagrid"][what])[0] / median_min(seen["restic"][what])[0]
        rows[0].append(f"{ratio:.2f}")
        rows[1].append("")
    return rows


def each_file(sources: list[Path]) -> Iterator[str]:
    for source in sources:
        for directory, _dirs, files in os.walk(source):
            for name in files:
                yield os.path.join(directory, name)


def warm(sources: list[Path]) -> None:
    """Read the whole tree once, untimed: the first tool to run would otherwise be the one to
    bring its inodes and bytes into the page cache."""
    for path in each_file(sources):
        with open(path, "rb") as f:
            f.read()


def evict(sources: list[Path]) -> None:
    """Drop the tree's file data from the page cache, as the system does with what nobody read
    lately: the first backup of a real tree reads it from the disk. Written back first (only
    clean pages go); the inodes stay cached (drop_caches, which needs root, drops them too)."""
    os.sync()
    for path in each_file(sources):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def median_min(children: list[Child]) -> tuple[float, float]:
    return statistics.median(c.seconds for c in children), min(c.seconds for c in children)


# --- output -----------------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,300000", help="files, comma-separated")
    parser.add_argument("--shape", choices=("wide", "parts"), default="wide")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--rounds", type=int, default=3, help="initial backup pairs (median)")
    parser.add_argument("--repeat", type=int, default=3, help="no-change runs (median)")
    parser.add_argument("--no-restic", action="store_true")
    parser.add_argument("--details", action="store_true", help="deltagrid's own rows too")
    parser.add_argument("--drop-cache", action="store_true", help="delete the tree at the end")
    parser.add_argument(
        "--cold", action="store_true", help="each initial backup reads the tree from the disk"
    )
    add_binary_options(parser)
    args = parser.parse_args()
    use_binaries(args)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s <= 0 or s % PART for s in sizes):
        parser.error(f"--sizes must be multiples of {PART:,}")
    if args.rounds < 1 or args.repeat < 1:
        parser.error("--rounds and --repeat must be at least 1")
    restic = not args.no_restic and Restic.available()
    if not args.no_restic and not restic:
        say("restic not installed (or --restic PATH): deltagrid's rows alone")
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dg-scale-", dir=args.cache.parent))
    versions = f"{Deltagrid.version()}; " + (Restic.version() if restic else "no restic")
    say(f"{versions}; load {os.getloadavg()[0]:.1f}")
    pairs, details, starts, quiet = [], [], [], None
    try:
        for size in sizes:
            parts = ensure_parts(args.cache, size // PART, args.shape)
            if restic:
                pairs += versus(size, parts, work, args.rounds, args.repeat, args.cold)
            if args.details or not restic:
                details.append(measure(size, parts, work, args.repeat))
        if args.details or not restic:
            first = ensure_parts(args.cache, 1, args.shape)[0]
            deltagrid(work / "home-startup", "backup", first / next(first.iterdir()))
            starts = startup(work / "home-startup")
            quiet = against_restic(args.cache, work, args.repeat) if restic else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.drop_cache:
            shutil.rmtree(args.cache, ignore_errors=True)
    shape = (
        "1,000 files of 15 B a directory, 100 directories a source"
        if args.shape == "wide"
        else "0-300 B files, 25 a directory, 100,000 files a source"
    )
    print(f"\n{shape}; {versions}\n")
    if pairs:
        print_versus(pairs, args.rounds, args.repeat, args.cold)
    if details:
        print_details(details, starts, quiet, args.repeat)


def print_versus(rows: list[list], rounds: int, repeat: int, cold: bool) -> None:
    header = [
        "files",
        "tool",
        "initial s med / min",
        "CPU s",
        "files/s (per CPU s)",
        "init RSS MiB",
        "store",
        "night s med / min",
        "night RSS",
        "load",
        "init ÷ restic",
        "night ÷ restic",
    ]
    print(
        f"initial: {rounds} interleaved pairs (deltagrid, then restic) into fresh homes and "
        f"repositories{', each with the tree out of the page cache' if cold else ''}; "
        f"night: {repeat} interleaved no-change runs; medians and minimums; "
        "load: the 1-minute load average seen during the size; ratios of the medians\n"
    )
    print(tables.render([header, *rows], left=(1,)))


def print_details(results: list[list[str]], starts, quiet, repeat: int) -> None:
    header = [
        "files",
        "initial s",
        "files/s",
        "scan s",
        "files/s",
        "night s",
        "files/s",
        "RSS MiB",
        "init RSS",
        "backupdb",
        "export raw / zstd",
        "churn s",
        "delta",
        "of db",
        "db growth",
    ]
    print(
        f"\nseconds (CPU seconds): no-change rows the median of {repeat} runs; files/s "
        "(per CPU second); RSS: the largest no-change child, init RSS the initial backup's\n"
    )
    print(tables.render([header, *results]))
    print()
    print(tables.render([["start-up", "seconds", "RSS MiB"], *starts]))
    if quiet:
        print()
        print(tables.render([["quiet night", "deltagrid s", "restic s", "ratio"], quiet]))


if __name__ == "__main__":
    main()
