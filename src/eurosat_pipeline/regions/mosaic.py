"""The mosaic of a region's maps: ``mosaic.vrt`` (GDAL's virtual mosaic, no copy) and ``mosaic.tif``
(the maps merged by rasterio) when the maps share a CRS; one ``mosaic-<CRS>.vrt`` per CRS otherwise
(reprojecting a class map would resample its tiles). Only upright maps are merged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eurosat_pipeline.core.files import atomic_path, write_text
from eurosat_pipeline.maps.outputs import class_colours, write_geotiff
from eurosat_pipeline.maps.result import NODATA
from eurosat_pipeline.regions.tasks import SceneResult

MOSAIC = "mosaic"


def write_mosaics(
    out_dir: Path, results: Sequence[SceneResult]
) -> tuple[list[Path], list[str], dict[str, float] | None]:
    """The maps' mosaics (``mosaic.vrt`` and ``mosaic.tif`` for one CRS; one VRT per CRS otherwise),
    notes, and the merged mosaic's hectares per class (None without one). Only upright maps are in
    them; mosaic files of an earlier run that this one does not write are removed, so none is stale."""
    mosaics, notes, areas = _mosaics_of(out_dir, [out_dir / f"{r.name}.tif" for r in results])
    kept = {path.name for path in mosaics}
    for stale in (*out_dir.glob(f"{MOSAIC}.vrt"), *out_dir.glob(f"{MOSAIC}.tif"), *out_dir.glob(f"{MOSAIC}-*.vrt")):
        if stale.name not in kept:
            stale.unlink(missing_ok=True)
    return mosaics, notes, areas


def _mosaics_of(out_dir: Path, maps: Sequence[Path]) -> tuple[list[Path], list[str], dict[str, float] | None]:
    import rasterio

    if not maps:
        return [], ["no maps, no mosaic"], None
    grids = []
    for path in maps:
        with rasterio.open(path) as src:
            grids.append((path, src.crs, src.transform, src.width, src.height, src.tags().get("classes", "")))
    upright = [g for g in grids if g[2].b == 0 and g[2].d == 0]
    notes = [f"{g[0].name} is on a rotated grid: left out of the mosaic" for g in grids if g not in upright]
    if not upright:
        return [], [*notes, "no upright maps, no mosaic"], None
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for grid in upright:
        groups.setdefault(grid[1].to_string() if grid[1] else "no CRS", []).append(grid)
    names = tuple(upright[0][5].split(",")) if upright[0][5] else ()
    if len(groups) == 1:
        vrt = out_dir / f"{MOSAIC}.vrt"
        write_text(vrt, mosaic_vrt(upright, names))
        merged = out_dir / f"{MOSAIC}.tif"
        areas = merge_maps([g[0] for g in upright], merged, names)  # the VRT's maps, no rotated one
        return [vrt, merged], notes, areas
    written = []
    for label, members in groups.items():
        vrt = out_dir / f"{MOSAIC}-{_file_label(label)}.vrt"
        write_text(vrt, mosaic_vrt(members, names))
        written.append(vrt)
    notes.append(f"the maps are in {len(groups)} CRSs: one mosaic VRT per CRS, no merged mosaic.tif")
    return written, notes, None


def _file_label(crs: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in crs).strip("_")


def mosaic_vrt(grids: Sequence[tuple[Any, ...]], names: tuple[str, ...]) -> str:
    """GDAL's VRT format (gdal.org/drivers/raster/vrt.html) for maps in one CRS: each map a
    ``ComplexSource`` whose nodata (255) lets the maps below show through, later maps on top, on
    the grid of the finest map; the class colour table and names as in each map."""
    from xml.etree import ElementTree as ET

    res_x = min(abs(g[2].a) for g in grids)
    res_y = min(abs(g[2].e) for g in grids)
    west = min(g[2].c for g in grids)
    north = max(g[2].f for g in grids)
    east = max(g[2].c + g[2].a * g[3] for g in grids)
    south = min(g[2].f + g[2].e * g[4] for g in grids)
    width, height = round((east - west) / res_x), round((north - south) / res_y)
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if grids[0][1]:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = grids[0][1].to_wkt()
    ET.SubElement(root, "GeoTransform").text = f"{west!r}, {res_x!r}, 0.0, {north!r}, 0.0, {-res_y!r}"
    metadata = ET.SubElement(root, "Metadata")
    ET.SubElement(metadata, "MDI", key="classes").text = ",".join(names)
    band = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band="1")
    ET.SubElement(band, "NoDataValue").text = str(NODATA)
    ET.SubElement(band, "ColorInterp").text = "Palette"
    table = ET.SubElement(band, "ColorTable")
    colours = class_colours(names)
    for index in range(NODATA + 1):
        c1, c2, c3, c4 = colours.get(index, (0, 0, 0, 0))
        ET.SubElement(table, "Entry", c1=str(c1), c2=str(c2), c3=str(c3), c4=str(c4))
    for path, _, transform, cols, rows, _ in grids:
        source = ET.SubElement(band, "ComplexSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = path.name
        ET.SubElement(source, "SourceBand").text = "1"
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(cols), ySize=str(rows))
        x_off, y_off = (transform.c - west) / res_x, (north - transform.f) / res_y
        x_size, y_size = cols * abs(transform.a) / res_x, rows * abs(transform.e) / res_y
        ET.SubElement(source, "DstRect", xOff=f"{x_off:g}", yOff=f"{y_off:g}", xSize=f"{x_size:g}", ySize=f"{y_size:g}")
        ET.SubElement(source, "NODATA").text = str(NODATA)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def merge_maps(maps: Sequence[Path], out: Path, names: tuple[str, ...]) -> dict[str, float] | None:
    """The maps merged into one GeoTIFF by :func:`rasterio.merge.merge` (later maps on top, as in the
    VRT), and its hectares per class (None in a CRS without areas)."""
    import rasterio
    from rasterio.merge import merge

    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(rasterio.open(path)) for path in maps]
        finest = min(abs(s.transform.a) for s in sources), min(abs(s.transform.e) for s in sources)
        mosaic, transform = merge(sources, nodata=NODATA, res=finest, method="last")
        crs = sources[0].crs
    with atomic_path(out) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):
        write_geotiff(tmp, mosaic[0], crs, transform, names, colours=True)
    if crs is None or not crs.is_projected:
        return None
    tile_m2 = abs(transform.determinant) * crs.linear_units_factor[1] ** 2
    counts = np.bincount(mosaic[0][mosaic[0] != NODATA], minlength=len(names))
    return {name: round(float(counts[i]) * tile_m2 / 10_000, 4) for i, name in enumerate(names)}
