"""Imports run one way: read from the source files (ast), so an import inside a function counts too.

kdlab's packages (config, data, distillers, ...) and top-level modules (errors, registry, ...) form
an acyclic graph; kdlab/config depends on none of data, models, distillers, engine (they register
their names with it instead). kdlab/__init__.py is the root that wires them and is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

KDLAB = Path(__file__).resolve().parents[1] / "kdlab"


def _unit(path: Path) -> str:
    """The package (kdlab/<name>/...) or top-level module (kdlab/<name>.py) a source file belongs to."""
    return path.relative_to(KDLAB).parts[0].removesuffix(".py")


def _imported_modules(path: Path) -> set[str]:
    """Every kdlab module a file imports, relative imports resolved, e.g. {"kdlab.engine.builder"}."""
    package = ["kdlab", *path.relative_to(KDLAB).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from kdlab import engine`
    return {m for m in found if m.split(".")[0] == "kdlab"}


def _sources() -> list[Path]:
    return [p for p in sorted(KDLAB.rglob("*.py")) if p != KDLAB / "__init__.py"]


def package_graph() -> dict[str, set[str]]:
    """unit -> the other kdlab units it imports."""
    units = {_unit(p) for p in _sources()}
    graph: dict[str, set[str]] = {u: set() for u in units}
    for path in _sources():
        for module in _imported_modules(path):
            parts = module.split(".")
            if len(parts) > 1 and parts[1] in units and parts[1] != _unit(path):
                graph[_unit(path)].add(parts[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] if the graph is acyclic."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt, node]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return []


def test_config_imports_no_builder_package():
    forbidden = {"engine", "data", "models", "distillers"}
    offenders = {
        f"{path.relative_to(KDLAB.parent)} imports {module}"
        for path in sorted((KDLAB / "config").glob("*.py"))
        for module in _imported_modules(path)
        if module.split(".")[1:2] and module.split(".")[1] in forbidden
    }
    assert not offenders, sorted(offenders)


def test_no_two_packages_import_each_other():
    graph = package_graph()
    assert {"config", "data", "distillers", "engine", "evaluation", "models"} <= set(graph)
    mutual = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
    assert not mutual, mutual
    assert find_cycle(graph) == []


def test_evaluation_does_not_import_engine():
    assert "engine" not in package_graph()["evaluation"]


def test_the_checks_can_fail():
    """The helpers see a function-level import and report a cycle."""
    assert "kdlab.distillers" in _imported_modules(KDLAB / "engine" / "builder.py")
    assert "kdlab.data" in _imported_modules(KDLAB / "distillers" / "build.py")  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
