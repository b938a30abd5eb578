"""What a scene is, as Sentinel-2 is published: a multi-band raster, one file per band (a folder, a
SAFE product, or ``--band NAME=PATH``), or a STAC Item with one asset per band.

Every kind becomes a small picklable description (:class:`RasterScene` or :class:`BandFiles`),
so that one scene is one task for a worker process or a Dask worker; nothing is opened until the
worker maps it.

**Band names.** Sentinel-2's bands are ``B01`` .. ``B12`` and ``B8A``. A file is a band's when its
name holds the band as a word (``T32TPT_20230101T101421_B04_10m.jp2``, ``B04.tif``, ``red_B4.tif``);
a STAC asset is when its ``eo:bands`` (or STAC 1.1 ``bands``) entry names it, by ``name`` or by
``common_name`` (``red``, ``nir08``, ``swir16``, ...: Earth Search names its assets and bands
``red``, Planetary Computer ``B04``), else when the asset's key does. The model's bands are found
among them by name: an RGB model's red, green, blue are B04, B03, B02; a model trained on named
bands (EuroSAT's 13-band files: ``B01`` .. ``B8A``) takes those names.

**Resolutions.** Sentinel-2 bands come at 10, 20 and 60 m. The model's bands are read on the grid
of the finest of them, the coarser ones resampled on read by nearest neighbour (GDAL's warper,
through rasterio's ``WarpedVRT``): EuroSAT's 13-band images hold every band at 10 m (64 x 64 px per
patch), so a model trained on them expects the 20 and 60 m bands upsampled, and nearest neighbour
keeps every value a digital number the sensor measured (no new values that a model trained on
measured ones never saw). Files that do not cover the same ground in the same CRS (two granules,
two zones) are refused: they are not one scene.

**Where files are.** Local paths and ``file://`` URLs are read as they are (a STAC document's local
hrefs only inside its own folder, or a folder given with ``--stac-root``: a catalogue must not make
the command read any file on the disk); ``http(s)://`` through
GDAL's ``/vsicurl/`` (range requests: a COG is read block by block, never downloaded whole), and
``s3://`` through ``/vsis3/`` (AWS credentials from the environment; ``AWS_NO_SIGN_REQUEST=YES``
for public buckets), with GDAL's recommended settings for cloud-optimised GeoTIFFs.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse
from urllib.request import url2pathname

import numpy as np

# One table of Sentinel-2's names (core.bands); its file-name word pattern finds bands in file names.
from eurosat_pipeline.core.bands import band_word_in, sentinel2_band, without_band_words
from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.core.errors import MapError

_RESOLUTION_WORD = re.compile(r"(?:^|[_\-. ])(\d+)m(?=$|[_\-. ])", re.IGNORECASE)
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
# GDAL's recommendations for reading cloud-optimised GeoTIFFs over HTTP (gdal.org, "COG" and
# "/vsicurl/" docs): no directory listing per open, merged range requests, a cache of what was read.
REMOTE_GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.jp2",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "VSI_CACHE": "TRUE",
}
STAC_HINT = "pip install 'eurosat-pipeline[region]' (make install has it)"


def model_band_names(data: DataSpec) -> list[tuple[str, str | None]]:
    """Per model band, in its order: how it is shown, and its Sentinel-2 band (None when unknown;
    :meth:`DataSpec.sentinel2_bands`: by name, by place in EuroSAT's layout, or as red, green, blue)."""
    return list(zip(data.shown_bands(), data.sentinel2_bands(), strict=True))


def _matches(given: str, label: str, band: str | None) -> bool:
    """Whether a file named ``given`` (``--band`` name, or the band a file or asset holds) is the model's band."""
    return given.strip().casefold() == label.casefold() or (band is not None and sentinel2_band(given) == band)


def gdal_path(href: str) -> str:
    """What GDAL opens for an href: a local path, ``/vsicurl/`` for HTTP(S), ``/vsis3/`` for S3."""
    parsed = urlparse(href)
    if parsed.scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if parsed.scheme == "s3":
        return f"/vsis3/{parsed.netloc}{parsed.path}"
    if parsed.scheme == "file":
        return url2pathname(unquote(parsed.path))
    return href


def is_remote(path: str) -> bool:
    return path.startswith("/vsi")


def _absolute(path: str) -> str:
    return path if is_remote(path) else str(Path(path).absolute())


@dataclass(frozen=True)
class BandValues:
    """What a catalogue says of one band's values (STAC ``raster:bands``): a value is ``DN x scale +
    offset``, and ``nodata`` marks empty pixels of that band."""

    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None

    @property
    def dn_offset(self) -> float:
        """Digital numbers to subtract from this band (Earth Search's -0.1 at scale 0.0001: 1000)."""
        return round(-self.offset / self.scale, 6) + 0.0  # + 0.0: no -0.0 in records


@dataclass(frozen=True)
class RasterScene:
    """One raster holding the model's bands (``eurosat map scene.tif``), mapped as today."""

    name: str
    path: str
    offset: float | None = None  # digital numbers to subtract, where the catalogue says so
    mask: str | None = None  # this scene's own mask file (e.g. one date's SCL for `eurosat change`)

    def inputs(self) -> tuple[str, ...]:
        """What the scene is read from, as absolute paths: the same scene from another folder is the same."""
        return (_absolute(self.path),) + ((f"mask={_absolute(self.mask)}",) if self.mask else ())

    def target(self) -> Path:
        return Path(self.path)


@dataclass(frozen=True)
class BandFiles:
    """A scene published one file per band: ``(band name, GDAL path)`` pairs, in any order.

    ``shapes`` holds what the catalogue says each file's ``(rows, columns)`` are (STAC's
    ``proj:shape``); ``values`` what it says of each file's values (STAC's ``raster:bands``: Earth
    Search publishes processing baseline 04.00+ with its +1000 as offset -0.1 at scale 0.0001),
    applied band by band when the map is made.
    """

    name: str
    bands: tuple[tuple[str, str], ...]
    shapes: tuple[tuple[str, tuple[int, int]], ...] = ()
    values: tuple[tuple[str, BandValues], ...] = ()
    #: The STAC item the scene came from, as ``(id, ISO datetime)``: the map's STAC Item takes both.
    item: tuple[str, str] | None = None
    #: The item's scene classification layer (``scl`` asset, a GDAL path): the map's cloud mask.
    mask: str | None = None

    @property
    def offset(self) -> float | None:
        """The digital numbers to subtract from every band when the catalogue gives all one offset
        (0 without a catalogue); None when the bands' offsets differ (each band then takes its own)."""
        offsets = {values.dn_offset for _, values in self.values}
        if not offsets:
            return 0.0
        return offsets.pop() if len(offsets) == 1 else None

    def inputs(self) -> tuple[str, ...]:
        """Each band and where it is read from (local files as absolute paths), and the mask's file."""
        mask = (f"scl={_absolute(self.mask)}",) if self.mask else ()
        return tuple(f"{band}={_absolute(path)}" for band, path in self.bands) + mask

    def target(self) -> BandFiles:
        return self

    def local_paths(self) -> tuple[Path, ...]:
        paths = [path for _, path in self.bands] + ([self.mask] if self.mask else [])
        return tuple(Path(path) for path in paths if not is_remote(path))

    def pick(self, data: DataSpec) -> list[tuple[str, str]]:
        """``(label, path)`` of each model band, in the model's order; a clear error for a missing one."""
        picked, missing = [], []
        for label, band in model_band_names(data):
            found = [path for given, path in self.bands if _matches(given, label, band)]
            if not found:
                missing.append(f"{label} ({band})" if band and band.casefold() != label.casefold() else label)
            elif len(set(found)) > 1:
                raise MapError(f"{self.name}: several files hold the model's band {label}: {', '.join(found)}")
            else:
                picked.append((label, found[0]))
        if missing:
            have = ", ".join(given for given, _ in self.bands) or "none"
            raise MapError(
                f"{self.name}: no file for the model's band(s) {', '.join(missing)}; the scene has {have}. "
                "Name the files by Sentinel-2 band (B04.tif, ..._B04_10m.jp2) or give --band NAME=PATH"
            )
        return picked

    @contextlib.contextmanager
    def open(self, data: DataSpec) -> Iterator[BandStack]:
        """The model's bands, opened, on the finest band's grid (see the module's docstring)."""
        import rasterio

        picked = self.pick(data)
        remote = any(is_remote(path) for _, path in picked)
        with contextlib.ExitStack() as stack:
            if remote:
                stack.enter_context(rasterio.Env(**REMOTE_GDAL_OPTIONS))
            datasets = [stack.enter_context(_open_band(path)) for _, path in picked]
            self._check_shapes(picked, datasets)
            # Each band by its Sentinel-2 name where it has one: the map finds the model's bands by name.
            names = [band or label for label, band in model_band_names(data)]
            values = self._values_of(picked)
            yield BandStack(self.name, _on_one_grid(self.name, datasets, stack), names, values)

    def _values_of(self, picked: list[tuple[str, str]]) -> list[BandValues]:
        """The catalogue's values of the picked bands; bands on different scales are refused: their
        digital numbers do not mean the same reflectance, and the model takes them as one."""
        known = dict(self.values)
        values = [known.get(path, BandValues()) for _, path in picked]
        if len({v.scale for v in values}) > 1:
            held = {path: band for band, path in self.bands}
            said = ", ".join(
                f"{label}{'' if held[path] == label else f' ({held[path]})'}: scale {v.scale:g}"
                for (label, path), v in zip(picked, values, strict=True)
            )
            raise MapError(
                f"{self.name}: the catalogue's raster:bands put the model's bands on different scales ({said}); "
                "their digital numbers cannot be read as one, so the scene is refused: fix the item's "
                "raster:bands or map the bands from files of one scale"
            )
        return values

    def _check_shapes(self, picked: list[tuple[str, str]], datasets: list[object]) -> None:
        expected = dict(self.shapes)
        for (_, path), dataset in zip(picked, datasets, strict=True):
            shape = expected.get(path)
            if shape is not None and tuple(shape) != (dataset.height, dataset.width):
                raise MapError(
                    f"{self.name}: {path} is {dataset.height} x {dataset.width} pixels but the catalogue's "
                    f"proj:shape says {shape[0]} x {shape[1]}: the item and its asset disagree"
                )


@contextlib.contextmanager
def _open_band(path: str) -> Iterator[object]:
    """One band's file: a single-band raster (a multi-band one would leave which band unsaid)."""
    if is_remote(path):
        import rasterio
        from rasterio.errors import RasterioIOError

        try:
            dataset = rasterio.open(path)
        except RasterioIOError as err:
            raise MapError(f"{path}: cannot be read ({err})") from err
        context: contextlib.AbstractContextManager[object] = dataset
    else:
        context = open_scene(Path(path))
    with context as dataset:
        if dataset.count != 1:
            raise MapError(
                f"{path}: has {dataset.count} bands; a band's file holds one (give a multi-band file as a scene)"
            )
        yield dataset


def _on_one_grid(name: str, datasets: list[object], stack: contextlib.ExitStack) -> list[object]:
    """The datasets on the finest one's grid: coarser bands resampled by nearest neighbour on read."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    finest = min(datasets, key=lambda d: abs(d.transform.a * d.transform.e))
    for dataset in datasets:
        if dataset.crs != finest.crs:
            raise MapError(
                f"{name}: {dataset.name} is in {dataset.crs} and {finest.name} in {finest.crs}: not one scene"
            )
        slack = max(abs(dataset.transform.a), abs(dataset.transform.e))  # one pixel of the coarser file
        if not np.allclose(dataset.bounds, finest.bounds, atol=slack):
            raise MapError(
                f"{name}: {dataset.name} covers {tuple(dataset.bounds)} and {finest.name} {tuple(finest.bounds)}: "
                "band files of one scene cover the same ground"
            )
    return [
        dataset
        if dataset.transform == finest.transform and dataset.shape == finest.shape
        else stack.enter_context(
            WarpedVRT(
                dataset,
                crs=finest.crs,
                transform=finest.transform,
                width=finest.width,
                height=finest.height,
                resampling=Resampling.nearest,
            )
        )
        for dataset in datasets
    ]


class BandStack:
    """Single-band rasters on one grid, read as one multi-band raster: the part of a rasterio dataset
    that :func:`eurosat_pipeline.maps.mapping.make_map` uses (reads of bands in a window, their masks,
    the grid, the types and block shapes), so that the map is made exactly as from a stacked file."""

    def __init__(
        self,
        name: str,
        datasets: list[object],
        descriptions: Sequence[str],
        values: Sequence[BandValues] = (),
    ) -> None:
        from rasterio.enums import ColorInterp

        grid = datasets[0]
        self.name = name
        self.bands = datasets
        self.count = len(datasets)
        self.width, self.height = grid.width, grid.height
        self.crs, self.transform = grid.crs, grid.transform
        self.descriptions = tuple(descriptions)
        self.dtypes = tuple(d.dtypes[0] for d in datasets)
        self.block_shapes = [d.block_shapes[0] for d in datasets]
        self.colorinterp = [ColorInterp.gray] * self.count
        # Per band, what the catalogue says (empty without one): subtracted and masked band by band.
        self.offsets = tuple(v.dn_offset for v in values)
        self.nodatas = tuple(v.nodata for v in values)

    def read(self, indexes: Sequence[int], window: object = None) -> np.ndarray:
        """``len(indexes) x rows x columns`` of the (1-based) bands, in a window of the grid."""
        kind = np.result_type(*[self.dtypes[i - 1] for i in indexes])
        out = self._empty(len(indexes), window, kind)
        for place, index in enumerate(indexes):
            band = self.bands[index - 1]
            if np.dtype(band.dtypes[0]) == kind:  # straight into the stack: no second copy
                band.read(1, window=window, out=out[place])
            else:
                out[place] = band.read(1, window=window)
        return out

    def read_masks(self, indexes: Sequence[int], window: object = None) -> np.ndarray:
        """The bands' valid-data masks (0 empty, 255 valid), as rasterio gives them."""
        out = self._empty(len(indexes), window, np.dtype(np.uint8))
        for place, index in enumerate(indexes):
            self.bands[index - 1].read_masks(1, window=window, out=out[place])
        return out

    def _empty(self, count: int, window: object, kind: np.dtype) -> np.ndarray:
        rows, cols = (self.height, self.width) if window is None else (int(window.height), int(window.width))
        return np.empty((count, rows, cols), dtype=kind)


@contextlib.contextmanager
def open_scene(path: Path) -> Iterator[object]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    if not path.is_file():
        raise MapError(f"{path}: not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(path)
        except RasterioIOError as err:
            raise MapError(f"{path}: not a raster GDAL can read ({err})") from err
    with src:
        yield src


# ---------------------------------------------------------------------------------------------
# Finding scenes: files, folders, SAFE products, STAC items


def find_scenes(
    inputs: Sequence[str], band_files: Mapping[str, str] | None = None, stac_roots: Sequence[str | Path] = ()
) -> list[RasterScene | BandFiles]:
    """The scenes named on the command line, in order (see the module's docstring). ``stac_roots``:
    folders besides a STAC document's own that its local hrefs may point into (``--stac-root``)."""
    if band_files:
        if inputs:
            raise MapError(
                "--band NAME=PATH gives one scene's files; leave out the scene arguments "
                f"({', '.join(inputs)}) or the --band options"
            )
        return [band_scene(band_files)]
    scenes: list[RasterScene | BandFiles] = []
    for given in inputs:
        scenes += _scenes_of(given, tuple(stac_roots))
    if not scenes:
        raise MapError("no scenes: give a raster, a folder or SAFE product of band files, a STAC item, or --band")
    return scenes


def band_scene(band_files: Mapping[str, str]) -> BandFiles:
    """``--band B04=red.tif --band B03=...``: one scene, named after what the files' names share."""
    paths = list(band_files.values())
    for path in paths:
        if not is_remote(gdal_path(path)) and not Path(gdal_path(path)).is_file():
            raise MapError(f"{path}: not found")
    # T32TPT_20230101T101421_B04_10m.jp2 and its sister files: T32TPT_20230101T101421; else the folder's name.
    rests = {_RESOLUTION_WORD.sub("", without_band_words(Path(p).stem)).strip("_-. ") for p in paths}
    shared = rests.pop() if len(rests) == 1 else ""
    name = shared or Path(gdal_path(paths[0])).resolve().parent.name or "bands"
    return BandFiles(scene_name(name), tuple((band, gdal_path(path)) for band, path in band_files.items()))


def _scenes_of(given: str, stac_roots: tuple[str | Path, ...] = ()) -> list[RasterScene | BandFiles]:
    if urlparse(given).scheme in ("http", "https") or given.lower().endswith(".json"):
        return stac_scenes(given, stac_roots)
    path = Path(given)
    if path.is_dir():
        return _folder_scenes(path, stac_roots)
    if path.is_file():
        return [RasterScene(scene_name(path.stem), str(path))]
    raise MapError(f"{given}: not found")


def _folder_scenes(folder: Path, stac_roots: tuple[str | Path, ...] = ()) -> list[RasterScene | BandFiles]:
    """A SAFE product (one scene per granule), a folder of SAFE products, a folder of STAC items,
    or a folder of one scene's band files."""
    if folder.suffix.upper() == ".SAFE" or (folder / "GRANULE").is_dir():
        return safe_scenes(folder)
    products = sorted(p for p in folder.iterdir() if p.is_dir() and p.suffix.upper() == ".SAFE")
    if products:
        return [scene for product in products for scene in safe_scenes(product)]
    items = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".json")
    if items:
        return [scene for item in items for scene in stac_scenes(str(item), stac_roots)]
    files = band_files_in(sorted(p for p in folder.iterdir() if p.is_file()))
    if not files:
        raise MapError(
            f"{folder}: no Sentinel-2 band files (names with B02, B03, B04, ... B8A and {', '.join(RASTER_SUFFIXES)}), "
            "SAFE products or STAC items (.json) in it"
        )
    return [BandFiles(scene_name(folder.stem), tuple((band, str(path)) for band, path in files.items()))]


def safe_scenes(product: Path) -> list[BandFiles]:
    """One scene per granule of a SAFE product: the band images under ``GRANULE/*/IMG_DATA`` (not
    QI_DATA, whose masks carry band names too), each band at its finest resolution."""
    granules = sorted(g for g in (product / "GRANULE").glob("*") if (g / "IMG_DATA").is_dir())
    if not granules:
        raise MapError(f"{product}: no GRANULE/*/IMG_DATA folder: not a Sentinel-2 SAFE product")
    name = product.name.removesuffix(".SAFE").removesuffix(".safe")
    scenes = []
    for granule in granules:
        files = band_files_in(sorted(p for p in (granule / "IMG_DATA").rglob("*") if p.is_file()))
        if not files:
            raise MapError(f"{granule / 'IMG_DATA'}: no band images (..._B04.jp2 or ..._B04_10m.jp2)")
        label = name if len(granules) == 1 else f"{name}_{granule.name}"
        scenes.append(BandFiles(scene_name(label), tuple((band, str(path)) for band, path in files.items())))
    return scenes


def band_files_in(paths: Sequence[Path]) -> dict[str, Path]:
    """Sentinel-2 band -> its file, among ``paths`` (rasters whose names hold one band); where a band
    comes at several resolutions (L2A's R10m, R20m, R60m), the finest."""
    by_band: dict[str, list[tuple[float, Path]]] = {}
    for path in paths:
        band = _file_band(path)
        if band is not None:
            resolution = _RESOLUTION_WORD.search(path.stem)
            by_band.setdefault(band, []).append((float(resolution.group(1)) if resolution else 0.0, path))
    chosen = {}
    for band, candidates in sorted(by_band.items()):
        candidates.sort(key=lambda c: c[0])
        if len(candidates) > 1 and candidates[0][0] == candidates[1][0]:
            raise MapError(f"two files hold band {band}: {candidates[0][1]} and {candidates[1][1]}; keep one")
        chosen[band] = candidates[0][1]
    return chosen


def _file_band(path: Path) -> str | None:
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return None
    return band_word_in(path.stem)


def scene_name(text: str) -> str:
    """A scene's name as its outputs' file names: letters, digits, ``.``, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "scene"


# ---------------------------------------------------------------------------------------------
# STAC


def stac_scenes(href: str, stac_roots: Sequence[str | Path] = ()) -> list[BandFiles]:
    """The scenes of a STAC Item or ItemCollection (a search's result), read with pystac; local hrefs
    must lie in the document's folder or in ``stac_roots`` (:func:`check_href`)."""
    try:
        import pystac
    except ImportError as err:
        raise MapError(f"{href}: reading STAC needs pystac: {STAC_HINT}") from err
    kind = _stac_type(href)
    try:
        if kind == "Feature":
            items = [pystac.Item.from_file(href)]
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_file(href))
        else:
            raise MapError(
                f"{href}: a STAC {kind or 'document'}, not an Item or ItemCollection; give its items "
                "(a search's result saved as JSON, or the item files)"
            )
    except (pystac.STACError, KeyError, ValueError, TypeError) as err:
        raise MapError(f"{href}: not a STAC Item or ItemCollection pystac can read ({err})") from err
    if not items:
        raise MapError(f"{href}: the ItemCollection has no items")
    return [item_scene(item, href, stac_roots) for item in items]


def _stac_type(href: str) -> str | None:
    """The document's ``type`` (Feature, FeatureCollection, Catalog, Collection)."""
    if urlparse(href).scheme in ("http", "https"):
        import pystac

        try:
            return pystac.StacIO.default().read_json(href).get("type")
        except Exception as err:  # urllib's and json's many errors: the href is the problem
            raise MapError(f"{href}: cannot read a STAC document there ({err})") from err
    path = Path(href)
    if not path.is_file():
        raise MapError(f"{href}: not found")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MapError(f"{href}: not JSON ({err})") from err
    return document.get("type") if isinstance(document, dict) else None


def item_scene(item: object, document: str | None = None, stac_roots: Sequence[str | Path] = ()) -> BandFiles:
    """A STAC Item's band assets (one Sentinel-2 band each), their shapes and the DN offset."""
    assets: dict[str, list[tuple[tuple[int, float, str], str, object]]] = {}
    for key, asset in item.assets.items():
        band = _asset_band(key, asset)
        if band is not None:
            assets.setdefault(band, []).append((_preference(asset), _href(asset, document), asset))
    if not assets:
        raise MapError(
            f"STAC item {item.id}: no asset names a Sentinel-2 band (eo:bands name or common_name, such as B04 or red)"
        )
    bands, shapes, values = [], [], []
    for band, candidates in sorted(assets.items()):
        _, path, asset = min(candidates, key=lambda c: c[0])
        check_href(asset, path, document, stac_roots, f"STAC item {item.id}")
        bands.append((band, path))
        shape = asset.extra_fields.get("proj:shape")
        if shape is not None:
            shapes.append((path, (int(shape[0]), int(shape[1]))))
        values.append((path, band_values(asset, f"STAC item {item.id}: asset {band}")))
    mask = _scl_asset(item, document, stac_roots)
    return BandFiles(scene_name(item.id), tuple(bands), tuple(shapes), tuple(values), _source_item(item), mask)


def _scl_asset(item: object, document: str | None, stac_roots: Sequence[str | Path]) -> str | None:
    """The GDAL path of the item's scene classification layer (asset ``scl``, Earth Search; ``SCL``,
    Planetary Computer), checked as the band assets are; None when it has none."""
    for key, asset in item.assets.items():
        if key.casefold() == "scl":
            path = _href(asset, document)
            check_href(asset, path, document, stac_roots, f"STAC item {item.id}")
            return path
    return None


def _source_item(item: object) -> tuple[str, str] | None:
    """The item's id and datetime (its start for an item that gives a range only)."""
    when = item.datetime or item.common_metadata.start_datetime
    return (item.id, when.isoformat()) if when is not None else None


def _asset_band(key: str, asset: object) -> str | None:
    """The one Sentinel-2 band an asset holds: by its ``eo:bands`` (``name``, then ``common_name``),
    STAC 1.1 ``bands``, else its key (``B04``, ``B04_10m``); None for multi-band or other assets."""
    from pystac.extensions.eo import EOExtension

    named = []
    if "eo:bands" in asset.extra_fields:
        named = [(b.name, b.common_name) for b in EOExtension.ext(asset, add_if_missing=True).bands or []]
    elif isinstance(asset.extra_fields.get("bands"), list):
        named = [(b.get("name"), b.get("eo:common_name")) for b in asset.extra_fields["bands"] if isinstance(b, dict)]
    if len(named) > 1:
        return None  # e.g. the true-colour "visual" asset
    if named:
        name, common = named[0]
        return sentinel2_band(name) or sentinel2_band(common)
    return sentinel2_band(key)


def _preference(asset: object) -> tuple[int, float, str]:
    """Which of several assets of one band to read: GeoTIFFs (COGs) before JPEG 2000, the finest first."""
    media = (asset.media_type or "").lower()
    resolution = asset.extra_fields.get("gsd")
    if resolution is None:
        transform = asset.extra_fields.get("proj:transform")
        resolution = abs(transform[0]) if transform else 0.0
    return (0 if "tiff" in media else 1, float(resolution), asset.href)


def _href(asset: object, document: str | None) -> str:
    """A GDAL path for the asset: a relative href is relative to the item's own location, else to the
    document it came in (an ItemCollection's file or URL: its items have no location of their own)."""
    return gdal_path(_absolute_href(asset, document))


def _absolute_href(asset: object, document: str | None) -> str:
    href = asset.get_absolute_href() or asset.href
    if urlparse(href).scheme == "" and not Path(href).is_absolute() and document is not None:
        if urlparse(document).scheme in ("http", "https"):
            return urljoin(document, href)
        return str(Path(document).resolve().parent / href)
    return href


def check_href(asset: object, path: str, document: str | None, roots: Sequence[str | Path], where: str) -> None:
    """A catalogue may name remote files (http, https, s3) anywhere, but local ones only inside the
    folder of the document that names them, or a ``--stac-root``: else an item could make the
    command read any file on this disk (``/etc/...``, ``../../``)."""
    if urlparse(_absolute_href(asset, document)).scheme in ("http", "https", "s3"):
        return
    folders = [Path(root) for root in roots]
    if document is not None and urlparse(document).scheme not in ("http", "https"):
        folders.append(Path(document).parent)
    target = Path(path).resolve()  # symbolic links and .. followed: where the file really is
    if any(target.is_relative_to(folder.resolve()) for folder in folders):
        return
    allowed = ", ".join(str(folder) for folder in folders) or "none (the document is remote)"
    raise MapError(
        f"{where}: asset href {asset.href} is outside the folders local hrefs may point into ({allowed}); "
        "move the files beside the catalogue, or allow their folder with --stac-root DIR"
    )


def band_values(asset: object, where: str) -> BandValues:
    """What ``raster:bands`` (or STAC 1.1 ``bands``) says of a one-band asset's values: scale (1 when
    unsaid), offset (0) and nodata; entries that disagree, or a scale of 0, are refused."""
    entries = asset.extra_fields.get("raster:bands")
    if not isinstance(entries, list):
        entries = asset.extra_fields.get("bands") if isinstance(asset.extra_fields.get("bands"), list) else []
    found = {_entry_values(entry, where) for entry in entries if isinstance(entry, dict)}
    if len(found) > 1:
        said = "; ".join(f"scale {v.scale:g}, offset {v.offset:g}, nodata {v.nodata}" for v in found)
        raise MapError(f"{where}: its raster:bands entries disagree ({said}); give the band one entry")
    return found.pop() if found else BandValues()


def _entry_values(entry: Mapping[str, object], where: str) -> BandValues:
    """One ``raster:bands`` entry (STAC 1.1: ``raster:scale``, ``raster:offset``) as numbers."""
    scale = entry.get("scale", entry.get("raster:scale"))
    offset = entry.get("offset", entry.get("raster:offset"))
    nodata = entry.get("nodata")
    try:
        values = BandValues(
            1.0 if scale is None else float(scale),
            0.0 if offset is None else float(offset),
            None if nodata is None else float(nodata),
        )
    except (TypeError, ValueError) as err:
        raise MapError(
            f"{where}: raster:bands scale {scale!r}, offset {offset!r}, nodata {nodata!r}: not numbers"
        ) from err
    if values.scale == 0 or not np.isfinite([values.scale, values.offset]).all():
        raise MapError(f"{where}: raster:bands scale {scale!r}, offset {offset!r}: give a finite, non-zero scale")
    return values
