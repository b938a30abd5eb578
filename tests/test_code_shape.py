"""The package's shape stays readable: no room the size of a book, no function with a crowd of
parameters (a long parameter list is a value that has not been named yet: ModelOptions, MapSettings)."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "src" / "eurosat_pipeline"
MAX_ROOM_LINES = 2_500
MAX_PARAMETERS = 8


def room_lines(package_dir: Path = PACKAGE_DIR) -> dict[str, int]:
    """Lines of Python per room (subpackage), its subfolders included."""
    lines: dict[str, int] = {}
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir).parts
        if len(parts) > 1:
            lines[parts[0]] = lines.get(parts[0], 0) + len(path.read_text().splitlines())
    return lines


def crowded_functions(source: str, max_parameters: int = MAX_PARAMETERS) -> list[str]:
    """``name (N)`` for every function of ``source`` with more than ``max_parameters`` parameters
    (``self`` and ``cls`` not counted; ``*args`` and ``**kwargs`` count one each)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            count = len(names) - (names[:1] in (["self"], ["cls"])) + bool(args.vararg) + bool(args.kwarg)
            if count > max_parameters:
                found.append(f"{node.name} ({count})")
    return found


def test_no_room_is_the_size_of_a_book() -> None:
    lines = room_lines()
    assert {"inference", "maps", "serving", "core"} <= set(lines)
    big = {room: n for room, n in lines.items() if n > MAX_ROOM_LINES}
    assert not big, f"rooms over {MAX_ROOM_LINES} lines: {big}; split them by job"


def test_no_function_takes_more_than_eight_parameters() -> None:
    crowded = {
        str(path.relative_to(REPO_ROOT)): found
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if (found := crowded_functions(path.read_text()))
    }
    assert not crowded, f"functions over {MAX_PARAMETERS} parameters (name the value they share): {crowded}"


def test_the_parameter_count_sees_methods_and_star_arguments() -> None:
    source = (
        "class A:\n    def m(self, a, b, c, d, e, f, g, h): ...\n"
        "def f(a, b, c, d, e, f, g, *args, **kwargs): ...\n"
        "async def g(a, /, b, *, c, d, e, f, g, h, i): ...\n"
    )
    assert crowded_functions(source) == ["f (9)", "g (9)"]
