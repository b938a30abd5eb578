"""Cloud masks, uncertain cells and class probabilities in maps (scenes/masks.py, issue 43's item 2).

The claims are about which cells are classified, how they are counted and what the files say, never
about how well the suite's tiny model classifies: every map with a mask is compared with the same
scene's map without one, made by the same model in the same process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from eurosat_pipeline.cli.main import main as cli
from eurosat_pipeline.core.errors import MapError
from eurosat_pipeline.inference.engines import load_predictor
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.maps.mapping import MapSettings, make_map
from eurosat_pipeline.maps.outputs import read_map
from eurosat_pipeline.maps.result import NODATA, TILE, CellStatus
from eurosat_pipeline.scenes.masks import MaskSpec, windows_to_skip
from eurosat_pipeline.scenes.sources import find_scenes

from .test_map import SCENE_TRANSFORM, TILE_HA, UTM33, grid_of_labels, mosaic, read_csv, write_raster
from .test_region import earth_search_item, scene_bands

ROWS, COLS = 3, 4
CLOUD, SHADOW, SNOW, VEGETATION = 9, 3, 11, 4
SCL_PIXEL = TILE // 2  # SCL is 20 m: 32 of its pixels a tile side


@pytest.fixture(scope="module")
def predictor(map_model: Path) -> object:
    return load_predictor(ModelOptions(map_model))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, synthetic_tiles: dict[str, list[np.ndarray]]) -> Path:
    folder = tmp_path_factory.mktemp("masked-scene")
    return write_raster(folder / "scene.tif", mosaic(synthetic_tiles, grid_of_labels(ROWS, COLS, seed=3)))


def scl(cells: dict[tuple[int, int], tuple[int, float]], rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """A 20 m scene classification: vegetation, except the top ``share`` of each listed tile's rows,
    which get that tile's ``value``."""
    values = np.full((rows * SCL_PIXEL, cols * SCL_PIXEL), VEGETATION, dtype=np.uint8)
    for (row, col), (value, share) in cells.items():
        lines = round(share * SCL_PIXEL)
        values[row * SCL_PIXEL : row * SCL_PIXEL + lines, col * SCL_PIXEL : (col + 1) * SCL_PIXEL] = value
    return values


def write_mask(path: Path, values: np.ndarray, crs: str = UTM33, pixel: float = 20.0) -> Path:
    transform = from_origin(SCENE_TRANSFORM.c, SCENE_TRANSFORM.f, pixel, pixel)
    return write_raster(path, values[None], crs=crs, transform=transform)


CLOUDS = {(0, 0): (CLOUD, 1.0), (0, 1): (CLOUD, 0.25), (1, 1): (SHADOW, 0.75), (2, 3): (SNOW, 1.0)}


def test_mostly_masked_tiles_are_nodata_counted_in_hectares_and_the_rest_unchanged(
    scene: Path, predictor: object, tmp_path: Path
) -> None:
    plain, _ = make_map(scene, tmp_path / "plain.tif", predictor)
    mask = write_mask(tmp_path / "scl.tif", scl(CLOUDS))
    masked, outputs = make_map(scene, tmp_path / "masked.tif", predictor, MapSettings(mask=MaskSpec(str(mask))))

    status = masked.status()
    expected_masked = np.zeros((ROWS, COLS), dtype=bool)
    expected_masked[0, 0] = expected_masked[1, 1] = True  # all cloud; 75 % shadow. Snow is not masked by default.
    assert np.array_equal(status == CellStatus.MASKED, expected_masked)
    assert (masked.classes[expected_masked] == NODATA).all()
    assert np.array_equal(masked.classes[~expected_masked], plain.classes[~expected_masked])
    assert masked.clear[0, 1] == 75 and masked.clear[0, 0] == 0 and masked.clear[1, 1] == 25
    assert masked.clear[2, 3] == 100 and masked.clear[2, 0] == 100

    rows = {row["class"]: row for row in read_csv(outputs.csv)}
    assert rows["masked"]["tiles"] == "2" and float(rows["masked"]["hectares"]) == pytest.approx(2 * TILE_HA)
    assert rows["nodata"]["tiles"] == "0"
    assert sum(int(rows[name]["tiles"]) for name in masked.class_names) == ROWS * COLS - 2
    with rasterio.open(outputs.clear) as src:
        assert np.array_equal(src.read(1), masked.clear)
        assert src.crs == masked.crs and src.transform == masked.transform
    assert cog_validate(str(outputs.clear))[0]
    item = json.loads(outputs.item.read_text())
    assert item["assets"]["clear"]["href"] == "./masked.clear.tif"
    assert item["properties"]["eurosat:settings"]["mask"] == {"file": str(mask), "classes": [3, 8, 9, 10]}
    assert np.array_equal(read_map(outputs.tif).status(), status)  # the files say what the map said


