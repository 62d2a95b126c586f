"""The package's layers, read from the source: no module takes part in an import circle (imports
inside functions included), and the DSL (rfsearch.space) reaches nothing of the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rfsearch"
RUNTIME = ("rfsearch.strategies", "rfsearch.search", "rfsearch.supernet", "rfsearch.graph", "rfsearch.train", "rfsearch.data")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: annotations for the type checker, never run."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its file (top level or in a function).
    ``from pkg import name`` imports the module ``pkg.name`` when there is one, else ``pkg``."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_only(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import"
                targets.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (circle := visit(start)):
            return circle
    return None


def test_no_module_takes_part_in_an_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 40 and "rfsearch.search.loop" in graph["rfsearch.cli"]  # lazy imports are read
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " → ".join(circle)


def test_the_circle_finder_finds_a_circle() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_dsl_reaches_nothing_of_the_runtime() -> None:
    graph = import_graph()
    reached, todo = set(), [m for m in graph if m.startswith("rfsearch.space")]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    assert not sorted(m for m in reached if m.startswith(RUNTIME))
    assert "rfsearch.ops.registry" in reached  # the candidates are the DSL's vocabulary
