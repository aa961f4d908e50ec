"""deltagrid vs `tahoe backup` on a local Tahoe-LAFS grid (4 storage servers, shares 2/3/4).

Run on demand (10-20 minutes on 2 cores; almost all of it is `tahoe backup`):

    .venv/bin/python bench/grid_bench.py [--files 5000] [--big-mb 256] [--runs 1]

It creates a temporary directory with a fresh LocalGrid, generates a tree of small files
(--dirs directories, 100 B-8 KiB of incompressible bytes each, mtimes an hour old) and measures,
per run, through the two command-line tools exactly as a user runs them:

1. initial backup of the small-file tree: `deltagrid backup` (fresh home) vs `tahoe backup`
   (fresh alias, fresh backupdb) - seconds, files/s, and deltagrid files/s / tahoe files/s;
2. a second, no-change run of each (both skip unchanged files by timestamps) - seconds;
3. one large file (--big-mb MiB of random bytes): `deltagrid backup` and `deltagrid restore`
   MiB/s, and `tahoe backup` of the same file (skip with --no-tahoe-big);
4. a full `deltagrid restore` of the small-file tree - seconds and files/s (restored bytes are
   compared with the source; a mismatch is printed, not asserted);
5. a probe of the client node's web API: one 4 KiB ranged GET inside a 16 MiB immutable object
   (the price of reading one small file out of a pack on its own), and a 4 KiB PUT (what
   `tahoe backup` pays per file), as medians over --probes requests; and one whole 16 MiB PUT
   and GET.

Times are wall-clock around each command, so they include interpreter start-up (~0.3 s for
deltagrid, ~1 s for tahoe). Every node listens on 127.0.0.1 only; the grid is stopped and the
temporary directory removed at the end, also on an error or Ctrl-C (--keep keeps the directory).
Nothing is asserted: it prints a table.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tables  # noqa: E402

from deltagrid.store.tahoe import TahoeStore  # noqa: E402
from deltagrid.store.tahoe_grid import LocalGrid, tahoe_executable  # noqa: E402

MiB = 1 << 20
TIMEOUT = 3 * 3600  # seconds: any one command


@dataclass
class Row:
    tool: str
    run: str
    seconds: float
    rate: str = ""
    ratio: str = ""
    note: str = ""


def sh(args: list[str], what: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run one command; return its wall-clock seconds and the finished process."""
    started = time.perf_counter()
    done = subprocess.run(
        args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT
    )
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return elapsed, done


