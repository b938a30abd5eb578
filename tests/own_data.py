"""Datasets in the shapes users bring: class folders of PNG or (Geo)TIFF, any bands, 8 or 16 bit."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

Pixels = Callable[[np.random.Generator, int], np.ndarray]


def tiff_bytes(pixels: np.ndarray, descriptions: Sequence[str] | None = None) -> bytes:
    """A GeoTIFF (no georeference) of ``bands x H x W`` pixels, with band descriptions when given."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    bands, height, width = pixels.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": str(pixels.dtype)}
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(pixels)
            for index, name in enumerate(descriptions or (), start=1):
                dst.set_band_description(index, name)
        return memory.read()


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit PNG of ``bands x H x W`` pixels (1 or 3 bands)."""
    buffer = io.BytesIO()
    image = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_class_folders(
    root: Path,
    classes: dict[str, Pixels],
    per_class: int,
    encode: Callable[[np.ndarray], bytes],
    suffix: str,
    seed: int = 0,
) -> Path:
    """``root/<class>/<class>_<n><suffix>`` for each class, pixels from that class's function."""
    rng = np.random.default_rng(seed)
    for name, pixels in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            (folder / f"{name}_{number}{suffix}").write_bytes(encode(pixels(rng, number)))
    return root


def texture(bands: int, dtype: str = "uint8", size: int = 32, high: int = 255) -> Pixels:
    """Random texture, the same distribution for every class that uses it."""
    return lambda rng, _: rng.integers(0, high, size=(bands, size, size)).astype(dtype)


def with_extra_band(base: Pixels, level: int, spread: int = 200) -> Pixels:
    """``base``'s bands plus one more whose values sit around ``level`` (the only class signal)."""

    def pixels(rng: np.random.Generator, number: int) -> np.ndarray:
        rgb = base(rng, number)
        extra = rng.integers(level - spread, level + spread, size=(1, *rgb.shape[1:])).astype(rgb.dtype)
        return np.concatenate([rgb, extra])

    return pixels


def varied_rgb(size: int = 32, high: int = 3000) -> Pixels:
    """Red, green and blue as real patches vary: each image its own colour balance and brightness,
    a smooth pattern and pixel noise; the same distribution for every class that uses it."""

    def pixels(rng: np.random.Generator, _: int) -> np.ndarray:
        colour = rng.uniform(0.15, 1.0, size=(3, 1, 1)) * high * 0.8
        coarse = rng.uniform(0.6, 1.4, size=(3, 4, 4))
        pattern = np.kron(coarse, np.ones((size // 4, size // 4)))
        noise = rng.normal(1.0, 0.05, size=(3, size, size))
        return np.clip(colour * pattern * noise, 1, high).astype(np.uint16)

    return pixels
