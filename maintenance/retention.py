"""Which snapshots a retention policy keeps, with restic's bucket semantics.

Snapshots are walked newest first. `keep_last` keeps the N newest. Each of hourly, daily, weekly,
monthly and yearly keeps the newest snapshot of each of its N most recent buckets (an hour, a
day, an ISO week, a month, a year) that hold a snapshot. `keep_within` keeps every snapshot
committed within that duration of the newest one. The newest snapshot is always kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from deltagrid.floor.errors import UsageError

_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """`1y2m3w4d5h6s` (any part optional) as nanoseconds; a month is 30 days, a year 365."""
    m = _DURATION.match(text.strip())
    if not m or not any(m.groups()):
        raise UsageError(f"cannot read duration {text!r} (use e.g. 7d, 2w, 6m, 1y2m, 12h)")
    y, mo, w, d, h, s = (int(g or 0) for g in m.groups())
    hours = h + 24 * (d + 7 * w + 30 * mo + 365 * y)
    return (hours * 3600 + s) * 10**9


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within_ns: int = 0

    def empty(self) -> bool:
        return (
            not any((self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly))
            and not self.within_ns
        )


_BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


# What a policy counts: the newest N, then the newest snapshot of each of N buckets.
COUNTS = ("last", *_BUCKETS)


def keep(snapshots: Sequence[tuple[int, int]], policy: Policy) -> dict[int, list[str]]:
    """For (id, committed_ns) snapshots: the ids kept, each with the reasons it is kept."""
    if policy.empty():
        raise UsageError("forget needs at least one --keep-* option")
    ordered = sorted(snapshots, key=lambda s: (s[1], s[0]), reverse=True)
    reasons: dict[int, list[str]] = {}
    if not ordered:
        return reasons
    reasons.setdefault(ordered[0][0], []).append("newest")
    for sid, _ns in ordered[: policy.last]:
        reasons.setdefault(sid, []).append("last")
    for name, bucket_of in _BUCKETS.items():
        budget = getattr(policy, name)
        last_bucket = None
        for sid, ns in ordered:
            if budget <= 0:
                break
            bucket = bucket_of(datetime.fromtimestamp(ns / 1e9).astimezone())
            if bucket != last_bucket:
                reasons.setdefault(sid, []).append(name)
                last_bucket = bucket
                budget -= 1
    if policy.within_ns:
        newest_ns = ordered[0][1]
        for sid, ns in ordered:
            if newest_ns - ns <= policy.within_ns:
                reasons.setdefault(sid, []).append("within")
    return reasons
