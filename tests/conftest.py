"""Fixtures: an isolated home per test and an in-process CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from deltagrid.cli import main
from tests.helpers import Run


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run long randomised tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="long randomised run: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli_in(capsysbinary: pytest.CaptureFixture[bytes]):
    """Run `deltagrid --home HOME ARGS...` in this process: `cli_in(HOME, ARGS...)` -> Run.

    Output is captured as bytes and decoded with surrogateescape, as deltagrid writes it, so
    text output naming non-UTF-8 paths round-trips.
    """

    def run(home: Path, *args: str | Path) -> Run:
        capsysbinary.readouterr()
        try:
            code = main(["--home", str(home), *map(str, args)])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsysbinary.readouterr()
        return Run(
            code,
            captured.out.decode("utf-8", "surrogateescape"),
            captured.err.decode("utf-8", "surrogateescape"),
        )

    return run


@pytest.fixture
def cli(home: Path, cli_in):
    """`cli(ARGS...)`: cli_in for the test's own home."""
    return lambda *args: cli_in(home, *args)
