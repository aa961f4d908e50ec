"""`deltagrid config show [--show-secrets]` / `config path`: the settings a run would use.

`show` prints config.toml's settings with every default filled in, as TOML (or, with --json, one
document); the store capability is masked unless --show-secrets. `path` prints where the file is.
"""

from __future__ import annotations

import argparse
from typing import Any

from deltagrid.config import SCALARS, effective, toml_string
from deltagrid.home import Home
from deltagrid.output import Output


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("config", parents=[common], help="show the effective settings")
    p.add_argument(
        "action",
        choices=["show", "path"],
        nargs="?",
        default="show",
        help="show: the settings a run would use (default); path: where config.toml is",
    )
    p.add_argument(
        "--show-secrets", action="store_true", help="print the store capability unmasked"
    )
    p.set_defaults(run=run)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def run(args: argparse.Namespace, home: Home, out: Output) -> int:
    if args.action == "path":
        out.line(str(home.config_path))
        out.document({"path": str(home.config_path), "exists": home.config_path.exists()})
        return 0
    settings = home.settings()
    doc = effective(settings, args.show_secrets)
    initialised = home.initialised()
    if not doc["store"]:
        doc["store"] = home.default_store_url()
    out.line(f"# {home.config_path}" + ("" if home.config_path.exists() else " (absent)"))
    out.line("# the settings a run would use, defaults filled in")
    for key in SCALARS:
        if doc[key] is None:
            continue
        note = ""
        if key == "store" and not initialised:
            note = "  # not created yet: the first backup (or init) creates it"
        if key == "sources" and not doc[key]:
            note = "  # none: backup and scan need SOURCE arguments"
        out.line(f"{key} = {toml_value(doc[key])}{note}")
    out.line()
    out.line("[retention]")
    if not doc["retention"]:
        out.line("# none: forget needs --keep-* options")
    for key, value in doc["retention"].items():
        out.line(f"{key} = {toml_value(value)}")
    for table in ("upload", "maintenance"):
        out.line()
        out.line(f"[{table}]")
        for key, value in doc[table].items():
            out.line(f"{key} = {toml_value(value)}")
    out.document({"path": str(home.config_path), "initialised": initialised, **doc})
    return 0
