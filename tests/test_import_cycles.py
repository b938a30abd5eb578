"""Every import arrow inside the package points down: no two modules import each other, even
through a function-level import or a longer loop (a circle means neither file stands alone)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from .conftest import REPO_ROOT

PACKAGE = "eurosat_pipeline"
PACKAGE_DIR = REPO_ROOT / "src" / PACKAGE


def imported_modules(source: str, module: str, modules: set[str]) -> set[str]:
    """The package's modules that ``source`` (the text of ``module``) imports, at any depth of the
    file: top level, inside functions, under ``if TYPE_CHECKING``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            found.add(base)
            # `from eurosat_pipeline import dataset` imports a module, not a name.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules and name != module}


def _absolute(node: ast.ImportFrom, module: str) -> str:
    if not node.level:
        return node.module or ""
    parent = module.rsplit(".", node.level)[0]
    return f"{parent}.{node.module}" if node.module else parent


def package_graph(package_dir: Path = PACKAGE_DIR, package: str = PACKAGE) -> dict[str, set[str]]:
    """Every module of the package and its subpackages (``sources/__init__.py`` is the module
    ``sources``), with the package's modules it imports."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:  # the package's own __init__ is not a module of it
            files[".".join((package, *parts))] = path
    return {name: imported_modules(path.read_text(), name, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(components: Iterable[list[str]], graph: dict[str, set[str]]) -> str:
    return "; ".join(
        ", ".join(f"{a} -> {b}" for a in component for b in sorted(graph[a] & set(component)))
        for component in components
    )


def test_the_package_has_no_import_cycle() -> None:
    graph = package_graph()
    assert len(graph) > 20 and f"{PACKAGE}.classes" in graph  # the parser saw the package
    assert graph[f"{PACKAGE}.classes"] == set(), "the EuroSAT facts are the lowest layer"
    assert f"{PACKAGE}.sources.local" in graph[f"{PACKAGE}.sources.eurosat"], "subpackages are seen"
    found = cycles(graph)
    assert not found, f"import cycles: {_describe(found, graph)}"


def test_the_cycle_finder_sees_function_level_relative_and_long_cycles(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    files = {
        "a.py": "from pkg.b import thing\n",
        "b.py": "def f():\n    from . import c\n",  # function-level and relative
        "c.py": "import pkg.a\n",
        "d.py": "from pkg import a\n",  # points into the loop, is not part of it
        "e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.f import X\n",
        "f.py": "from .e import Y\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("from pkg.sub.g import Z\n")
    (package / "sub" / "g.py").write_text("from pkg import sub\n")  # a loop through a subpackage
    graph = package_graph(package, "pkg")
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.e", "pkg.f"], ["pkg.sub", "pkg.sub.g"]]
