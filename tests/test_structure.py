"""The house stays as built: one installed package, rooms that import only downwards, no cycles.

Read from the code itself (every import statement, those inside functions too), so a new upward
arrow fails here with its file and line, before it makes the next change harder.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "deltagrid"

# Bottom to top. A room may import its own modules and the rooms on the floors below; rooms that
# share a floor do not import each other. "cli" is every module of deltagrid/ that is not a room.
FLOORS = [
    {"floor"},
    {"store"},
    {"backupdb"},
    {"repository"},
    {"scanner", "restore", "report"},
    {"uploader"},
    {"maintenance"},
    {"cli"},
]
LEVEL = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def _modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name, walking through the room links."""
    found = {}
    for folder, _dirs, files in os.walk(PACKAGE, followlinks=True):
        for name in files:
            if name.endswith(".py"):
                path = Path(folder) / name
                parts = path.relative_to(REPO).with_suffix("").parts
                found[".".join(parts).removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LEVEL else "cli"


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """The modules of ours that `module` imports, with their lines."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # ours are absolute: deltagrid.room.module
            base = node.module or ""
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:  # `from pkg import mod` names a module; `from mod import f`, mod
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("deltagrid") and name != module:
                out.append((name, node.lineno))
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _upward(module: str, target: str) -> bool:
    here, there = _room(module), _room(target)
    return here != there and LEVEL[there] >= LEVEL[here]


def test_every_room_imports_only_the_floors_below_it() -> None:
    upward = []
    for module, imports in GRAPH.items():
        for target, line in imports:
            if _upward(module, target):
                upward.append(f"{MODULES[module].relative_to(REPO)}:{line} {module} -> {target}")
    assert not upward, "imports that run up or across:\n" + "\n".join(upward)


def test_the_floor_imports_nothing_of_ours_but_itself() -> None:
    for module, imports in GRAPH.items():
        if _room(module) == "floor":
            assert all(_room(t) == "floor" for t, _line in imports), module


def test_no_module_imports_itself_back_through_others() -> None:
    """No cycles between modules (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _line in GRAPH[node]:
            if target.endswith("__init__") or target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(GRAPH)))
    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_see_what_they_look_for() -> None:
    """Not vacuous: the graph holds known arrows, and the rule tells up and across from down."""
    assert len(MODULES) > 80
    assert any(t == "deltagrid.floor.errors" for t, _ in GRAPH["deltagrid.store.base"])
    assert any(_room(t) == "restore" for t, _ in GRAPH["deltagrid.uploader.contents"])  # lazy
    assert _upward("deltagrid.store.base", "deltagrid.cli")
    assert _upward("deltagrid.scanner.scan", "deltagrid.restore.rebuild")  # across one floor
    assert not _upward("deltagrid.cli", "deltagrid.store.base")


def test_status_and_ls_start_without_librsync(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import deltagrid.commands.status, deltagrid.commands.ls, deltagrid.repository.root\n"
        "print(sorted(m for m in sys.modules if 'rsync' in m or m == 'deltagrid.floor.rdiff'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
