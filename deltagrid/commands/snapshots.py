"""`deltagrid snapshots`: id, time, files and bytes added of every published snapshot."""

from __future__ import annotations

import argparse
import json

from deltagrid.backupdb import queries
from deltagrid.floor.units import human_bytes, iso
from deltagrid.home import Home, reading
from deltagrid.output import Output


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("snapshots", parents=[common], help="list snapshots")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    with reading(home) as (conn, _store, published):
        rows = queries.list_snapshots(conn, published)
    docs = [
        {
            "id": r.id,
            "time": iso(r.committed_ns),
            "files": r.files,
            "bytes_added": r.bytes_added,
            "hostname": r.hostname,
            "sources": json.loads(r.sources),
        }
        for r in rows
    ]
    out.line(f"{'ID':>5}  {'TIME':25}  {'FILES':>9}  {'ADDED':>10}  SOURCES")
    for d in docs:
        out.line(
            f"{d['id']:>5}  {d['time']:25}  {d['files']:>9}  "
            f"{human_bytes(d['bytes_added']):>10}  {' '.join(d['sources'])}"
        )
    out.document({"snapshots": docs})
    return 0
