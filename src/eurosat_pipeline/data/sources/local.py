"""A local folder or zip with one folder per class (at any depth: ``EuroSAT/2750/<Class>/...``)."""

from __future__ import annotations

import contextlib
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from torchvision.datasets.utils import calculate_md5

from eurosat_pipeline.core.errors import DatasetError
from eurosat_pipeline.data.sources.base import Listing, SourceFile


@dataclass(frozen=True)
class LocalSource:
    path: Path

    @contextlib.contextmanager
    def open(self, work_dir: Path) -> Iterator[Listing]:
        if not self.path.exists():
            raise DatasetError(
                f"data_source '{self.path}' does not exist. Set data_source in params.yaml to 'eurosat' "
                "(download), 'synthetic' (offline demo) or the path of a zip or folder with one folder per class."
            )
        if self.path.is_dir():
            yield list_folder(self.path, {"source": str(self.path)})
            return
        description = {"source": str(self.path), "source_md5": calculate_md5(self.path)}
        with open_zip(self.path, description) as listing:
            yield listing


@contextlib.contextmanager
def open_zip(path: Path, description: dict) -> Iterator[Listing]:
    """The zip's entries, readable until the block ends; unsafe entries are problems, not files."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(
            f"{path}: not a readable zip archive ({err}). It may be truncated or corrupt: download it again."
        ) from err
    with archive:
        listing = Listing([], set(), str(path), description)
        for entry in archive.infolist():
            name = entry.filename.replace("\\", "/")
            parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
            if name.startswith("/") or ".." in parts or ":" in (parts[0] if parts else ""):
                listing.problems.append(f"{entry.filename}: entry path escapes the archive folder")
            elif stat.S_ISLNK(entry.external_attr >> 16):
                listing.problems.append(f"{entry.filename}: symbolic links are not allowed in the archive")
            elif entry.is_dir():
                listing.folders.add(parts)
            else:
                listing.files.append(SourceFile(parts, _entry_reader(archive, entry)))
                listing.folders.update(parts[:i] for i in range(1, len(parts)))
        yield listing


def _entry_reader(archive: zipfile.ZipFile, entry: zipfile.ZipInfo):
    def read() -> bytes:
        try:
            return archive.read(entry)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise OSError(f"cannot be read from the archive ({err})") from err

    return read


def list_folder(root: Path, description: dict) -> Listing:
    listing = Listing([], set(), str(root), description)
    real_root = root.resolve()
    for path, is_dir in _walk(root, real_root, listing.problems):
        parts = path.relative_to(root).parts
        if is_dir:
            listing.folders.add(parts)
        else:
            listing.files.append(SourceFile(parts, path.read_bytes))
    return listing


def _walk(folder: Path, real_root: Path, problems: list[str]) -> Iterator[tuple[Path, bool]]:
    """Every file and folder below ``folder``; symbolic links must stay inside the source."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        problems.append(f"{folder}: cannot be listed ({err.strerror or err})")
        return
    for path in entries:
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(real_root):
                problems.append(f"{path}: symbolic link points outside the source folder (to {target})")
                continue
            if target.is_dir():
                problems.append(f"{path}: symbolic links to folders are not followed")
                continue
        if path.is_dir():
            yield path, True
            yield from _walk(path, real_root, problems)
        elif path.is_file():
            yield path, False
