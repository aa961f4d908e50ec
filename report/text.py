"""The report for a terminal: aligned columns, bars drawn with block characters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from deltagrid.floor.units import count, human_bytes, plural
from deltagrid.report.figures import Figures

BAR_WIDTH = 30
_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(value: float, largest: float, width: int = BAR_WIDTH) -> str:
    """A bar `value / largest` of `width` cells, to an eighth of a cell."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / largest * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def day(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M")


def render(f: Figures, line: Callable[[str], None], snapshots: int = 30) -> None:
    """The report as lines, top to bottom. Long because it is the page's template: each
    statement is one block of the output, read in the order it prints."""
    latest = f.latest
    line(f"deltagrid report: {f.home}")
    line(f"store {f.store_url}")
    line(
        f"  {human_bytes(f.store_bytes)}: {plural(f.packs, 'pack')} "
        f"({human_bytes(f.pack_bytes)}) + backupdb {human_bytes(f.backupdb_bytes)}"
    )
    if latest is None:
        line("  no snapshot yet")
    else:
        line(
            f"  {plural(len(f.snapshots), 'snapshot')}; latest {latest.id} at "
            f"{day(latest.committed_ns)} holds {plural(latest.files, 'file')}"
        )
    line("")

    shown = f.snapshots[-snapshots:]
    if shown:
        largest = max(s.bytes_added for s in shown)
        line(f"{'SNAPSHOT':>8}  {'DATE':16}  {'FILES':>9}  {'ADDED':>10}")
        for s in shown:
            line(
                f"{s.id:>8}  {day(s.committed_ns):16}  {count(s.files):>9}  "
                f"{human_bytes(s.bytes_added):>10}  {bar(s.bytes_added, largest)}"
            )
        if len(f.snapshots) > len(shown):
            line(f"{'':8}  ({count(len(f.snapshots) - len(shown))} older snapshots not shown)")
        line("")

    if f.most_versions:
        line("files that change most")
        line(f"{'VERSIONS':>8}  PATH")
        for path, n in f.most_versions:
            line(f"{count(n):>8}  {path}")
        line("")

    if f.chains:
        line("longest delta chains in the latest snapshot (patches a restore applies)")
        line(f"{'DELTAS':>8}  {'CHAIN':>10}  {'SIZE':>10}  PATH")
        for c in f.chains:
            line(
                f"{c.depth:>8}  {human_bytes(c.chain_bytes):>10}  {human_bytes(c.size):>10}  "
                f"{c.path}"
            )
        line("")

    if f.runs:
        line("last runs")
        line(f"{'RUN':>8}  {'STARTED':16}  {'COMMAND':8}  {'OUTCOME':8}  SUMMARY")
        for r in f.runs:
            line(f"{r.id:>8}  {day(r.started_ns):16}  {r.command:8}  {r.outcome:8}  {r.summary}")
