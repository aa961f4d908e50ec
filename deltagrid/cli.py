"""`deltagrid [--home DIR] [--json] [--progress] [--wait S] [-v|-q] COMMAND ...`: parse, dispatch,
map errors to exits, and record each writer run in the home's history.

Every command is one module in deltagrid/commands/ with `add(subparsers)`, which registers its
parser and sets `run(args, home, out) -> exit code`. Only the module of the command that runs is
imported (see _Commands), so `deltagrid --version` or a quiet night starts quickly.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import signal
import sqlite3
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from deltagrid import __version__, interrupts
from deltagrid.commands import COMMANDS, EXAMPLES, load
from deltagrid.floor.errors import (
    EXIT_ERROR,
    EXIT_SIGNAL,
    DeltagridError,
    Interrupted,
    UsageError,
)
from deltagrid.floor.units import user_path
from deltagrid.home import Home, default_home
from deltagrid.output import Output


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """Raised, not printed, so main() reports it as every other error (--json included)."""
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _Commands(argparse._SubParsersAction):
    """The subcommands, each registered by name and help alone; argparse dispatching to one
    imports its module, which replaces the placeholder with its real parser."""

    def __init__(self, *args: Any, common: argparse.ArgumentParser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.common = common
        for name, help_ in COMMANDS.items():
            self.add_parser(name, help=help_)
        self.placeholders = set(COMMANDS)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        name = values[0]
        if name in self.placeholders:
            self.placeholders.discard(name)
            del self._name_parser_map[name]
            load(name).add(self, self.common)
            command = self._name_parser_map[name]
            command.formatter_class = argparse.RawDescriptionHelpFormatter
            command.epilog = "examples:\n" + textwrap.indent(EXAMPLES[name], "  ")
        super().__call__(parser, namespace, values, option_string)


def _globals(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--home", type=Path, default=default, help="config and backupdb directory")
    parser.add_argument(
        "--json", action="store_true", default=default, help="print one JSON document"
    )
    parser.add_argument(
        "--progress", action="store_true", default=default, help="progress on stderr"
    )
    parser.add_argument(
        "--wait",
        type=_seconds,
        default=default,
        metavar="SECONDS",
        help="if another deltagrid process is writing to the home, wait up to SECONDS for it "
        "(default: give up at once, exit 75)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=default, help="also a line per file"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="print only errors"
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError("--wait takes 0 or more seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="deltagrid", description="Forward-delta backups to a directory or a grid."
    )
    parser.add_argument("--version", action="version", version=f"deltagrid {__version__}")
    _globals(parser, None)
    # The same options after the command name too: `deltagrid backup --json DIR` works.
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(  # type: ignore[call-overload]  # `common` goes to _Commands
        dest="command", metavar="COMMAND", parser_class=_Parser, action=_Commands, common=common
    )
    sub.required = True
    return parser


def main(argv: list[str] | None = None) -> int:
    interrupts.arm()
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except Interrupted as exc:  # before the command began (parsing, importing): nothing to undo
        sys.stderr.write(f"deltagrid: {exc} before the command began\n")
        return exc.exit_code
    except DeltagridError as exc:  # importing the command failed (no librsync): nothing began
        sys.stderr.write(f"deltagrid: error: {exc}\n")
        return exc.exit_code
    finally:
        interrupts.restore()


def _main(argv: list[str]) -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    try:
        args = _parse(argv)
    except UsageError as exc:
        out = Output("--json" in argv, False)
        code = _failed(out, str(exc), exc.exit_code)[0]
        out.flush()
        return code
    home = Home(
        args.home or default_home(), wait=args.wait or 0.0, command=f"deltagrid {args.command}"
    )
    verbosity = -1 if args.quiet else (args.verbose or 0)
    out = Output(bool(args.json), bool(args.progress), verbosity)
    started = time.time_ns()
    try:
        code, error = _dispatch(args, home, out)
    finally:
        interrupts.disarm()
    out.flush()
    from deltagrid import history  # imported only now: `--version` and `--help` never need it

    so_far = out.so_far() if code > EXIT_SIGNAL else None
    if code > EXIT_SIGNAL:  # a connection the signal caught mid-way may hold the backupdb's
        gc.collect()  # write lock, kept by the unwound frames: collected, it rolls back
    history.record(home, args.command, argv, started, code, out.doc, error, so_far)
    return code


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    unknown = _unknown_global_option(parser, argv)
    if unknown is not None:
        known = [o for o in parser._option_string_actions if o.startswith("--")]
        close = difflib.get_close_matches(unknown.split("=")[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown option {unknown}{hint} (see 'deltagrid --help')")
    return parser.parse_args(argv)


def _unknown_global_option(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The first option before the command name that deltagrid does not know. argparse would
    take it for a flag it cannot place and the next word for the command: `--homee x backup`
    would be "invalid choice: 'x'"."""
    actions = parser._option_string_actions
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        name = argv[i].split("=", 1)[0]
        matches = [o for o in actions if o == name] or [
            o for o in actions if name.startswith("--") and o.startswith(name)
        ]
        if len(matches) == 1:
            i += 2 if actions[matches[0]].nargs != 0 and "=" not in argv[i] else 1
        elif not name.startswith("--") and all(f"-{c}" in actions for c in name[1:]):
            i += 1  # short flags together: -vv
        else:
            return argv[i]
    return None


