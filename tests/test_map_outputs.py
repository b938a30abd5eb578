"""The map's files a GIS stack reads (a cloud-optimised GeoTIFF, a STAC Item validated offline) and its
error-adjusted areas (Olofsson et al. 2014), on maps the tests build cell by cell: no model needed."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.errors import MapError
from eurosat_pipeline.maps.accuracy import (
    ErrorMatrix,
    ReferenceSamples,
    adjusted_areas,
    read_confusion,
    read_reference,
)
from eurosat_pipeline.maps.outputs import MapOutputs, summary, write_geotiff, write_map_files
from eurosat_pipeline.maps.result import NODATA, LandUseMap
from eurosat_pipeline.maps.stac import CLASSIFICATION, MapRecord, region_collection

UTM33 = "EPSG:32633"
CELL_M = 640  # a map cell: 64 pixels of 10 m
CLASSIFICATION_SCHEMA = Path(__file__).parent / "data" / "stac" / "classification-v1.1.0-schema.json"
SOURCE_ITEM = ("S2B_33UUP_20230612_0_L2A", "2023-06-12T10:16:03.024000+00:00")


def land_use_map(classes: np.ndarray, names: tuple[str, ...] = CLASSES, crs: str | None = UTM33) -> LandUseMap:
    """A map of ``classes`` on 640 m cells in UTM 33N (near 12.0 E, 47.8 N)."""
    transform = from_origin(300_000, 5_300_000, CELL_M, CELL_M)
    area = CELL_M * CELL_M if crs else None
    confidence = np.where(classes == NODATA, NODATA, 90).astype(np.uint8)
    return LandUseMap(classes.astype(np.uint8), confidence, crs, transform, area, class_names=names)


def write_map(result: LandUseMap, out: Path, record: MapRecord | None = None, confidence: bool = False) -> MapOutputs:
    """The map's files, written straight to their names (make_map writes temporaries, then renames)."""
    outputs = MapOutputs.for_target(out, confidence)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_map_files(result, outputs, outputs.named(), "test map", (0, 0), record)
    return outputs


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# Cloud-optimised GeoTIFF


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


# ---------------------------------------------------------------------------------------------
# STAC Item and Collection, validated offline


@pytest.fixture
def offline_validator(monkeypatch: pytest.MonkeyPatch) -> object:
    """pystac's validator with the vendored classification schema, and every way to the network shut:
    a schema it would have to fetch makes validation fail."""
    import pystac.stac_io
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"validation tried to reach the network: {args[:2]}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(pystac.stac_io.DefaultStacIO, "read_text_from_href", no_network)
    validator = JsonSchemaSTACValidator()
    validator.schema_cache[CLASSIFICATION] = json.loads(CLASSIFICATION_SCHEMA.read_text(encoding="utf-8"))
    return validator


def validate(document: dict, validator: object) -> list[str]:
    import pystac.validation

    return pystac.validation.validate_dict(document, validator=validator)


def test_the_stac_item_validates_offline_and_describes_the_map(tmp_path: Path, offline_validator: object) -> None:
    classes = np.array([[0, 1, 1], [NODATA, 9, 9]])
    settings = {"scale": "s2", "offset": 1000.0, "nodata": None, "bands": None, "views": 1, "stride": 32}
    record = MapRecord(settings, "ab" * 32)
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    outputs = write_map(land_use_map(classes), tmp_path / "map.tif", record, confidence=True)
    item = json.loads(outputs.item.read_text(encoding="utf-8"))

    assert CLASSIFICATION in validate(item, offline_validator)
    assert item["id"] == "map" and item["properties"]["eurosat:datetime_from"] == "map"
    assert dt.datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00")) >= before
    assert item["properties"]["eurosat:model_sha256"] == "ab" * 32
    assert item["properties"]["eurosat:settings"] == settings
    west, south, east, north = item["bbox"]  # 300 km east, 5,300 km north in UTM 33N: about 12.3 E, 47.8 N
    assert 12.2 < west < east < 12.4 and 47.7 < south < north < 47.9
    data = item["assets"]["data"]
    assert data["href"] == "./map.tif" and data["roles"] == ["data"] and "cloud-optimized" in data["type"]
    by_value = {c["value"]: c for c in data["classification:classes"]}
    assert [by_value[i]["name"] for i in range(len(CLASSES))] == list(CLASSES)
    assert by_value[0]["color_hint"] == "1F77B4" and by_value[NODATA]["nodata"] is True and data["nodata"] == NODATA
    assert {k: a["href"] for k, a in item["assets"].items()} == {
        "data": "./map.tif",
        "overview": "./map.png",
        "areas": "./map.csv",
        "confidence": "./map.confidence.tif",
    }


