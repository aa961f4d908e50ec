"""HOME/config.toml: what it may hold, how it is read, and how deltagrid edits it.

    store = "file:///home/me/.local/share/deltagrid/store"   # written by init / attach
    store_cap = "URI:MDMF:..."                                # a Tahoe root capability (secret)
    sources = ["~/docs", "/srv/photos"]                       # `backup` with no SOURCE: these
    excludes = ["*.tmp", "node_modules/"]                     # gitignore patterns, like --exclude
    one_file_system = false
    include_pseudo_fs = false                                 # walk into proc, sysfs... too

    [retention]                                               # what `forget` with no --keep-* keeps
    keep_daily = 7
    keep_within = "2w"

    [upload]                                                  # uploader tunables
    pack_size = 16777216

    [maintenance]                                             # prune and compact
    delete_after = "1d"    # how long an object nothing names waits before it is deleted

Every key is checked when the file is read: a mistake is one usage error naming the file, the
line and the key, before anything runs. deltagrid itself only ever writes `store` and
`store_cap`, editing those lines in place, so comments and the rest of the file survive.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from deltagrid.floor.errors import UsageError
from deltagrid.maintenance.retention import COUNTS, Policy, parse_duration
from deltagrid.scanner.excludes import compile_pattern
from deltagrid.uploader.settings import UploadSettings

SECRET_KEYS = ("store_cap",)


@dataclass(frozen=True)
class Retention:
    """The `[retention]` table: the same meaning as `forget`'s --keep-* options."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: str | None = None

    def policy(self) -> Policy:
        return Policy(
            **{b: getattr(self, f"keep_{b}") for b in COUNTS},
            within_ns=parse_duration(self.keep_within) if self.keep_within else 0,
        )

    def configured(self) -> dict[str, int | str]:
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name))}


DELETE_AFTER = "1d"


@dataclass(frozen=True)
class Maintenance:
    """The `[maintenance]` table. `delete_after`: how long prune and compact leave an object the
    catalog no longer names before deleting it, for readers on other machines (docs/design.md,
    "Readers and maintenance")."""

    delete_after: str = DELETE_AFTER

    def delete_after_ns(self) -> int:
        return parse_duration(self.delete_after)


@dataclass
class Config:
    store: str = ""  # empty until init (or a first backup) names one
    cap: str | None = None  # a Tahoe store's root capability (a writecap lets backups run)
    upload: UploadSettings = field(default_factory=UploadSettings)
    sources: list[str] = field(default_factory=list)  # as written; see source_paths()
    excludes: list[str] = field(default_factory=list)
    one_file_system: bool = False
    include_pseudo_fs: bool = False
    retention: Retention = field(default_factory=Retention)
    maintenance: Maintenance = field(default_factory=Maintenance)

    def source_paths(self) -> list[str]:
        return [os.path.expanduser(s) for s in self.sources]


class ConfigError(UsageError):
    """config.toml cannot be used; the message names the file and, when known, the line."""


class _Reader:
    """Checks one parsed document, pointing every complaint at the line that holds the key."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text

    def fail(self, key: str, problem: str) -> ConfigError:
        line = line_of(self.text, key)
        where = f"{self.path}, line {line}" if line else str(self.path)
        return ConfigError(f"{where}: {key}: {problem}")

    def string(self, doc: dict[str, Any], key: str) -> str | None:
        value = doc.get(key.rpartition(".")[2])
        if value is not None and not isinstance(value, str):
            raise self.fail(key, "must be a string in quotes")
        return value

    def strings(self, doc: dict[str, Any], key: str) -> list[str]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, 'must be a list of strings, like ["a", "b"]')
        return value

    def boolean(self, doc: dict[str, Any], key: str) -> bool:
        value = doc.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def table(self, doc: dict[str, Any], key: str, known: set[str]) -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table ([{key}])")
        for name in value:
            if name not in known:
                raise self.fail(f"{key}.{name}", f"unknown key (known: {', '.join(sorted(known))})")
        return value


# The top-level keys that hold a value (`config show` lists them in this order), then the tables.
SCALARS = ("store", "store_cap", "sources", "excludes", "one_file_system", "include_pseudo_fs")
_TOP = {*SCALARS, "upload", "retention", "maintenance"}


def parse(text: str, path: Path) -> Config:
    """The config in `text` (the contents of `path`), every key checked."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _decode_error(exc, text, path) from None
    r = _Reader(path, text)
    for name in doc:
        if name not in _TOP:
            raise r.fail(name, f"unknown key (known: {', '.join(sorted(_TOP))})")
    config = Config(store=r.string(doc, "store") or "", cap=r.string(doc, "store_cap"))
    if "store" in doc and not config.store:
        raise r.fail("store", "must be a store URL, not empty")
    config.sources = r.strings(doc, "sources")
    for source in config.sources:
        if not os.path.isabs(os.path.expanduser(source)):
            raise r.fail("sources", f"{source!r} is not an absolute path (or one starting ~/)")
    config.excludes = r.strings(doc, "excludes")
    for pattern in config.excludes:
        try:
            compile_pattern(pattern)
        except UsageError as exc:
            raise r.fail("excludes", str(exc)) from None
    config.one_file_system = r.boolean(doc, "one_file_system")
    config.include_pseudo_fs = r.boolean(doc, "include_pseudo_fs")
    upload = r.table(doc, "upload", {f.name for f in fields(UploadSettings)})
    for name, value in upload.items():
        try:
            UploadSettings.from_mapping({name: value})
        except (TypeError, ValueError) as exc:
            raise r.fail(f"upload.{name}", str(exc).removeprefix(f"{name} ")) from None
    config.upload = UploadSettings.from_mapping(upload)
    config.retention = _retention(r, r.table(doc, "retention", {f.name for f in fields(Retention)}))
    config.maintenance = _maintenance(r, r.table(doc, "maintenance", {"delete_after"}))
    return config


