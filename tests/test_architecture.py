"""The package's shape: no import cycles, engines behind their protocol, recipes that fit one screen.

Imports are read from the source (every ``import``, lazy ones inside functions included), so the checks
hold for what the code could import, not only for what one test run happened to import.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from dits.recipes import RECIPES

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dits"
CONCRETE_ENGINES = {"dits.engines.hf", "dits.engines.fake"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_engine_factory_knows_concrete_engines() -> None:
    graph = import_graph()
    users = {m for m, deps in graph.items() if deps & CONCRETE_ENGINES and not m.startswith("dits.engines")}
    assert users == set()


def test_engine_calls_need_no_type_ignores() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line and "engine" in line
    ]
    assert offenders == []


def test_each_recipe_reads_in_one_screen() -> None:
    for method, recipe in RECIPES.items():
        lines = inspect.getsource(recipe).splitlines()
        assert len(lines) <= 30, f"recipe {method} has {len(lines)} lines"
