"""How quantities read in text: bytes, durations, counts, timestamps and paths."""

from __future__ import annotations

import os
from datetime import datetime


def path_text(path: bytes) -> str:
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