def read(path: Path) -> Config:
    """The config in the file `path` (FileNotFoundError if there is none), every key checked."""
    data = path.read_bytes()
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column "
            f"{column}); save config.toml as UTF-8"
        ) from None
    return parse(text, path)


def _maintenance(r: _Reader, table: dict[str, Any]) -> Maintenance:
    text = r.string(table, "maintenance.delete_after")
    if text is None:
        return Maintenance()
    try:
        parse_duration(text)
    except UsageError as exc:
        raise r.fail("maintenance.delete_after", str(exc)) from None
    return Maintenance(text)


def _retention(r: _Reader, table: dict[str, Any]) -> Retention:
    values: dict[str, Any] = {}
    for name, value in table.items():
        key = f"retention.{name}"
        if name == "keep_within":
            text = r.string(table, key)
            try:
                parse_duration(text or "")
            except UsageError as exc:
                raise r.fail(key, str(exc)) from None
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise r.fail(key, "must be a whole number, 0 or more")
        values[name] = value
    return Retention(**values)


def _decode_error(exc: tomllib.TOMLDecodeError, text: str, path: Path) -> ConfigError:
    """TOML syntax errors, as `FILE, line N: not valid TOML (...): <the line>`."""
    message = str(exc)
    line = getattr(exc, "lineno", None)
    m = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if m:
        line = line or int(m.group(1))
        message = message[: m.start()].strip() + f", column {m.group(2)}"
    if not line:
        return ConfigError(f"{path}: not valid TOML ({message})")
    lines = text.splitlines()
    shown = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return ConfigError(f"{path}, line {line}: not valid TOML ({message}): {shown}")


_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def line_of(text: str, dotted: str) -> int | None:
    """The 1-based line that sets `dotted` ("sources", "upload.pack_size"), found by scanning the
    text for `key =` under the right table header (for a key not set: its table's line); None
    when no line sets it."""
    table = ""
    for n, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            table = header.group(1).replace(" ", "")
            if table == dotted:
                return n
            continue
        m = _KEY.match(raw)
        if m:
            key = m.group(1).strip("\"'")
            full = f"{table}.{key}" if table else key
            if full == dotted:
                return n
    return line_of(text, dotted.partition(".")[0]) if "." in dotted else None


def set_top_level(text: str, values: dict[str, str | None]) -> str:
    """`text` with each top-level key in `values` set to that string (or removed when None).

    Lines of other keys, tables and comments are kept as they are; a key already present is
    replaced where it stands, a new one goes to the top (below an opening comment).
    """
    lines = text.splitlines()
    first_table = next((i for i, ln in enumerate(lines) if _HEADER.match(ln)), len(lines))
    out: list[str] = []
    placed: set[str] = set()
    for i, raw in enumerate(lines):
        m = _KEY.match(raw) if i < first_table else None
        key = m.group(1).strip("\"'") if m else None
        if key in values:
            if values[key] is not None and key not in placed:
                out.append(f"{key} = {toml_string(values[key] or '')}")
                placed.add(key)
            continue
        out.append(raw)
    new = [
        f"{k} = {toml_string(v)}" for k, v in values.items() if v is not None and k not in placed
    ]
    head = 0  # after the file's opening comment, if it has one
    while head < len(out) and out[head].lstrip().startswith("#"):
        head += 1
    result = "\n".join(out[:head] + new + out[head:])
    return result + "\n" if result else ""


def toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


def effective(config: Config, show_secrets: bool) -> dict[str, Any]:
    """The settings a run would use, defaults included, secrets masked unless asked."""
    cap = config.cap
    if cap is not None and not show_secrets:
        cap = mask(cap)
    return {
        "store": config.store or None,
        "store_cap": cap,
        "sources": config.source_paths(),
        "excludes": list(config.excludes),
        "one_file_system": config.one_file_system,
        "include_pseudo_fs": config.include_pseudo_fs,
        "retention": config.retention.configured(),
        "maintenance": {"delete_after": config.maintenance.delete_after},
        "upload": {f.name: getattr(config.upload, f.name) for f in fields(UploadSettings)},
    }


def mask(secret: str) -> str:
    """Enough of a capability to tell two apart, not enough to use one."""
    kind = secret.rsplit(":", 2)[0] + ":" if secret.count(":") >= 2 else ""
    return f"{kind}****** (hidden; pass --show-secrets)"
