"""deltagrid and its peers (restic, borg, rdiff-backup, duplicity) as the benchmarks run them.

One place for the command lines, so that every benchmark compares the same thing. Each tool
keeps its own defaults; what is set, and why:

    deltagrid     `python -m deltagrid --home H --json backup SRC` (a fresh home, embedded
                  store; the deltagrid of Deltagrid.root, by default the tree this file is in,
                  first on PYTHONPATH); `... --json restore T`
    restic        `restic init`, `restic backup --quiet SRC` (RESTIC_PASSWORD set: restic cannot
                  store unencrypted; cache in the work dir; compression `auto`, its default);
                  `restic restore latest --target T`
    borg          `borg init -e none` (deltagrid's directory store is not encrypted either),
                  `borg create REPO::nightK SRC` (BORG_BASE_DIR in the work dir, lz4, its
                  default); `borg extract REPO::nightK` run in T
    rdiff-backup  `rdiff-backup backup SRC DEST`; `rdiff-backup restore DEST T`
    duplicity     `duplicity --no-encryption SRC file://DEST` (one full, then incrementals;
                  archive dir in the work dir); `duplicity restore --no-encryption file://DEST T`

Children run in their tool's work directory, so `python -m deltagrid` imports the deltagrid
of the tree this file is in, not one in the caller's directory. `snapshot` and `compare`
check a restored tree against its source.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import ROOT, MiB

TOOLS = ("deltagrid", "restic", "borg", "rdiff-backup", "duplicity")


def add_binary_options(parser: argparse.ArgumentParser) -> None:
    """`--restic PATH`, `--borg PATH`, ...: run that binary rather than the one on PATH (a
    newer release unpacked beside the system's, see bench/README.md)."""
    for name in TOOLS[1:]:
        parser.add_argument(f"--{name}", metavar="PATH", help=f"the {name} to run")


def use_binaries(args: argparse.Namespace) -> None:
    """Point each peer at the binary its option named; exit with one line if it is not one."""
    for name in TOOLS[1:]:
        path = getattr(args, name.replace("-", "_"), None)
        if path is None:
            continue
        if shutil.which(path) is None:
            sys.exit(f"bench: --{name} {path}: not an executable file")
        CLASSES[name].binary = str(Path(path).resolve())


# --- running children -------------------------------------------------------------------------


class Failed(Exception):
    pass


@dataclass
class Child:
    seconds: float
    stdout: bytes
    rss_kib: int


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Child:
    """One child, timed, with its own peak RSS (os.wait4's ru_maxrss); Failed if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        tail = (stderr or stdout).decode(errors="replace")[-2000:]
        raise Failed(f"`{' '.join(argv)}` exited {code}:\n{tail}")
    return Child(elapsed, stdout, usage.ru_maxrss)


def du(*paths: Path) -> int:
    """`du -sb` of the paths that exist, summed (0 if none does)."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    out = subprocess.run(["du", "-sbc", *existing], capture_output=True, check=True, text=True)
    return int(out.stdout.splitlines()[-1].split()[0])


# --- checking a restore -----------------------------------------------------------------------


Snapshot = tuple[dict[str, bytes], set[str], dict[str, int]]


def snapshot(root: Path) -> Snapshot:
    """Every file's BLAKE2b and mtime (whole seconds), and every directory, relative to root."""
    hashes: dict[str, bytes] = {}
    mtimes: dict[str, int] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirs.update(os.path.normpath(os.path.join(rel_dir, d)) for d in dirnames)
        for name in filenames:
            path = os.path.join(dirpath, name)
            h = hashlib.blake2b(digest_size=32)
            with open(path, "rb") as f:
                while chunk := f.read(MiB):
                    h.update(chunk)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            hashes[rel] = h.digest()
            mtimes[rel] = int(os.stat(path).st_mtime)
    return hashes, dirs, mtimes


def compare(source: Snapshot, restored: Snapshot) -> tuple[str, str]:
    """('OK' or 'MISMATCH ...', a note on mtimes) for a restored tree against the source."""
    (src_h, src_d, src_m), (got_h, got_d, got_m) = source, restored
    missing = src_h.keys() - got_h.keys()
    extra = got_h.keys() - src_h.keys()
    differ = [r for r in src_h.keys() & got_h.keys() if src_h[r] != got_h[r]]
    dirs = len(src_d ^ got_d)
    counts = ((len(missing), "missing"), (len(extra), "extra"), (len(differ), "differ"))
    bad = [f"{n} {what}" for n, what in (*counts, (dirs, "dirs off")) if n]
    mtimes = sum(1 for r in src_m.keys() & got_m.keys() if src_m[r] != got_m[r])
    note = f"{mtimes} restored files have another mtime" if mtimes else ""
    return ("MISMATCH: " + ", ".join(bad) if bad else "OK"), note


# --- the tools --------------------------------------------------------------------------------


class Tool:
    """One backup tool with its repository under `work`; backup k is the k-th (from 0)."""

    name = ""
    binary = ""

    def __init__(self, work: Path, src: Path) -> None:
        self.work = work / self.name
        self.work.mkdir(parents=True)
        self.repo = self.work / "repo"
        self.src = src
        self.env = dict(os.environ)
        self.backups: list[Child] = []
        self.restores: list[Child] = []
        self.verdict = "-"  # the first restore against the source: OK or MISMATCH ...
        self.sizes = (0, 0)  # repository bytes, local-state bytes, when last measured

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.binary) is not None

    @classmethod
    def version(cls) -> str:
        flag = "version" if cls.name == "restic" else "--version"
        try:
            out = subprocess.run([cls.binary, flag], capture_output=True, text=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    def backup(self, k: int) -> Child:
        child = run(self.backup_argv(k), self.env, self.work)
        self.backups.append(child)
        return child

    def restore(self, target: Path, k: int) -> Path:
        """Restore the latest snapshot (backup k's) under target, timed; where the tree landed."""
        self.restores.append(run(self.restore_argv(target, k), self.env, self.restore_cwd(target)))
        return self.landed(target)

    def init(self) -> None:
        pass

    def backup_argv(self, k: int) -> list[str]:
        raise NotImplementedError

    def restore_argv(self, target: Path, k: int) -> list[str]:
        raise NotImplementedError

    def restore_cwd(self, target: Path) -> Path:
        # Not the caller's: `python -m deltagrid` would import the deltagrid found there.
        return self.work

    def landed(self, target: Path) -> Path:
        return target / str(self.src).lstrip("/")  # the source's absolute path under target

    def repo_bytes(self) -> int:
        return du(self.repo)

    def local_bytes(self) -> int:
        return du(self.work / "local")


class Deltagrid(Tool):
    name = binary = "deltagrid"
    root = ROOT  # the source tree whose deltagrid runs (its packages go first on PYTHONPATH)

    @classmethod
    def available(cls) -> bool:
        return True

    @classmethod
    def version(cls) -> str:
        """The commit: from git in a checkout, from bench/COMMIT in a `git archive` of one
        (.gitattributes has git write the commit there when it makes the archive)."""
        out = subprocess.run(
            ["git", "-C", str(cls.root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        )
        commit = out.stdout.strip()
        if not commit:
            try:
                stamped = (cls.root / "bench" / "COMMIT").read_text().strip()
            except OSError:
                stamped = ""
            commit = "" if "Format" in stamped else stamped
        return f"deltagrid {commit or '?'} (from {cls.root})"

    def __init__(self, work: Path, src: Path) -> None:
        super().__init__(work, src)
        self.home = self.work / "home"
        paths = [str(self.root), os.environ.get("PYTHONPATH")]
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))  # this tree's deltagrid

    def _argv(self, *args: str | Path) -> list[str]:
        home = str(self.home)
        return [sys.executable, "-m", "deltagrid", "--home", home, "--json", *map(str, args)]

    def backup_argv(self, k: int) -> list[str]:
        return self._argv("backup", self.src)

    def restore_argv(self, target: Path, k: int) -> list[str]:
        return self._argv("restore", target)

    def repo_bytes(self) -> int:
        return du(self.home / "store")

    def local_bytes(self) -> int:
        return du(self.home) - self.repo_bytes()


class Restic(Tool):
    name = binary = "restic"

    def __init__(self, work: Path, src: Path) -> None:
        super().__init__(work, src)
        self.env.update(
            RESTIC_PASSWORD="deltagrid-bench",
            RESTIC_REPOSITORY=str(self.repo),
            RESTIC_CACHE_DIR=str(self.work / "local"),
        )

    def init(self) -> None:
        run([self.binary, "init"], self.env)

    def backup_argv(self, k: int) -> list[str]:
        return [self.binary, "backup", "--quiet", str(self.src)]

    def restore_argv(self, target: Path, k: int) -> list[str]:
        return [self.binary, "restore", "latest", "--target", str(target)]


class Borg(Tool):
    name = binary = "borg"

    def __init__(self, work: Path, src: Path) -> None:
        super().__init__(work, src)
        self.env.update(
            BORG_BASE_DIR=str(self.work / "local"),
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )

    def init(self) -> None:
        run([self.binary, "init", "-e", "none", str(self.repo)], self.env)

    def backup_argv(self, k: int) -> list[str]:
        return [self.binary, "create", f"{self.repo}::night{k}", str(self.src)]

    def restore_argv(self, target: Path, k: int) -> list[str]:
        target.mkdir(parents=True)
        return [self.binary, "extract", f"{self.repo}::night{k}"]

    def restore_cwd(self, target: Path) -> Path:
        return target


class RdiffBackup(Tool):
    name = binary = "rdiff-backup"
    last = 0.0

    def backup(self, k: int) -> Child:
        # rdiff-backup names increments by the second: two backups need distinct seconds.
        time.sleep(max(0.0, self.last + 1.1 - time.time()))
        child = super().backup(k)
        self.last = time.time()
        return child

    def backup_argv(self, k: int) -> list[str]:
        return [self.binary, "backup", str(self.src), str(self.repo)]

    def restore_argv(self, target: Path, k: int) -> list[str]:
        return [self.binary, "restore", str(self.repo), str(target)]

    def landed(self, target: Path) -> Path:
        return target


class Duplicity(Tool):
    name = binary = "duplicity"

    def _common(self) -> list[str]:
        return ["--no-encryption", "--archive-dir", str(self.work / "local"), "--name", "bench"]

    def backup_argv(self, k: int) -> list[str]:
        return [self.binary, *self._common(), str(self.src), f"file://{self.repo}"]

    def restore_argv(self, target: Path, k: int) -> list[str]:
        return [self.binary, "restore", *self._common(), f"file://{self.repo}", str(target)]

    def landed(self, target: Path) -> Path:
        return target


CLASSES: dict[str, type[Tool]] = {
    c.name: c for c in (Deltagrid, Restic, Borg, RdiffBackup, Duplicity)
}