def deltagrid(home: Path, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", "deltagrid", "--home", str(home), "--json", *map(str, args)]


def tahoe(node: Path, *args: str | Path) -> list[str]:
    return [tahoe_executable(), "-d", str(node), *map(str, args)]


def make_tree(root: Path, files: int, dirs: int, seed: int = 1) -> int:
    """`files` files of 100 B-8 KiB over `dirs` directories; returns the total bytes."""
    rng = random.Random(seed)
    total = 0
    old = time.time() - 3600
    for i in range(files):
        d = root / f"d{i % dirs:03}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"f{i // dirs:05}.bin"
        data = rng.randbytes(rng.randint(100, 8192))
        path.write_bytes(data)
        os.utime(path, (old, old))
        total += len(data)
    return total


def make_big(path: Path, mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
    old = time.time() - 3600
    os.utime(path, (old, old))


def same_tree(src: Path, restored: Path) -> str:
    """'ok' if every file under src is byte-identical under restored, else what differs."""
    bad = missing = 0
    for dirpath, _dirs, names in os.walk(src):
        for name in names:
            a = Path(dirpath) / name
            b = restored / a.relative_to(src)
            if not b.exists():
                missing += 1
            elif not filecmp.cmp(a, b, shallow=False):
                bad += 1
    return "ok" if not bad and not missing else f"MISMATCH: {bad} differ, {missing} missing"


def tahoe_summary(out: str) -> str:
    """The counts line of `tahoe backup`: ' N files uploaded (M reused), ...'."""
    for line in out.splitlines():
        if "files uploaded" in line:
            return " ".join(line.split())
    return out.strip().splitlines()[-1] if out.strip() else ""


def fresh_backupdb(node: Path) -> None:
    """`tahoe backup` keeps its backupdb in the node dir: remove it for an initial backup."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        (node / "private" / f"backupdb.sqlite{suffix}").unlink(missing_ok=True)


def rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def probe(grid: LocalGrid, count: int) -> list[Row]:
    """Median latency of single web-API requests: ranged 4 KiB GETs and 4 KiB PUTs."""
    store = TahoeStore(f"http://127.0.0.1:{json.loads(grid.state.read_text())['webport']}", None)
    rng = random.Random(7)
    rows = []
    try:
        size = 16 * MiB
        started = time.perf_counter()
        ref = store.put_bytes(rng.randbytes(size))
        put_big = time.perf_counter() - started
        rows.append(Row("web API", "PUT 16 MiB", put_big, f"{rate(16, put_big):.1f} MiB/s"))
        started = time.perf_counter()
        store.get(ref)
        get_big = time.perf_counter() - started
        rows.append(Row("web API", "GET 16 MiB", get_big, f"{rate(16, get_big):.1f} MiB/s"))
        gets = []
        for _ in range(count):
            offset = rng.randrange(0, size - 4096)
            started = time.perf_counter()
            store.get(ref, offset, 4096)
            gets.append(time.perf_counter() - started)
        puts = []
        for _ in range(count):
            data = rng.randbytes(4096)
            started = time.perf_counter()
            store.put_bytes(data)
            puts.append(time.perf_counter() - started)
    finally:
        store.close()
    for what, times in (("ranged GET 4 KiB", gets), ("PUT 4 KiB", puts)):
        med = statistics.median(times)
        p90 = sorted(times)[int(len(times) * 0.9)]
        rows.append(
            Row(
                "web API",
                what,
                med,
                f"{rate(1, med):.1f} req/s",
                note=f"median of {len(times)}, p90 {p90 * 1e3:.0f} ms",
            )
        )
    return rows


def bench_small(
    work: Path, grid: LocalGrid, src: Path, files: int, r: int, rows: list[Row], notes: list[str]
) -> None:
    client = grid.base / "client"
    # --- deltagrid: fresh home, initial backup, then a no-change run
    home = work / f"dg-home-{r}"
    sh(deltagrid(home, "init", "--store", grid.url), "deltagrid init")
    dg_first, done = sh(deltagrid(home, "backup", src), "deltagrid backup")
    doc = json.loads(done.stdout)
    notes.append(
        f"run {r} deltagrid initial: {doc['counts'].get('files', 0)} files, {doc['packs']} packs, "
        f"{doc['bytes_uploaded'] / MiB:.1f} MiB uploaded + {doc['backupdb_bytes'] / 1024:.0f} KiB "
        "backupdb"
    )
    dg_again, done = sh(deltagrid(home, "backup", src), "deltagrid backup (no change)")
    doc = json.loads(done.stdout)
    notes.append(
        f"run {r} deltagrid no-change: {doc['scan']['unchanged']} unchanged, "
        f"{doc['counts'].get('files', 0)} files stored, {doc['packs']} packs, "
        f"{doc['backupdb_bytes']} B backupdb delta"
    )
    # --- tahoe backup: fresh alias and backupdb, initial backup, then a no-change run
    alias = f"bench{r}"
    fresh_backupdb(client)
    sh(tahoe(client, "create-alias", alias), "tahoe create-alias")
    th_first, done = sh(tahoe(client, "backup", src, f"{alias}:backups"), "tahoe backup")
    notes.append(f"run {r} tahoe initial: {tahoe_summary(done.stdout)}")
    th_again, done = sh(
        tahoe(client, "backup", src, f"{alias}:backups"), "tahoe backup (no change)"
    )
    notes.append(f"run {r} tahoe no-change: {tahoe_summary(done.stdout)}")

    dg_rate, th_rate = rate(files, dg_first), rate(files, th_first)
    rows += [
        Row("deltagrid", f"{r}: initial, small", dg_first, f"{dg_rate:.0f} files/s",
            f"{dg_rate / th_rate:.1f}x"),
        Row("tahoe backup", f"{r}: initial, small", th_first, f"{th_rate:.1f} files/s", "1x"),
        Row("deltagrid", f"{r}: no change, small", dg_again, "",
            f"{th_again / dg_again:.1f}x"),
        Row("tahoe backup", f"{r}: no change, small", th_again, "", "1x"),
    ]  # fmt: skip
    # --- deltagrid restore of the whole tree
    target = work / f"restore-small-{r}"
    dg_restore, done = sh(deltagrid(home, "restore", target), "deltagrid restore")
    doc = json.loads(done.stdout)
    check = same_tree(src, target / src.relative_to("/"))
    rows.append(
        Row("deltagrid", f"{r}: restore, small", dg_restore,
            f"{rate(doc['files'], dg_restore):.0f} files/s", note=check)
    )  # fmt: skip
    shutil.rmtree(target, ignore_errors=True)


def bench_big(
    work: Path, grid: LocalGrid, big: Path, mib: int, r: int, tahoe_too: bool, rows: list[Row]
) -> None:
    home = work / f"dg-big-{r}"
    sh(deltagrid(home, "init", "--store", grid.url), "deltagrid init")
    dg_up, _ = sh(deltagrid(home, "backup", big), "deltagrid backup (big)")
    target = work / f"restore-big-{r}"
    dg_down, _ = sh(deltagrid(home, "restore", target), "deltagrid restore (big)")
    restored = target / big.relative_to("/")
    check = "ok" if filecmp.cmp(big, restored, shallow=False) else "MISMATCH"
    shutil.rmtree(target, ignore_errors=True)
    th_note = ""
    if tahoe_too:
        client = grid.base / "client"
        alias = f"bigbench{r}"
        fresh_backupdb(client)
        sh(tahoe(client, "create-alias", alias), "tahoe create-alias")
        th_up, _ = sh(tahoe(client, "backup", big.parent, f"{alias}:backups"), "tahoe backup")
        th_note = f"{rate(mib, dg_up) / rate(mib, th_up):.2f}x"
    rows.append(
        Row("deltagrid", f"{r}: backup {mib} MiB file", dg_up, f"{rate(mib, dg_up):.1f} MiB/s",
            th_note)
    )  # fmt: skip
    if tahoe_too:
        rows.append(
            Row("tahoe backup", f"{r}: backup {mib} MiB file", th_up,
                f"{rate(mib, th_up):.1f} MiB/s", "1x")
        )  # fmt: skip
    rows.append(
        Row("deltagrid", f"{r}: restore {mib} MiB file", dg_down,
            f"{rate(mib, dg_down):.1f} MiB/s", note=check)
    )  # fmt: skip


def seconds(s: float) -> str:
    return f"{s:.3f}" if s < 1 else f"{s:.2f}"


def print_table(rows: list[Row]) -> None:
    head = Row("tool", "run", 0, "files/s or MiB/s", "ratio", "note")
    cells = [[r.tool, r.run, seconds(r.seconds), r.rate, r.ratio, r.note] for r in rows]
    cells.insert(0, [head.tool, head.run, "seconds", head.rate, head.ratio, head.note])
    print(tables.render(cells, left=(0, 1, 5)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=5000, help="small files (default 5000)")
    p.add_argument("--dirs", type=int, default=100, help="directories they are spread over")
    p.add_argument("--big-mb", type=int, default=256, help="MiB of the large file (0: skip)")
    p.add_argument("--runs", type=int, default=1, help="repeat the measurements (fresh homes)")
    p.add_argument("--no-tahoe-big", action="store_true", help="skip tahoe backup of the big file")
    p.add_argument("--probes", type=int, default=50, help="requests per web-API probe (0: skip)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)

    # SIGTERM takes the same way out as Ctrl-C, so the grid is stopped in `finally`.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    grid = LocalGrid(work / "grid")
    rows: list[Row] = []
    notes: list[str] = []
    try:
        started = time.perf_counter()
        grid.create(servers=4)
        grid.start()
        print(f"grid up in {time.perf_counter() - started:.1f} s at {grid.url} ({work})")
        src = work / "src" / "small"
        total = make_tree(src, args.files, args.dirs)
        print(f"tree: {args.files} files in {args.dirs} dirs, {total / MiB:.1f} MiB")
        big = work / "src" / "big" / "big.bin"
        if args.big_mb:
            make_big(big, args.big_mb)
        for r in range(args.runs):
            bench_small(work, grid, src, args.files, r, rows, notes)
            if args.big_mb:
                bench_big(work, grid, big, args.big_mb, r, not args.no_tahoe_big, rows)
        if args.probes:
            rows += probe(grid, args.probes)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        try:
            grid.stop()
        except Exception as exc:  # a grid that never got created has nothing to stop
            print(f"stopping the grid: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if rows:
            print()
            print_table(rows)
            for note in notes:
                print("  " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
