"""EuroSAT RGB: fetch from any source, verify every image, pack into one canonical archive.

The download stage's output is a single uncompressed zip, ``<Class>/<file>.jpg`` with sorted
entries and fixed timestamps, so the same images always give the same bytes. One file rather than
27,000 keeps ``dvc push`` / ``dvc pull`` fast (DVC moves each file of a folder separately); the
JPEG bytes are kept as they came, so nothing is re-encoded.
"""

from __future__ import annotations

import collections
import io
import shutil
import stat
import tempfile
import urllib.error
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError
from torchvision.datasets.utils import calculate_md5, download_url

from eurosat_pipeline.classes import CLASSES, IMAGE_SIZE
from eurosat_pipeline.errors import DatasetError
from eurosat_pipeline.files import atomic_path, write_json

# The address torchvision's EuroSAT dataset uses (a pinned revision) and the official zip's md5.
EUROSAT_URL = (
    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip"
)
EUROSAT_MD5 = "c8fa014336c82ac7804f0398fcb19387"
MAX_LISTED_PROBLEMS = 20
SYNTHETIC_WARNING = "SYNTHETIC data generated for tests and the offline demo: not EuroSAT."


@dataclass(frozen=True)
class ImageFile:
    """One image as found in a source: its path parts inside the source, and its bytes."""

    parts: tuple[str, ...]
    data: bytes

    @property
    def label(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class Sample:
    class_name: str
    file_name: str
    data: bytes

    @property
    def member(self) -> str:
        return f"{self.class_name}/{self.file_name}"


def prepare_dataset(source: str, archive: str | Path, info_path: str | Path, synthetic_images_per_class: int) -> dict:
    """Fetch ``source``, verify it, and write the canonical archive and its description."""
    archive, info_path = Path(archive), Path(info_path)
    _remove_stale_temporaries(archive, info_path)
    description: dict = {"source": source, "synthetic": source == "synthetic"}
    if source == "synthetic":
        from eurosat_pipeline.synthetic import synthetic_images

        samples = [Sample(*item) for item in synthetic_images(synthetic_images_per_class)]
        description["warning"] = SYNTHETIC_WARNING
    elif source == "eurosat":
        samples, description["source_md5"] = _download_official(archive.parent)
        description["url"] = EUROSAT_URL
    else:
        samples, description["source_md5"] = _read_local(Path(source))
    verify_samples(samples, source)
    write_archive(samples, archive)
    counts = collections.Counter(s.class_name for s in samples)
    description.update(
        classes=list(CLASSES),
        class_counts={name: counts[name] for name in CLASSES},
        num_images=len(samples),
        image_size=IMAGE_SIZE,
    )
    write_json(info_path, description)
    return description


def _remove_stale_temporaries(*outputs: Path) -> None:
    """What a killed earlier run left behind: partial downloads and half-written outputs."""
    for output in outputs:
        folder = output.parent
        if not folder.is_dir():
            continue
        for stale in [*folder.glob(".download-*"), *folder.glob(f".{output.name}.*.tmp")]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _download_official(work_root: Path) -> tuple[list[Sample], str]:
    work_root.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=work_root))
    try:
        zip_path = work_dir / "EuroSAT.zip"
        try:
            download_url(EUROSAT_URL, root=str(work_dir), filename=zip_path.name)
        except (urllib.error.URLError, OSError) as err:
            raise DatasetError(
                f"Could not download EuroSAT from {EUROSAT_URL}: {err}. Check the network, or "
                "download EuroSAT.zip elsewhere and set data_source to its local path."
            ) from err
        actual = calculate_md5(zip_path)
        if actual != EUROSAT_MD5:
            raise DatasetError(
                f"The download from {EUROSAT_URL} has md5 {actual}, expected {EUROSAT_MD5}: it is "
                "corrupt or was changed upstream. Run the download stage again; if it keeps "
                "failing, fetch EuroSAT.zip by hand and set data_source to its path."
            )
        return _read_zip(zip_path), actual
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _read_local(path: Path) -> tuple[list[Sample], str | None]:
    if not path.exists():
        raise DatasetError(
            f"data_source '{path}' does not exist. Set data_source in params.yaml to 'eurosat' "
            "(download), 'synthetic' (offline demo) or the path of a EuroSAT zip or folder."
        )
    if path.is_dir():
        return _read_folder(path), None
    return _read_zip(path), calculate_md5(path)


