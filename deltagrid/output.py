"""What commands print: text for people, or one JSON document with --json.

Paths are bytes inside deltagrid. In text they are printed as the raw bytes; in JSON they are
strings decoded as UTF-8 with surrogateescape, so a byte that is not UTF-8 (0xff) appears as a
lone surrogate escape ("\\udcff") and encoding the string the same way gives the bytes back.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tqdm import tqdm


def path_text(path: bytes) -> str:
    return os.fsdecode(path)


class Output:
    def __init__(self, as_json: bool, progress: bool) -> None:
        self.as_json = as_json
        self.progress = progress or sys.stderr.isatty()

    def line(self, text: str = "") -> None:
        """A line of the human report (suppressed under --json)."""
        if not self.as_json:
            sys.stdout.write(text + "\n")

    def warn(self, text: str) -> None:
        sys.stderr.write(f"deltagrid: warning: {text}\n")

    def document(self, doc: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")

    def bar(self, **kwargs: Any) -> tqdm:
        return tqdm(disable=not self.progress, file=sys.stderr, leave=False, **kwargs)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
