"""Cloud and other masks: which map cells are mostly masked (never classified) and how much of each
cell is clear.

A mask is a raster of classes over the scene's footprint: Sentinel-2 L2A's scene classification
layer (``scl``, 20 m, an asset of the STAC item, found by itself), or any file given with ``--mask``.
Its pixels whose value is one of the masked classes (by default SCL's cloud shadow 3, cloud medium
and high probability 8 and 9, and thin cirrus 10; snow 11 is an option) are masked. The mask is
resampled to the scene's pixels by nearest neighbour (class codes must not be averaged), in bands of
cell rows, so memory never grows with the scene's height; each map cell's masked share is the mean
over its pixels.

A cell with less than :data:`MIN_CLEAR_PERCENT` % clear is *masked*:
NODATA in the map, counted in its own row of the area table. A window whose cells are mostly
masked (on average) is not classified at all. Partly masked cells are classified, and
``MAP.clear.tif`` says what share of each was clear.

The mask must lie on the scene's footprint: another CRS, or bounds that differ by more than half a
mask pixel, is refused in one line (a mask of another scene would silently mask the wrong places).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eurosat_pipeline.core.errors import MapError

#: Sentinel-2 L2A scene classification: the classes a mask may name, for messages and docs.
SCL_CLASSES = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area pixels",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow",
}
DEFAULT_MASK_CLASSES = (3, 8, 9, 10)
#: A cell with less of its pixels clear of the mask (percent) is masked: not classified at all.
MIN_CLEAR_PERCENT = 50
CELL_ROWS_PER_READ = 16  # cell rows of the mask resampled at a time (bounds memory by the width)


@dataclass(frozen=True)
class MaskSpec:
    """Where the mask comes from and which of its values are masked. ``path`` None: the scene's own
    ``scl`` asset when it has one (a STAC item), else no mask."""

    path: str | None = None
    classes: tuple[int, ...] = DEFAULT_MASK_CLASSES

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        wrong = [c for c in self.classes if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 65535]
        if wrong or not self.classes:
            raise MapError(
                f"--mask-classes {','.join(map(str, self.classes)) or '(none)'}: give the mask's values to mask, "
                f"e.g. {','.join(map(str, DEFAULT_MASK_CLASSES))} (Sentinel-2 SCL: cloud shadow, cloud, cirrus; "
                "add 11 for snow)"
            )


DEFAULT_MASK = MaskSpec()  # the scene's own scl asset when it has one, SCL's cloud and shadow classes


@contextlib.contextmanager
def open_mask(path: str, scene: object) -> Iterator[object]:
    """The mask raster at ``path``, checked to lie on ``scene``'s footprint."""
    import rasterio
    from rasterio.errors import RasterioIOError

    if "://" not in path and not path.startswith("/vsi") and not Path(path).is_file():
        raise MapError(f"--mask {path}: not found")
    try:
        mask = rasterio.open(path)
    except RasterioIOError as err:
        raise MapError(f"--mask {path}: not a raster GDAL can read ({err})") from err
    with mask:
        check_footprint(mask, scene, path)
        yield mask


def check_footprint(mask: object, scene: object, label: str) -> None:
    """One-line refusals for a mask of another CRS or another footprint than the scene's."""
    if (mask.crs is None) != (scene.crs is None) or (mask.crs is not None and mask.crs != scene.crs):
        raise MapError(
            f"mask {label}: its CRS ({_crs(mask.crs)}) is not the scene's ({_crs(scene.crs)}); "
            "give the mask of this scene (gdalwarp it onto the scene's grid)"
        )
    tolerance = max(abs(mask.transform.a), abs(mask.transform.e)) / 2
    mask_bounds, scene_bounds = bounds_of(mask), bounds_of(scene)
    if any(abs(a - b) > tolerance for a, b in zip(mask_bounds, scene_bounds, strict=True)):
        raise MapError(
            f"mask {label}: covers {_bounds(mask_bounds)}, {mask.width} x {mask.height} pixels, but the scene covers "
            f"{_bounds(scene_bounds)}, {scene.width} x {scene.height}; give the mask of this scene's footprint"
        )


def bounds_of(raster: object) -> tuple[float, float, float, float]:
    """West, south, east, north of a raster (a dataset or a band stack) from its grid."""
    from rasterio.transform import array_bounds

    west, south, east, north = array_bounds(raster.height, raster.width, raster.transform)
    return west, south, east, north


def _crs(crs: object) -> str:
    return crs.to_string() if crs is not None else "none"


def _bounds(bounds: object) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def masked_shares(
    mask: object, classes: tuple[int, ...], scene: object, stride: int, shape: tuple[int, int]
) -> np.ndarray:
    """Each map cell's masked share (float32, ``shape`` = the map's cells of ``stride`` scene pixels),
    from the mask resampled to the scene's pixels by nearest neighbour, a band of cell rows at a time.
    Pixels beyond the scene (partial edge cells) count as clear: those cells are NODATA anyway."""
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    rows, cols = shape
    shares = np.zeros(shape, dtype=np.float32)
    outside = _value_not_in(classes)
    for top in range(0, rows, CELL_ROWS_PER_READ):
        count = min(CELL_ROWS_PER_READ, rows - top)
        values = np.full((count * stride, cols * stride), outside, dtype=np.int32)
        transform = scene.transform @ Affine.translation(0, top * stride)
        reproject(
            source=_band(mask),
            destination=values,
            src_transform=mask.transform,
            src_crs=mask.crs,
            dst_transform=transform,
            dst_crs=scene.crs,
            resampling=Resampling.nearest,
            src_nodata=None,
            dst_nodata=outside,
        )
        masked = np.isin(values, classes).reshape(count, stride, cols, stride)
        shares[top : top + count] = masked.mean(axis=(1, 3), dtype=np.float32)
    return shares


def _band(mask: object) -> object:
    from rasterio import band

    return band(mask, 1)


def _value_not_in(classes: tuple[int, ...]) -> int:
    """A fill value that is none of the masked classes (for pixels the mask does not reach)."""
    return next(v for v in range(-1, -len(classes) - 2, -1) if v not in classes)


def clear_percent(shares: np.ndarray) -> np.ndarray:
    """The share of each cell clear of the mask, in whole percent (uint8)."""
    return np.rint(100 * (1 - shares)).astype(np.uint8)


def mostly_masked(clear: np.ndarray) -> np.ndarray:
    """The cells too masked to classify (the one rule, shared with :meth:`LandUseMap.status`)."""
    return clear < MIN_CLEAR_PERCENT


def windows_to_skip(shares: np.ndarray, per_window: int, window_rows: int, window_cols: int) -> np.ndarray:
    """Whether each window (``window_rows x window_cols``, a window covering ``per_window`` cells a
    side) is mostly masked, by its cells' mean masked share: such a window is not classified."""
    summed = np.pad(shares.astype(np.float64), ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
    k = per_window
    total = (
        summed[k : k + window_rows, k : k + window_cols]
        - summed[:window_rows, k : k + window_cols]
        - summed[k : k + window_rows, :window_cols]
        + summed[:window_rows, :window_cols]
    )
    return (total / (k * k)) > 1 - MIN_CLEAR_PERCENT / 100