def _read_zip(path: Path) -> list[Sample]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(
            f"{path}: not a readable zip archive ({err}). It may be truncated or corrupt: download it again."
        ) from err
    files, folders, problems = [], set(), []
    with archive:
        for entry in archive.infolist():
            name = entry.filename.replace("\\", "/")
            parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
            if name.startswith("/") or ".." in parts or ":" in (parts[0] if parts else ""):
                problems.append(f"{entry.filename}: entry path escapes the archive folder")
                continue
            if stat.S_ISLNK(entry.external_attr >> 16):
                problems.append(f"{entry.filename}: symbolic links are not allowed in the archive")
                continue
            if _ignored(parts):
                continue
            if entry.is_dir():
                folders.add(parts)
                continue
            try:
                files.append(ImageFile(parts, archive.read(entry)))
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                problems.append(f"{entry.filename}: cannot be read from the archive ({err})")
    return _organise(files, folders, problems, str(path))


def _read_folder(root: Path) -> list[Sample]:
    files, folders, problems = [], set(), []
    real_root = root.resolve()
    for path, is_dir in _walk(root, real_root, problems):
        parts = path.relative_to(root).parts
        if _ignored(parts):
            continue
        if is_dir:
            folders.add(parts)
        else:
            files.append(ImageFile(parts, path.read_bytes()))
    return _organise(files, folders, problems, str(root))


def _walk(folder: Path, real_root: Path, problems: list[str]) -> Iterator[tuple[Path, bool]]:
    """Every file and folder below ``folder``; symbolic links must stay inside the source."""
    for path in sorted(folder.iterdir()):
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


def _ignored(parts: tuple[str, ...]) -> bool:
    # Finder and zip tools add these; they are never images.
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _organise(files: list[ImageFile], folders: set[tuple[str, ...]], problems: list[str], where: str) -> list[Sample]:
    """Find the folder that holds the class folders and check the layout around it."""
    depths = collections.Counter(f.parts[:-2] for f in files if len(f.parts) >= 2)
    root = depths.most_common(1)[0][0] if depths else ()
    depth = len(root)
    found: dict[str, int] = collections.Counter()
    unexpected: set[str] = set()
    samples = []
    for folder in folders:
        if len(folder) == depth + 1 and folder[:depth] == root:
            found.setdefault(folder[depth], 0)
            if folder[depth] not in CLASSES:
                unexpected.add(folder[depth])
    for file in files:
        if len(file.parts) != depth + 2 or file.parts[:depth] != root:
            problems.append(f"{file.label}: not inside one of the class folders")
            continue
        class_name = file.parts[depth]
        found[class_name] += 1
        if class_name in CLASSES:
            samples.append(Sample(class_name, file.parts[-1], file.data))
        else:
            unexpected.add(class_name)
    layout = _layout_problems(found, unexpected)
    _raise_if(layout + problems, where)
    return samples


def _layout_problems(found: dict[str, int], unexpected: set[str]) -> list[str]:
    problems = []
    missing = [c for c in CLASSES if c not in found]
    if missing:
        problems.append(f"missing class folder(s): {', '.join(missing)}")
    if unexpected:
        problems.append(
            f"unexpected folder(s): {', '.join(sorted(unexpected))} "
            f"(EuroSAT has exactly these classes: {', '.join(CLASSES)})"
        )
    empty = [c for c in CLASSES if c in found and found[c] == 0]
    if empty:
        problems.append(f"class folder(s) with no images: {', '.join(empty)}")
    return problems


def verify_samples(samples: Iterable[Sample], where: str) -> None:
    """Every image must be a decodable 64x64 RGB JPEG; all problems are reported together."""
    problems = []
    for sample in samples:
        problem = _image_problem(sample.data)
        if problem:
            problems.append(f"{sample.member}: {problem}")
    _raise_if(problems, where)


def _image_problem(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, mode, size = image.format, image.mode, image.size
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"cannot be decoded as an image ({err})"
    if kind != "JPEG":
        return f"is a {kind} image, expected JPEG"
    if mode != "RGB":
        return f"has colour mode {mode}, expected RGB"
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        return f"is {size[0]}x{size[1]} pixels, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
    return None


def _raise_if(problems: list[str], where: str) -> None:
    if not problems:
        return
    listed = "\n  - ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise DatasetError(
        f"{where}: {len(problems)} problem(s) with the data source:\n  - {listed}{tail}\n"
        "Fix or remove these files (EuroSAT images are 64x64 RGB JPEGs in one folder per class), "
        "or point data_source at an intact copy."
    )


def write_archive(samples: Iterable[Sample], target: str | Path) -> None:
    """Write the canonical archive atomically: sorted, uncompressed, fixed timestamps."""
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for sample in sorted(samples, key=lambda s: (s.class_name, s.file_name)):
            entry = zipfile.ZipInfo(sample.member, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, sample.data)


def read_archive(path: str | Path) -> dict[str, bytes]:
    """The canonical archive's images by member name (``<Class>/<file>``)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    except FileNotFoundError as err:
        raise DatasetError(f"{path} not found: run `dvc repro download` first.") from err
    except (zipfile.BadZipFile, zlib.error, OSError) as err:
        raise DatasetError(f"{path}: unreadable ({err}); run `dvc repro -f download`.") from err
