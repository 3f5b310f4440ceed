"""The package's shape: rooms that import only downward, no import circles (imports under
TYPE_CHECKING and inside functions count too), a short top level, no module past 600
lines, and every room saying its job. docs/architecture.md describes the same layout."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "agent_webkitd"
# Lowest first: a module may import its own room and the rooms before it, never after.
# Each subpackage is a room of its own; the top-level modules share the first and last.
ROOMS = (
    ("", "errors", "credentials", "config", "metrics", "logs"),  # the top-level leaves ("" is __init__)
    ("artefacts",),
    ("protocol",),
    ("identity",),
    ("usage",),
    ("stores",),
    ("agents",),
    ("sessions",),
    ("http",),
    ("daemon", "cli", "__main__"),
)
MAX_TOP_LEVEL_MODULES = 16
MAX_LINES = 600
DATA_MODULES = {"agent_webkitd.protocol.openapi"}  # the OpenAPI document: data, not logic


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that `name` imports, wherever the import stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found |= {f"{source}.{alias.name}" for alias in node.names}  # `from . import x`
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def room_of(module: str) -> int:
    parts = module.split(".")[1:]
    top = parts[0] if parts else ""
    return next(rank for rank, rooms in enumerate(ROOMS) if top in rooms)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_counting_type_checking_and_local_imports() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_rooms_import_only_downward() -> None:
    upward = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        for target in targets
        if room_of(target) > room_of(name)
    ]
    assert upward == []


def test_the_top_level_is_short_and_every_room_says_its_job() -> None:
    top = [p for p in PACKAGE.glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(p.name for p in top)
    for init in PACKAGE.rglob("__init__.py"):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 40, f"{init} does not say what its room is for"


def test_no_module_is_longer_than_600_lines() -> None:
    long = {
        name: len(path.read_text().splitlines())
        for name, path in modules().items()
        if name not in DATA_MODULES
    }
    assert {name: n for name, n in long.items() if n > MAX_LINES} == {}


def test_every_module_says_what_it_owns() -> None:
    for name, path in modules().items():
        if path.name != "__main__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no docstring"
