"""The reliability suite's shared tally: each test adds what it survived, the run prints it.

`figures.count(section, name, n)` adds to a counter; the totals appear at the end of the pytest
output under "reliability figures", and docs/reliability.md quotes them.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

_TALLY: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))


class Figures:
    """Counters per section, e.g. ("store faults", "injected")."""

    def count(self, section: str, name: str, n: int = 1) -> None:
        _TALLY[section][name] += n


@pytest.fixture(scope="session")
def figures() -> Figures:
    return Figures()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TALLY:
        return
    terminalreporter.section("reliability figures")
    for section in sorted(_TALLY):
        counts = ", ".join(f"{name} {n:,}" for name, n in _TALLY[section].items())
        terminalreporter.write_line(f"{section}: {counts}")
