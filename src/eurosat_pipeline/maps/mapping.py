"""Land-use maps from whole scenes: a raster in, a georeferenced map of classes out.

A scene is one raster file, or a :class:`SceneSource` that reads like one: Sentinel-2 as it is
published, one file per band or a STAC item (:mod:`eurosat_pipeline.scenes.sources`). Many scenes at
once: :mod:`eurosat_pipeline.regions.region`.

The scene is cut into windows of the model's patch size, the size of its training images (EuroSAT's
native 64 x 64 pixels), one every ``stride`` pixels. By default stride = patch: one class per tile,
so the map is a raster 64x coarser than the scene that lies exactly on it. A finer stride (a divisor
of the patch, down to an eighth of it) overlaps the windows and blends their probabilities, weighted
by a 2D Hann window, into map cells of ``stride`` pixels (:class:`CellBlender`). The scene is read
in bands of rows (full width), never whole, and the windows go to the model in batches through
:func:`eurosat_pipeline.inference.engines.load_predictor`, which applies the model's own resize and
normalisation.

**Bands.** The model's bands (stored with it) are found in the scene by name when the scene's
GeoTIFF band descriptions name bands (``B04``, ``B4``, ``red``: one canonical Sentinel-2 name each,
:mod:`eurosat_pipeline.core.bands`), in any order: a stack described B02, B03, B04 is read as
3, 2, 1 for an RGB model. Names that lack a model band are refused, naming both lists, never read
by position. Only a scene that names no band is read by position (as many bands as the training
data had, or exactly as many as the model takes; an RGB model also takes a 4-band 8-bit file whose
4th band is alpha), and the map's notes say so. Else ``bands`` gives them (1-based, in the model's
order, e.g. ``4,3,2`` for an RGB model on Sentinel-2's 13 bands). A scene with fewer bands than
the model takes is refused, naming the bands the model needs.

**Scaling.** A model trained on 8-bit RGB takes 8-bit values; ``scale`` maps the scene's values
to them:

- ``none``: used as is (values clipped to 0..255); the ``auto`` default for 8-bit files.
- ``s2``: the ``auto`` default for anything else. Sentinel-2 digital numbers (reflectance x 10,000)
  ``0..2750`` map linearly to ``1..255``, clipped. This is how the EuroSAT RGB JPEGs were made from
  the Level-1C bands B04, B03, B02 (the dataset's maintainers: "clipped the original data from
  range 0 to 2750 to the range 1 to 255, leaving 0 for nodata", i.e. ``gdal_translate -scale 0 2750
  1 255``; EuroSAT is not atmospherically corrected). ``offset`` is subtracted first: Sentinel-2
  products of processing baseline 04.00 and later (from January 2022) add 1000 to every DN.
- ``minmax``: per band, the 2nd..98th percentile (of valid pixels sampled from up to 64 tile
  windows spread over the scene) map to 0..255: for rasters of unknown radiometry.

A model trained on other data (16-bit reflectance, other bands) was normalised with its training
split's own per-band statistics, so the scene's values go in as they are (``offset`` subtracted),
and a scene whose bands are of another value type than the model's (8-bit for a 16-bit model) is refused;
``scale`` must stay ``auto``. For 16-bit models 0 is nodata unless ``nodata`` says otherwise.

**Nodata.** A tile with any pixel that the file's nodata value, internal mask or alpha band marks
as empty (or equal to ``nodata`` when given; 0, Sentinel-2's NODATA value, with ``s2`` scaling
when ``nodata`` is not given) is not classified; nor are the partial windows at the
right and bottom edges. A map cell that no classified window covers gets the map's nodata value, 255.

**Masks** (:mod:`eurosat_pipeline.scenes.masks`): a STAC item's ``scl`` asset, a scene's own mask
file or ``MapSettings.mask``'s file give each cell a masked share; cells less than half clear are
NODATA and counted as masked, and windows mostly masked are never classified. ``min_confidence``
leaves cells below it NODATA (uncertain, their confidence kept). :meth:`LandUseMap.status` says which.

**Outputs**, written to temporary names and renamed only when all are complete (the folder is
checked to be writable before any classification): ``MAP.tif`` (uint8 class indices, nodata 255,
a colour table with the t-SNE colours, the class names in a ``classes`` tag, the scene's CRS and
the scene's transform scaled by the stride, 64 by default), ``MAP.png`` (the scene beside the map, with a legend of
classes and areas), ``MAP.csv`` (cells, in a ``tiles`` column, and hectares per class) and, when asked,
``MAP.confidence.tif`` (the top-1 probability in percent, uint8, nodata 255), with a mask
``MAP.clear.tif`` (percent of each cell clear of it) and with ``probabilities`` ``MAP.probabilities.tif``
(a band per class, 0..255). Areas need a
projected CRS: for a geographic CRS (degrees) or none, the hectares are left empty and the result
says why (a note printed by the command), while the tile counts are still written.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.dataspec import RGB_ROLES, BandMatch, DataSpec
from eurosat_pipeline.core.errors import DatasetError, MapError
from eurosat_pipeline.core.files import atomic_path
from eurosat_pipeline.inference.engines import Predictor
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.maps.accuracy import ErrorMatrix, ReferenceSamples
from eurosat_pipeline.maps.outputs import MapOutputs, write_map_files
from eurosat_pipeline.maps.result import NODATA, TILE, LandUseMap, Stopwatch
from eurosat_pipeline.maps.stac import MapRecord
from eurosat_pipeline.scenes.masks import (
    DEFAULT_MASK,
    MaskSpec,
    clear_percent,
    masked_shares,
    mostly_masked,
    open_mask,
    windows_to_skip,
)
from eurosat_pipeline.scenes.sources import open_scene

SCALES = ("auto", "s2", "minmax", "none")
S2_DN_MAX = 2750  # EuroSAT's own stretch: DN 0..2750 -> 1..255
PERCENTILES = (2.0, 98.0)
SAMPLE_WINDOWS = 64
PREVIEW_LONGEST = 800  # pixels on the preview's longest side
READ_BYTES = 64 * 2**20  # at most this much of the scene is read at a time
EUROSAT_PIXEL_M = 10.0
# The finest stride is the patch / 8 (8 px for EuroSAT's 64): the model's work grows with
# (patch / stride)², 64 windows per patch area at 8 px, and each cell then already blends 64 windows'
# votes; finer strides (256x at 4 px) would smooth the same votes further at a cost no granule can pay.
FINEST_STRIDE_SHARE = 8
HANN_FLOOR = 0.01  # the smallest weight a cell gets from a window covering it (see hann_weights)

Scaler = Callable[[np.ndarray], np.ndarray]
Number = float | np.ndarray  # one value for every band, or one per band as ``bands x 1 x 1``
UINT8 = np.dtype(np.uint8)


class SceneSource(Protocol):
    """A scene that is not one raster file (one file per band: :mod:`eurosat_pipeline.scenes.sources`):
    opened once the model says which bands it needs, as an object that reads like a rasterio dataset."""

    name: str  # the preview's title

    def local_paths(self) -> tuple[Path, ...]:
        """The local files it reads (an output must not overwrite one)."""

    def open(self, data: DataSpec) -> contextlib.AbstractContextManager[object]:
        """The model's bands, in its order, as one dataset with ``read``, ``read_masks``, the grid, ...."""


