"""The files of a land-use map: the cloud-optimised GeoTIFF of classes (with its colour table and
class names), the optional confidence GeoTIFF, the area table (CSV, with error-adjusted areas when
an error matrix is given), the preview (PNG) and the STAC Item (JSON), each written to a temporary
name and renamed only when all are complete; and the summary the command prints.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eurosat_pipeline.core.classes import class_colours_of
from eurosat_pipeline.core.errors import MapError
from eurosat_pipeline.core.files import csv_text, writing
from eurosat_pipeline.maps.accuracy import PROXY_NOTE, adjusted_rows
from eurosat_pipeline.maps.result import NODATA, CellStatus, LandUseMap
from eurosat_pipeline.maps.stac import MapRecord, map_item, write_item

#: Space a map write may need beyond its pixels (TIFF headers, tile index, the COG's temporary copy).
WRITE_HEADROOM = 2**20
AREA_COLUMNS = ("class", "index", "tiles", "hectares", "percent", "adjusted_hectares", "ci95_hectares")  # MAP.csv
# Cloud-optimised GeoTIFF (GDAL's COG driver): 256 px internal tiles, overviews halving until one
# tile holds the map; class maps' overviews take each block's most common class, never a mean of indices.
COG_BLOCK = 256
# The preview's colours for cells without a class, beside nodata's white.
STATUS_COLOURS = {CellStatus.MASKED: "#8c8c8c", CellStatus.UNCERTAIN: "#d4d4d4"}
CONFIDENCE_MEANING = "top-1 probability in percent"
CLEAR_MEANING = "percent of the cell's pixels clear of the mask"


@dataclass(frozen=True)
class MapOutputs:
    tif: Path
    png: Path
    csv: Path
    confidence: Path | None
    item: Path  # MAP.json: the STAC Item
    clear: Path | None = None  # MAP.clear.tif: percent of each cell clear of the mask
    probabilities: Path | None = None  # MAP.probabilities.tif: a band per class, 0..255

    @classmethod
    def for_target(
        cls, out: str | Path, confidence: bool = False, clear: bool = False, probabilities: bool = False
    ) -> MapOutputs:
        out = Path(out)
        if out.suffix.lower() not in (".tif", ".tiff"):
            raise MapError(f"{out}: the map is a GeoTIFF; give an output name ending in .tif")
        if out.is_dir():
            raise MapError(f"{out}: is a folder; give the map's file name, e.g. {out / 'map.tif'}")
        return cls(
            out,
            out.with_suffix(".png"),
            out.with_suffix(".csv"),
            sidecar(out, "confidence") if confidence else None,
            out.with_suffix(".json"),
            sidecar(out, "clear") if clear else None,
            sidecar(out, "probabilities") if probabilities else None,
        )

    def named(self) -> dict[str, Path]:
        """Each output by its key (the keys of :func:`write_map_files`'s temporaries)."""
        named = {
            "tif": self.tif,
            "png": self.png,
            "csv": self.csv,
            "confidence": self.confidence,
            "clear": self.clear,
            "probabilities": self.probabilities,
            "item": self.item,
        }
        return {key: path for key, path in named.items() if path is not None}

    def all(self) -> list[Path]:
        return list(self.named().values())


def sidecar(tif: Path, kind: str) -> Path:
    """``MAP.<kind>.tif`` beside ``MAP.tif`` (confidence, clear, probabilities)."""
    return tif.with_name(f"{tif.stem}.{kind}.tif")


def read_map(tif: str | Path) -> LandUseMap:
    """A map as ``eurosat map`` wrote it, read back from ``MAP.tif`` and its ``confidence`` and
    ``clear`` sidecars when they exist (without the confidence sidecar, no cell reads as uncertain):
    its classes, grid, class names and cell status (:meth:`LandUseMap.status`) as when it was made."""
    import rasterio
    from rasterio.errors import RasterioIOError

    tif = Path(tif)
    try:
        with rasterio.open(tif) as src:
            classes, crs, transform, tags = src.read(1), src.crs, src.transform, src.tags()
        layers = {}
        for kind in ("confidence", "clear"):
            if sidecar(tif, kind).is_file():
                with rasterio.open(sidecar(tif, kind)) as src:
                    layers[kind] = src.read(1)
    except RasterioIOError as err:
        raise MapError(f"{tif}: cannot be read as a map ({err})") from err
    if "classes" not in tags:
        raise MapError(f"{tif}: not a map made by eurosat map (no 'classes' tag)")
    for kind, layer in layers.items():
        if layer.shape != classes.shape:
            raise MapError(f"{sidecar(tif, kind)}: {layer.shape} cells, but the map has {classes.shape}")
    names = tuple(tags["classes"].split(","))
    cell_m2 = abs(transform.determinant) * crs.linear_units_factor[1] ** 2 if crs and crs.is_projected else None
    confidence = layers.get("confidence", np.where(classes == NODATA, NODATA, 100).astype(np.uint8))
    return LandUseMap(classes, confidence, crs, transform, cell_m2, class_names=names, clear=layers.get("clear"))


def write_map_files(
    result: LandUseMap,
    outputs: MapOutputs,
    temporaries: dict[str, Path],
    title: str,
    scene_size: tuple[int, int],
    record: MapRecord | None = None,
) -> None:
    """Every output of ``result`` to its temporary (``temporaries``, keyed as :meth:`MapOutputs.named`);
    each writer names its own output when the storage refuses it (a temporary is what it writes).
    ``record`` (the model's hash, the settings, the source item, an error matrix) goes into the STAC
    Item and, with an error matrix, the error-adjusted areas (kept in ``result.adjusted``)."""
    import rasterio

    record = record or MapRecord()
    add_adjusted_areas(result, record)
    with result.watch("writing"), rasterio.Env(GDAL_PAM_ENABLED="NO"):  # no .aux.xml sidecars
        names = result.class_names
        with writing(outputs.tif):
            write_geotiff(temporaries["tif"], result.classes, result.crs, result.transform, names, colours=True)
        if outputs.confidence is not None:
            with writing(outputs.confidence):
                write_geotiff(temporaries["confidence"], result.confidence, result.crs, result.transform, names)
        if outputs.clear is not None and result.clear is not None:
            with writing(outputs.clear):
                write_geotiff(
                    temporaries["clear"], result.clear, result.crs, result.transform, names, meaning=CLEAR_MEANING
                )
        if outputs.probabilities is not None and result.probabilities is not None:
            with writing(outputs.probabilities):
                write_probabilities(temporaries["probabilities"], result)
        with writing(outputs.csv):
            write_areas_csv(temporaries["csv"], result)
        with writing(outputs.item):
            write_item(temporaries["item"], map_item(result, outputs.named(), record, dt.datetime.now(dt.timezone.utc)))
    with result.watch("preview"), writing(outputs.png):
        write_preview(temporaries["png"], result, title, result.preview, scene_size)


def add_adjusted_areas(result: LandUseMap, record: MapRecord) -> None:
    """Olofsson's error-adjusted areas into ``result.adjusted`` (and their notes), from the reference
    samples when given, else the test split's confusion matrix; nothing without either."""
    matrix = record.accuracy
    if record.reference is not None:
        matrix, outside = record.reference.matrix(result)
        if outside:
            result.notes.append(f"{outside} reference sample(s) of {matrix.source} fall outside the classified cells")
    if matrix is None:
        return
    result.adjusted, notes = adjusted_rows(result, matrix)
    result.adjusted_source = (
        f"from the reference samples in {matrix.source}"
        if matrix.from_reference
        else PROXY_NOTE.format(source=matrix.source)
    )
    result.notes.extend(notes)


def class_colours(names: tuple[str, ...]) -> dict[int, tuple[int, int, int, int]]:
    """The t-SNE's fixed per-class colours as a GeoTIFF colour table."""
    colours = class_colours_of(names)
    table = {i: (*rgb_of(colours[name]), 255) for i, name in enumerate(names)}
    table[NODATA] = (0, 0, 0, 0)
    return table


def rgb_of(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


@contextlib.contextmanager
def cog_writer(
    path: Path, values: np.ndarray, grid: tuple[object, object], resampling: str, nodata: int | None = None
) -> Iterator[object]:
    """A cloud-optimised GeoTIFF open for writing ``values`` (``bands x rows x cols`` uint8, or one
    band as ``rows x cols``) on ``grid`` (CRS, transform), overviews by ``resampling``, ``nodata`` if any: the one
    place maps and change maps are written. A write the storage refuses for want of room is
    ENOSPC (a message, never a GDAL traceback)."""
    import rasterio
    from rasterio._err import CPLE_BaseError  # the COG driver's write errors come unwrapped
    from rasterio.errors import RasterioError

    bands = values[None] if values.ndim == 2 else values
    profile = {
        "driver": "COG",
        "width": bands.shape[2],
        "height": bands.shape[1],
        "count": bands.shape[0],
        "dtype": "uint8",
        "crs": grid[0],
        "transform": grid[1],
        "compress": "deflate",
        "blocksize": COG_BLOCK,
        "overview_resampling": resampling,
        "nodata": nodata,
    }
    try:
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(bands)
            yield dst
    except (RasterioError, CPLE_BaseError) as err:
        # GDAL says only "Write failed" or "IO error writing tag data" (libtiff prints the reason):
        # short space is the usual cause. A COG is written twice (a temporary GTiff, then the copy
        # with its overviews), so the room it needs is well over the pixels' bytes.
        if shutil.disk_usage(path.parent).free < 2 * bands.nbytes + WRITE_HEADROOM:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from err
        raise


def write_geotiff(
    path: Path,
    values: np.ndarray,
    crs: object,
    transform: object,
    names: tuple[str, ...],
    colours: bool = False,
    meaning: str = CONFIDENCE_MEANING,
) -> None:
    """One uint8 band at tile resolution as a cloud-optimised GeoTIFF (any size: a map smaller than a
    tile is one tile, without overviews), nodata 255; with ``colours``, the class colour table and
    names, and overviews by mode (a block's most common class), else by average (the confidence)."""
    with cog_writer(path, values, (crs, transform), "mode" if colours else "average", NODATA) as dst:
        dst.update_tags(classes=",".join(names))
        if colours:
            dst.write_colormap(1, class_colours(names))
        else:
            dst.update_tags(1, meaning=meaning)


def write_probabilities(path: Path, result: LandUseMap) -> None:
    """Each class's blended probability (0..255) as a band named by its class, a COG whose internal
    mask marks the cells not classified."""
    values = np.moveaxis(result.probabilities, 2, 0)
    with cog_writer(path, values, (result.crs, result.transform), "average") as dst:
        dst.write_mask(np.where(result.classes == NODATA, 0, 255).astype(np.uint8))
        dst.descriptions = result.class_names
        dst.update_tags(meaning="class probability x 255", classes=",".join(result.class_names))


def not_classified_rows(result: LandUseMap) -> list[dict[str, object]]:
    """The cells without a class, by why: masked (when a mask was used), uncertain (when
    ``--min-confidence`` was given), in hectares; then the rest as NODATA (cells only, as always)."""
    status = result.status()
    rows = []
    for name, kind, shown in (
        ("masked", CellStatus.MASKED, result.clear is not None),
        ("uncertain", CellStatus.UNCERTAIN, result.min_confidence is not None),
    ):
        if shown:
            count = int((status == kind).sum())
            hectares = "" if result.tile_area_m2 is None else round(count * result.tile_area_m2 / 10_000, 4)
            rows.append({"class": name, "index": "", "tiles": count, "hectares": hectares})
    rows.append({"class": "nodata", "index": NODATA, "tiles": int((status == CellStatus.NODATA).sum())})
    return rows


def write_areas_csv(path: Path, result: LandUseMap) -> None:
    """Tiles, hectares and share per class (and the error-adjusted hectares with their 95 % interval
    when there are some), then the cells without a class (:func:`not_classified_rows`)."""
    rows = result.areas()
    for row, adjusted in zip(rows, result.adjusted or [{}] * len(rows), strict=True):
        row |= adjusted
    path.write_text(csv_text(AREA_COLUMNS, [*rows, *not_classified_rows(result)]), encoding="utf-8")


def write_preview(
    path: Path,
    result: LandUseMap,
    title: str,
    scene: np.ndarray | None = None,
    scene_size: tuple[int, int] = (0, 0),
) -> None:
    """The scene (when given) beside the map in the class colours (nodata white), with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = result.class_names
    colours = class_colours_of(names)
    cmap = ListedColormap([colours[name] for name in names]).with_extremes(bad="white")
    rows, cols = result.classes.shape
    panels = 1 if scene is None else 2
    height = min(8.0, max(3.0, 6.0 * rows / cols))
    figure, axes = plt.subplots(1, panels, figsize=(panels * height * cols / rows + 3.5, height + 0.6), dpi=100)
    axes = np.atleast_1d(axes)
    extent = (0, cols, rows, 0)  # both panels in cell units: the scene's partial edge cells stay aligned
    if scene is not None:
        cell = result.stride
        axes[0].imshow(scene, extent=(0, scene_size[0] / cell, scene_size[1] / cell, 0), interpolation="nearest")
        axes[0].set_title("scene (as the model sees its colours)", fontsize=9)
    axes[-1].imshow(
        np.ma.masked_equal(result.classes, NODATA),
        cmap=cmap,
        vmin=-0.5,
        vmax=len(names) - 0.5,
        interpolation="nearest",
        extent=extent,
    )
    for ax in axes:
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].set_title(f"{result.classified} {_cells(result)} classified, {result.skipped} nodata", fontsize=9)
    figure.suptitle(title)
    labels = [
        f"{row['class']} {row['percent']:.1f}%" + (f" ({row['hectares']:,.0f} ha)" if row["hectares"] != "" else "")
        for row in result.areas()
    ]
    handles = [Patch(color=colours[name]) for name in names]
    status = result.status()
    for row in not_classified_rows(result)[:-1]:
        kind = CellStatus.MASKED if row["class"] == "masked" else CellStatus.UNCERTAIN
        shown = status == kind
        colour = STATUS_COLOURS[kind]
        axes[-1].imshow(
            np.ma.masked_where(~shown, np.zeros(shown.shape)),
            cmap=ListedColormap([colour]),
            interpolation="nearest",
            extent=extent,
        )
        handles.append(Patch(color=colour))
        labels.append(f"{row['class']} ({row['tiles']} {_cells(result).split(' of ')[0]})")
    axes[-1].legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    figure.savefig(path, format="png", bbox_inches="tight")
    plt.close(figure)


def _cells(result: LandUseMap) -> str:
    """What a map cell is, for titles: a tile (no overlap) or a cell of overlapping windows."""
    if result.stride == result.tile:
        return f"tiles of {result.tile} px"
    return f"cells of {result.stride} px ({result.tile} px windows every {result.stride} px)"


def summary(result: LandUseMap, outputs: MapOutputs) -> str:
    """What the command prints: throughput, the area table, notes and the files written."""
    rate = result.classified / result.seconds if result.seconds else 0.0
    unit = "tile" if result.stride == result.tile else "cell"
    lines = [
        f"{result.classified} {unit}(s) classified, {result.skipped} skipped (nodata or partial edge {unit}s); "
        f"{rate:,.0f} {unit}s/s ({result.engine})",
        "time: " + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result.watch.seconds.items()),
    ]
    adjusted = result.adjusted or []
    for index, row in enumerate(result.areas()):
        if row["tiles"] or (adjusted and adjusted[index]["adjusted_hectares"]):
            area = f"{row['hectares']:>12,.1f} ha" if row["hectares"] != "" else ""
            if adjusted:
                area += " {adjusted_hectares:>12,.1f} ± {ci95_hectares:,.1f} ha adjusted".format(**adjusted[index])
            lines.append(f"  {row['class']:<22} {row['tiles']:>7} {unit}s {row['percent']:>6.2f}% {area}")
    if adjusted:
        lines.append(f"adjusted areas (95 % interval): {result.adjusted_source}")
    for row in not_classified_rows(result)[:-1]:
        area = f"{row['hectares']:>12,.1f} ha" if row["hectares"] != "" else ""
        lines.append(f"  {row['class']:<22} {row['tiles']:>7} {unit}s {'':>7} {area}")
    lines += [f"note: {note}" for note in result.notes]
    lines.append("wrote " + ", ".join(map(str, outputs.all())))
    return "\n".join(lines)
