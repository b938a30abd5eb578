"""Every import arrow inside the package points down: no two modules import each other, even
through a function-level import or a longer loop (a circle means neither file stands alone), and
each room (subpackage) imports only the rooms below it."""

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


# The rooms and the rooms each may import. core and platform are the floor; training, inference and
# reporting stand on data and model; maps stand on inference, regions and serving on both; the
# command lines sit on top. reporting reads the t-SNE rows and history that training writes.
ALLOWED = {
    "core": set(),
    "platform": {"core"},
    "data": {"core"},
    "model": {"core", "platform"},
    "training": {"core", "platform", "data", "model"},
    "inference": {"core", "platform", "data", "model"},
    "scenes": {"core", "platform"},
    "maps": {"core", "platform", "data", "model", "inference", "scenes"},
    "regions": {"core", "platform", "data", "model", "inference", "scenes", "maps"},
    "change": {"core", "platform", "data", "model", "inference", "scenes", "maps", "regions"},
    "serving": {"core", "platform", "data", "model", "inference", "scenes", "maps"},
    "reporting": {"core", "platform", "data", "model"},
    "cli": {
        "core",
        "platform",
        "data",
        "model",
        "training",
        "inference",
        "scenes",
        "maps",
        "regions",
        "change",
        "serving",
        "reporting",
    },
}
# Third-party packages a room must not pull in, even indirectly through a room below it.
FORBIDDEN = {"core": {"torch", "lightning", "timm"}, "data": {"lightning", "timm"}}


def room_of(module: str) -> str:
    """``eurosat_pipeline.data.sources.local`` -> ``data``."""
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import from one room into a room it may not import."""
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if room_of(b) != room_of(a) and room_of(b) not in ALLOWED[room_of(a)]
    )


def third_party_roots(source: str) -> set[str]:
    """The top-level names of every package ``source`` imports, at any depth of the file."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_every_room_is_a_subpackage_with_a_docstring() -> None:
    rooms = {path.parent.name for path in PACKAGE_DIR.glob("*/__init__.py")}
    assert rooms == set(ALLOWED), f"rooms on disk {sorted(rooms)} differ from the layering table"
    assert sorted(p.name for p in PACKAGE_DIR.glob("*.py")) == ["__init__.py"], "no module outside a room"
    for room in rooms:
        doc = ast.get_docstring(ast.parse((PACKAGE_DIR / room / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"{room}/__init__.py: say in a paragraph what the room is for"


def test_rooms_import_only_the_rooms_below_them() -> None:
    graph = package_graph()
    assert f"{PACKAGE}.data.sources.local" in graph[f"{PACKAGE}.data.sources.eurosat"], "subpackages are seen"
    upward = upward_imports(graph)
    assert not upward, f"imports against the layering (see ALLOWED): {'; '.join(upward)}"


def test_core_has_no_torch_and_data_no_lightning() -> None:
    for room, banned in FORBIDDEN.items():
        for path in sorted((PACKAGE_DIR / room).rglob("*.py")):
            found = third_party_roots(path.read_text()) & banned
            assert not found, f"{path.relative_to(REPO_ROOT)} imports {sorted(found)}; {room} must not"


def test_the_layering_check_sees_an_upward_import() -> None:
    graph = {f"{PACKAGE}.core.config": {f"{PACKAGE}.model.classifier"}, f"{PACKAGE}.model.classifier": set()}
    assert upward_imports(graph) == [f"{PACKAGE}.core.config -> {PACKAGE}.model.classifier"]
    assert third_party_roots("def f():\n    import lightning.pytorch as L\n") == {"lightning"}


def test_the_package_has_no_import_cycle() -> None:
    graph = package_graph()
    assert len(graph) > 40 and f"{PACKAGE}.core.classes" in graph  # the parser saw the package
    assert graph[f"{PACKAGE}.core.classes"] == set(), "the EuroSAT facts are the lowest layer"
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