def _dispatch(args: argparse.Namespace, home: Home, out: Output) -> tuple[int, str | None]:
    """Run the command: its exit code, and the one-line message when it failed."""
    try:
        return int(args.run(args, home, out)), None
    except DeltagridError as exc:
        return _failed(out, str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:  # Interrupted: SIGINT, SIGTERM or SIGHUP (interrupts.py)
        return _interrupted(out, exc)
    except OSError as exc:  # disk full, permissions on the home: no traceback, name the file
        where = f" ({user_path(exc.filename)})" if exc.filename else ""
        signalled = _signal_behind(exc)
        if signalled is not None:  # a clean-up failed while stopping: the signal is the news
            return _interrupted(out, signalled, f"{exc.strerror or exc}{where}")
        return _failed(out, f"{exc.strerror or exc}{where}", EXIT_ERROR)
    except Exception as exc:
        if not _backupdb_write_error(exc):
            raise
        return _failed(out, f"backupdb {home.db_path}: {getattr(exc, 'orig', exc)}", EXIT_ERROR)


def _backupdb_write_error(exc: Exception) -> bool:
    """SQLite could not write the backupdb (e.g. its disk is full): sqlite3's own errors (a quiet
    night's plain connection), or SQLAlchemy's OperationalError, recognised without importing
    SQLAlchemy into commands that never use it."""
    if isinstance(exc, sqlite3.OperationalError):
        return True
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.OperationalError)


def _interrupted(out: Output, exc: KeyboardInterrupt, also: str | None = None) -> tuple[int, str]:
    """A run stopped by a signal: one line, the signal's exit code. `also`: what a clean-up
    met while stopping (a signal lands anywhere), named after it."""
    if not isinstance(exc, Interrupted):
        exc = Interrupted(signal.SIGINT, "SIGINT")
    met = f" (stopping, it met: {also})" if also else ""
    sys.stderr.write(f"deltagrid: {exc}; run the command again to finish{met}\n")
    out.document({"error": str(exc), "exit_code": exc.exit_code})
    return exc.exit_code, str(exc)


def _signal_behind(exc: BaseException) -> Interrupted | None:
    """The signal `exc` was raised while stopping for, if any (its context chain has it)."""
    seen: set[int] = set()
    context = exc.__context__
    while context is not None and id(context) not in seen:
        if isinstance(context, Interrupted):
            return context
        seen.add(id(context))
        context = context.__context__
    return None


def _failed(out: Output, message: str, code: int) -> tuple[int, str]:
    sys.stderr.write(f"deltagrid: error: {message}\n")
    out.document({"error": message, "exit_code": code})
    return code, message


def entry() -> None:
    sys.exit(main())
