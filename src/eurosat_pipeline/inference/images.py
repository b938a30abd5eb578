"""Reading image files for a trained model: its bands, in its value type, ``bands x H x W``.

One path for every user of a model (``eurosat predict`` on files, ``eurosat serve`` on uploads):
8-bit RGB models read JPEG and PNG with PIL (only the formats named in :data:`PIL_FORMATS`);
TIFF, and every other model's files, go through :mod:`eurosat_pipeline.data.imagefile` (GDAL),
whose band names find the model's bands (:meth:`~eurosat_pipeline.core.dataspec.DataSpec.match_bands`).
An image over the pixel limit is refused from its header, before a pixel is decoded.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.core.errors import DatasetError, PipelineError
from eurosat_pipeline.core.limits import MAX_IMAGE_PIXELS, pixel_problem

PIXELS_SETTING = "--max-pixels"
#: What PIL may open: the formats the docs name. PIL knows dozens more (EPS runs Ghostscript,
#: and each decoder is attack surface), so anything else is refused before a decoder runs.
PIL_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")


def read_image(path: Path, data: DataSpec, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The model's bands of an image file as ``bands x H x W`` of the model's value type; an image
    over ``max_pixels`` is refused from its header, before any pixel is decoded."""
    if _read_by_pil(path.name, data):
        return read_rgb(path, max_pixels)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PipelineError(f"{path}: {err}") from err
    return read_raster(raw, str(path), data, max_pixels)


def read_image_bytes(raw: bytes, name: str, data: DataSpec, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """:func:`read_image` for a file held in memory (an upload to ``eurosat serve``): the same readers
    and checks, with ``name`` (the file's name: its suffix picks the reader) in the messages."""
    if _read_by_pil(name, data):
        return read_rgb(io.BytesIO(raw), max_pixels, name)
    return read_raster(raw, name, data, max_pixels)


def declared_pixels(raw: bytes) -> int:
    """The pixels a file's header declares (width x height), read without decoding any; 0 for a file
    whose header cannot be read (reading it refuses it, naming why)."""
    from eurosat_pipeline.data.imagefile import ImageProblem, PixelLimit, read_header

    try:
        with Image.open(io.BytesIO(raw), formats=PIL_FORMATS) as image:  # the header only
            return image.width * image.height
    except Exception:  # noqa: BLE001 - not for PIL (a bomb past its limit, a 16-bit TIFF): GDAL's header
        pass
    try:
        header = read_header(raw, PixelLimit(2**62))  # the size is all that is asked for here
    except (ImageProblem, OSError):
        return 0
    return header.width * header.height


def _read_by_pil(name: str, data: DataSpec) -> bool:
    """8-bit RGB models read JPEG and PNG with PIL; TIFF and other models' files go through GDAL."""
    return data.is_rgb8 and Path(name).suffix.lower() not in (".tif", ".tiff")


def read_raster(raw: bytes, name: str, data: DataSpec, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The model's bands of a file's bytes, read by :mod:`eurosat_pipeline.data.imagefile`."""
    from eurosat_pipeline.data.imagefile import ImageProblem, PixelLimit, decode, read_header

    try:
        header = read_header(raw, PixelLimit(max_pixels, PIXELS_SETTING))
        pixels = decode(raw, header)
    except (ImageProblem, OSError) as err:
        raise PipelineError(f"{name}: {err}") from err
    if header.dtype != data.dtype:
        raise PipelineError(f"{name}: has {header.dtype} values; the model was trained on {data.dtype} images")
    return pixels[model_bands(header.band_names, header.bands, data, name)]


def model_bands(names: Sequence[str] | None, count: int, data: DataSpec, where: str) -> list[int]:
    """0-based positions of the model's bands in a file (:meth:`DataSpec.match_bands`: by name in any
    order; by position only in a file without band names), or an error that names what the model takes."""
    try:
        found = data.match_bands(names, count)
    except DatasetError as err:  # names that lack a model band: refused, never read by position
        raise PipelineError(f"{where}: {err}") from err
    if found is not None:
        return found.positions
    raise PipelineError(
        f"{where}: has {count} band(s); the model takes "
        f"{data.in_chans} ({', '.join(data.shown_bands())}) of the training data's {data.data_bands}: give it "
        f"patches with those {data.data_bands} bands, or with exactly the model's {data.in_chans} in that order"
    )


def read_rgb(path: Path | BinaryIO, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None) -> np.ndarray:
    """A 3-band image as uint8 ``3 x H x W``; palette images are expanded, anything else refused.
    ``path`` may be an open file, ``name`` then names it in the messages."""
    where = name or path
    try:
        with Image.open(path, formats=PIL_FORMATS) as image:  # the header only: size known before decoding
            problem = pixel_problem(*image.size, max_pixels, PIXELS_SETTING)
            if problem:
                raise PipelineError(f"{where}: {problem}")
            image.load()
            bands = image.getbands()
            if image.mode == "P":
                image, bands = image.convert("RGB"), ("R", "G", "B")
            if image.mode != "RGB":
                raise PipelineError(
                    f"{where}: has {len(bands)} band(s) ({image.mode}); the model takes 3-band RGB images "
                    "(EuroSAT RGB, not the 13-band multispectral version)"
                )
            return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    except Image.DecompressionBombError as err:  # over twice PIL's own limit: refused by its open
        raise PipelineError(f"{where}: refused before decoding: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise PipelineError(f"{where}: cannot be read as an image ({_unreadable(err)})") from err


def _unreadable(err: Exception) -> str:
    """PIL's reason, without the repr of an in-memory file it names when it recognises no format."""
    if isinstance(err, UnidentifiedImageError):
        return f"not one of the formats read here: {', '.join(PIL_FORMATS)}"
    return str(err)
