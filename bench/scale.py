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
from dataclasses import dataclass
from pathlib import Path

import tables

ROOT = Path(__file__).resolve().parent.parent
PART = 100_000  # files in one generated part
FANOUT = (20, 20, 10)  # directories per level of a part
PER_LEAF = 25  # files in a leaf directory (the shallower files come on top)
OLD = time.time() - 30 * 86400
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
    """One subprocess: wall seconds, its JSON stdout (if any) and its own peak RSS."""
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


def ensure_parts(cache: Path, parts: int) -> list[Path]:
    """The first `parts` parts of the cache, generating the missing ones."""
    found = []
    for p in range(parts):
        part, stamp = cache / f"part{p:02d}", cache / f"part{p:02d}.done"
        if not stamp.exists():
            shutil.rmtree(part, ignore_errors=True)
            started = time.perf_counter()
            generate(part, PART, seed=p)
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
        for path in rng.sample(part_files(part, PART), int(PART * fraction)):
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
    if shutil.which("restic") is None:
        say("restic not installed: no comparison")
        return None
    tree = cache / "small"
    if not (cache / "small.done").exists():
        shutil.rmtree(tree, ignore_errors=True)
        generate(tree, 7_700, seed=99)
        (cache / "small.done").touch()
    home, repo = work / "home-small", work / "restic-repo"
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(repo))
    env["RESTIC_CACHE_DIR"] = str(work / "restic-cache")
    restic = shutil.which("restic") or "restic"
    run(restic, "init", env=env)
    run(restic, "backup", "-q", tree, env=env)
    deltagrid(home, "backup", tree)
    ours = [deltagrid(home, "backup", tree).seconds for _ in range(repeat)]
    theirs = [run(restic, "backup", "-q", tree, env=env).seconds for _ in range(repeat)]
    d, r = statistics.median(ours), statistics.median(theirs)
    return ["7,700 files, no change", f"{d:.2f}", f"{r:.2f}", f"{d / r:.2f}"]


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
    parser.add_argument("--cache", type=Path, default=Path("/tmp/dg-scale-cache"))
    parser.add_argument("--repeat", type=int, default=3, help="no-change runs (median)")
    parser.add_argument("--no-restic", action="store_true")
    parser.add_argument("--drop-cache", action="store_true", help="delete the tree at the end")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s <= 0 or s % PART for s in sizes):
        parser.error(f"--sizes must be multiples of {PART:,}")
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dg-scale-", dir=args.cache.parent))
    try:
        results = []
        for size in sizes:
            parts = ensure_parts(args.cache, size // PART)
            results.append(measure(size, parts, work, args.repeat))
        deltagrid(work / "home-startup", "backup", ensure_parts(args.cache, 1)[0] / "proj00")
        starts = startup(work / "home-startup")
        restic = None if args.no_restic else against_restic(args.cache, work, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.drop_cache:
            shutil.rmtree(args.cache, ignore_errors=True)
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
        f"\nseconds (CPU seconds): no-change rows the median of {args.repeat} runs; files/s "
        "(per CPU second); RSS: the largest no-change child, init RSS the initial backup's\n"
    )
    print(tables.render([header, *results]))
    print()
    print(tables.render([["start-up", "seconds", "RSS MiB"], *starts]))
    if restic:
        print()
        print(tables.render([["quiet night", "deltagrid s", "restic s", "ratio"], restic]))


if __name__ == "__main__":
    main()
