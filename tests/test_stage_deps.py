"""Each stage in dvc.yaml depends on exactly the code it runs.

DVC reruns a stage when one of its ``deps`` changes, and serves its cached result otherwise: a
module a stage imports but does not list is a change DVC cannot see. Stages depend on the rooms
(subpackages) of the package, so this walks each stage script's imports through the package,
at any depth (function-level imports included), and checks that every room reached is listed
and that no room is listed that the stage never reaches.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT
from .test_import_cycles import PACKAGE, imported_modules, package_graph

SRC = f"src/{PACKAGE}"
ROOT_INIT = f"{SRC}/__init__.py"  # imported with every module, so every stage lists it


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def script_of(stage: dict) -> str:
    """The ``stages/<name>.py`` a stage's command runs."""
    found = re.findall(r"\bpython (stages/\w+\.py)\b", stage["cmd"])
    assert len(found) == 1, f"expected one stage script in {stage['cmd']!r}"
    return found[0]


def reached_modules(script: Path, graph: dict[str, set[str]]) -> set[str]:
    """The package modules ``script`` imports, directly or through other package modules."""
    todo = imported_modules(script.read_text(), "__main__", set(graph))
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo |= graph[module]
    return seen


def needed_deps(modules: set[str]) -> set[str]:
    """The source folders (rooms) holding ``modules``, plus the package's own ``__init__``."""
    return {ROOT_INIT} | {f"{SRC}/{module.split('.')[1]}" for module in modules}


def code_deps_problems(name: str, stage: dict, graph: dict[str, set[str]]) -> list[str]:
    script = script_of(stage)
    modules = reached_modules(REPO_ROOT / script, graph)
    declared = {dep for dep in stage.get("deps", []) if dep.startswith(("src/", "stages/"))}
    needed = needed_deps(modules) | {script}
    problems = []
    for dep in sorted(needed - declared):
        via = sorted(m for m in modules if f"{SRC}/{m.split('.')[1]}" == dep)
        problems.append(f"stage '{name}' runs {', '.join(via) or dep} but does not list {dep} in its deps")
    for dep in sorted(declared - needed):
        problems.append(f"stage '{name}' lists {dep}, which it never imports: a change there reruns it for nothing")
    return problems


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_depends_on_every_room_it_imports_and_no_other(name: str) -> None:
    problems = code_deps_problems(name, stages()[name], package_graph())
    assert not problems, "\n".join(problems)


def test_stages_name_folders_not_files() -> None:
    for name, stage in stages().items():
        files = [d for d in stage["deps"] if d.startswith(f"{SRC}/") and d != ROOT_INIT]
        assert all((REPO_ROOT / d).is_dir() for d in files), f"stage '{name}' lists single modules: {files}"


def test_the_check_names_the_stage_and_the_module_it_misses() -> None:
    graph = package_graph()
    evaluate = dict(stages()["evaluate"])
    evaluate["deps"] = [d for d in evaluate["deps"] if d != f"{SRC}/data"] + [f"{SRC}/serving"]
    problems = code_deps_problems("evaluate", evaluate, graph)
    assert any(
        p.startswith("stage 'evaluate' runs")
        and f"{PACKAGE}.data.loading" in p
        and p.endswith(f"{SRC}/data in its deps")
        for p in problems
    ), problems
    assert (
        f"stage 'evaluate' lists {SRC}/serving, which it never imports: a change there reruns it for nothing"
        in problems
    )


def test_function_level_imports_count() -> None:
    """A stage that imports a module only inside a function still runs it."""
    source = "def main():\n    from eurosat_pipeline.inference.export import export_onnx\n"
    graph = package_graph()
    assert f"{PACKAGE}.inference.export" in imported_modules(source, "__main__", set(graph))
    assert ast.parse(source)  # the snippet is valid Python


def test_dvc_ignores_bytecode_and_editor_droppings() -> None:
    """What Python and editors leave beside the code is not code: DVC must not hash it."""
    from dvc.ignore import DvcIgnorePatterns

    lines = (REPO_ROOT / ".dvcignore").read_text().splitlines()
    patterns = DvcIgnorePatterns([line for line in lines if line.strip()], str(REPO_ROOT), "/")
    folder = str(REPO_ROOT / SRC / "model")
    assert patterns.matches(folder, "__pycache__", is_dir=True), ".dvcignore lets DVC hash __pycache__/"
    dropped = (
        "classifier.pyc",
        "classifier.pyo",
        ".classifier.py.swp",
        "classifier.py~",
        ".#classifier.py",
        ".DS_Store",
    )
    for name in dropped:
        assert patterns.matches(folder, name), f".dvcignore lets DVC hash {name}"
    assert not patterns.matches(folder, "classifier.py"), "the source itself must stay a dependency"
