"""The code's shape, checked from its source: no import cycle, no private name imported from
another module, no file in pipelines/ or actors/ over 600 lines (the redesign's rules)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """Every module of the privevo package by its dotted name (packages by their own name)."""
    found = {"privevo": ROOT / "__init__.py"}
    for path in sorted([*ROOT.glob("pipelines/**/*.py"), *ROOT.glob("actors/**/*.py")]):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(["privevo", *parts])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str]]:
    """(imported module, imported name or "") of every privevo import in ``path``, deferred
    imports inside functions included, ``if TYPE_CHECKING:`` blocks excluded."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                if module.startswith("privevo"):
                    for alias in child.names:
                        sub = f"{module}.{alias.name}"
                        out.append((sub, "") if sub in known else (module, alias.name))
            elif isinstance(child, ast.Import):
                out.extend((alias.name, "") for alias in child.names if alias.name.startswith("privevo"))
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Module -> modules it makes Python execute (a package's own parents excepted: they are
    already running), and every (importer, module, private name) imported."""
    known = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    private = []
    for name, path in known.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for module, imported in imports(name, path, known):
            if imported.startswith("_"):
                private.append((name, module, imported))
            parts = module.split(".")
            for i in range(2, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in known and target != name and (target == module or target not in own):
                    edges[name].add(target)
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def test_the_checker_sees_a_cycle_and_a_private_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    edges, _ = graph()
    assert "privevo.pipelines.pe" in edges["privevo.pipelines.evolution"]  # the graph is not empty


def test_no_import_cycle_between_modules():
    edges, _ = graph()
    assert cycles(edges) == []


def test_no_module_imports_another_modules_private_names():
    _, private = graph()
    assert private == []


@pytest.mark.parametrize("folder", ["pipelines", "actors"])
def test_no_file_over_600_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
