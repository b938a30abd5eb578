"""Reading one image file's bytes: what it holds (a header) and its pixels (``bands x H x W``).

JPEG goes through libjpeg-turbo (torchvision, as the loader always did); PNG and (Geo)TIFF
through GDAL (rasterio), which reads any band count and 16-bit values, and the band
descriptions a GeoTIFF carries.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from eurosat_pipeline.core.errors import first_line
from eurosat_pipeline.core.limits import MAX_IMAGE_PIXELS, pixel_problem

if TYPE_CHECKING:
    import torch

DTYPES = ("uint8", "uint16")
#: The first bytes of each format read here. GDAL opens dozens more, and some name other files or
#: URLs (VRT, for one): a file is opened only once its first bytes say it is one of these.
MAGIC = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),  # TIFF and BigTIFF, either byte order
}
#: The GDAL drivers that may open a file of each format (a COG is read by the GTiff driver).
GDAL_DRIVERS = {"PNG": ["PNG"], "TIFF": ["GTiff"]}
_COLOUR_NAMES = {"red", "green", "blue", "gray"}


class ImageProblem(ValueError):
    """Why one file cannot be used, in words (the caller adds the file's name)."""


@dataclass(frozen=True)
class Header:
    format: str
    bands: int
    dtype: str
    height: int
    width: int
    #: A GeoTIFF's band descriptions, else the colour interpretation (red, green, blue; gray), else None.
    band_names: tuple[str, ...] | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


@dataclass(frozen=True)
class PixelLimit:
    """The most pixels an image may have, and the setting that raises it (named in the refusal)."""

    pixels: int = MAX_IMAGE_PIXELS
    setting: str = "max_image_pixels in params.yaml"

    def check(self, width: int, height: int) -> None:
        problem = pixel_problem(width, height, self.pixels, self.setting)
        if problem:
            raise ImageProblem(problem)


def sniff(data: bytes) -> str | None:
    """The format the file's first bytes announce (a key of :data:`MAGIC`), or None."""
    return next((kind for kind, starts in MAGIC.items() if data.startswith(starts)), None)


def read_header(data: bytes, limit: PixelLimit | None = None) -> Header:
    """What the file holds, read before any pixel is decoded; an image over ``limit`` is refused
    from its header alone, so a decompression bomb costs no memory."""
    limit = limit or PixelLimit()
    if sniff(data) == "JPEG":
        return _jpeg_header(data, limit)
    return _raster_header(data, limit)


def decode(data: bytes, header: Header) -> np.ndarray:
    """The pixels as ``bands x H x W`` of the header's dtype."""
    if header.format == "JPEG":
        import torch
        from torchvision.io import decode_jpeg

        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)).numpy()
    with _OpenRaster(data) as src:
        return src.read()


def as_torch_integers(pixels: np.ndarray) -> torch.Tensor:
    """A batch as a torch tensor; uint16 values as int32, which every torch operation on every
    device takes (torch's uint16 is a storage type with few kernels, on a GPU especially)."""
    import torch

    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype == np.uint16:
        return torch.from_numpy(pixels.astype(np.int32))
    return torch.from_numpy(pixels)


def _jpeg_header(data: bytes, limit: PixelLimit) -> Header:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            limit.check(*image.size)
            image.load()  # a truncated file fails here, not in the decode pass
            mode, (width, height) = image.mode, image.size
    except Image.DecompressionBombError as err:  # over twice PIL's own limit, refused by PIL's open
        raise ImageProblem(f"is refused before decoding: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageProblem(f"cannot be decoded as a JPEG ({err})") from err
    if mode not in ("RGB", "L"):
        raise ImageProblem(f"is a {mode} JPEG; use RGB or grayscale JPEGs (or PNG / GeoTIFF)")
    names = ("red", "green", "blue") if mode == "RGB" else ("gray",)
    return Header("JPEG", len(names), "uint8", height, width, names)


def _raster_header(data: bytes, limit: PixelLimit) -> Header:
    with _OpenRaster(data) as src:  # GDAL reads the header on open; pixels only when asked
        limit.check(src.width, src.height)
        dtypes = set(src.dtypes)
        if len(dtypes) > 1:
            raise ImageProblem(f"mixes band types ({', '.join(sorted(dtypes))}) within the file")
        dtype = dtypes.pop()
        if dtype not in DTYPES:
            raise ImageProblem(f"has {dtype} values; use uint8 or uint16 (e.g. reflectance x 10,000 as uint16)")
        interpretation = [c.name for c in src.colorinterp]
        if "palette" in interpretation:
            raise ImageProblem("is a palette (indexed-colour) image; save it as RGB")
        if "alpha" in interpretation and src.driver == "PNG":
            raise ImageProblem("has an alpha band (transparency); save it as RGB or grey")
        # A TIFF's 4th 8-bit band is often tagged alpha by default (RGB + near-infrared files
        # included): it is read as a band like any other.
        header = Header(src.driver, src.count, dtype, src.height, src.width, _band_names(src, interpretation))
        src.read(1, window=((0, 1), (0, 1)))  # a truncated file fails here, not in the decode pass
    return header


def _band_names(src: object, interpretation: list[str]) -> tuple[str, ...] | None:
    descriptions = tuple(d.strip() if d else "" for d in src.descriptions)
    if descriptions and all(descriptions):
        return descriptions
    colours = tuple(name if name in _COLOUR_NAMES else None for name in interpretation)
    if colours == ("gray",):
        return colours
    if {"red", "green", "blue"} <= set(colours) and len(colours) == len(set(colours)):
        # RGB plus other bands (near-infrared in a 4-band 8-bit file, often tagged alpha or undefined):
        # red, green and blue keep their names, and so their pretrained stem filters.
        rgb = ("red", "green", "blue")
        return tuple(c if c in rgb else f"band {i}" for i, c in enumerate(colours, start=1))
    return None


class _OpenRaster:
    """rasterio's dataset over in-memory bytes, with GDAL's failures as :class:`ImageProblem`."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self) -> object:
        from rasterio.errors import NotGeoreferencedWarning, RasterioError
        from rasterio.io import MemoryFile

        kind = sniff(self.data)
        if kind not in GDAL_DRIVERS:  # checked before GDAL sees a byte: its drivers may read other files
            raise ImageProblem("cannot be decoded as an image: its first bytes are not a JPEG's, PNG's or TIFF's")
        self.memory = MemoryFile(self.data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.src = self.memory.open(driver=GDAL_DRIVERS[kind])
        except RasterioError as err:
            self.memory.close()
            raise ImageProblem(f"cannot be decoded as an image ({first_line(err)})") from err
        if self.src.driver not in ("PNG", "GTiff", "COG"):
            self.__exit__(None, None, None)
            raise ImageProblem(f"is a {self.src.driver} file; use JPEG, PNG or (Geo)TIFF")
        return self.src

    def __exit__(self, kind: object, error: object, trace: object) -> bool:
        from rasterio.errors import RasterioError

        self.src.close()
        self.memory.close()
        if isinstance(error, RasterioError):
            raise ImageProblem(f"cannot be read ({first_line(error)})") from error
        return False
