"""Synthetic EuroSAT look-alike: ten classes of 64x64 JPEGs a small model can tell apart.

For tests and the offline demo only. Every output that reports the data marks it as synthetic.
Each class has its own tint and stripe orientation and frequency; per-image noise, phase and
brightness keep it from being trivial.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from eurosat_pipeline.core.classes import CLASSES, IMAGE_SIZE
from eurosat_pipeline.data.sources.base import Listing, SourceFile

# Fixed so that the same size knob always gives the same bytes (and the same DVC hash).
SYNTHETIC_SEED = 20190601
SYNTHETIC_WARNING = "SYNTHETIC data generated for tests and the offline demo: not EuroSAT."


@dataclass(frozen=True)
class SyntheticSource:
    images_per_class: int

    @contextlib.contextmanager
    def open(self, work_dir: Path) -> Iterator[Listing]:
        files = [
            SourceFile((name, file_name), functools.partial(bytes, data))
            for name, file_name, data in synthetic_images(self.images_per_class)
        ]
        description = {"source": "synthetic", "synthetic": True, "warning": SYNTHETIC_WARNING}
        yield Listing(files, {(name,) for name in CLASSES}, "synthetic", description)


def synthetic_images(images_per_class: int) -> Iterator[tuple[str, str, bytes]]:
    """Yield ``(class_name, file_name, jpeg_bytes)`` for every synthetic image."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE
    for index, name in enumerate(CLASSES):
        tint = _class_tint(index)
        angle = np.pi * index / len(CLASSES)
        frequency = 3.0 + 2.0 * (index % 3)
        for number in range(1, images_per_class + 1):
            pixels = _render(rng, xx, yy, tint, angle, frequency)
            yield name, f"{name}_{number}.jpg", _to_jpeg(pixels)


def _class_tint(index: int) -> np.ndarray:
    hue = index / len(CLASSES)
    rgb = np.array([np.cos(2 * np.pi * (hue - k / 3)) for k in range(3)], dtype=np.float32)
    return 0.5 + 0.25 * rgb


def _render(
    rng: np.random.Generator,
    xx: np.ndarray,
    yy: np.ndarray,
    tint: np.ndarray,
    angle: float,
    frequency: float,
) -> np.ndarray:
    phase = rng.uniform(0, 2 * np.pi)
    wobble = angle + rng.normal(0, 0.15)
    stripes = np.sin(2 * np.pi * frequency * (xx * np.cos(wobble) + yy * np.sin(wobble)) + phase)
    brightness = rng.uniform(0.8, 1.2)
    image = tint[None, None, :] * brightness * (1 + 0.35 * stripes[..., None])
    image += rng.normal(0, 0.08, size=image.shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def _to_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