def test_snow_is_masked_when_its_class_is_named(scene: Path, predictor: object, tmp_path: Path) -> None:
    mask = write_mask(tmp_path / "scl.tif", scl(CLOUDS))
    settings = MapSettings(mask=MaskSpec(str(mask), (3, 8, 9, 10, 11)))
    result, _ = make_map(scene, tmp_path / "map.tif", predictor, settings)
    assert result.status()[2, 3] == CellStatus.MASKED


def test_a_mask_at_the_scenes_own_resolution_or_finer_gives_the_same_cells(
    scene: Path, predictor: object, tmp_path: Path
) -> None:
    coarse = scl(CLOUDS)
    fine = coarse.repeat(4, axis=0).repeat(4, axis=1)  # 5 m pixels
    at_20m, _ = make_map(
        scene, tmp_path / "a.tif", predictor, MapSettings(mask=MaskSpec(str(write_mask(tmp_path / "c.tif", coarse))))
    )
    at_5m, _ = make_map(
        scene,
        tmp_path / "b.tif",
        predictor,
        MapSettings(mask=MaskSpec(str(write_mask(tmp_path / "f.tif", fine, pixel=5.0)))),
    )
    assert np.array_equal(at_20m.clear, at_5m.clear)
    assert np.array_equal(at_20m.classes, at_5m.classes)


def test_with_overlapping_windows_mostly_masked_windows_are_not_classified(
    scene: Path, predictor: object, tmp_path: Path
) -> None:
    everything = write_mask(tmp_path / "all.tif", np.full((ROWS * SCL_PIXEL, COLS * SCL_PIXEL), CLOUD, np.uint8))
    result, _ = make_map(scene, tmp_path / "map.tif", predictor, MapSettings(stride=32, mask=MaskSpec(str(everything))))
    assert result.classified == 0 and "classifying" not in result.watch.seconds
    assert (result.status() == CellStatus.MASKED)[: 2 * ROWS, : 2 * COLS].all()
    half = write_mask(tmp_path / "half.tif", scl({(r, c): (CLOUD, 1.0) for r in range(ROWS) for c in range(2)}))
    result, _ = make_map(scene, tmp_path / "half-map.tif", predictor, MapSettings(stride=32, mask=MaskSpec(str(half))))
    status = result.status()
    assert (status[:, :4] == CellStatus.MASKED).all() and (status[: 2 * ROWS, 4:] == CellStatus.CLASSIFIED).all()