@dataclass(frozen=True)
class MapSettings:
    """How a scene becomes a map, beside the model (``eurosat map``'s options; see the module's
    docstring): checked when made, picklable, sent with every region task."""

    #: 1-based scene bands for the model's bands, in its order; None: found by name (or position).
    bands: tuple[int, ...] | None = None
    scale: str = "auto"
    #: Subtracted from the scene's values; None: what the scene's catalogue says of each band (STAC), else 0.
    offset: float | None = None
    nodata: float | None = None
    confidence: bool = False
    scene_preview: bool = True
    #: Error-adjusted areas (maps/accuracy.py) from the test split's confusion matrix (--accuracy), or
    #: from the user's reference samples of the mapped area (--reference), which take precedence.
    accuracy: ErrorMatrix | None = None
    reference: ReferenceSamples | None = None
    #: Pixels between overlapping windows, the map cell's side; None: the model's patch size (no
    #: overlap, one window per cell). Checked against the model's patch when it is loaded (check_stride).
    stride: int | None = None
    #: The cloud mask (scenes/masks.py): a file, or the scene's own ``scl`` asset (the default, when it
    #: has one); None: no mask even where the scene has one.
    mask: MaskSpec | None = DEFAULT_MASK
    #: Cells whose top-1 probability is below this (0..1) are left NODATA, counted as uncertain.
    min_confidence: float | None = None
    #: Also write MAP.probabilities.tif: each class's blended probability, 0..255.
    probabilities: bool = False

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise MapError(f"unknown --scale {self.scale!r}; choose one of {', '.join(SCALES)}")
        for option, value in (("--offset", self.offset), ("--nodata", self.nodata)):
            if value is not None and not math.isfinite(value):
                raise MapError(f"{option} {value}: give a finite number")
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(self.bands))
            if not self.bands or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.bands):
                raise MapError(f"--bands {self.bands}: give 1-based band numbers like 4,3,2")
        if self.stride is not None and (isinstance(self.stride, bool) or not isinstance(self.stride, int)):
            raise MapError(f"--stride {self.stride!r}: give a whole number of pixels, e.g. 32")
        if self.stride is not None and self.stride < 1:
            raise MapError(f"--stride {self.stride}: give a positive number of pixels, e.g. 32")
        if self.min_confidence is not None and not 0 < self.min_confidence <= 1:
            raise MapError(
                f"--min-confidence {self.min_confidence}: give a probability above 0 and at most 1, e.g. 0.6"
            )


