"""`deltagrid report`: the terminal view, and the HTML page, checked in a real headless Chromium
(no console errors, charts drawn, a screenshot that is not blank)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.helpers import one_error

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def history(tmp_path: Path, cli) -> Path:
    """Five nights of backups of a small tree: one file edited every night, a forget, a prune,
    and a file whose name is not UTF-8."""
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "notes.txt").write_text("0\n")
    (src / os.fsdecode(b"caf\xe9 <b>&.txt")).write_text("latin-1 name, markup in it\n")
    thesis = bytearray(os.urandom(300_000))
    for night in range(5):
        thesis[night * 1000 : night * 1000 + 100] = os.urandom(100)
        (src / "thesis.odt").write_bytes(bytes(thesis))
        (src / "docs" / "notes.txt").write_text(f"{night}\n" * (night + 1))
        if night == 2:
            (src / "photo.jpg").write_bytes(os.urandom(400_000))
        assert cli("backup", src).code == 0
    assert cli("forget", "--keep-last", "4").code == 0
    assert cli("prune").code == 0
    return src


def test_text_report_shows_snapshots_store_changes_chains_and_runs(history: Path, cli) -> None:
    run = cli("report")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith("deltagrid report: ")
    table = lines.index(next(ln for ln in lines if ln.lstrip().startswith("SNAPSHOT")))
    rows = lines[table + 1 : table + 5]
    assert [int(r.split()[0]) for r in rows] == [2, 3, 4, 5]  # snapshot 1 was forgotten
    biggest = max(rows, key=lambda r: r.count("█"))
    assert biggest.split()[0] == "3" and biggest.count("█") == 30  # the night the photo came
    i = lines.index("files that change most")
    assert lines[i + 2].split() == ["4", str(history / "docs" / "notes.txt")]
    assert lines[i + 3].split() == ["4", str(history / "thesis.odt")]
    i = next(n for n, ln in enumerate(lines) if ln.startswith("longest delta chains"))
    assert lines[i + 2].split()[0] == "3" and lines[i + 2].endswith(str(history / "thesis.odt"))
    last = lines[lines.index("last runs") + 2].split()
    assert last[3:5] == ["prune", "ok"]
    doc = cli("--json", "report").json
    assert [s["id"] for s in doc["snapshots"]] == [2, 3, 4, 5]
    assert doc["store_bytes"] == doc["pack_bytes"] + doc["backupdb_bytes"] > 700_000
    assert doc["most_versions"][0]["versions"] == 4
    assert doc["chains"][0]["path"] == str(history / "thesis.odt") and doc["chains"][0]["depth"]
    assert [r["command"] for r in doc["runs"][:3]] == ["prune", "forget", "backup"]
    assert len(doc["store_history"]) >= 5


def test_report_of_an_empty_repository(tmp_path: Path, cli) -> None:
    assert cli("init").code == 0
    run = cli("report")
    assert run.code == 0 and "no snapshot yet" in run.out
    assert cli("report", "--html", tmp_path / "r.html").code == 0
    assert "no snapshot yet" in (tmp_path / "r.html").read_text()
    one_error(cli("report", "--html", tmp_path / "no" / "dir.html"), 1, str(tmp_path / "no"))


class _Page(HTMLParser):
    """Tags, their attributes, and whether every opened element was closed."""

    VOID = {"meta", "br", "wbr", "img", "input", "link", "hr", "rect", "line", "circle", "stop"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.attrs: list[tuple[str, str, str | None]] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attrs += [(tag, k, v) for k, v in attrs]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attrs += [(tag, k, v) for k, v in attrs]

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.open and self.open[-1] == tag, (tag, self.open[-5:])
        self.open.pop()


@pytest.fixture
def page(history: Path, cli, tmp_path: Path) -> Path:
    path = tmp_path / "report.html"
    run = cli("report", "--html", path)
    assert run.code == 0, run.err
    assert run.out == f"wrote {path}\n"
    return path


def test_html_report_is_one_self_contained_page(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(text)
    parsed.close()
    assert parsed.open == []  # every element closed, in order
    assert parsed.tags["script"] == 0 and parsed.tags["link"] == 0 and parsed.tags["img"] == 0
    assert parsed.tags["svg"] == 3 and parsed.tags["style"] == 1
    assert {v for _t, k, v in parsed.attrs if k in ("src", "href")} <= {"url(#dg-area-fill)"}
    assert re.findall(r"https?://[^\"' ]+", text) == ["http://www.w3.org/2000/svg"] * 3
    for section in ("uploads", "store-size", "most-versions", "chains", "runs"):
        assert f'id="{section}"' in text
    # the undecodable byte is shown as U+FFFD and the markup in the name is escaped
    assert "/<wbr>caf\ufffd &lt;b&gt;&amp;.txt" in text
    assert "<b>&" not in text


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit PNG (all that Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up, corner = prev[x], prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + pred) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3))
        prev = line
    return width, height, rows


def _chromium(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1200,1600",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_html_report_renders_in_chromium(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = _chromium(page, tmp_path, f"--screenshot={shot}", "--enable-logging=stderr", "--v=0")
    assert shot.exists(), done.stderr[-2000:]
    console = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 1600)
    colours = Counter(
        px for row in rows[::4] for px in zip(row[::3], row[1::3], row[2::3], strict=True)
    )
    assert len(colours) > 50  # text, charts, badges: not a blank or one-colour page
    assert colours.most_common(1)[0][1] < 0.9 * sum(colours.values())
    assert colours[(0x3B, 0x6F, 0xD8)] > 500  # the chart bars and line are drawn

    dom = _chromium(page, tmp_path, "--dump-dom").stdout
    assert dom.count('class="bar"') >= 4 + 2  # a bar per snapshot, and the chain histogram
    assert dom.count("<polyline") == 1 and 'class="badge ok"' in dom
    assert "Uploaded per night" in dom and "Last runs" in dom


def test_report_is_read_only_and_needs_a_repository(home: Path, cli) -> None:
    one_error(cli("report"), 1, "no deltagrid repository")
    assert not home.exists()
