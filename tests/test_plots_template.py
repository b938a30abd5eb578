"""The page `dvc plots show` fills carries its libraries: every clone draws its plots offline."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from .conftest import REPO_ROOT

BUILD = REPO_ROOT / ".dvc" / "plots" / "build.py"
SCRIPT = re.compile(r'<script data-library="([^"]+)">\n(.*?)\n</script>', re.DOTALL)


def build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plots_template_build", BUILD)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dvc_is_configured_to_fill_the_committed_page() -> None:
    configured = subprocess.run(
        [sys.executable, "-m", "dvc", "config", "plots.html_template"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # DVC reads a relative template path from the .dvc folder (dvc/commands/plots.py).
    assert (REPO_ROOT / ".dvc" / configured).resolve() == build_module().TEMPLATE
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", ".dvc/config", f".dvc/{configured}"], cwd=REPO_ROOT, capture_output=True
    )
    assert tracked.returncode == 0, "the page and the setting must be committed, so every clone has them"


def test_the_page_inlines_exactly_the_pinned_libraries_and_loads_nothing() -> None:
    build = build_module()
    page = build.TEMPLATE.read_text(encoding="utf-8")
    inlined = dict(SCRIPT.findall(page))
    assert list(inlined) == [library.spec for library in build.LIBRARIES]
    for library in build.LIBRARIES:
        assert hashlib.sha256(inlined[library.spec].encode()).hexdigest() == library.sha256, library.spec
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page), "nothing may come from outside the page"
    assert "{scripts}" not in page, "DVC would put its CDN script tags there"
    for placeholder in build.PLACEHOLDERS:
        assert page.count(placeholder) == 1, placeholder
    assert "Redistribution and use in source and binary forms" in page  # the BSD-3 notice travels with it


def test_the_page_is_what_the_builder_writes() -> None:
    """Rebuilt from the inlined code (no network), the page is byte-identical: nobody edited it by
    hand, and a change to the builder's layout cannot go unbuilt."""
    build = build_module()
    page = build.TEMPLATE.read_text(encoding="utf-8")
    codes = {spec.split("@")[0]: code for spec, code in SCRIPT.findall(page)}
    assert build.page(codes) == page


def test_a_tampered_library_is_caught(tmp_path: Path) -> None:
    build = build_module()
    page = build.TEMPLATE.read_text(encoding="utf-8")
    tampered = page.replace('"use strict";', '"use strict";fetch("https://example.com");', 1)
    assert tampered != page
    inlined = dict(SCRIPT.findall(tampered))
    assert any(hashlib.sha256(inlined[lib.spec].encode()).hexdigest() != lib.sha256 for lib in build.LIBRARIES)