def make_map(
    scene: str | Path | SceneSource,
    out: str | Path,
    model: Predictor | ModelOptions,
    settings: MapSettings | None = None,
) -> tuple[LandUseMap, MapOutputs]:
    """Classify ``scene`` tile by tile and write the map, its preview and its area table atomically.

    ``scene`` is a raster file, or a :class:`SceneSource` (band files, a STAC item). ``model`` is an
    engine already loaded (a worker mapping many scenes loads it once; its views and batch size are
    used) or the options to load one with. Views > 1 average each tile's flips and quarter-turns
    (test-time augmentation, core/views.py): more accurate, that many times the work.
    """
    from rasterio.errors import RasterioError

    from eurosat_pipeline.inference.engines import load_predictor

    settings = settings or MapSettings()
    if isinstance(scene, (str, Path)):
        scene = Path(scene)
    mask_path = mask_of(scene, settings)
    outputs = MapOutputs.for_target(out, settings.confidence, mask_path is not None, settings.probabilities)
    inputs = [scene] if isinstance(scene, Path) else scene.local_paths()
    inputs = [*inputs, *([Path(mask_path)] if mask_path and "://" not in mask_path else [])]
    if any(p.resolve() == source.resolve() for p in outputs.all() for source in inputs):
        raise MapError(f"{out}: would overwrite the scene itself; choose another output name")
    with contextlib.ExitStack() as stack:
        src = None
        if isinstance(scene, Path):  # opened before the model is loaded: a wrong file fails at once
            src = stack.enter_context(open_scene(scene))
            check_band_numbers(src, settings.bands)
        temporaries = _reserve(outputs, stack)  # fails now, not after the long classification
        watch = Stopwatch()
        with watch("loading the model"):
            predictor = model if isinstance(model, Predictor) else load_predictor(model)
        data = predictor.data
        for matrix in (settings.accuracy, settings.reference):  # before the long classification
            if matrix is not None:
                matrix.check_classes(tuple(data.classes))
        if src is None:
            with watch("opening the bands"):
                src = _open_source(scene, data, stack)
        check_scene_size(src, tile_of(data))
        stride = check_stride(settings.stride, tile_of(data))  # before the long classification
        chosen, band_note = choose_bands(src, settings.bands, data)
        check_dtype(src, chosen, data)
        offset = offset_of(src, chosen, settings.offset)
        nodata = nodata_of(src, chosen, settings, data)
        scaler = make_scaler(src, chosen, settings.scale, data, offset, nodata)
        started = time.perf_counter()
        try:
            layers = CellLayers(_mask_shares(mask_path, settings.mask, src, stride, stack), settings.probabilities)
            result = classify_scene(
                src,
                chosen,
                scaler,
                predictor,
                nodata,
                PREVIEW_LONGEST if settings.scene_preview else None,
                stride,
                layers,
            )
        except RasterioError as err:  # a corrupt block or a vanished file, found half-way
            raise MapError(f"{_label(scene)}: reading failed ({err}); nothing was written") from err
        leave_uncertain(result, settings.min_confidence)
        result.seconds = time.perf_counter() - started
        result.notes += [band_note] if band_note else []
        result.engine = predictor.describe()
        result.watch.seconds = {**watch.seconds, **result.watch.seconds}
        record = MapRecord.of(scene, settings, predictor)
        write_map_files(result, outputs, temporaries, scene.name, (src.width, src.height), record)
    return result, outputs


def mask_of(scene: Path | SceneSource, settings: MapSettings) -> str | None:
    """The mask file the map uses: ``--mask``, else the scene's own ``scl`` asset, else none."""
    if settings.mask is None:
        return None
    return settings.mask.path or getattr(scene, "mask", None)


