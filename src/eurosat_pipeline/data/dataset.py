"""The download stage: any source -> verified images -> canonical archive + decoded array + description.

Every source (:mod:`eurosat_pipeline.data.sources`) ends in the same three outputs:

- ``eurosat.zip``: the images' bytes as they came (nothing re-encoded), ``<Class>/<file>`` in
  sorted order with fixed timestamps, uncompressed: the same images always give the same bytes,
  and one file keeps ``dvc push`` / ``dvc pull`` fast.
- ``images.npy``: every image decoded once, ``N x bands x H x W`` (uint8 or uint16) in the
  archive's order, written through a memory map: training gathers batches from it and never
  needs the dataset in RAM (:mod:`eurosat_pipeline.data.loading`). Images of another size than the
  most common one are resized to it here (bilinear, antialiased); the device resizes to
  ``image_size``.
- ``dataset.json``: where the data came from, the classes (the folder names, sorted), counts,
  bands (count, names, type), the stored size.

Nothing is written unless every image is usable; all problems are reported together.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from eurosat_pipeline.core.bands import EUROSAT_MS_BANDS
from eurosat_pipeline.core.errors import DatasetError
from eurosat_pipeline.core.files import atomic_path, preallocate, read_json, write_json, writing
from eurosat_pipeline.core.limits import MAX_IMAGE_PIXELS
from eurosat_pipeline.data.imagefile import Header, ImageProblem, PixelLimit, decode, read_header
from eurosat_pipeline.data.sources import source_for
from eurosat_pipeline.data.sources.base import Sample, class_samples, raise_if
from eurosat_pipeline.data.sources.eurosat import EUROSAT_RGB
from eurosat_pipeline.data.sources.synthetic import SYNTHETIC_WARNING

__all__ = ["SYNTHETIC_WARNING", "images_path_for", "open_images", "prepare_dataset", "read_archive"]
EXAMPLES_SHOWN = 3


def images_path_for(archive: str | Path) -> Path:
    """Where the decoded array of ``archive`` lives unless a stage names it: beside it."""
    return Path(archive).with_name("images.npy")


def prepare_dataset(
    source: str,
    archive: str | Path,
    info_path: str | Path,
    synthetic_images_per_class: int = 100,
    images: str | Path | None = None,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> dict[str, Any]:
    """Fetch ``source``, verify it, and write the canonical archive, the decoded array and their
    description. An image over ``max_image_pixels`` is refused from its header, before decoding."""
    archive, info_path = Path(archive), Path(info_path)
    images = Path(images) if images else images_path_for(archive)
    _remove_stale_temporaries(archive, info_path, images)
    with source_for(source, synthetic_images_per_class).open(archive.parent) as listing:
        folders = class_samples(listing)
        samples = sorted(folders.samples, key=lambda s: (s.class_name, s.file_name))
        with atomic_path(archive) as archive_tmp:
            headers, problems = _copy_and_inspect(samples, archive_tmp, PixelLimit(max_image_pixels))
            layout = describe_layout(samples, headers, listing.where, folders.problems + problems)
            with atomic_path(images) as images_tmp:
                resized = decode_archive(archive_tmp, headers, layout, images_tmp, output=images)
        description = _description(listing.description, samples, headers, layout, resized, images)
        if folders.skipped:
            description["skipped_files"] = folders.skipped_record()
    # Last, once both are in place: a killed run must not leave a description of missing images.
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


def _copy_and_inspect(samples: list[Sample], target: Path, limit: PixelLimit) -> tuple[list[Header | None], list[str]]:
    """Read every image once: copy its bytes into the archive and read its header (None: unusable)."""
    headers: list[Header | None] = []
    problems: list[str] = []
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as out:
        for sample in samples:
            try:
                data = sample.read()
                headers.append(read_header(data, limit))
            except (ImageProblem, OSError) as err:
                problems.append(f"{sample.where}: {err}")
                headers.append(None)
                continue
            entry = zipfile.ZipInfo(sample.member, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            out.writestr(entry, data)
    return headers, problems


def describe_layout(
    samples: list[Sample], found: list[Header | None], where: str, problems: list[str]
) -> dict[str, Any]:
    """Bands, value type and stored size shared by every image; mixed bands or types are refused
    (naming the images that differ from the rest), together with ``problems`` found before."""
    readable = [(s, h) for s, h in zip(samples, found, strict=True) if h is not None]
    checks = (
        ("band counts", lambda h: h.bands),
        ("value types", lambda h: h.dtype),
        ("band names", lambda h: ", ".join(h.band_names) if h.band_names else "no names"),
    )
    for what, key in checks:
        differences = _differences(what, [(s.where, key(h)) for s, h in readable])
        problems += differences
        if differences and what == "band counts":
            break  # other band names follow from other band counts: one problem, not two
    raise_if(problems, where)
    headers = [h for _, h in readable]
    first = headers[0]
    band_names, named_by = first.band_names, "the files (band descriptions or colour interpretation)"
    if band_names is None and first.bands == len(EUROSAT_MS_BANDS):
        band_names, named_by = EUROSAT_MS_BANDS, "EuroSAT's multispectral layout (13 bands without descriptions)"
    shape = collections.Counter(h.shape for h in headers).most_common(1)[0][0]
    return {
        "bands": first.bands,
        "band_names": list(band_names) if band_names else None,
        "band_names_from": named_by if band_names else None,
        "dtype": first.dtype,
        "shape": list(shape),
        "formats": dict(collections.Counter(h.format for h in headers)),
    }


def _differences(what: str, values: list[tuple[str, Any]]) -> list[str]:
    """One problem when ``values`` are not all equal: the count of each, and examples of the rarer ones."""
    counts = collections.Counter(value for _, value in values)
    if len(counts) < 2:
        return []
    common = counts.most_common(1)[0][0]
    listed = []
    for value, count in counts.most_common():
        examples = [where for where, v in values if v == value][:EXAMPLES_SHOWN] if value != common else []
        shown = f" (e.g. {', '.join(examples)})" if examples else ""
        listed.append(f"{value}: {count:,} image(s){shown}")
    return [f"{what} differ between images ({'; '.join(listed)}); every image must have the same"]


def decode_archive(
    archive: Path, headers: list[Header], layout: dict[str, Any], target: Path, output: Path | None = None
) -> int:
    """Decode every image of ``archive`` into an ``.npy`` file (``target``, the temporary of
    ``output``, which messages name); returns how many were resized.

    Written with plain sequential writes into space reserved up front, not through a memory map:
    a store into a mapped page the disk cannot back kills the process with SIGBUS, while a write
    fails with ENOSPC, which :func:`~eurosat_pipeline.core.files.writing` turns into one line.
    """
    height, width = layout["shape"]
    dtype = np.dtype(layout["dtype"])
    shape = (len(headers), layout["bands"], height, width)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    resized, output = 0, output or target
    with writing(output), target.open("wb") as out, zipfile.ZipFile(archive) as source:
        np.lib.format.write_array_header_1_0(out, header)  # as np.save writes it
        preallocate(out, out.tell() + int(np.prod(shape)) * dtype.itemsize, output)
        for name, header_of_image in zip(source.namelist(), headers, strict=True):
            pixels = decode(source.read(name), header_of_image)
            if pixels.shape[1:] != (height, width):
                pixels = resize_pixels(pixels, height, width)
                resized += 1
            out.write(np.ascontiguousarray(pixels, dtype=dtype).tobytes())
    return resized


def resize_pixels(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, antialiased resize of ``bands x h x w`` integers, rounded back to their type."""
    import torch
    import torch.nn.functional as F

    values = torch.from_numpy(pixels.astype(np.float32))[None]
    out = F.interpolate(values, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    limit = np.iinfo(pixels.dtype).max
    return out.round().clamp(0, limit).numpy().astype(pixels.dtype)


def _description(
    source: dict[str, Any], samples: list[Sample], headers: list[Header], layout: dict, resized: int, images: Path
) -> dict[str, Any]:
    counts = collections.Counter(s.class_name for s in samples)
    classes = sorted(counts)
    height, width = layout["shape"]
    description = {"synthetic": False, **source}
    if description.get("source_md5") == EUROSAT_RGB.md5:
        description["eurosat_rgb"] = True  # the official EuroSAT RGB zip, checked by its md5
    return {
        **description,
        "classes": classes,
        "class_counts": {name: counts[name] for name in classes},
        "num_images": len(samples),
        # Pixels per side of a stored image (the tile size `eurosat map` cuts scenes into).
        "image_size": height if height == width else None,
        **layout,
        "resized_to_stored_shape": resized,
        "images": {
            "file": images.name,
            "order": "archive member order",
            "shape": [len(headers), layout["bands"], height, width],
        },
    }


def open_images(path: str | Path, count: int | None = None) -> np.ndarray:
    """The decoded array as a read-only memory map (pages are read when a batch touches them)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} not found: run `dvc repro download` first.")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise DatasetError(f"{path}: unreadable ({err}); run `dvc repro -f download`.") from err
    if array.ndim != 4 or (count is not None and len(array) != count):
        raise DatasetError(
            f"{path}: holds {array.shape} but the archive has {count} images: it is stale; run `dvc repro -f download`."
        )
    return array


def archive_members(path: str | Path) -> list[str]:
    """The archive's image names (``<Class>/<file>``) in stored order: row ``i`` of images.npy is member ``i``."""
    with _canonical_archive(path) as archive:
        return [name for name in archive.namelist() if not name.endswith("/")]


def read_archive(path: str | Path) -> dict[str, bytes]:
    """The canonical archive's images by member name (``<Class>/<file>``)."""
    with _canonical_archive(path) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}


@contextlib.contextmanager
def _canonical_archive(path: str | Path) -> Iterator[zipfile.ZipFile]:
    """The download stage's archive, open; a missing or broken one says which stage to run."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except FileNotFoundError as err:
        raise DatasetError(f"{path} not found: run `dvc repro download` first.") from err
    except (zipfile.BadZipFile, zlib.error, OSError) as err:
        raise DatasetError(f"{path}: unreadable ({err}); run `dvc repro -f download`.") from err


def read_info(path: str | Path) -> dict[str, Any]:
    """dataset.json, or an error that says which stage writes it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} not found: run `dvc repro download` first.")
    return read_json(path)