def test_a_map_of_a_stac_item_takes_its_id_and_datetime(tmp_path: Path, offline_validator: object) -> None:
    record = MapRecord({}, None, SOURCE_ITEM)
    outputs = write_map(land_use_map(np.array([[2, 3]])), tmp_path / "scene.tif", record)
    item = json.loads(outputs.item.read_text(encoding="utf-8"))
    validate(item, offline_validator)
    assert item["id"] == SOURCE_ITEM[0] and item["properties"]["eurosat:datetime_from"] == "source item"
    assert item["properties"]["datetime"].startswith("2023-06-12T10:16:03")


def test_a_map_without_a_crs_has_an_item_without_a_footprint(tmp_path: Path, offline_validator: object) -> None:
    outputs = write_map(land_use_map(np.array([[2, 3]]), crs=None), tmp_path / "plain.tif")
    item = json.loads(outputs.item.read_text(encoding="utf-8"))
    validate(item, offline_validator)
    assert item["geometry"] is None and "bbox" not in item


def test_validation_fails_rather_than_fetch_a_schema_it_does_not_hold(offline_validator: object) -> None:
    """The guard above holds: an extension whose schema is not vendored cannot be validated offline."""
    import pystac

    item = pystac.Item("x", None, None, dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), {})
    document = item.to_dict(include_self_link=False)
    document["stac_extensions"] = ["https://stac-extensions.github.io/not-vendored/v1.0.0/schema.json"]
    from pystac.validation.stac_validator import GetSchemaError

    with pytest.raises(GetSchemaError, match="tried to reach the network"):
        validate(document, offline_validator)


def test_a_collection_links_the_maps_items_and_validates_offline(tmp_path: Path, offline_validator: object) -> None:
    first = write_map(land_use_map(np.array([[0, 1]])), tmp_path / "a.tif", MapRecord({}, None, SOURCE_ITEM))
    second = write_map(land_use_map(np.array([[2, 3]])), tmp_path / "b.tif")
    collection = region_collection("region", [first.item, second.item], tmp_path / "mosaic.tif")

    validate(collection, offline_validator)
    links = [(link["rel"], link["href"], link.get("title")) for link in collection["links"] if link["rel"] == "item"]
    assert links == [("item", "./a.json", SOURCE_ITEM[0]), ("item", "./b.json", "b")]
    assert collection["assets"]["mosaic"]["href"] == "./mosaic.tif"
    start, end = collection["extent"]["temporal"]["interval"][0]
    assert start.startswith("2023-06-12") and end > start  # the map made today is the later one
    (west, south, east, north) = collection["extent"]["spatial"]["bbox"][0]
    assert 12.2 < west < east < 12.4 and 47.7 < south < north < 47.9


# ---------------------------------------------------------------------------------------------
# Error-adjusted areas


def test_olofsssons_worked_example_is_reproduced() -> None:
    """Olofsson et al. (2014), section 5: 640 samples of a Landsat change map (30 m pixels, 0.09 ha)
    over 10 million pixels. The paper's estimate of deforestation: 21,158 ± 6,158 ha (95 %)."""
    counts = np.array(  # rows: map class, columns: reference class
        [
            [66, 0, 5, 4],  # deforestation
            [0, 55, 8, 12],  # forest gain
            [1, 0, 153, 11],  # stable forest
            [2, 1, 9, 313],  # stable non-forest
        ]
    )
    mapped = np.array([200_000, 150_000, 3_200_000, 6_450_000])
    area, ci, unusable = adjusted_areas(counts, mapped, 0.09)
    assert round(area[0]) == 21_158 and round(ci[0]) == 6_158
    assert area.sum() == pytest.approx(mapped.sum() * 0.09) and unusable == []


def test_a_two_class_example_worked_by_hand() -> None:
    # 100 cells of 1 ha: 80 mapped as class 0 (W0 = 0.8), 20 as class 1 (W1 = 0.2); 20 samples each.
    # Map 0: 18 are 0, 2 are 1. Map 1: 5 are 0, 15 are 1.
    # p00 = 0.8 * 18/20 = 0.72, p10 = 0.2 * 5/20 = 0.05: area0 = 100 * 0.77 = 77 ha; area1 = 23 ha.
    # SE² = 0.8² * 0.9 * 0.1 / 19 + 0.2² * 0.25 * 0.75 / 19 = (0.0576 + 0.0075) / 19 = 0.0034263
    # SE = 0.058535; CI95 = 1.96 * 0.058535 * 100 ha = 11.473 ha, the same for both classes.
    area, ci, _ = adjusted_areas(np.array([[18, 2], [5, 15]]), np.array([80, 20]), 1.0)
    np.testing.assert_allclose(area, [77.0, 23.0])
    np.testing.assert_allclose(ci, [11.473, 11.473], atol=5e-4)


