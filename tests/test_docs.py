"""The README and the docs pages: every relative link reaches a file, every ``#anchor`` a heading."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

PAGES = sorted(
    [
        REPO_ROOT / "README.md",
        *(REPO_ROOT / "docs").glob("*.md"),
        *(p for p in REPO_ROOT.glob("*/README.md") if not p.parent.name.startswith(".")),
    ]
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def outside_code(text: str) -> list[str]:
    """The page's lines that are not inside fenced code blocks (links there are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line) if "](" in line else line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; repeated headings get -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for line in outside_code(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def links(page: Path) -> list[str]:
    return [target for line in outside_code(page.read_text(encoding="utf-8")) for target in LINK.findall(line)]


def test_slugs_follow_github() -> None:
    assert slug("The precision each GPU generation gets (`precision: auto`)") == (
        "the-precision-each-gpu-generation-gets-precision-auto"
    )
    assert slug("The CPU recipe: 97 % on real EuroSAT") == "the-cpu-recipe-97--on-real-eurosat"


def test_the_pages_exist_and_the_readme_links_every_docs_page() -> None:
    readme = set(links(REPO_ROOT / "README.md"))
    docs = {f"docs/{page.name}" for page in (REPO_ROOT / "docs").glob("*.md")}
    assert len(docs) >= 8
    assert docs <= readme, f"docs pages the README does not link: {sorted(docs - readme)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with that anchor in {destination.name}")
    assert not broken, f"{page.relative_to(REPO_ROOT)}: " + "; ".join(broken)


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nowhere) [gone](missing.md)\n\n```\n[code](not-a-link.md)\n```\n")
    assert links(page) == ["#title", "#nowhere", "missing.md"]
    assert anchors(page) == {"title"}


# ----- the code the pages name exists ---------------------------------------------------------------
PACKAGE = REPO_ROOT / "src" / "eurosat_pipeline"
SOURCE_PATH = re.compile(r"(?<![\w/])(?:src/)?eurosat_pipeline/([\w/]+\.py)")
DOTTED = re.compile(r"(?<![\w.])eurosat_pipeline((?:\.\w+)+)")


def missing_code(text: str, package: Path = PACKAGE) -> list[str]:
    """Source paths (``src/eurosat_pipeline/model/stem.py``) and dotted modules
    (``eurosat_pipeline.model.stem``, optionally followed by a name in it) a page names that do not
    exist: what a regrouping leaves behind."""
    missing = [f"eurosat_pipeline/{path}" for path in SOURCE_PATH.findall(text) if not (package / path).is_file()]
    for dotted in DOTTED.findall(text):
        parts = dotted.strip(".").split(".")
        # The module is the longest prefix that is a file or a package; what follows may name an object in it.
        known = [i for i in range(1, len(parts) + 1) if _is_module(package, parts[:i])]
        if not known or len(parts) - max(known) > 1:
            missing.append("eurosat_pipeline" + dotted)
    return missing


def _is_module(package: Path, parts: list[str]) -> bool:
    path = package.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_the_modules_a_page_names_exist(page: Path) -> None:
    assert missing_code(page.read_text(encoding="utf-8")) == []


def test_the_layout_map_names_every_room_and_module() -> None:
    text = (REPO_ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    layout = text[text.index("src/eurosat_pipeline/") : text.index("\ntests/ ")]
    named = set(re.findall(r"\b(\w+)\.py\b", layout)) | set(re.findall(r"\b(\w+)/", layout))
    in_package = {p.stem for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    rooms = {p.parent.name for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    assert sorted((in_package | rooms) - named) == []  # in the package, not on the map
    assert sorted(set(re.findall(r"\b(\w+)\.py\b", layout)) - in_package) == []  # on the map, gone


def test_the_name_check_finds_a_moved_module(tmp_path: Path) -> None:
    package = tmp_path / "eurosat_pipeline"
    (package / "model").mkdir(parents=True)
    (package / "model" / "__init__.py").write_text("")
    (package / "model" / "stem.py").write_text("")
    text = (
        "see src/eurosat_pipeline/model/stem.py and eurosat_pipeline.model.stem.adapt_stem; "
        "not src/eurosat_pipeline/stem.py, eurosat_pipeline.hardware or eurosat_pipeline.model.gone.thing"
    )
    assert missing_code(text, package) == [
        "eurosat_pipeline/stem.py",
        "eurosat_pipeline.hardware",
        "eurosat_pipeline.model.gone.thing",
    ]
