"""What commands print: text for people, or one JSON document with --json.

Paths are bytes inside deltagrid. In text they are printed as the raw bytes; in JSON they are
strings decoded as UTF-8 with surrogateescape, so a byte that is not UTF-8 (0xff) appears as a
lone surrogate escape ("\\udcff") and encoding the string the same way gives the bytes back.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


class Output:
    """Where a command's words go. Verbosity: -1 (-q) only errors and warnings, on stderr;
    0 a command's result and its summary; 1 (-v) also a line per file."""

    def __init__(self, as_json: bool, progress: bool, verbosity: int = 0) -> None:
        self.as_json = as_json
        self.progress = progress or sys.stderr.isatty()
        self.verbosity = verbosity
        self.doc: dict[str, Any] | None = None  # the run's document, kept for its history
        # What a run under way has done so far (files, bytes_read, bytes_uploaded, summary):
        # the history row of a run that is interrupted before it has a document.
        self.so_far: Callable[[], dict[str, Any]] = dict
        self.closed = False  # stdout's reader went away

    def line(self, text: str = "") -> None:
        """A line of the human report: what the command was asked for (suppressed by --json)."""
        if not self.as_json:
            self._write(text + "\n")

    def info(self, text: str = "") -> None:
        """A summary line of a run that changes things (suppressed by --json and by -q)."""
        if self.verbosity >= 0:
            self.line(text)

    def detail(self, text: str) -> None:
        """A line per file or object, only with -v."""
        if self.verbosity > 0:
            self.line(text)

    @property
    def verbose(self) -> bool:
        return self.verbosity > 0 and not self.as_json

    def warn(self, text: str) -> None:
        sys.stderr.write(f"deltagrid: warning: {text}\n")

    def document(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        if self.as_json:
            self._write(json.dumps(doc, indent=1, sort_keys=True) + "\n")

    def _write(self, text: str) -> None:
        """Write to stdout; once its reader has gone (`deltagrid ls | head -1`), stop writing
        and let the command finish as it would: a closed pipe is not the command's failure."""
        if self.closed:
            return
        try:
            sys.stdout.write(text)
        except BrokenPipeError:
            self.close_stdout()

    def flush(self) -> None:
        if not self.closed:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                self.close_stdout()

    def close_stdout(self) -> None:
        """Point stdout at /dev/null, so what is still buffered goes nowhere, quietly."""
        self.closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)

    def bar(self, **kwargs: Any) -> tqdm | NoBar:
        """A tqdm progress bar on stderr, or with no progress wanted a stand-in that costs
        nothing (importing tqdm costs a tenth of a second, a fifth of a quiet night)."""
        if not self.progress:
            return NoBar()
        from tqdm import tqdm

        return tqdm(file=sys.stderr, leave=False, **kwargs)


class NoBar:
    """What the commands use of a tqdm bar, doing nothing."""

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def update(self, _n: float = 1) -> None:
        return None