def per_class_csv(path: Path, names: tuple[str, ...], by_reference: list[list[int]]) -> Path:
    """The evaluate stage's per_class.csv: a row per true class, the predicted counts in columns."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support", *names])
        for name, row in zip(names, by_reference, strict=True):
            writer.writerow([name, 0.9, 0.9, 0.9, sum(row), *row])
    return path


def test_map_csv_gains_adjusted_areas_from_the_test_confusion_matrix(tmp_path: Path) -> None:
    names = ("Forest", "SeaLake")
    # The evaluate stage's rows are the true classes: transposed, the two-class example above.
    matrix = read_confusion(per_class_csv(tmp_path / "per_class.csv", names, [[18, 5], [2, 15]]))
    assert matrix.counts == ((18, 2), (5, 15)) and not matrix.from_reference
    classes = np.zeros((10, 10), dtype=np.uint8)
    classes[8:] = 1  # 80 cells of Forest, 20 of SeaLake
    result = land_use_map(classes, names)
    outputs = write_map(result, tmp_path / "map.tif", MapRecord(accuracy=matrix))

    rows = {row["class"]: row for row in read_rows(outputs.csv)}
    cell_ha = CELL_M * CELL_M / 10_000  # 40.96 ha
    assert float(rows["Forest"]["adjusted_hectares"]) == pytest.approx(77 * cell_ha, abs=1e-3)
    assert float(rows["SeaLake"]["ci95_hectares"]) == pytest.approx(11.473 * cell_ha, abs=0.05)
    assert rows["nodata"]["adjusted_hectares"] == ""
    printed = summary(result, outputs)
    assert "3,153.9 ± 469.9 ha adjusted" in printed  # Forest: 77 x 40.96 ha
    assert "a proxy from the test split's confusion matrix" in printed and str(tmp_path / "per_class.csv") in printed


def test_an_accuracy_file_of_other_classes_is_refused_naming_both(tmp_path: Path) -> None:
    matrix = read_confusion(per_class_csv(tmp_path / "per_class.csv", ("Forest", "SeaLake"), [[1, 0], [0, 1]]))
    with pytest.raises(
        MapError, match=r"per_class.csv: its classes \(Forest, SeaLake\) are not the model's \(AnnualCrop"
    ):
        matrix.check_classes(CLASSES)


def test_reference_samples_give_the_matrix_from_the_map_classes_at_their_points(tmp_path: Path) -> None:
    names = ("Forest", "SeaLake")
    points = tmp_path / "points.csv"
    west, north = 300_000, 5_300_000
    points.write_text(
        "x,y,class\n"
        f"{west + 10},{north - 10},Forest\n"  # cell (0, 0): mapped Forest, is Forest
        f"{west + 700},{north - 10},SeaLake\n"  # cell (0, 1): mapped Forest, is SeaLake
        f"{west + 10},{north - 700},SeaLake\n"  # cell (1, 0): mapped SeaLake, is SeaLake
        f"{west + 700},{north - 700},Forest\n"  # cell (1, 1): nodata
        f"{west - 5000},{north},Forest\n",  # outside the map
        encoding="utf-8",
    )
    samples = read_reference(points)
    samples.check_classes(names)
    result = land_use_map(np.array([[0, 0], [1, NODATA]]), names)
    matrix, outside = samples.matrix(result)
    assert matrix.counts == ((1, 1), (0, 1)) and outside == 2 and matrix.from_reference

    outputs = write_map(result, tmp_path / "map.tif", MapRecord(reference=samples))
    assert f"from the reference samples in {points}" in summary(result, outputs)
    assert "2 reference sample(s)" in summary(result, outputs)


def test_bad_reference_files_are_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,label\n1,2,Forest\n", encoding="utf-8")
    with pytest.raises(MapError, match=r"--reference .*bad.csv: needs the columns x, y, class; it has x, y, label"):
        read_reference(bad)
    bad.write_text("x,y,class\n1,north,Forest\n", encoding="utf-8")
    with pytest.raises(MapError, match=r"bad.csv, line 2: x and y must be numbers"):
        read_reference(bad)
    samples = ReferenceSamples(((1.0, 2.0, "Desert", 2),), "pts.csv")
    with pytest.raises(MapError, match=r"pts.csv, line 2: class 'Desert' is not one of the model's \(Forest"):
        samples.check_classes(("Forest", "SeaLake"))


def test_classes_with_too_few_samples_keep_their_mapped_area_and_say_so() -> None:
    from eurosat_pipeline.maps.accuracy import adjusted_rows

    # W = 0.5 each. Forest's 10 samples move 0.5 * 1/10 = 0.05 of the area to SeaLake; SeaLake's one
    # sample cannot be used (n - 1 = 0): its 0.5 stays. SeaLake: 0.55 of 4 cells; its interval is
    # Forest's stratum's alone: SE² = 0.5² * 0.1 * 0.9 / 9 = 0.0025, CI = 1.96 * 0.05 * 4 cells.
    result = land_use_map(np.array([[0, 0, 1, 1]]), ("Forest", "SeaLake"))
    rows, notes = adjusted_rows(result, ErrorMatrix(("Forest", "SeaLake"), ((9, 1), (0, 1)), "m.csv"))
    cell_ha = CELL_M * CELL_M / 10_000
    assert rows[1]["adjusted_hectares"] == pytest.approx(0.55 * 4 * cell_ha)
    assert rows[1]["ci95_hectares"] == pytest.approx(1.96 * 0.05 * 4 * cell_ha, abs=1e-3)
    assert notes == [
        "m.csv has fewer than 2 samples the map puts in SeaLake: its mapped area is taken as it is, with no interval"
    ]


def test_eurosat_map_takes_accuracy_and_refuses_one_of_other_classes(
    map_model: Path, synthetic_tiles: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eurosat_pipeline.cli.main import main as cli

    from .test_map import grid_of_labels, mosaic, write_raster

    scene = write_raster(tmp_path / "scene.tif", mosaic(synthetic_tiles, grid_of_labels(2, 5)))
    wrong = per_class_csv(tmp_path / "wrong.csv", ("Forest", "SeaLake"), [[1, 0], [0, 1]])
    out = tmp_path / "out" / "map.tif"
    assert cli(["map", str(scene), "--out", str(out), "--checkpoint", str(map_model), "--accuracy", str(wrong)]) == 2
    assert "wrong.csv: its classes (Forest, SeaLake) are not the model's (AnnualCrop" in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())

    diagonal = [[18 if i == j else 1 for j in range(len(CLASSES))] for i in range(len(CLASSES))]
    right = per_class_csv(tmp_path / "per_class.csv", CLASSES, diagonal)
    assert cli(["map", str(scene), "--out", str(out), "--checkpoint", str(map_model), "--accuracy", str(right)]) == 0
    printed = capsys.readouterr().out
    assert f"a proxy from the test split's confusion matrix ({right})" in printed and "ha adjusted" in printed
    rows = read_rows(out.with_suffix(".csv"))
    adjusted = sum(float(r["adjusted_hectares"]) for r in rows if r["class"] != "nodata")
    assert adjusted == pytest.approx(sum(float(r["hectares"]) for r in rows if r["class"] != "nodata"), abs=0.01)


def test_the_evaluate_stages_matrix_adjusts_only_the_pipelines_own_model(
    map_model: Path, synthetic_tiles: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reports/eval/per_class.csv is the errors of models/best.ckpt: a map made with another
    checkpoint from the same folder gets no adjusted areas from it, the pipeline's own model does."""
    from eurosat_pipeline.cli.main import main as cli

    from .test_map import grid_of_labels, mosaic, write_raster

    monkeypatch.chdir(tmp_path)
    diagonal = [[18 if i == j else 1 for j in range(len(CLASSES))] for i in range(len(CLASSES))]
    (tmp_path / "reports" / "eval").mkdir(parents=True)
    per_class_csv(tmp_path / "reports" / "eval" / "per_class.csv", CLASSES, diagonal)
    scene = write_raster(tmp_path / "scene.tif", mosaic(synthetic_tiles, grid_of_labels(2, 5)))
    assert cli(["map", str(scene), "--out", "other.tif", "--checkpoint", str(map_model)]) == 0
    assert {r["adjusted_hectares"] for r in read_rows(tmp_path / "other.csv") if r["class"] != "nodata"} == {""}
    (tmp_path / "models").mkdir()
    shutil.copyfile(map_model, tmp_path / "models" / "best.ckpt")
    assert cli(["map", str(scene), "--out", "own.tif"]) == 0
    assert all(r["adjusted_hectares"] != "" for r in read_rows(tmp_path / "own.csv") if r["class"] != "nodata")
