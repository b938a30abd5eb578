"""The one interface every data source implements, and the class-folder layout they share.

A source lists the image files it holds (path inside the source, and a way to read the bytes)
while it is open; everything after that (checking, the canonical archive, the decoded array) is
the same for every source (:mod:`eurosat_pipeline.data.dataset`), and nothing downstream asks which
source it was.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from eurosat_pipeline.core.errors import DatasetError

MAX_LISTED_PROBLEMS = 20
# GDAL, Finder and Windows write these beside images; they are never images themselves.
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk")
SIDECAR_NAMES = {"Thumbs.db", "desktop.ini"}
# What the pipeline reads as images. Other files (a README, world files, label lists) are skipped,
# and dataset.json says which.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
EXAMPLES_KEPT = 10


@dataclass(frozen=True)
class SourceFile:
    """One file as found in a source: its path parts inside the source, and how to read it."""

    parts: tuple[str, ...]
    read: Callable[[], bytes]

    @property
    def label(self) -> str:
        return "/".join(self.parts)


@dataclass
class Listing:
    """What an open source holds: files, folders (to spot empty class folders), problems found
    while listing, and what dataset.json says of the source (address, md5, synthetic warning)."""

    files: list[SourceFile]
    folders: set[tuple[str, ...]]
    where: str
    description: dict[str, Any]
    problems: list[str] = field(default_factory=list)


class Source(Protocol):
    """A place images come from. ``open`` yields its :class:`Listing`; files stay readable until
    the block ends (a zip stays open, a download stays on disk in ``work_dir``)."""

    def open(self, work_dir: Path) -> AbstractContextManager[Listing]: ...


@dataclass(frozen=True)
class Sample:
    """One image of the dataset: its class (a folder name), its file name and its bytes."""

    class_name: str
    file_name: str
    read: Callable[[], bytes]
    found_at: str = ""  # its path inside the source, for messages

    @property
    def where(self) -> str:
        return self.found_at or self.member

    @property
    def member(self) -> str:
        return f"{self.class_name}/{self.file_name}"


def ignored(parts: tuple[str, ...]) -> bool:
    """Hidden files and folders, macOS's __MACOSX, and GDAL/OS sidecars are never images."""
    name = parts[-1] if parts else ""
    return (
        any(p.startswith(".") or p == "__MACOSX" for p in parts)
        or name in SIDECAR_NAMES
        or name.lower().endswith(SIDECAR_SUFFIXES)
    )


@dataclass
class ClassFolders:
    """What a source holds, sorted out: the images of every class, the layout's problems, and the
    files that are not images (skipped, counted in dataset.json)."""

    samples: list[Sample]
    problems: list[str]
    skipped: list[str]

    def skipped_record(self) -> dict[str, Any]:
        return {"count": len(self.skipped), "examples": self.skipped[:EXAMPLES_KEPT]} if self.skipped else {}


def class_samples(listing: Listing) -> ClassFolders:
    """The images of every class folder, and every layout problem: the folder that holds the class
    folders is found at any depth (the one most images sit two levels below)."""
    kept = [f for f in listing.files if not ignored(f.parts)]
    files = [f for f in kept if f.parts[-1].lower().endswith(IMAGE_SUFFIXES)]
    skipped = [f.label for f in kept if not f.parts[-1].lower().endswith(IMAGE_SUFFIXES)]
    depths = collections.Counter(f.parts[:-2] for f in files if len(f.parts) >= 2)
    root = depths.most_common(1)[0][0] if depths else ()
    depth = len(root)
    problems = list(listing.problems)
    counts: dict[str, int] = {}
    for folder in listing.folders:
        if len(folder) == depth + 1 and folder[:depth] == root and not ignored(folder):
            counts.setdefault(folder[depth], 0)
    samples = []
    for file in files:
        if len(file.parts) != depth + 2 or file.parts[:depth] != root:
            problems.append(f"{file.label}: not inside a class folder (expected <class>/<image> under {_shown(root)})")
            continue
        name = file.parts[depth]
        counts[name] = counts.get(name, 0) + 1
        samples.append(Sample(name, file.parts[-1], file.read, file.label))
    return ClassFolders(samples, problems + class_problems(counts), skipped)


def class_problems(counts: dict[str, int]) -> list[str]:
    """Empty class folders, names that differ only by case, fewer than two classes."""
    problems = [f"class folder '{name}' has no images" for name in sorted(counts) if counts[name] == 0]
    by_fold = collections.defaultdict(list)
    for name in counts:
        by_fold[name.casefold()].append(name)
    for names in by_fold.values():
        if len(names) > 1:
            problems.append(
                f"class folders {' and '.join(repr(n) for n in sorted(names))} differ only by case: "
                "merge or rename them (they would be one folder on Windows and macOS)"
            )
    if len(counts) < 2:
        found = ", ".join(sorted(counts)) or "none"
        problems.append(f"found {len(counts)} class folder(s) ({found}); a classifier needs at least 2")
    return problems


def _shown(root: tuple[str, ...]) -> str:
    return "/".join(root) + "/" if root else "the top level"


def raise_if(problems: list[str], where: str) -> None:
    """Raise one :class:`DatasetError` that lists every problem (the first 20, then a count)."""
    if not problems:
        return
    listed = "\n  - ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise DatasetError(
        f"{where}: {len(problems)} problem(s) with the data source:\n  - {listed}{tail}\n"
        "Fix or remove these files (one folder per class, each holding that class's images: JPEG, PNG "
        "or (Geo)TIFF, uint8 or uint16, the same bands in every image), or point data_source at an intact copy."
    )
