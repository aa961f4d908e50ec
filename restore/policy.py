"""What restore does with an entry it finds already in its place under TARGET: `--overwrite`.

The modes are restic's (0.17): `always`, `if-changed`, `if-newer`, `never`. Whatever the mode, an
entry identical to the snapshot's (same kind, size, mtime, and bytes: the content hash of a file
is computed, not assumed; a symlink's target) is never written again, so a restore that was
killed or failed resumes where it stopped. The default is `never`: a restore never destroys
anything that was in the target unless asked to; it says what it kept.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable

from deltagrid.backupdb.entries import KIND_DIR, KIND_FILE, kind_of

ALWAYS, IF_CHANGED, IF_NEWER, NEVER = "always", "if-changed", "if-newer", "never"
MODES = (ALWAYS, IF_CHANGED, IF_NEWER, NEVER)
DEFAULT = NEVER


class Verdict(enum.Enum):
    WRITE = "write"  # nothing there: restore it
    SAME = "same"  # identical: nothing to do
    META = "meta"  # the same bytes (or, if-changed, assumed so): set the snapshot's metadata
    REPLACE = "replace"  # something else is there: restore over it
    KEEP = "keep"  # something else is there, and the mode keeps it


def judge(
    mode: str,
    kind: str,
    size: int,
    mtime_ns: int,
    found: os.stat_result | None,
    same_bytes: Callable[[], bool],
) -> Verdict:
    """The verdict on `found` (lstat of what is at the entry's place) for an entry of the
    snapshot. `same_bytes` compares contents (hashes a file), called at most once and only when
    the kinds and sizes agree. Directories are merged into in every mode."""
    if found is None:
        return Verdict.WRITE
    same_kind = kind_of(found.st_mode) == kind
    if same_kind and kind == KIND_DIR:
        return Verdict.SAME
    same_size = same_kind and (kind != KIND_FILE or found.st_size == size)
    looks_same = same_size and found.st_mtime_ns == mtime_ns
    if looks_same and (mode == IF_CHANGED or same_bytes()):
        return Verdict.META if mode in (ALWAYS, IF_CHANGED) else Verdict.SAME
    if mode == NEVER or (mode == IF_NEWER and mtime_ns <= found.st_mtime_ns):
        return Verdict.KEEP
    if same_size and not looks_same and same_bytes():
        return Verdict.META  # only the mtime (or mode, owner) differs: no bytes to write
    return Verdict.REPLACE
