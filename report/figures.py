"""Everything `deltagrid report` shows, gathered from the backupdb and the root in one place, so
the terminal and HTML views draw the same numbers."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from deltagrid.backupdb import queries
from deltagrid.backupdb.runs import Run, last_runs
from deltagrid.repository.root import parse_root

TOP = 10  # rows in the "most versions" and "longest chains" lists


@dataclass(frozen=True)
class SnapshotRow:
    id: int
    committed_ns: int
    files: int
    bytes_added: int


@dataclass(frozen=True)
class Chain:
    path: str
    size: int
    depth: int  # deltas to apply after the keyframe
    chain_bytes: int


@dataclass
class Figures:
    home: str
    store_url: str
    generated_ns: int
    snapshots: list[SnapshotRow] = field(default_factory=list)  # published, oldest first
    pack_bytes: int = 0
    packs: int = 0
    backupdb_bytes: int = 0  # the objects the root names (full export + deltas)
    store_history: list[tuple[int, int]] = field(default_factory=list)  # (time ns, bytes)
    most_versions: list[tuple[str, int]] = field(default_factory=list)
    chains: list[Chain] = field(default_factory=list)
    depths: dict[int, int] = field(default_factory=dict)  # patches -> live files
    runs: list[Run] = field(default_factory=list)  # newest first

    @property
    def store_bytes(self) -> int:
        return self.pack_bytes + self.backupdb_bytes

    @property
    def latest(self) -> SnapshotRow | None:
        return self.snapshots[-1] if self.snapshots else None

    def doc(self) -> dict[str, Any]:
        return {
            "home": self.home,
            "store": self.store_url,
            "generated_ns": self.generated_ns,
            "snapshots": [vars(s) for s in self.snapshots],
            "store_bytes": self.store_bytes,
            "pack_bytes": self.pack_bytes,
            "packs": self.packs,
            "backupdb_bytes": self.backupdb_bytes,
            "store_history": [{"time_ns": t, "bytes": b} for t, b in self.store_history],
            "most_versions": [{"path": p, "versions": n} for p, n in self.most_versions],
            "chains": [vars(c) for c in self.chains],
            "chain_depths": {str(d): n for d, n in sorted(self.depths.items())},
            "runs": [r.doc() for r in self.runs],
        }


def store_history(
    snapshots: list[SnapshotRow], by_snapshot: dict[int, int], runs: list[Run]
) -> list[tuple[int, int]]:
    """The store's size over time: after each recorded run that measured it (exact, prune's
    drops included); before the history began, the packs still referenced, by the snapshot
    that wrote them (a lower bound: what prune dropped since is not counted)."""
    measured = sorted((r.finished_ns, r.store_bytes) for r in runs if r.store_bytes is not None)
    began = measured[0][0] if measured else None
    points: list[tuple[int, int]] = []
    total = 0
    for s in snapshots:
        total += by_snapshot.get(s.id, 0)
        if began is None or s.committed_ns < began:
            points.append((s.committed_ns, total))
    return points + [(t, b) for t, b in measured if b is not None]


def gather(conn: Any, store: Any, published: int, runs: int = 10) -> Figures:
    """The report's figures for the snapshots published so far; the newest `runs` runs."""
    f = Figures(home="", store_url=store.url, generated_ns=time.time_ns())
    f.snapshots = [
        SnapshotRow(r.id, r.committed_ns, r.files, r.bytes_added)
        for r in queries.list_snapshots(conn, published)
    ]
    packs = queries.all_packs(conn)
    f.packs, f.pack_bytes = len(packs), sum(p.size for p in packs)
    root = parse_root(store.read_root()) or {"backupdb": []}
    f.backupdb_bytes = sum(int(e.get("size", 0)) for e in root["backupdb"])
    f.runs = last_runs(conn, max(runs, 200))
    f.store_history = store_history(f.snapshots, queries.pack_bytes_by_snapshot(conn), f.runs)
    f.runs = f.runs[:runs]
    f.most_versions = [(os.fsdecode(r.path), r.versions) for r in queries.most_versions(conn, TOP)]
    if f.latest is not None:
        f.chains = [
            Chain(os.fsdecode(r.path), r.size, r.depth, r.chain_bytes)
            for r in queries.longest_chains(conn, f.latest.id, TOP)
        ]
        f.depths = queries.chain_depths(conn, f.latest.id)
    return f