def test_windows_to_skip_takes_the_mean_of_the_windows_cells() -> None:
    shares = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    # Windows of 2 x 2 cells: the first has half its cells masked (not mostly), the second a quarter.
    assert windows_to_skip(shares, 2, 1, 2).tolist() == [[False, False]]
    shares[1, 0] = 1.0
    assert windows_to_skip(shares, 2, 1, 2).tolist() == [[True, False]]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("other CRS", "is not the scene's (EPSG:32633)"),
        ("other footprint", "give the mask of this scene's footprint"),
        ("missing", "not found"),
        ("not a raster", "not a raster GDAL can read"),
    ],
)
def test_a_mask_that_is_not_the_scenes_is_refused_in_one_line_and_nothing_is_written(
    case: str, message: str, scene: Path, map_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = tmp_path / "mask.tif"
    if case == "other CRS":
        write_mask(mask, scl({}), crs="EPSG:32632")
    elif case == "other footprint":
        write_mask(mask, scl({}, rows=ROWS + 1))
    elif case == "not a raster":
        mask.write_text("clouds\n")
    out = tmp_path / "out" / "map.tif"
    out.parent.mkdir()
    code = cli(["map", str(scene), "--out", str(out), "--checkpoint", str(map_model), "--mask", str(mask)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and error.count("\n") == 0, error
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--min-confidence", "1.5"], "--min-confidence 1.5: give a probability above 0 and at most 1"),
        (["--min-confidence", "0"], "--min-confidence 0.0"),
    ],
)
def test_bad_min_confidence_is_one_line(
    options: list[str], message: str, scene: Path, map_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(["map", str(scene), "--out", str(tmp_path / "m.tif"), "--checkpoint", str(map_model), *options])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and error.count("\n") == 0, error


def test_bad_mask_classes_are_refused_by_the_parser(
    scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli(["map", str(scene), "--out", str(tmp_path / "m.tif"), "--mask-classes", "cloud"])
    assert stopped.value.code == 2 and "expected mask values like 3,8,9,10" in capsys.readouterr().err
    with pytest.raises(MapError, match="--mask-classes -1"):
        MaskSpec(None, (-1,))


def test_uncertain_cells_are_nodata_in_their_own_row_and_keep_their_confidence(
    scene: Path, predictor: object, tmp_path: Path
) -> None:
    plain, _ = make_map(scene, tmp_path / "plain.tif", predictor, MapSettings(confidence=True))
    threshold = float(np.median(plain.confidence)) / 100  # about half the cells fall below it
    sure, outputs = make_map(
        scene, tmp_path / "sure.tif", predictor, MapSettings(confidence=True, min_confidence=threshold)
    )
    below = plain.confidence < 100 * threshold
    assert below.any() and (~below).any()
    assert np.array_equal(sure.status() == CellStatus.UNCERTAIN, below)
    assert (sure.classes[below] == NODATA).all() and np.array_equal(sure.classes[~below], plain.classes[~below])
    assert np.array_equal(sure.confidence, plain.confidence)
    rows = {row["class"]: row for row in read_csv(outputs.csv)}
    assert int(rows["uncertain"]["tiles"]) == below.sum()
    assert float(rows["uncertain"]["hectares"]) == pytest.approx(below.sum() * TILE_HA)
    assert "masked" not in rows  # no mask, no masked row
    assert np.array_equal(read_map(outputs.tif).status(), sure.status())


def test_probabilities_are_a_band_per_class_whose_top_is_the_map(
    scene: Path, predictor: object, tmp_path: Path
) -> None:
    mask = write_mask(tmp_path / "scl.tif", scl(CLOUDS))
    settings = MapSettings(probabilities=True, mask=MaskSpec(str(mask)), stride=32)
    result, outputs = make_map(scene, tmp_path / "map.tif", predictor, settings)
    with rasterio.open(outputs.probabilities) as src:
        values, valid = src.read(), src.read_masks(1) > 0
        assert src.descriptions == result.class_names and src.dtypes[0] == "uint8"
    assert cog_validate(str(outputs.probabilities))[0]
    classified = result.classes != NODATA
    assert np.array_equal(valid, classified)
    top = np.take_along_axis(values, result.classes[None].astype(np.int64) % len(result.class_names), axis=0)[0]
    assert (top[classified] == values.max(axis=0)[classified]).all()  # the map's class has the top probability
    assert (np.abs(values.sum(axis=0, dtype=np.int64)[classified] - 255) <= len(result.class_names)).all()
    top_percent = values.max(axis=0)[classified].astype(np.float64) * 100 / 255
    assert (np.abs(top_percent - result.confidence[classified]) <= 1).all()  # the confidence raster agrees
    item = json.loads(outputs.item.read_text())
    descriptions = [band["description"] for band in item["assets"]["probabilities"]["bands"]]
    assert descriptions == [f"P({name}) x 255" for name in result.class_names]


def test_a_stac_items_scl_asset_masks_its_map_unless_mask_none(
    map_model: Path, synthetic_tiles: dict[str, list[np.ndarray]], tmp_path: Path
) -> None:
    _, bands = scene_bands(synthetic_tiles, seed=4)
    document = earth_search_item(tmp_path, "S2B_MASKED", bands, 500_000)
    rows, cols = bands["B04"].shape[0] // TILE, bands["B04"].shape[1] // TILE
    scl_values = scl({(0, 0): (CLOUD, 1.0)}, rows, cols)
    profile = {"driver": "GTiff", "count": 1, "height": scl_values.shape[0], "width": scl_values.shape[1]}
    profile |= {"dtype": "uint8", "crs": UTM33, "transform": from_origin(500_000, 5_300_000, 20, 20)}
    with rasterio.open(tmp_path / "S2B_MASKED" / "SCL.tif", "w", **profile) as dst:
        dst.write(scl_values, 1)
    document["assets"]["scl"] = {"href": "S2B_MASKED/SCL.tif", "type": "image/tiff", "roles": ["data"]}
    item = tmp_path / "item.json"
    item.write_text(json.dumps(document))
    (found,) = find_scenes([str(item)], {}, ())
    assert found.mask is not None and found.mask.endswith("SCL.tif")
    masked, _ = make_map(found.target(), tmp_path / "masked.tif", ModelOptions(map_model), MapSettings())
    assert masked.status()[0, 0] == CellStatus.MASKED
    unmasked, outputs = make_map(
        found.target(), tmp_path / "plain.tif", ModelOptions(map_model), MapSettings(mask=None)
    )
    assert unmasked.status()[0, 0] == CellStatus.CLASSIFIED and unmasked.clear is None
    assert outputs.clear is None


def test_a_scenes_own_mask_file_masks_its_map_and_is_part_of_its_fingerprint(
    scene: Path, map_model: Path, tmp_path: Path
) -> None:
    """One date's SCL for `eurosat change`: the scene carries its mask; a file given for all wins."""
    from eurosat_pipeline.regions.tasks import RegionTask
    from eurosat_pipeline.scenes.sources import RasterScene

    mask = write_mask(tmp_path / "scl.tif", scl(CLOUDS))
    task = RegionTask(ModelOptions(map_model), MapSettings())
    plain, masked = RasterScene("s", str(scene)), RasterScene("s", str(scene), mask=str(mask))
    assert task.settings_for(masked).mask == MaskSpec(str(mask))
    assert task.settings_for(plain).mask == MaskSpec()
    assert task.fingerprint(masked) != task.fingerprint(plain)
    result, _ = make_map(masked.target(), tmp_path / "map.tif", ModelOptions(map_model), task.settings_for(masked))
    assert result.status()[0, 0] == CellStatus.MASKED
    unmasked = RegionTask(ModelOptions(map_model), MapSettings(mask=None))
    assert unmasked.settings_for(masked).mask is None  # --mask none: no mask at all
