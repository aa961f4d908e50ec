"""What an upload did, for the commands that report it (without importing the uploader)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class UploadResult:
    snapshot_id: int
    counts: Counter[str] = field(default_factory=Counter)
    bytes_read: int = 0
    bytes_uploaded: int = 0
    packs: int = 0
    vanished: list[bytes] = field(default_factory=list)
    unreadable: list[tuple[bytes, str]] = field(default_factory=list)
