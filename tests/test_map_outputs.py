"""The map's files a GIS stack reads: a cloud-optimised GeoTIFF, on maps the tests build cell by cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.maps.outputs import write_geotiff
from eurosat_pipeline.maps.result import NODATA

UTM33 = "EPSG:32633"
CELL_M = 640  # a map cell: 64 pixels of 10 m


def write_cog(path: Path, values: np.ndarray, colours: bool = True) -> Path:
    transform = from_origin(300_000, 5_300_000, CELL_M, CELL_M)
    write_geotiff(path, values.astype(np.uint8), UTM33, transform, CLASSES, colours=colours)
    return path


def test_a_large_map_is_a_valid_cog_with_its_colours_names_and_overviews_by_mode(tmp_path: Path) -> None:
    from rio_cogeo.cogeo import cog_validate

    # 2 x 2 blocks of three AnnualCrop (0) and one SeaLake (9): the most common class of each block
    # is 0, while a mean of the indices would be 2 (HerbaceousVegetation, in no block at all).
    block = np.array([[9, 0], [0, 0]])
    classes = np.tile(block, (300, 300))
    tif = write_cog(tmp_path / "map.tif", classes)
    confidence = write_cog(tmp_path / "map.confidence.tif", np.full(classes.shape, 90), colours=False)

    assert cog_validate(tif) == (True, [], [])
    assert cog_validate(confidence) == (True, [], [])
    with rasterio.open(tif) as src:
        assert src.profile["tiled"] and src.block_shapes == [(256, 256)]
        assert src.overviews(1) == [2, 4]
        assert src.tags()["classes"] == ",".join(CLASSES)
        assert src.colormap(1)[0] == (0x1F, 0x77, 0xB4, 255) and src.colormap(1)[NODATA] == (0, 0, 0, 0)
        assert src.nodata == NODATA
        np.testing.assert_array_equal(src.read(1), classes)  # lossless: not a class moves
        halved = src.read(1, out_shape=(300, 300))  # read from the first overview
    assert set(np.unique(halved)) == {0}


def test_a_map_smaller_than_one_cog_block_is_still_a_valid_cog(tmp_path: Path) -> None:
    from rio_cogeo.cogeo import cog_validate

    classes = np.array([[1, 2, NODATA], [3, 4, 5]])
    tif = write_cog(tmp_path / "tiny.tif", classes)
    assert cog_validate(tif) == (True, [], [])
    with rasterio.open(tif) as src:
        assert (src.width, src.height) == (3, 2) and src.overviews(1) == []
        assert src.colormap(1)[1] == (0xFF, 0x7F, 0x0E, 255)  # Forest's t-SNE colour
        np.testing.assert_array_equal(src.read(1), classes)
