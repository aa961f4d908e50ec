"""The report as one self-contained HTML page: inline CSS and SVG, no script, no external
resource, so it can be mailed, archived or opened from a file anywhere."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html import escape

from deltagrid.backupdb.runs import Run
from deltagrid.floor.units import count, human_bytes, human_duration, plural
from deltagrid.report.figures import Figures
from deltagrid.report.svg import area_chart, bar_chart

SHOWN_ERRORS = 20  # per run; `deltagrid --json log` has them all

CSS = """
:root { --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --accent: #3b6fd8;
  --ok: #1f9d55; --partial: #c98a12; --failed: #d64545; --locked: #6b7280; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f5f9; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 40px; }
header { display: flex; align-items: baseline; gap: 14px; flex-wrap: wrap; margin-bottom: 18px; }
header h1 { margin: 0; font-size: 24px; letter-spacing: -0.01em; }
header .brand { color: var(--accent); font-weight: 700; }
header .meta { color: var(--muted); font-size: 13px; }
.kpis { display: grid; grid-template-columns: repeat(4, 1fr); gap: 14px; margin-bottom: 14px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 18px; box-shadow: 0 1px 2px rgba(16, 24, 40, 0.04); margin-bottom: 14px; }
.kpi { margin-bottom: 0; }
.kpi .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: 0.05em; }
.kpi .value { font-size: 26px; font-weight: 650; margin-top: 2px; }
.kpi .sub { color: var(--muted); font-size: 12.5px; }
h2 { font-size: 15px; margin: 0 0 10px; }
h2 .hint { color: var(--muted); font-weight: 400; font-size: 12.5px; margin-left: 6px; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.cols .card { margin-bottom: 14px; }
svg.chart { display: block; overflow: visible; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .axis { stroke: #9ca3af; stroke-width: 1; }
svg .ylabel, svg .xlabel { fill: var(--muted); font-size: 11px; }
svg .vlabel { fill: var(--ink); font-size: 11px; font-weight: 600; }
svg .bar { fill: var(--accent); }
svg .bar:hover { fill: #2a55b0; }
svg .line { fill: none; stroke: var(--accent); stroke-width: 2; }
svg .dot { fill: #fff; stroke: var(--accent); stroke-width: 1.5; }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th { text-align: left; color: var(--muted); font-weight: 500; font-size: 12px;
  border-bottom: 1px solid var(--line); padding: 6px 8px; }
td { border-bottom: 1px solid #f0f2f5; padding: 6px 8px; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.path { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 12px;
  overflow-wrap: anywhere; }
.meter { position: relative; height: 8px; background: #eef2fb; border-radius: 4px;
  min-width: 80px; margin-top: 5px; }
.meter span { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 4px;
  background: var(--accent); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px;
  font-weight: 600; color: #fff; }
.badge.ok { background: var(--ok); } .badge.partial { background: var(--partial); }
.badge.failed, .badge.usage { background: var(--failed); }
.badge.locked { background: var(--locked); }
details { margin-top: 4px; color: var(--muted); }
.code { color: var(--muted); font-size: 12px; }
details summary { cursor: pointer; }
details ul { margin: 4px 0 0; padding-left: 18px; }
.empty { color: var(--muted); padding: 24px 0; text-align: center; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 8px; }
"""


def _text(value: str) -> str:
    """Escaped for HTML; a path's undecodable bytes (surrogate escapes) become U+FFFD."""
    return escape(value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _path(value: str) -> str:
    """A path that may wrap after any slash, and only there unless it must."""
    return _text(value).replace("/", "/<wbr>")


def _when(ns: int, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().strftime(fmt)


def _ago(ns: int, now_ns: int) -> str:
    return human_duration(max(now_ns - ns, 0) / 1e9) + " ago"


def _byte_axis(largest: float) -> tuple[float, str]:
    """The unit a byte axis counts in, so its ticks are round numbers of it."""
    divisor, unit = 1.0, "B"
    for name in ("KiB", "MiB", "GiB", "TiB"):
        if largest < divisor * 800:  # 800 KiB reads better as 0 ... 1 MiB than 0 ... 1000 KiB
            break
        divisor, unit = divisor * 1024, name
    return divisor, unit


def _fmt(unit: str) -> Callable[[float], str]:
    return lambda v: f"{v:g} {unit}" if v else "0"


def _kpi(label: str, value: str, sub: str) -> str:
    return (
        f'<div class="card kpi"><div class="label">{escape(label)}</div>'
        f'<div class="value">{value}</div><div class="sub">{sub}</div></div>'
    )


def _uploads(f: Figures) -> str:
    shown = f.snapshots[-60:]
    if not shown:
        return '<div class="empty">no snapshot yet</div>'
    divisor, unit = _byte_axis(max(s.bytes_added for s in shown))
    within_days = shown[-1].committed_ns - shown[0].committed_ns < 2 * 86400 * 10**9
    bars = [
        (
            _when(s.committed_ns, "%H:%M" if within_days else "%b %d"),
            s.bytes_added / divisor,
            f"snapshot {s.id}, {_when(s.committed_ns)}: {human_bytes(s.bytes_added)} added, "
            f"{count(s.files)} files",
        )
        for s in shown
    ]
    return bar_chart(bars, _fmt(unit), "bytes uploaded per snapshot")


def _store_size(f: Figures) -> str:
    if not f.store_history:
        return '<div class="empty">no measurement yet</div>'
    divisor, unit = _byte_axis(max(b for _, b in f.store_history))
    points = [(t, b / divisor) for t, b in f.store_history]
    return area_chart(points, _fmt(unit), "store size over time")


def _most_versions(f: Figures) -> str:
    if not f.most_versions:
        return '<div class="empty">no files yet</div>'
    top = max(n for _, n in f.most_versions)
    rows = "".join(
        f'<tr><td class="path">{_path(path)}<div class="meter">'
        f'<span style="width:{100 * n / top:.1f}%"></span></div></td>'
        f'<td class="num">{count(n)}</td></tr>'
        for path, n in f.most_versions
    )
    return f'<table><tr><th>path</th><th class="num">versions</th></tr>{rows}</table>'


def _chains(f: Figures) -> str:
    if not f.depths:
        return '<div class="empty">no files yet</div>'
    deepest = max(f.depths)
    bars = [
        (str(d), float(f.depths.get(d, 0)), f"{plural(f.depths.get(d, 0), 'file')}: {d} patches")
        for d in range(deepest + 1)
    ]
    chart = bar_chart(
        bars,
        lambda v: f"{v:g}",
        "live files by delta chain length",
        width=520,
        height=170,
        value_labels=lambda v: count(int(v)),
    )
    if not f.chains:
        return chart + '<div class="empty">every live file is stored whole</div>'
    rows = "".join(
        f'<tr><td class="path">{_path(c.path)}</td><td class="num">{c.depth}</td>'
        f'<td class="num">{human_bytes(c.chain_bytes)}</td></tr>'
        for c in f.chains
    )
    return (
        chart + '<table><tr><th>longest chains</th><th class="num">deltas</th>'
        f'<th class="num">delta bytes</th></tr>{rows}</table>'
    )


def _run_row(r: Run) -> str:
    problems = ""
    if r.errors:
        items = "".join(
            f"<li>{_path(e.get('path') or '?')}: {_text(e.get('error', ''))}</li>"
            for e in r.errors[:SHOWN_ERRORS]
        )
        more = r.error_count - min(len(r.errors), SHOWN_ERRORS)
        if more > 0:
            items += f"<li>… and {count(more)} more</li>"
        opened = " open" if r.error_count <= 5 else ""
        problems = (
            f"<details{opened}><summary>{plural(r.error_count, 'path')} not backed up"
            f"</summary><ul>{items}</ul></details>"
        )
    return (
        f"<tr><td class='num'>{r.id}</td><td>{_when(r.started_ns)}</td>"
        f"<td>{escape(r.command)}</td>"
        f'<td><span class="badge {escape(r.outcome)}">{escape(r.outcome)}</span>'
        + (f' <span class="code">exit {r.exit_code}</span>' if r.exit_code else "")
        + "</td>"
        f'<td class="num">{human_duration(r.seconds)}</td>'
        f'<td class="num">{human_bytes(r.bytes_uploaded)}</td>'
        f"<td>{_text(r.summary)}{problems}</td></tr>"
    )


def _runs(f: Figures) -> str:
    if not f.runs:
        return '<div class="empty">no runs recorded yet</div>'
    head = (
        '<tr><th class="num">run</th><th>started</th><th>command</th><th>outcome</th>'
        '<th class="num">took</th><th class="num">uploaded</th><th>summary</th></tr>'
    )
    return f"<table>{head}{''.join(_run_row(r) for r in f.runs)}</table>"


def render(f: Figures) -> str:
    """The report as one HTML page. Long because it is the page's template, in page order."""
    latest = f.latest
    last_run = f.runs[0] if f.runs else None
    kpis = "".join(
        [
            _kpi(
                "latest snapshot",
                f"#{latest.id}" if latest else "none",
                _ago(latest.committed_ns, f.generated_ns) if latest else "run deltagrid backup",
            ),
            _kpi(
                "files",
                count(latest.files) if latest else "0",
                f"in {plural(len(f.snapshots), 'snapshot')}",
            ),
            _kpi(
                "store size",
                escape(human_bytes(f.store_bytes)),
                f"{plural(f.packs, 'pack')} + {escape(human_bytes(f.backupdb_bytes))} backupdb",
            ),
            _kpi(
                "last run",
                f'<span class="badge {escape(last_run.outcome)}">{escape(last_run.outcome)}</span>'
                if last_run
                else "—",
                f"{escape(last_run.command)}, {_ago(last_run.finished_ns, f.generated_ns)}"
                if last_run
                else "no runs recorded",
            ),
        ]
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>deltagrid report</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
<h1><span class="brand">deltagrid</span> backup report</h1>
<div class="meta">{_text(f.home)} · {_text(f.store_url)} · {_when(f.generated_ns)}</div>
</header>
<section class="kpis">{kpis}</section>
<section class="card" id="uploads">
<h2>Uploaded per night<span class="hint">pack bytes each snapshot added</span></h2>
{_uploads(f)}
</section>
<section class="card" id="store-size">
<h2>Store size over time<span class="hint">packs the catalog references</span></h2>
{_store_size(f)}
</section>
<div class="cols">
<section class="card" id="most-versions">
<h2>Files that change most<span class="hint">versions recorded</span></h2>
{_most_versions(f)}
</section>
<section class="card" id="chains">
<h2>Delta chains<span class="hint">live files by patches a restore applies</span></h2>
{_chains(f)}
</section>
</div>
<section class="card" id="runs">
<h2>Last runs</h2>
{_runs(f)}
</section>
<footer>generated by deltagrid report · {_when(f.generated_ns, "%Y-%m-%d %H:%M:%S %Z")}</footer>
</main>
</body>
</html>
"""
