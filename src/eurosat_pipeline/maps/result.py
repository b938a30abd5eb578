"""The result of mapping one scene: the class and confidence of every map cell, the grid it lies
on, its areas, and what the run took (:class:`LandUseMap`); the maps' errors (:class:`MapError`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from eurosat_pipeline.core.classes import IMAGE_SIZE
from eurosat_pipeline.scenes.masks import MIN_CLEAR_PERCENT

TILE = IMAGE_SIZE  # EuroSAT patches: 64 x 64 pixels of 10 m (other models: their own patch size)
NODATA = 255


class CellStatus(IntEnum):
    """Why a map cell has the class it has, or none (the class map holds NODATA for the last three)."""

    CLASSIFIED = 0
    MASKED = 1  # mostly cloud, shadow, cirrus (or the mask's other classes): never classified
    UNCERTAIN = 2  # classified below --min-confidence: its confidence is kept, its class is not
    NODATA = 3  # the scene's own nodata, partial edge cells, or no whole window over it


class Stopwatch:
    """Seconds spent per phase (reading, scaling, classifying, ...), added up over a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started


@dataclass
class LandUseMap:
    """The map: class index (or NODATA) and top-1 confidence per cell. A cell is ``stride`` pixels a
    side: one window of the model's patch (``tile``) without overlap, a part of several overlapping
    windows with a finer stride; ``tile_area_m2`` is a cell's area."""

    classes: np.ndarray
    confidence: np.ndarray
    crs: object
    transform: object
    tile_area_m2: float | None
    notes: list[str] = field(default_factory=list)
    class_names: tuple[str, ...] = ()  # the model's classes, index order
    tile: int = TILE  # pixels per window side: the model's patch size
    stride: int = TILE  # pixels per map cell side: the step between windows
    seconds: float = 0.0
    engine: str = ""
    preview: np.ndarray | None = None  # the scene as 8-bit RGB, decimated for the picture
    watch: Stopwatch = field(default_factory=Stopwatch)
    # Error-adjusted hectares and 95 % half-intervals per class (maps/accuracy.py), when an error
    # matrix was given; and the line that says where it came from.
    adjusted: list[dict[str, float]] | None = None
    adjusted_source: str = ""
    #: Percent of each cell's pixels the mask left clear (uint8, 0..100); None when no mask was used.
    clear: np.ndarray | None = None
    #: Blended class probabilities, ``rows x cols x classes`` uint8 (0..255), when asked for.
    probabilities: np.ndarray | None = None
    #: ``--min-confidence``: cells classified below it are NODATA (uncertain); None: not asked.
    min_confidence: float | None = None

    def status(self) -> np.ndarray:
        """Each cell's :class:`CellStatus` (uint8), from the classes, confidence and clear share alone,
        so a map read back from its files (:func:`eurosat_pipeline.maps.outputs.read_map`) says the same."""
        unclassified = self.classes == NODATA
        status = np.full(self.classes.shape, CellStatus.NODATA, dtype=np.uint8)
        status[~unclassified] = CellStatus.CLASSIFIED
        status[unclassified & (self.confidence != NODATA)] = CellStatus.UNCERTAIN
        if self.clear is not None:
            status[unclassified & (self.confidence == NODATA) & (self.clear < MIN_CLEAR_PERCENT)] = CellStatus.MASKED
        return status

    @property
    def classified(self) -> int:
        return int((self.classes != NODATA).sum())

    @property
    def skipped(self) -> int:
        return int(self.classes.size - self.classified)

    def areas(self) -> list[dict[str, object]]:
        """One row per class: cells (``tiles``), hectares (empty without a projected CRS), share of the mapped area."""
        counts = np.bincount(self.classes[self.classes != NODATA], minlength=len(self.class_names))
        total = max(int(counts.sum()), 1)
        return [
            {
                "class": name,
                "index": index,
                "tiles": int(counts[index]),
                "hectares": "" if self.tile_area_m2 is None else round(counts[index] * self.tile_area_m2 / 10_000, 4),
                "percent": round(100 * counts[index] / total, 2),
            }
            for index, name in enumerate(self.class_names)
        ]