def _mask_shares(
    path: str | None, spec: MaskSpec | None, src: object, stride: int, stack: contextlib.ExitStack
) -> np.ndarray | None:
    """Each map cell's masked share (scenes/masks.py), or None without a mask."""
    if path is None or spec is None:
        return None
    mask = stack.enter_context(open_mask(path, src))
    shape = (-(-src.height // stride), -(-src.width // stride))
    return masked_shares(mask, spec.classes, src, stride, shape)


def leave_uncertain(result: LandUseMap, min_confidence: float | None) -> None:
    """Cells whose top-1 probability (the confidence raster's whole percent) is below
    ``min_confidence`` lose their class (NODATA) and keep their confidence: they count as uncertain."""
    if min_confidence is None:
        return
    uncertain = (result.classes != NODATA) & (result.confidence < 100 * min_confidence)
    result.classes[uncertain] = NODATA
    result.min_confidence = min_confidence


def _label(scene: Path | SceneSource) -> str:
    return str(scene) if isinstance(scene, Path) else scene.name


def _open_source(scene: SceneSource, data: DataSpec, stack: contextlib.ExitStack) -> object:
    """A band source opened for the model's bands; a file that breaks on opening is the scene's error."""
    from rasterio.errors import RasterioError

    try:
        return stack.enter_context(scene.open(data))
    except RasterioError as err:
        raise MapError(f"{scene.name}: opening the bands failed ({err})") from err


def _reserve(outputs: MapOutputs, stack: contextlib.ExitStack) -> dict[str, Path]:
    """Temporary siblings of every output, renamed onto them only if the whole block succeeds."""
    try:
        return {key: stack.enter_context(atomic_path(path)) for key, path in outputs.named().items()}
    except OSError as err:
        raise MapError(f"{outputs.tif}: cannot write there ({err.strerror or err})") from err


def check_scene_size(src: object, tile: int) -> None:
    if src.width < tile or src.height < tile:
        raise MapError(
            f"{src.name}: {src.width} x {src.height} pixels is smaller than one {tile} x {tile} tile "
            "(the model's patch size); nothing to classify"
        )


def tile_of(data: DataSpec) -> int:
    """The model's patch size: tiles the size of its training images (64 px for EuroSAT)."""
    return data.patch_size or TILE


def check_band_numbers(src: object, bands: tuple[int, ...] | None) -> None:
    """``--bands`` must name bands the scene has (checked before the model is loaded)."""
    wrong = [b for b in bands or () if not 1 <= b <= src.count]
    if wrong:
        raise MapError(f"{src.name}: band {wrong[0]} out of range: the file has bands 1..{src.count}")


def choose_bands(src: object, bands: tuple[int, ...] | None, data: DataSpec) -> tuple[tuple[int, ...], str | None]:
    """The 1-based scene bands that feed the model's bands, in its order (see the module's docstring),
    and a note for the user when only their position placed them (the scene names no bands)."""
    count, needed = src.count, data.in_chans
    shown = ", ".join(data.shown_bands())
    if bands is not None:
        if len(bands) != needed:
            raise MapError(
                f"--bands takes {needed} band number(s), the model's bands in order ({shown}); got {len(bands)}"
            )
        wrong = [b for b in bands if not 1 <= b <= count]
        if wrong:
            raise MapError(f"{src.name}: band {wrong[0]} out of range: the file has bands 1..{count}")
        return tuple(bands), None
    if count < needed:
        raise MapError(
            f"{src.name}: has {count} band(s); the model needs {needed}: {shown} "
            f"(of the training data's {data.data_bands})"
        )
    try:  # by name in any order; names that miss a model band are refused, never taken by place
        match = data.match_bands(src.descriptions, count)
    except DatasetError as err:
        raise MapError(f"{src.name}: {err}") from err
    if match is None and data.rgb_roles == RGB_ROLES and count == 4 and _fourth_is_alpha(src):
        match = BandMatch([0, 1, 2], by_position=True)
    if match is None:
        example = " (e.g. --bands 4,3,2 for Sentinel-2's 13 bands, B1..B12 with B8A last)" if needed == 3 else ""
        raise MapError(
            f"{src.name}: has {count} bands without names; say which are the model's {shown} with --bands{example}"
        )
    chosen = tuple(i + 1 for i in match.positions)
    if not match.by_position:
        return chosen, None
    note = (
        f"the scene names no bands: bands {', '.join(map(str, chosen))} were taken as the model's {shown} "
        "by position; name them (GeoTIFF band descriptions) or give --bands to be sure"
    )
    return chosen, note


def offset_of(src: object, bands: tuple[int, ...], given: float | None) -> Number:
    """What to subtract from the bands: ``given`` (``--offset``), else what the scene's catalogue says
    of each band (a STAC item's per-band ``raster:bands``, as ``bands x 1 x 1`` when they differ), else 0."""
    if given is not None:
        return given
    per_band = getattr(src, "offsets", ())
    if not per_band:
        return 0.0
    offsets = np.array([per_band[b - 1] for b in bands], dtype=np.float32)
    return float(offsets[0]) if (offsets == offsets[0]).all() else offsets[:, None, None]


def nodata_of(src: object, bands: tuple[int, ...], settings: MapSettings, data: DataSpec) -> Number | None:
    """The value marking empty pixels: ``--nodata``, else each band's from the scene's catalogue, else
    0 (Sentinel-2's NODATA digital number; files built from its JP2s rarely say so) for ``s2``
    scaling and non-RGB models; NaN (never equal) for a band without one."""
    if settings.nodata is not None:
        return settings.nodata
    default = 0 if not data.is_rgb8 or resolve_scale(src, bands, settings.scale) == "s2" else None
    per_band = getattr(src, "nodatas", ())
    said = [per_band[b - 1] for b in bands] if per_band else []
    if not any(n is not None for n in said):
        return default
    fallback = np.nan if default is None else default
    return np.array([fallback if n is None else n for n in said], dtype=np.float64)[:, None, None]


def check_dtype(src: object, bands: tuple[int, ...], data: DataSpec) -> None:
    """A non-RGB model takes the scene's values as they are: they must be of the type it was trained
    on (an 8-bit scene given to a 16-bit model would be mapped, silently wrong). RGB models scale."""
    if data.is_rgb8:
        return
    wrong = sorted({src.dtypes[b - 1] for b in bands} - {data.dtype})
    if wrong:
        raise MapError(
            f"{src.name}: its bands are {', '.join(wrong)} but the model was trained on {data.dtype} values; "
            f"give it a {data.dtype} scene of the same kind of data (it does not rescale)"
        )


def _fourth_is_alpha(src: object) -> bool:
    from rasterio.enums import ColorInterp

    return src.colorinterp[3] == ColorInterp.alpha


def resolve_scale(src: object, bands: tuple[int, ...], scale: str) -> str:
    """``auto`` made concrete: ``none`` for 8-bit bands, ``s2`` for anything else."""
    if scale not in SCALES:
        raise MapError(f"unknown --scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale == "auto":
        return "none" if all(src.dtypes[b - 1] == "uint8" for b in bands) else "s2"
    return scale


def make_scaler(
    src: object,
    bands: tuple[int, ...],
    scale: str,
    data: DataSpec,
    offset: Number = 0.0,
    nodata: Number | None = None,
) -> Scaler:
    """A function from the file's values (``bands x h x w``) to what the model takes, as documented above."""
    if not data.is_rgb8:
        return _raw_scaler(scale, offset, data)
    scale = resolve_scale(src, bands, scale)
    if scale == "none":
        return lambda x: np.clip(x, 0, 255).astype(np.uint8)
    if scale == "s2":
        return lambda x: _to_uint8(x, offset, 254 / S2_DN_MAX, 1)
    low, high = _percentiles(src, bands, nodata, tile_of(data) if data else TILE)
    return lambda x: _to_uint8(x, low, 255 / np.maximum(high - low, 1e-6), 0)


def _raw_scaler(scale: str, offset: Number, data: DataSpec) -> Scaler:
    """Values as they are (``offset`` subtracted), in the model's type: it normalises them itself."""
    if scale not in ("auto", "none"):
        raise MapError(
            f"--scale {scale}: this model was trained on {data.dtype} values normalised with its training "
            "split's own band statistics, so the scene's values go in as they are; leave --scale out "
            "(use --offset 1000 for Sentinel-2 products of processing baseline 04.00 or later)"
        )
    limit = np.iinfo(np.dtype(data.dtype)).max

    def scaler(values: np.ndarray) -> np.ndarray:
        shifted = values.astype(np.float32) - np.asarray(offset, dtype=np.float32) if np.any(offset) else values
        return np.clip(shifted, 0, limit).astype(data.dtype)

    return scaler


def _to_uint8(values: np.ndarray, subtract: Number, multiply: Number, floor: int) -> np.ndarray:
    """``round(floor + (values - subtract) * multiply)`` clipped to ``floor..255``, in one float32
    buffer (a scene's band of rows is tens of MB; no temporaries beyond it)."""
    scaled = values.astype(np.float32)
    scaled -= np.asarray(subtract, dtype=np.float32)
    scaled *= np.asarray(multiply, dtype=np.float32)
    scaled += floor
    np.rint(scaled, out=scaled)
    np.clip(scaled, floor, 255, out=scaled)
    return scaled.astype(np.uint8)


def _percentiles(
    src: object, bands: tuple[int, ...], nodata: Number | None, tile: int = TILE
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band 2nd and 98th percentiles of valid pixels in up to SAMPLE_WINDOWS tiles over the scene."""
    from rasterio.windows import Window

    rows, cols = src.height // tile, src.width // tile
    picks = np.linspace(0, rows * cols - 1, num=min(SAMPLE_WINDOWS, rows * cols)).astype(int)
    values = []
    for pick in picks:
        window = Window((pick % cols) * tile, (pick // cols) * tile, tile, tile)
        data, valid = _read(src, bands, window, nodata)
        values.append(data[:, valid])
    pixels = np.concatenate(values, axis=1).astype(np.float32)
    if pixels.shape[1] == 0:
        raise MapError(f"{src.name}: no valid pixels found for --scale minmax (is all of it nodata?)")
    low, high = np.percentile(pixels, PERCENTILES, axis=1)
    return low[:, None, None], high[:, None, None]


def _read(src: object, bands: tuple[int, ...], window: object, nodata: Number | None) -> tuple[np.ndarray, np.ndarray]:
    """The bands' values in ``window`` and where all of them are valid (mask, nodata, alpha, ``nodata``:
    one value, or one per band as ``bands x 1 x 1``)."""
    data = src.read(list(bands), window=window)
    valid = (src.read_masks(list(bands), window=window) > 0).all(axis=0)
    if nodata is not None:
        valid &= ~(data == nodata).any(axis=0)
    return data, valid


@dataclass(frozen=True)
class CellLayers:
    """What a map keeps per cell beyond its class and confidence: the mask's share of each cell
    (None: no mask), and whether each class's probability is kept (``--probabilities``)."""

    masked_share: np.ndarray | None = None
    probabilities: bool = False


NO_LAYERS = CellLayers()


def classify_scene(
    src: object,
    bands: tuple[int, ...],
    scaler: Scaler,
    predictor: Predictor,
    nodata: Number | None = None,
    preview_longest: int | None = PREVIEW_LONGEST,
    stride: int | None = None,
    layers: CellLayers = NO_LAYERS,
) -> LandUseMap:
    """Class and confidence per map cell (``stride`` pixels a side; default: the model's patch, one
    cell per window); cells that no whole valid window covers are NODATA.

    Windows of the patch size every ``stride`` pixels go to the model; their probabilities are blended
    into the cells they cover (:class:`CellBlender`). The scene is read once, in bands of rows
    aligned with the file's blocks (a block is then decoded once, not once per window row): the lines
    the next window row still needs are kept from the previous read (:class:`RowCarry`). Each window
    row is scaled in one vectorised step, and the windows fill batches of the engine's batch size.
    The preview is decimated from the same reads.
    """
    from affine import Affine

    data = predictor.data
    tile = tile_of(data)
    grid = WindowGrid(tile, check_stride(stride, tile), src.height, src.width)
    result = LandUseMap(
        np.full((grid.cell_rows, grid.cell_cols), NODATA, dtype=np.uint8),
        np.full((grid.cell_rows, grid.cell_cols), NODATA, dtype=np.uint8),
        src.crs,
        src.transform @ Affine.scale(grid.stride),  # cell (0, 0) starts at the scene's origin
        *_cell_area(src, grid, tuple(data.classes) == CLASSES),
        class_names=tuple(data.classes),
        tile=tile,
        stride=grid.stride,
    )
    if layers.probabilities:
        result.probabilities = np.zeros((grid.cell_rows, grid.cell_cols, len(data.classes)), dtype=np.uint8)
    skip = None
    if layers.masked_share is not None:
        skip = windows_to_skip(layers.masked_share, grid.per_window, grid.window_rows, grid.window_cols)
    watch = result.watch
    blender = CellBlender(result, grid, ring_rows(grid, predictor.batch_size))
    batches = TileBatches(
        predictor.classify, predictor.batch_size, blender.add, watch, len(bands), np.dtype(data.dtype), tile
    )
    preview_scaler = scaler if data.is_rgb8 else _preview_scaler(data)
    preview = Decimator(src, preview_scaler, preview_longest) if preview_longest else None
    carry = RowCarry(grid)
    for first_line, values, valid in _row_bands(src, bands, nodata, watch, grid):
        if preview is not None:
            with watch("preview"):
                preview.add(first_line, values)
        for window_row, lines, lines_valid in carry.windows(first_line, values, valid):
            _make_room(blender, batches, window_row)
            with watch("tiling and scaling"):
                picked, windows = _windows_of(lines, lines_valid, scaler, grid)
            if skip is not None and picked.size:  # mostly masked: not classified at all
                keep = ~skip[window_row, picked]
                picked, windows = picked[keep], windows[keep]
            if picked.size:
                batches.add(window_row, picked, windows)
    batches.flush()
    blender.finish(grid.covered_rows)
    if layers.masked_share is not None:
        _apply_mask(result, clear_percent(layers.masked_share))
    if preview is not None:
        with watch("preview"):
            preview.add_remainder(bands, grid.lines)
            result.preview = preview.picture()
    return result


def _apply_mask(result: LandUseMap, clear: np.ndarray) -> None:
    """Mostly masked cells lose any class a neighbouring window gave them: NODATA, no confidence."""
    masked = mostly_masked(clear)
    result.classes[masked] = NODATA
    result.confidence[masked] = NODATA
    if result.probabilities is not None:
        result.probabilities[masked] = 0
    result.clear = clear


def allowed_strides(tile: int) -> list[int]:
    """The strides a model with ``tile`` px patches takes, largest first: divisors of the patch (so
    windows fall on whole cells) down to a patch / :data:`FINEST_STRIDE_SHARE`."""
    return [d for d in range(tile, 0, -1) if tile % d == 0 and d * FINEST_STRIDE_SHARE >= tile]


def check_stride(stride: int | None, tile: int, option: str = "--stride") -> int:
    """``stride`` (None: the patch, one window per cell as without overlap) if the model takes it,
    else a one-line error naming the value and the strides allowed."""
    if stride is None:
        return tile
    allowed = allowed_strides(tile)
    if stride not in allowed:
        raise MapError(
            f"{option} {stride}: give a divisor of the model's {tile} px patch, at least {allowed[-1]} px: "
            + ", ".join(map(str, allowed))
        )
    return stride


@dataclass(frozen=True)
class WindowGrid:
    """Windows of ``tile`` pixels every ``stride`` pixels over a scene of ``height`` x ``width``
    pixels, and the map cells (``stride`` pixels a side) they cover. Only whole windows are classified."""

    tile: int
    stride: int
    height: int
    width: int

    @property
    def per_window(self) -> int:
        """Cells along a window's side."""
        return self.tile // self.stride

    @property
    def window_rows(self) -> int:
        return (self.height - self.tile) // self.stride + 1

    @property
    def window_cols(self) -> int:
        return (self.width - self.tile) // self.stride + 1

    @property
    def cell_rows(self) -> int:
        """The map's rows: the whole scene, partial cells included (they stay NODATA)."""
        return -(-self.height // self.stride)

    @property
    def cell_cols(self) -> int:
        return -(-self.width // self.stride)

    @property
    def covered_rows(self) -> int:
        """Cell rows that some whole window covers (those below are NODATA)."""
        return self.window_rows + self.per_window - 1

    @property
    def covered_cols(self) -> int:
        return self.window_cols + self.per_window - 1

    @property
    def lines(self) -> int:
        """The scene lines that any window reads (from the top)."""
        return (self.window_rows - 1) * self.stride + self.tile


def hann_weights(cells: int) -> np.ndarray:
    """``cells x cells`` float32 weights of a window's cells: a 2D Hann window sampled at the cells'
    centres, so a window's centre weighs more than its edges, where a class boundary cut by the window
    is most likely (torchgeo's and geoai's merges weigh the same way). Never below
    :data:`HANN_FLOOR`, so a cell at the scene's edge, covered by few windows and only by their edges,
    still gets a value. One cell (stride = patch): weight exactly 1, the window's own probabilities."""
    centres = (np.arange(cells) + 0.5) / cells
    side = np.maximum(np.sin(np.pi * centres) ** 2, HANN_FLOOR)
    return np.outer(side, side).astype(np.float32)


def ring_rows(grid: WindowGrid, batch_size: int) -> int:
    """Accumulator rows the blend keeps: the cell rows one window covers, plus the window rows a batch
    of windows waiting to be classified can span when every row is full. Independent of the scene's
    height; a batch that spans more rows (rows of nodata between) is classified early instead."""
    return grid.per_window + -(-batch_size // grid.window_cols)


class CellBlender:
    """Blends windows' class probabilities into the map cells they cover, weighted by
    :func:`hann_weights`, and writes each cell row into the map (class: argmax of the blend;
    confidence: its top probability in percent) once no window still to come touches it.

    Only a ring of :func:`ring_rows` cell rows is held (float32 sums), so memory grows with the
    scene's width, never with its height.
    """

    def __init__(self, result: LandUseMap, grid: WindowGrid, rows: int) -> None:
        self.result, self.grid, self.rows = result, grid, rows
        self.weights = hann_weights(grid.per_window)
        self.sums = np.zeros((rows, grid.covered_cols, len(result.class_names)), dtype=np.float32)
        self.totals = np.zeros((rows, grid.covered_cols), dtype=np.float32)
        self.next_row = 0  # the first cell row not yet written into the map

    def room_for(self, window_row: int) -> bool:
        """Whether the ring holds every cell row from the first unwritten one to ``window_row``'s last."""
        return window_row + self.grid.per_window - self.next_row <= self.rows

    def add(self, rows: np.ndarray, cols: np.ndarray, probabilities: np.ndarray) -> None:
        """Windows at window rows ``rows`` and columns ``cols`` with their ``N x classes`` probabilities."""
        probabilities = probabilities.astype(np.float32, copy=False)
        for (down, across), weight in np.ndenumerate(self.weights):
            # For one offset, distinct windows land on distinct cells: no index repeats in one update.
            slots, cells = (rows + down) % self.rows, cols + across
            self.sums[slots, cells] += weight * probabilities
            self.totals[slots, cells] += weight

    def finish(self, below: int) -> None:
        """Write the cell rows above ``below`` (no window to come touches them) and free their slots."""
        width = self.grid.covered_cols
        for row in range(self.next_row, min(below, self.grid.covered_rows)):
            slot = row % self.rows
            total = self.totals[slot]
            done = total > 0  # else every window over the cell had nodata: it stays NODATA
            if done.any():
                blended = self.sums[slot][done] / total[done, None]
                self.result.classes[row, :width][done] = blended.argmax(axis=1)
                self.result.confidence[row, :width][done] = np.rint(100 * blended.max(axis=1))
                if self.result.probabilities is not None:
                    self.result.probabilities[row, :width][done] = np.rint(255 * blended)
            self.sums[slot] = 0
            total[:] = 0
        self.next_row = max(self.next_row, below)


def _make_room(blender: CellBlender, batches: TileBatches, window_row: int) -> None:
    """Write the cell rows that neither the waiting windows nor those to come touch; when the ring
    still lacks room for ``window_row``, classify the waiting windows now."""
    blender.finish(batches.first_row(window_row))
    if not blender.room_for(window_row):
        batches.flush()
        blender.finish(window_row)


def _windows_of(
    lines: np.ndarray, valid: np.ndarray, scaler: Scaler, grid: WindowGrid
) -> tuple[np.ndarray, np.ndarray]:
    """The columns of the whole, valid windows of one window row (``bands x tile x width`` values)
    and those windows, scaled (``n x bands x tile x tile``)."""
    span = (grid.window_cols - 1) * grid.stride + grid.tile
    gaps = np.concatenate(([0], np.cumsum(~valid[:, :span].all(axis=0))))
    starts = np.arange(grid.window_cols) * grid.stride
    picked = np.flatnonzero(gaps[starts + grid.tile] == gaps[starts])
    if not picked.size:
        return picked, np.empty((0,), dtype=np.uint8)
    scaled = scaler(lines[:, :, :span])
    windows = np.lib.stride_tricks.sliding_window_view(scaled, grid.tile, axis=2)[:, :, :: grid.stride]
    return picked, windows.transpose(2, 0, 1, 3)[picked]


class RowCarry:
    """Window rows (``tile`` lines every ``stride`` lines) from block-aligned reads of the scene: the
    lines the next window row still needs (``tile - stride`` of them) are kept from the previous read,
    so no block is read or decoded twice."""

    def __init__(self, grid: WindowGrid) -> None:
        self.grid = grid
        self.next_row = 0
        self.kept: tuple[np.ndarray, np.ndarray] | None = None

    def windows(
        self, first_line: int, values: np.ndarray, valid: np.ndarray
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(window row, bands x tile x width values, tile x width valid)`` of every window row that
        the read (``values`` from scene line ``first_line``) completes."""
        if self.kept is not None and self.kept[1].shape[0]:
            values = np.concatenate([self.kept[0], values], axis=1)
            valid = np.concatenate([self.kept[1], valid], axis=0)
            first_line -= self.kept[1].shape[0]
        stride, tile = self.grid.stride, self.grid.tile
        end = first_line + valid.shape[0]
        while self.next_row < self.grid.window_rows and self.next_row * stride + tile <= end:
            top = self.next_row * stride - first_line
            yield self.next_row, values[:, top : top + tile], valid[top : top + tile]
            self.next_row += 1
        keep = self.next_row * stride - first_line
        self.kept = (values[:, keep:].copy(), valid[keep:].copy())  # a copy frees the read


class TileBatches:
    """Fills fixed-size batches of windows and hands each batch's probabilities to ``sink``."""

    def __init__(
        self,
        classify: Callable[[np.ndarray], np.ndarray],
        size: int,
        sink: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
        watch: Stopwatch,
        bands: int = 3,
        dtype: np.dtype = UINT8,
        tile: int = TILE,
    ) -> None:
        self.classify, self.size, self.sink, self.watch = classify, size, sink, watch
        self.buffer = np.empty((size, bands, tile, tile), dtype=dtype)
        self.where = np.empty((size, 2), dtype=np.int64)
        self.filled = 0

    def first_row(self, default: int) -> int:
        """The first window row of the windows waiting in the batch; ``default`` when none wait."""
        return int(self.where[0, 0]) if self.filled else default

    def add(self, row: int, cols: np.ndarray, tiles: np.ndarray) -> None:
        """``tiles`` (``n x bands x tile x tile``) of window row ``row``, at window columns ``cols``."""
        start = 0
        while start < len(tiles):
            take = min(self.size - self.filled, len(tiles) - start)
            self.buffer[self.filled : self.filled + take] = tiles[start : start + take]
            self.where[self.filled : self.filled + take, 0] = row
            self.where[self.filled : self.filled + take, 1] = cols[start : start + take]
            self.filled += take
            start += take
            if self.filled == self.size:
                self.flush()

    def flush(self) -> None:
        if not self.filled:
            return
        with self.watch("classifying"):
            probabilities = self.classify(self.buffer[: self.filled])
        self.sink(self.where[: self.filled, 0], self.where[: self.filled, 1], probabilities)
        self.filled = 0


def _row_bands(
    src: object, bands: tuple[int, ...], nodata: Number | None, watch: Stopwatch, grid: WindowGrid
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(first line, values, valid)`` for bands of lines over the full width, down to the last line
    any window reads: as many tile rows at a time as one row of the file's blocks holds (at most
    ~64 MB), so no block is decoded twice."""
    from rasterio.windows import Window

    step = _tile_rows_per_read(src, bands, grid.tile) * grid.tile
    for first in range(0, grid.lines, step):
        count = min(step, grid.lines - first)
        with watch("reading"):
            data, valid = _read(src, bands, Window(0, first, src.width, count), nodata)
        yield first, data, valid


def _tile_rows_per_read(src: object, bands: tuple[int, ...], tile: int = TILE) -> int:
    block_height = src.block_shapes[bands[0] - 1][0]
    fits = max(1, READ_BYTES // (tile * src.width * len(bands) * np.dtype(src.dtypes[bands[0] - 1]).itemsize))
    aligned = block_height // tile if block_height % tile == 0 else 1
    return max(1, min(aligned, fits))


class Decimator:
    """The scene as 8-bit RGB at most ``longest`` pixels on a side (nearest neighbour), gathered
    from the bands of rows already read, so the preview costs no second pass over the scene."""

    def __init__(self, src: object, scaler: Scaler, longest: int) -> None:
        self.src, self.scaler = src, scaler
        self.factor = max(1, -(-max(src.width, src.height) // longest))
        self.rows: list[np.ndarray] = []
        self.next_line = 0  # the next scene line the picture takes

    def add(self, first_line: int, data: np.ndarray) -> None:
        offset = self.next_line - first_line
        if offset >= data.shape[1]:
            return
        taken = data[:, offset :: self.factor, :: self.factor]
        self.rows.append(self.scaler(taken))
        self.next_line += taken.shape[1] * self.factor

    def add_remainder(self, bands: tuple[int, ...], start: int) -> None:
        """The lines from ``start`` down, below the last whole window row, read on their own (less than
        one window row)."""
        from rasterio.windows import Window

        if start < self.src.height:
            window = Window(0, start, self.src.width, self.src.height - start)
            self.add(start, self.src.read(list(bands), window=window))

    def picture(self) -> np.ndarray:
        return np.concatenate(self.rows, axis=1).transpose(1, 2, 0) if self.rows else np.zeros((1, 1, 3), np.uint8)


def _preview_scaler(data: DataSpec) -> Scaler:
    """The scene as 8-bit RGB for the picture, from a model's non-RGB input: its red, green and blue
    bands when it has all three (else its first band as grey), 16-bit values stretched as EuroSAT's
    JPEGs were (0..2750 -> 1..255)."""
    roles = data.rgb_roles
    picks = [roles.index(r) for r in RGB_ROLES] if all(r in roles for r in RGB_ROLES) else [0, 0, 0]
    stretch = 254 / S2_DN_MAX if data.dtype == "uint16" else 1.0

    def scaler(values: np.ndarray) -> np.ndarray:
        return _to_uint8(values[picks], 0.0, stretch, 1 if data.dtype == "uint16" else 0)

    return scaler


def _cell_area(src: object, grid: WindowGrid, eurosat: bool = True) -> tuple[float | None, list[str]]:
    """A map cell's area in m² (``stride`` x ``stride`` pixels; None without a projected CRS) and
    notes for the user."""
    tile = grid.tile
    crs = src.crs
    if crs is None:
        return None, ["the scene has no CRS: the map has pixel coordinates only and no areas"]
    if not crs.is_projected:
        return None, [
            f"the scene's CRS ({crs.to_string()}) is geographic (degrees): hectares are left empty; "
            "reproject the scene to a projected CRS (e.g. its UTM zone, with gdalwarp) for areas"
        ]
    metres = crs.linear_units_factor[1]
    pixel_m2 = abs(src.transform.determinant) * metres**2
    notes = []
    pixel_m = pixel_m2**0.5
    if eurosat and not 0.8 * EUROSAT_PIXEL_M <= pixel_m <= 1.25 * EUROSAT_PIXEL_M:
        notes.append(
            f"pixels are {pixel_m:.3g} m; EuroSAT's are 10 m, so a tile covers {pixel_m * tile:.0f} m "
            "instead of 640 m and the model may do worse"
        )
    return pixel_m2 * grid.stride**2, notes
