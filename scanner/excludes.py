"""Gitignore-style exclude patterns, matched against paths relative to the scanned root.

`*` and `?` stay within one path component, `**` crosses components, a pattern with a `/` in it
(other than a trailing one) is anchored at the root, one without matches at any depth, a trailing
`/` matches directories only, and a leading `!` re-includes what an earlier pattern excluded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from deltagrid.floor.errors import UsageError


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[bytes]
    negate: bool
    dirs_only: bool


def _translate(glob: bytes) -> bytes:
    out = []
    i = 0
    while i < len(glob):
        if glob[i : i + 3] == b"**/":
            out.append(b"(?:.*/)?")
            i += 3
        elif glob[i : i + 2] == b"**":
            out.append(b".*")
            i += 2
        elif glob[i : i + 1] == b"*":
            out.append(b"[^/]*")
            i += 1
        elif glob[i : i + 1] == b"?":
            out.append(b"[^/]")
            i += 1
        elif glob[i : i + 1] == b"[":
            end = glob.find(b"]", i + 1)
            if end == -1:
                out.append(re.escape(b"["))
                i += 1
            else:
                body = glob[i + 1 : end].replace(b"\\", b"\\\\")
                if body.startswith(b"!"):
                    body = b"^" + body[1:]
                out.append(b"[" + body + b"]")
                i = end + 1
        elif glob[i : i + 1] == b"\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1 : i + 2]))
            i += 2
        else:
            out.append(re.escape(glob[i : i + 1]))
            i += 1
    return b"".join(out)


def compile_pattern(text: str) -> Pattern:
    raw = os.fsencode(text)
    negate = raw.startswith(b"!")
    if negate:
        raw = raw[1:]
    dirs_only = raw.endswith(b"/")
    raw = raw.rstrip(b"/")
    if not raw:
        raise UsageError(f"empty exclude pattern: {text!r}")
    anchored = b"/" in raw
    raw = raw.lstrip(b"/")
    body = _translate(raw)
    prefix = b"" if anchored else b"(?:.*/)?"
    try:
        regex = re.compile(b"^" + prefix + body + b"$", re.DOTALL)
    except re.error as exc:
        raise UsageError(f"bad exclude pattern {text!r}: {exc}") from None
    return Pattern(regex, negate, dirs_only)


class Excludes:
    """An ordered list of patterns; the last one that matches decides."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [compile_pattern(p) for p in patterns if p.strip()]

    @classmethod
    def from_args(cls, patterns: list[str], files: list[str]) -> Excludes:
        texts = list(patterns)
        for name in files:
            try:
                lines = Path(name).read_text().splitlines()
            except OSError as exc:
                raise UsageError(f"cannot read exclude file {name}: {exc.strerror}") from None
            texts.extend(ln for ln in lines if ln.strip() and not ln.startswith("#"))
        return cls(texts)

    def excluded(self, relpath: bytes, is_dir: bool) -> bool:
        verdict = False
        for pattern in self.patterns:
            if pattern.dirs_only and not is_dir:
                continue
            if pattern.regex.match(relpath):
                verdict = not pattern.negate
        return verdict
