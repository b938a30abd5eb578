"""Where two dates meet: each scene's footprint, the share of BEFORE's that AFTER covers (checked
before anything long is done), and AFTER's map brought onto BEFORE's map grid.

**Footprints** are bounding boxes in the scene's own CRS, compared in BEFORE's: AFTER's box is
reprojected (its edges densified) into BEFORE's CRS, so scenes in two UTM zones compare. The
overlap share is the intersection's area over BEFORE's box: the part of BEFORE's place that AFTER
can say anything about.

**Alignment.** AFTER's map is resampled onto BEFORE's map grid by nearest neighbour (GDAL's warper
through :func:`rasterio.warp.reproject`): each BEFORE cell takes the AFTER cell under its centre,
never a blend of class indices. Rather than warping the classes, confidence and clear share one by
one (each with its own nodata rules), the warper moves AFTER's cell *numbers*; each BEFORE cell then
takes the class and the :class:`~eurosat_pipeline.maps.result.CellStatus` of the AFTER cell it got,
and :data:`OUTSIDE` where no AFTER cell lies under it. A grid shifted by whole cells lines up exactly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eurosat_pipeline.core.errors import MapError
from eurosat_pipeline.maps.result import NODATA, LandUseMap
from eurosat_pipeline.scenes.sources import REMOTE_GDAL_OPTIONS, BandFiles, RasterScene, is_remote

#: An AFTER status beyond :class:`CellStatus`: the BEFORE cell lies outside AFTER's map.
OUTSIDE = 4
DEFAULT_MIN_OVERLAP = 0.5


class ChangeError(MapError):
    """Two maps cannot be compared (no overlap, other classes, no CRS), or a pair cannot be read."""


@dataclass(frozen=True)
class Footprint:
    """A scene's (or a map's) bounding box ``(left, bottom, right, top)`` in its CRS, and what to call it."""

    name: str
    bounds: tuple[float, float, float, float]
    crs: object  # a rasterio CRS, or None for a raster without one

    def describe(self) -> str:
        left, bottom, right, top = (f"{value:.10g}" for value in self.bounds)
        crs = self.crs.to_string() if self.crs else "no CRS"
        return f"{self.name} ({left}, {bottom}, {right}, {top} in {crs})"


def scene_footprint(scene: RasterScene | BandFiles) -> Footprint | None:
    """The scene's footprint from its file's header (a band file's, for band files and STAC items):
    cheap, so an overlap too small is refused before either scene is mapped. None when the header
    cannot be read; the map then says why, and the footprints are taken from the maps."""
    import rasterio
    from rasterio.errors import RasterioError

    path = scene.path if isinstance(scene, RasterScene) else scene.bands[0][1]
    label = Path(path).name if isinstance(scene, RasterScene) else scene.name
    env = rasterio.Env(**REMOTE_GDAL_OPTIONS) if is_remote(path) else contextlib.nullcontext()
    try:
        with env, rasterio.open(path) as src:
            return Footprint(label, tuple(src.bounds), src.crs)
    except (RasterioError, OSError):
        return None


def map_footprint(name: str, result: LandUseMap) -> Footprint:
    """A map's footprint: its whole grid of cells."""
    from rasterio.transform import array_bounds

    rows, cols = result.classes.shape
    return Footprint(name, tuple(array_bounds(rows, cols, result.transform)), result.crs)


def overlap_share(before: Footprint, after: Footprint) -> float:
    """The share of BEFORE's box that AFTER's box, reprojected into BEFORE's CRS, covers (0..1)."""
    from rasterio.errors import RasterioError
    from rasterio.warp import transform_bounds

    if before.crs is None or after.crs is None:
        missing = before if before.crs is None else after
        raise ChangeError(f"{missing.name}: has no CRS; change compares georeferenced scenes only")
    try:
        left, bottom, right, top = transform_bounds(after.crs, before.crs, *after.bounds, densify_pts=21)
    except (RasterioError, ValueError):  # beyond the other CRS's domain: not the same place
        return 0.0
    b_left, b_bottom, b_right, b_top = before.bounds
    width = max(0.0, min(right, b_right) - max(left, b_left))
    height = max(0.0, min(top, b_top) - max(bottom, b_bottom))
    area = (b_right - b_left) * (b_top - b_bottom)
    return width * height / area if area > 0 else 0.0


def check_overlap(before: Footprint, after: Footprint, minimum: float) -> float:
    """The overlap share, or a one-line refusal naming both footprints when it is below ``minimum``."""
    share = overlap_share(before, after)
    if share < minimum or share == 0.0:
        raise ChangeError(
            f"BEFORE {before.describe()} and AFTER {after.describe()} overlap by {share:.0%} of BEFORE's "
            f"footprint, below --min-overlap {minimum:g}: not two dates of one place"
        )
    return share


def check_min_overlap(value: float) -> float:
    """``--min-overlap``: a share of BEFORE's footprint, above 0 and at most 1."""
    if not 0.0 < value <= 1.0:
        raise ChangeError(f"--min-overlap {value}: give a share of BEFORE's footprint above 0 and at most 1, e.g. 0.5")
    return value


@dataclass
class AlignedPair:
    """BEFORE's map and AFTER's classes and status on BEFORE's grid (:data:`OUTSIDE` beyond AFTER)."""

    before: LandUseMap
    after: LandUseMap
    before_status: np.ndarray
    after_classes: np.ndarray
    after_status: np.ndarray


def check_classes(before: LandUseMap, after: LandUseMap, names: tuple[str, str]) -> None:
    """Both maps must be of one model's classes, in one order: else a code means two things."""
    if tuple(before.class_names) != tuple(after.class_names):
        raise ChangeError(
            f"{names[0]} has the classes {', '.join(before.class_names)} but {names[1]} has "
            f"{', '.join(after.class_names)}: map both dates with the same model"
        )


def align(before: LandUseMap, after: LandUseMap) -> AlignedPair:
    """AFTER's cells onto BEFORE's grid by nearest neighbour (see the module's docstring)."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    numbers = np.arange(1, after.classes.size + 1, dtype=np.int32).reshape(after.classes.shape)
    landed = np.zeros(before.classes.shape, dtype=np.int32)
    reproject(
        numbers,
        landed,
        src_transform=after.transform,
        src_crs=after.crs,
        dst_transform=before.transform,
        dst_crs=before.crs,
        src_nodata=None,
        dst_nodata=0,
        resampling=Resampling.nearest,
    )
    inside = landed > 0
    index = np.where(inside, landed - 1, 0).ravel()
    after_classes = np.where(inside, after.classes.ravel()[index].reshape(landed.shape), NODATA).astype(np.uint8)
    after_status = np.where(inside, after.status().ravel()[index].reshape(landed.shape), OUTSIDE).astype(np.uint8)
    return AlignedPair(before, after, before.status(), after_classes, after_status)
