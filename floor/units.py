"""How quantities read in text: bytes, durations, counts, timestamps and paths."""

from __future__ import annotations

import os
import re
from datetime import datetime


def path_text(path: bytes) -> str:
    """A path as text: UTF-8, a byte that is not UTF-8 kept as a surrogate escape (written back
    as that byte by the CLI's streams; JSON shows it as "\\udcff")."""
    return os.fsdecode(path)


def iso(ns: int) -> str:
    """A timestamp in nanoseconds as local ISO 8601, to the second; past what a datetime holds
    (years 1 to 9999: tmpfs stores any 64-bit second), `@` and the seconds since the epoch."""
    try:
        return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"@{ns // 1_000_000_000}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_duration(seconds: float) -> str:
    """0.4 s, 12 s, 3 min 05 s, 2 h 07 min, 3 d 4 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    days, hours = s // 86400, s % 86400 // 3600
    return f"{days} d {hours} h" if hours else f"{days} d"


def count(n: int) -> str:
    """A count with thousands separators: 12,345."""
    return f"{n:,}"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{count(n)} {word if n == 1 else many or word + 's'}"


# Internal temporary names, never shown to the user: a restore's work directory and entries
# (`.deltagrid-restore-…`, `.deltagrid-file-…`), a crash-safe write's `.tmp-…`, and the staging
# or old tree beside a published mirror (`.DIR.deltagrid-staging-PID-…`, shown as DIR).
_BESIDE = re.compile(r"^\.(.+)\.deltagrid-(?:staging|old)-\d+-[0-9a-f]+$")
_INTERNAL = re.compile(r"^\.(?:deltagrid-|tmp-)")


def user_path(name: str | bytes) -> str:
    """The path the user knows for `name` (an OSError's file name): text by the surrogate-escape
    rule, never a bytes repr, and cut at an internal temporary name, so an error names the
    restore target, the mirror or the directory rather than a name that is gone after the run."""
    parts = path_text(os.fsencode(name)).split("/")
    for i, part in enumerate(parts):
        beside = _BESIDE.match(part)
        if beside:
            return "/".join(parts[:i] + [beside.group(1)])
        if _INTERNAL.match(part):
            return "/".join(parts[:i]) or "/"
    return "/".join(parts)


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escaped(path: bytes) -> str:
    """`path` with control and other unprintable characters escaped, as `ls -b` does, and the
    backslash itself escaped so the text reads back one way: `\\n` a newline, `\\x01`, `\\\\` a
    backslash. A byte that is not UTF-8 stays as it is (a surrogate escape, written back as
    that byte): the name's own bytes, not an escape of them."""
    out = []
    for ch in path_text(path):
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF or ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def shortened(text: str, width: int) -> str:
    """`text` cut to `width` characters in its middle, so a long path keeps its start and its
    file name: `/home/me/…/report.odt`."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]
