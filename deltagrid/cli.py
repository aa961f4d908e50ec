"""`deltagrid [--home DIR] [--json] [--progress] COMMAND ...`: parse, dispatch, map errors to exits.

Every command is one module in deltagrid/commands/ with `add(subparsers)`, which registers its
parser and sets `run(args, home, out) -> exit code`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deltagrid import __version__
from deltagrid.commands import COMMANDS
from deltagrid.errors import EXIT_ERROR, EXIT_USAGE, DeltagridError
from deltagrid.home import Home, default_home
from deltagrid.output import Output


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"deltagrid: error: {message} (see 'deltagrid --help')\n")


def _globals(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--home", type=Path, default=default, help="config and backupdb directory")
    parser.add_argument(
        "--json", action="store_true", default=default, help="print one JSON document"
    )
    parser.add_argument(
        "--progress", action="store_true", default=default, help="progress on stderr"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="deltagrid", description="Forward-delta backups to a directory or a grid."
    )
    parser.add_argument("--version", action="version", version=f"deltagrid {__version__}")
    _globals(parser, None)
    # The same options after the command name too: `deltagrid backup --json DIR` works.
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        module.add(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    args = build_parser().parse_args(argv)
    home = Home(args.home or default_home())
    out = Output(bool(args.json), bool(args.progress))
    try:
        return int(args.run(args, home, out))
    except DeltagridError as exc:
        sys.stderr.write(f"deltagrid: error: {exc}\n")
        out.document({"error": str(exc), "exit_code": exc.exit_code})
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("deltagrid: interrupted; run the command again to resume\n")
        return EXIT_ERROR
    except OSError as exc:  # disk full, permissions on the home: no traceback, name the file
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"deltagrid: error: {exc.strerror or exc}{where}\n")
        out.document({"error": f"{exc.strerror or exc}{where}", "exit_code": EXIT_ERROR})
        return EXIT_ERROR


def entry() -> None:
    sys.exit(main())
