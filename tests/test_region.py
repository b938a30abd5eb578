"""`eurosat map` over Sentinel-2 as it is published: one file per band, STAC items, many scenes at once
(local processes, a Dask LocalCluster), a summary and a mosaic, faults, and resuming a region.

Everything is local: per-band COGs the tests write, in a catalogue of STAC items shaped as Earth
Search publishes them (asset keys and eo:bands names ``red``, ``green``, ``blue``; proj:shape and
proj:transform; raster:bands with the +1000 of processing baseline 04.00 as offset -0.1).
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin

from eurosat_pipeline.cli.main import main as cli
from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.files import sha256_of
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.maps.mapping import S2_DN_MAX, MapSettings, make_map
from eurosat_pipeline.maps.outputs import write_geotiff
from eurosat_pipeline.maps.result import NODATA, TILE
from eurosat_pipeline.regions.executors import DaskCluster, InProcess
from eurosat_pipeline.regions.mosaic import write_mosaics
from eurosat_pipeline.regions.region import finished, map_region
from eurosat_pipeline.regions.tasks import RegionTask, SceneResult, model_here, model_loads, worker_predictor
from eurosat_pipeline.scenes.sources import (
    BandFiles,
    band_files_in,
    find_scenes,
    item_scene,
    model_band_names,
    sentinel2_band,
)

from .test_map import UTM33, grid_of_labels, mosaic, read_csv, write_raster

ROWS, COLS = 4, 4
BASELINE_OFFSET = 1000  # processing baseline 04.00 adds 1000 to every DN
EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
EARTH_SEARCH_BANDS = {"B04": ("red", 0.665), "B03": ("green", 0.56), "B02": ("blue", 0.49), "B08": ("nir", 0.842)}


@pytest.fixture(scope="module")
def model(map_model: Path) -> Path:
    return map_model


@pytest.fixture(scope="module")
def tiles(synthetic_tiles: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    return synthetic_tiles


def digital_numbers(rgb: np.ndarray) -> np.ndarray:
    """Level-1C DNs that EuroSAT's stretch (0..2750 -> 1..255) turns back into these 8-bit pixels."""
    return np.rint((np.maximum(rgb.astype(np.float32), 2) - 1) * S2_DN_MAX / 254).astype(np.uint16)


def assert_tells_classes_apart(classes: np.ndarray) -> None:
    """Equal maps mean the same bands were read only if the model's answer depends on them: the
    tiny model must give at least two classes to the scene's tiles. Not an accuracy bar: how well
    it learns (85-95 % of 16 tiles) depends on the CPU's float path, and these tests are about bands."""
    assert len(np.unique(classes[:ROWS, :COLS])) >= 2, classes


def write_band(path: Path, values: np.ndarray, transform: Affine) -> Path:
    """One band as a cloud-optimised GeoTIFF (GDAL's COG driver: 128 px blocks at least, deflate),
    uint16 DNs with nodata 0."""
    profile = {"driver": "COG", "count": 1, "height": values.shape[0], "width": values.shape[1], "dtype": "uint16"}
    profile |= {"crs": UTM33, "transform": transform, "nodata": 0, "blocksize": 128, "compress": "deflate"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    return path


def scene_bands(tiles: dict[str, list[np.ndarray]], seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A scene's labels and its red, green, blue and near-infrared DNs (B04, B03, B02, B08)."""
    labels = grid_of_labels(ROWS, COLS, seed=seed)
    red, green, blue = digital_numbers(mosaic(tiles, labels))
    nir = np.random.default_rng(seed).integers(1, 5000, red.shape, dtype=np.uint16)
    return labels, {"B04": red, "B03": green, "B02": blue, "B08": nir}


def earth_search_item(folder: Path, item_id: str, bands: dict[str, np.ndarray], west: float) -> dict[str, Any]:
    """A STAC item as Earth Search's sentinel-2-l2a has them, its band COGs written beside it (with
    the baseline's +1000), its hrefs relative to ``folder``."""
    transform = from_origin(west, 5_300_000, 10, 10)
    assets: dict[str, Any] = {}
    for band, values in bands.items():
        common, wavelength = EARTH_SEARCH_BANDS[band]
        href = f"{item_id}/{band}.tif"
        write_band(folder / href, np.where(values > 0, values + BASELINE_OFFSET, 0).astype(np.uint16), transform)
        eo = [
            {
                "name": common,
                "common_name": common,
                "description": f"{common} ({band})",
                "center_wavelength": wavelength,
            }
        ]
        raster = [{"nodata": 0, "data_type": "uint16", "spatial_resolution": 10, "scale": 0.0001, "offset": -0.1}]
        assets[common] = {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": f"{common} - 10m",
            "eo:bands": eo,
            "gsd": 10,
            "proj:shape": list(values.shape),
            "proj:transform": list(transform)[:6],
            "raster:bands": raster,
            "roles": ["data", "reflectance"],
        }
        # Earth Search's JPEG 2000 originals (requester-pays S3): the COG is the one to read.
        assets[f"{common}-jp2"] = assets[common] | {"href": f"s3://sentinel-s2-l2a/{item_id}/{band}.jp2"}
        assets[f"{common}-jp2"]["type"] = "image/jp2"
    visual_bands = [{"name": n, "common_name": n} for n in ("red", "green", "blue")]
    assets["visual"] = {"href": f"{item_id}/TCI.tif", "type": "image/tiff", "eo:bands": visual_bands}
    assets["thumbnail"] = {"href": f"{item_id}/thumbnail.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": EXTENSIONS,
        "id": item_id,
        "geometry": None,
        "properties": {"datetime": "2023-06-28T10:30:00Z", "proj:epsg": 32633, "earthsearch:boa_offset_applied": True},
        "links": [],
        "assets": assets,
        "collection": "sentinel-2-l2a",
    }


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, tiles: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """Three scenes side by side in UTM 33N, as one ItemCollection (``items.json``) and their labels."""
    folder = tmp_path_factory.mktemp("catalogue")
    features, labels = [], {}
    for k in range(3):
        item_id = f"S2B_33UUP_2023062{k}_0_L2A"
        labels[item_id], bands = scene_bands(tiles, seed=10 + k)
        features.append(earth_search_item(folder, item_id, bands, 500_000 + k * COLS * TILE * 10))
    items = folder / "items.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return {"folder": folder, "items": items, "labels": labels, "features": features}


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory, model: Path, catalogue: dict[str, Any]) -> tuple[Path, int]:
    """The catalogue mapped in this process, one scene after another: what the other engines must equal."""
    out = tmp_path_factory.mktemp("sequential") / "maps"
    code = cli(["map", str(catalogue["items"]), "--out-dir", str(out), "--checkpoint", str(model), "--processes", "0"])
    return out, code


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskCluster]:
    """One 2-worker Dask LocalCluster for the module's Dask tests (its workers start once)."""
    with DaskCluster.local(2) as local:
        yield local


def task_of(model: Path) -> RegionTask:
    """Mapping with ``model`` and the default map settings."""
    return RegionTask(ModelOptions(model), MapSettings())


def map_bytes(folder: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (folder / f"{name}.tif").read_bytes() for name in names}


# ---------------------------------------------------------------------------------------------
# Band files


def test_per_band_files_map_byte_for_byte_as_the_stacked_file(
    model: Path, tiles: dict[str, list[np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--band, a folder of band files and a SAFE product (blue at 20 m there, resampled on read) all
    give the very map of the same bands stacked in one file."""
    _, bands = scene_bands(tiles, seed=3)
    bands["B02"] = np.repeat(np.repeat(bands["B02"][::2, ::2], 2, axis=0), 2, axis=1)  # what a 20 m band holds
    transform = from_origin(500_000, 5_300_000, 10, 10)
    stack = write_raster(tmp_path / "stack.tif", np.stack([bands["B04"], bands["B03"], bands["B02"]]), nodata=0)
    from_stack, _ = make_map(stack, tmp_path / "stack-map.tif", ModelOptions(model))
    assert_tells_classes_apart(from_stack.classes)
    expected = (tmp_path / "stack-map.tif").read_bytes()

    loose = tmp_path / "loose"
    paths = {
        band: write_band(loose / f"{band.lower()}_file.tif", bands[band], transform) for band in ("B04", "B03", "B02")
    }
    out = tmp_path / "band-map.tif"
    options = [f"--band=red={paths['B04']}", f"--band=B3={paths['B03']}", f"--band=B02={paths['B02']}"]
    assert cli(["map", *options, "--out", str(out), "--checkpoint", str(model)]) == 0
    assert "tile(s) classified" in capsys.readouterr().out
    assert out.read_bytes() == expected
    folder_map = tmp_path / "folder-map.tif"  # the same files found by their names in their folder
    assert cli(["map", str(loose), "--out", str(folder_map), "--checkpoint", str(model)]) == 0
    assert folder_map.read_bytes() == expected

    # An L2A SAFE product: 10 m bands in R10m, 20 m ones in R20m (blue only there), masks in QI_DATA.
    granule = tmp_path / "S2B_MSIL2A_20230628T101559_N0509_R065_T33UUP_20230628T131237.SAFE" / "GRANULE" / "L2A_T33UUP"
    images = granule / "IMG_DATA"
    for band in ("B04", "B03", "B08"):
        write_band(images / "R10m" / f"T33UUP_20230628T101559_{band}_10m.tif", bands[band], transform)
    blue20 = bands["B02"][::2, ::2]
    write_band(images / "R20m" / "T33UUP_20230628T101559_B02_20m.tif", blue20, from_origin(500_000, 5_300_000, 20, 20))
    write_band(granule / "QI_DATA" / "MSK_DETFOO_B04.tif", np.ones_like(bands["B04"]), transform)
    product = granule.parents[1]
    scenes = find_scenes([str(product)])
    assert len(scenes) == 1 and scenes[0].name == product.name.removesuffix(".SAFE")
    assert [band for band, _ in scenes[0].bands] == ["B02", "B03", "B04", "B08"]
    assert cli(["map", str(product), "--out", str(tmp_path / "safe-map.tif"), "--checkpoint", str(model)]) == 0
    assert (tmp_path / "safe-map.tif").read_bytes() == expected


def test_band_names_and_files_are_found_as_sentinel2_names_them(tmp_path: Path) -> None:
    assert [sentinel2_band(n) for n in ("B04", "b4", "red", "nir08", "B8A", "T33UUP_2023_B11_20m", "TCI", "B13")] == [
        "B04",
        "B04",
        "B04",
        "B8A",
        "B8A",
        "B11",
        None,
        None,
    ]
    rgb = DataSpec.eurosat_rgb()
    assert [band for _, band in model_band_names(rgb)] == ["B04", "B03", "B02"]
    multispectral = DataSpec(CLASSES, (2, 3, 4, 8), None, "uint16", 64, data_bands=13)  # unnamed EuroSAT MS bands
    assert [band for _, band in model_band_names(multispectral)] == ["B02", "B03", "B04", "B08"]
    names = ["T33_B04_10m.jp2", "T33_B04_20m.jp2", "T33_B04_60m.jp2", "T33_B8A_20m.jp2", "T33_TCI_10m.jp2", "a.txt"]
    found = band_files_in([tmp_path / n for n in names])
    assert {band: path.name for band, path in found.items()} == {"B04": "T33_B04_10m.jp2", "B8A": "T33_B8A_20m.jp2"}
    with pytest.raises(PipelineError, match="two files hold band B04"):
        band_files_in([tmp_path / "x_B04.tif", tmp_path / "y_B04.tif"])


def test_band_files_that_are_not_one_scene_are_refused(
    model: Path, tiles: dict[str, list[np.ndarray]], tmp_path: Path
) -> None:
    _, bands = scene_bands(tiles, seed=4)
    here = from_origin(500_000, 5_300_000, 10, 10)
    red, green = (
        write_band(tmp_path / "B04.tif", bands["B04"], here),
        write_band(tmp_path / "B03.tif", bands["B03"], here),
    )
    elsewhere = write_band(tmp_path / "far" / "B02.tif", bands["B02"], from_origin(600_000, 5_300_000, 10, 10))
    other_zone = tmp_path / "zone" / "B02.tif"
    other_zone.parent.mkdir()
    write_raster(other_zone, bands["B02"][None], crs="EPSG:32632", transform=here, nodata=0)
    cases = {
        str(elsewhere): "cover the same ground",
        str(other_zone): "not one scene",
    }
    for blue, message in cases.items():
        scene = BandFiles("x", (("B04", str(red)), ("B03", str(green)), ("B02", blue)))
        with pytest.raises(PipelineError, match=message):
            make_map(scene, tmp_path / "out" / "map.tif", ModelOptions(model))
    stale = BandFiles("z", (("B04", str(red)), ("B03", str(green)), ("B02", str(red))), ((str(green), (100, 100)),))
    with pytest.raises(
        PipelineError, match=r"B03.tif is 256 x 256 pixels but the catalogue's proj:shape says 100 x 100"
    ):
        make_map(stale, tmp_path / "out" / "map.tif", ModelOptions(model))
    with pytest.raises(PipelineError, match=r"no file for the model's band\(s\) blue \(B02\); the scene has B04, B03"):
        make_map(
            BandFiles("y", (("B04", str(red)), ("B03", str(green)))), tmp_path / "out" / "map.tif", ModelOptions(model)
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# STAC items, many scenes


def test_a_stac_item_collection_maps_each_scene_with_a_summary_and_a_mosaic(
    mapped: tuple[Path, int], catalogue: dict[str, Any], model: Path, tiles: dict[str, list[np.ndarray]], tmp_path: Path
) -> None:
    out, code = mapped
    assert code == 0
    names = list(catalogue["labels"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["summary.csv", "mosaic.vrt", "mosaic.tif", "collection.json"]
        + [f"{n}{suffix}" for n in names for suffix in (".tif", ".png", ".csv", ".json", ".done.json")]
    )
    # The STAC Collection links each map's Item, which takes its source item's id and datetime.
    collection = json.loads((out / "collection.json").read_text())
    assert [link["href"] for link in collection["links"] if link["rel"] == "item"] == [f"./{n}.json" for n in names]
    assert collection["assets"]["mosaic"]["href"] == "./mosaic.tif"
    for name in names:
        item = json.loads((out / f"{name}.json").read_text())
        assert item["properties"]["eurosat:datetime_from"] == "source item"
        assert item["properties"]["datetime"].startswith("2023-06-28T10:30:00")
        assert item["properties"]["eurosat:model_sha256"] == sha256_of(model)
    classes = {}
    for k, name in enumerate(names):
        with rasterio.open(out / f"{name}.tif") as result:
            classes[name] = result.read(1)
            assert result.crs == UTM33
        # The catalogue's offset (the +1000 of baseline 04.00) is taken off first: the very map of
        # the same scene's DNs without it.
        _, bands = scene_bands(tiles, seed=10 + k)
        stack = write_raster(tmp_path / f"{name}.tif", np.stack([bands["B04"], bands["B03"], bands["B02"]]), nodata=0)
        plain, _ = make_map(stack, tmp_path / f"{name}-map.tif", ModelOptions(model))
        assert_tells_classes_apart(plain.classes)
        np.testing.assert_array_equal(classes[name], plain.classes)
        assert json.loads((out / f"{name}.done.json").read_text())["fingerprint"]["offset"] == BASELINE_OFFSET

    rows = {row["scene"]: row for row in read_csv(out / "summary.csv")}
    assert list(rows) == [*names, "total", "mosaic"]
    tile_ha = TILE * TILE * 100 / 10_000
    for name in names:
        assert rows[name]["status"] == "mapped" and rows[name]["error"] == "" and rows[name]["tiles"] == "16"
        for index, cls in enumerate(CLASSES):
            assert float(rows[name][f"{cls}_ha"]) == pytest.approx((classes[name] == index).sum() * tile_ha)
    for cls in [*CLASSES, "total"]:
        column = f"{cls}_ha"
        assert float(rows["total"][column]) == pytest.approx(sum(float(rows[n][column]) for n in names))
        assert float(rows["mosaic"][column]) == pytest.approx(float(rows["total"][column]))  # side by side
    assert rows["total"]["status"] == "3 of 3 mapped" and rows["total"]["tiles"] == "48"

    for mosaic_file in ("mosaic.vrt", "mosaic.tif"):
        with rasterio.open(out / mosaic_file) as whole:
            assert whole.crs == UTM33 and (whole.width, whole.height) == (3 * COLS, ROWS)
            assert whole.transform == from_origin(500_000, 5_300_000, 10 * TILE, 10 * TILE)
            assert whole.nodata == NODATA and whole.colormap(1)[0] == (0x1F, 0x77, 0xB4, 255)
            picture = whole.read(1)
        side_by_side = np.concatenate([classes[n] for n in names], axis=1)
        assert (picture == side_by_side).all(), mosaic_file


def test_a_stac_items_per_band_offsets_are_applied_band_by_band_and_unequal_scales_refused(
    model: Path, tiles: dict[str, list[np.ndarray]], tmp_path: Path
) -> None:
    """Each asset's raster:bands offset is taken off its own band: green published without the
    +1000, blue with +500, red with +1000 give the map of the plain DNs, not one offset or none."""
    _, bands = scene_bands(tiles, seed=21)
    bands.pop("B08")
    item = earth_search_item(tmp_path, "mixed", bands, 500_000)
    transform = from_origin(500_000, 5_300_000, 10, 10)
    for band, common, added in (("B03", "green", 0), ("B02", "blue", 500)):
        write_band(tmp_path / "mixed" / f"{band}.tif", np.where(bands[band] > 0, bands[band] + added, 0), transform)
        item["assets"][common]["raster:bands"][0]["offset"] = -added / 10_000
    (tmp_path / "mixed.json").write_text(json.dumps(item))
    (scene,) = find_scenes([str(tmp_path / "mixed.json")])
    stack = write_raster(tmp_path / "stack.tif", np.stack([bands["B04"], bands["B03"], bands["B02"]]), nodata=0)
    plain, _ = make_map(stack, tmp_path / "plain-map.tif", ModelOptions(model))
    assert_tells_classes_apart(plain.classes)
    task = task_of(model)
    result, _ = make_map(scene.target(), tmp_path / "item-map.tif", task.model, task.settings_for(scene))
    np.testing.assert_array_equal(result.classes, plain.classes)

    item["assets"]["blue"]["raster:bands"][0]["scale"] = 0.0002  # blue's DNs on another scale than red's
    (tmp_path / "scaled.json").write_text(json.dumps(item | {"id": "scaled"}))
    (scaled,) = find_scenes([str(tmp_path / "scaled.json")])
    with pytest.raises(PipelineError, match=r"scaled: .*red \(B04\): scale 0\.0001.*blue \(B02\): scale 0\.0002"):
        make_map(scaled.target(), tmp_path / "out" / "map.tif", task.model, task.settings_for(scaled))


def test_a_two_worker_dask_local_cluster_draws_the_same_maps_loading_the_model_once_per_worker(
    mapped: tuple[Path, int], catalogue: dict[str, Any], model: Path, cluster: DaskCluster, tmp_path: Path
) -> None:
    sequential, _ = mapped
    names = list(catalogue["labels"])
    scenes = find_scenes([str(catalogue["items"])])
    lines: list[str] = []
    result = map_region(scenes, tmp_path / "maps", task_of(model), cluster, lines.append)
    loads = cluster.client.run(model_loads)
    assert not result.failed and len({r.worker for r in result.scenes}) >= 1
    assert map_bytes(tmp_path / "maps", names) == map_bytes(sequential, names)
    # Three scenes on two workers: one of them mapped two, with the model it had loaded for the first.
    assert sorted(loads.values()) in ([0, 1], [1, 1])
    assert lines[0].startswith("mapping 3 scene(s): Dask LocalCluster of 2 worker process(es)")
    assert [line.split("]")[0] for line in lines[1:]] == ["[1/3", "[2/3", "[3/3"]


def test_a_worker_killed_mid_scene_has_its_scene_rerun_by_dask_and_leaves_nothing_partial(
    mapped: tuple[Path, int],
    catalogue: dict[str, Any],
    model: Path,
    cluster: DaskCluster,
    tmp_path: Path,
) -> None:
    from .region_faults import KillMidScene

    sequential, _ = mapped
    names = list(catalogue["labels"])
    marker, killed = tmp_path / "claimed", tmp_path / "killed.txt"
    out = tmp_path / "maps"
    cluster.client.register_plugin(KillMidScene(str(marker), str(killed)))
    result = map_region(find_scenes([str(catalogue["items"])]), out, task_of(model), cluster, print)
    scene, pid = killed.read_text().split()
    assert scene in names  # a worker died while writing this scene's outputs ...
    assert not result.failed and {r.name: r.status for r in result.scenes} == dict.fromkeys(names, "mapped")
    rerun = next(r for r in result.scenes if r.name == scene)
    assert not rerun.worker.endswith(f":{pid}")  # ... and another worker process mapped it again
    assert map_bytes(out, names) == map_bytes(sequential, names)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert (out / f"{scene}.done.json").is_file() and (out / f"{scene}.png").stat().st_size > 0


def test_workers_without_the_models_disk_get_it_sent_and_checked_by_hash(
    cluster: DaskCluster, model: Path, tmp_path: Path
) -> None:
    """--scheduler sends the model to the workers; one that cannot see its path loads the copy."""
    cluster.ship_model(ModelOptions(model))
    elsewhere = ModelOptions(tmp_path / "only-on-the-client" / model.name, sha256=sha256_of(model))
    found = cluster.client.submit(model_here, elsewhere, pure=False).result()
    assert Path(found.checkpoint) != model and Path(found.checkpoint).read_bytes() == model.read_bytes()
    another = replace(elsewhere, sha256="0" * 64)  # what the command hashed is not what the worker has
    with pytest.raises(PipelineError, match="is not the model's 0000"):
        cluster.client.submit(worker_predictor, another, pure=False).result()
    with pytest.raises(PipelineError, match="not on worker"):
        cluster.client.submit(model_here, ModelOptions(tmp_path / "never-sent.ckpt"), pure=False).result()


def test_maps_in_two_utm_zones_get_a_mosaic_vrt_per_zone_and_no_merged_file(tmp_path: Path) -> None:
    classes = np.arange(12, dtype=np.uint8).reshape(3, 4) % len(CLASSES)
    origin = from_origin(500_000, 5_300_000, 640, 640)
    results = []
    for name, crs in (("west", "EPSG:32632"), ("east", "EPSG:32633"), ("east-later", "EPSG:32633")):
        write_geotiff(tmp_path / f"{name}.tif", classes, rasterio.crs.CRS.from_string(crs), origin, CLASSES, True)
        results.append(SceneResult(name, "mapped"))
    mosaics, notes, areas = write_mosaics(tmp_path, results)
    assert [p.name for p in mosaics] == ["mosaic-EPSG_32632.vrt", "mosaic-EPSG_32633.vrt"]
    assert areas is None and not (tmp_path / "mosaic.tif").exists() and "2 CRSs" in notes[-1]
    with rasterio.open(mosaics[1]) as zone:
        assert zone.crs == "EPSG:32633" and zone.transform == origin and (zone.read(1) == classes).all()


def test_mosaic_files_this_run_does_not_write_are_removed(tmp_path: Path) -> None:
    classes = np.arange(12, dtype=np.uint8).reshape(3, 4) % len(CLASSES)
    origin = from_origin(500_000, 5_300_000, 640, 640)
    for name, crs in (("west", "EPSG:32632"), ("east", "EPSG:32633")):
        write_geotiff(tmp_path / f"{name}.tif", classes, rasterio.crs.CRS.from_string(crs), origin, CLASSES, True)
    write_mosaics(tmp_path, [SceneResult("west", "mapped"), SceneResult("east", "mapped")])
    assert (tmp_path / "mosaic-EPSG_32632.vrt").is_file()
    mosaics, _, _ = write_mosaics(tmp_path, [SceneResult("east", "mapped")])  # one CRS now
    mosaic_files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mosaic"))
    assert sorted(p.name for p in mosaics) == mosaic_files == ["mosaic.tif", "mosaic.vrt"]
    mosaics, _, areas = write_mosaics(tmp_path, [])  # no map left: no mosaic
    assert mosaics == [] and areas is None and not [p for p in tmp_path.iterdir() if p.name.startswith("mosaic")]


def test_maps_on_rotated_grids_are_left_out_of_the_merged_mosaic(tmp_path: Path) -> None:
    upright = from_origin(500_000, 5_300_000, 640, 640)
    rotated = Affine(640, 64, 500_000, 64, -640, 5_300_000)
    utm = rasterio.crs.CRS.from_string(UTM33)
    write_geotiff(tmp_path / "flat.tif", np.full((3, 4), 1, np.uint8), utm, upright, CLASSES, True)
    write_geotiff(tmp_path / "tilted.tif", np.full((3, 4), 2, np.uint8), utm, rotated, CLASSES, True)
    _, notes, areas = write_mosaics(tmp_path, [SceneResult("flat", "mapped"), SceneResult("tilted", "mapped")])
    assert any("tilted.tif is on a rotated grid" in note for note in notes)
    with rasterio.open(tmp_path / "mosaic.tif") as whole:
        assert whole.transform == upright and set(np.unique(whole.read(1))) == {1}
    assert areas is not None and areas[CLASSES[2]] == 0


class RangeFiles(SimpleHTTPRequestHandler):
    """http.server's file handler with byte ranges (``Range: bytes=a-b``), as object storage serves
    them: GDAL's /vsicurl/ reads a COG's header and blocks by range requests."""

    def send_head(self) -> io.BytesIO | None:  # type: ignore[override]
        wanted = self.headers.get("Range")
        if not wanted:
            return super().send_head()
        try:
            data = Path(self.translate_path(self.path)).read_bytes()
        except OSError:
            self.send_error(404)
            return None
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data[start : end + 1])

    def log_message(self, *args: Any) -> None:
        pass


def test_stac_over_http_reads_the_items_and_their_cogs_through_vsicurl(
    mapped: tuple[Path, int], catalogue: dict[str, Any], model: Path, tmp_path: Path
) -> None:
    """The catalogue served on loopback: pystac reads the ItemCollection by URL, GDAL the COGs by range."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeFiles, directory=str(catalogue["folder"])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/items.json"
        scenes = find_scenes([url])
        assert scenes[0].bands[0][1].startswith(f"/vsicurl/http://127.0.0.1:{server.server_address[1]}/S2B_")
        out = tmp_path / "maps"
        assert cli(["map", url, "--out-dir", str(out), "--checkpoint", str(model), "--processes", "0"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    names = list(catalogue["labels"])
    assert map_bytes(out, names) == map_bytes(mapped[0], names)


def test_one_bad_scene_fails_alone_named_in_the_summary_with_a_nonzero_status(
    catalogue: dict[str, Any],
    model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In two local worker processes: a good item, a raster with bands the model cannot tell apart,
    an item whose red band file is not a raster, another good item."""
    features = catalogue["features"]
    folder = catalogue["folder"]
    good = [folder / "good-0.json", folder / "good-2.json"]
    for path, feature in zip(good, (features[0], features[2]), strict=True):
        path.write_text(json.dumps(feature))
    broken = json.loads(json.dumps(features[1]))
    broken["id"] = "S2B_33UUP_BROKEN"
    (folder / "broken-red.tif").write_text("not a raster")
    broken["assets"]["red"]["href"] = "broken-red.tif"
    (folder / "broken.json").write_text(json.dumps(broken))
    five = write_raster(tmp_path / "five-bands.tif", np.ones((5, 128, 128), np.uint16))
    inputs = [str(good[0]), str(five), str(folder / "broken.json"), str(good[1])]
    out = tmp_path / "maps"
    code = cli(["map", *inputs, "--out-dir", str(out), "--checkpoint", str(model), "--processes", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: five-bands: " in captured.err and "--bands" in captured.err
    assert "error: S2B_33UUP_BROKEN: " in captured.err and "broken-red.tif" in captured.err
    assert "error: 2 of 4 scene(s) failed" in captured.err
    rows = {row["scene"]: row for row in read_csv(out / "summary.csv")}
    assert [rows[n]["status"] for n in ("five-bands", "S2B_33UUP_BROKEN")] == ["failed", "failed"]
    assert "not a raster GDAL can read" in rows["S2B_33UUP_BROKEN"]["error"]
    mapped_ids = [features[0]["id"], features[2]["id"]]
    assert [rows[n]["status"] for n in mapped_ids] == ["mapped", "mapped"]
    assert rows["total"]["status"] == "2 of 4 mapped" and rows["total"]["error"] == "2 failed"
    assert {p.name for p in out.iterdir() if p.name.startswith(("five", "S2B_33UUP_BROKEN"))} == set()
    with rasterio.open(out / "mosaic.tif") as whole:  # the two good maps, the gap between them empty
        assert (whole.width, whole.height) == (3 * COLS, ROWS) and (whole.read(1)[:, COLS : 2 * COLS] == NODATA).all()


def test_a_rerun_skips_finished_scenes_and_remaps_what_changed(
    mapped: tuple[Path, int], catalogue: dict[str, Any], model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "maps"
    shutil.copytree(mapped[0], out)
    names = list(catalogue["labels"])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    task = task_of(model)
    scenes = find_scenes([str(catalogue["items"])])
    lines: list[str] = []
    result = map_region(scenes, out, task, _NoEngine(), lines.append)  # nothing may run
    assert lines == ["3 of 3 scene(s) already mapped with this model and settings: skipped"]
    assert [r.status for r in result.scenes] == ["done"] * 3
    assert all(before[f"{n}.tif"] == (out / f"{n}.tif").stat().st_mtime_ns for n in names)
    rows = {row["scene"]: row for row in read_csv(out / "summary.csv")}
    assert rows["total"]["status"] == "3 of 3 mapped" and float(rows["total"]["total_ha"]) > 0

    (out / f"{names[1]}.png").unlink()  # an incomplete scene is mapped again, the others not
    lines.clear()
    result = map_region(scenes, out, task, InProcess(), lines.append)
    assert [r.status for r in result.scenes] == ["done", "mapped", "done"]
    assert (out / f"{names[1]}.png").is_file()

    sha = json.loads((out / f"{names[0]}.done.json").read_text())["fingerprint"]["model_sha256"]
    hashed = replace(task, model=replace(task.model, sha256=sha))
    assert finished(out, scenes[0], hashed.fingerprint(scenes[0])) is not None
    another = replace(task, model=replace(task.model, sha256="0" * 64))
    assert finished(out, scenes[0], another.fingerprint(scenes[0])) is None
    changed = replace(hashed, settings=MapSettings(scale="minmax"))
    assert finished(out, scenes[0], changed.fingerprint(scenes[0])) is None


def test_a_stride_equal_to_the_models_patch_is_the_same_setting_as_no_stride(
    catalogue: dict[str, Any], model: Path, tmp_path: Path
) -> None:
    """``--stride 64`` on a 64 px model maps exactly what no ``--stride`` maps: a rerun that names
    (or drops) it finds the scenes finished; a finer stride maps them again."""
    scenes = find_scenes([str(catalogue["items"])])[:1]
    out = tmp_path / "maps"
    first = map_region(scenes, out, task_of(model), InProcess(), lambda _: None)
    assert [r.status for r in first.scenes] == ["mapped"]
    hashed = replace(task_of(model), model=replace(task_of(model).model, sha256=sha256_of(model)))
    for stride, status in ((TILE, "done"), (None, "done"), (TILE // 2, "mapped")):
        task = replace(hashed, settings=replace(hashed.settings, stride=stride))
        assert [r.status for r in map_region(scenes, out, task, InProcess(), lambda _: None).scenes] == [status]
    # mapped last at TILE // 2: neither the patch given nor none given finds that map finished
    for stride in (TILE, None):
        task = replace(hashed, settings=replace(hashed.settings, stride=stride))
        assert finished(out, scenes[0], task.fingerprint(scenes[0])) is None


def test_a_rerun_with_other_settings_leaves_nothing_of_the_old_settings_of_a_scene_that_fails(
    catalogue: dict[str, Any], model: Path, tmp_path: Path
) -> None:
    """Settings A, then settings B in which one scene's input is unreadable: that scene has no file
    left from A, and the summary and mosaic hold only B's maps."""
    folder = tmp_path / "catalogue"
    shutil.copytree(catalogue["folder"], folder)
    names = list(catalogue["labels"])
    scenes = find_scenes([str(folder / "items.json")])
    out = tmp_path / "maps"
    first = map_region(scenes, out, task_of(model), InProcess(), lambda _: None)
    assert [r.status for r in first.scenes] == ["mapped"] * 3
    (folder / names[1] / "B04.tif").write_bytes(b"not a raster any more")
    settings_b = RegionTask(ModelOptions(model), MapSettings(confidence=True))
    second = map_region(scenes, out, settings_b, InProcess(), lambda _: None)
    assert [r.status for r in second.scenes] == ["mapped", "failed", "mapped"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(names[1])]
    rows = {row["scene"]: row for row in read_csv(out / "summary.csv")}
    assert rows[names[1]]["status"] == "failed" and rows["total"]["status"] == "2 of 3 mapped"
    with rasterio.open(out / "mosaic.tif") as whole:
        assert (whole.read(1)[:, COLS : 2 * COLS] == NODATA).all()
    for name in (names[0], names[2]):
        assert (out / f"{name}.confidence.tif").is_file()
        assert json.loads((out / f"{name}.done.json").read_text())["fingerprint"]["confidence"] is True


def test_a_model_that_cannot_be_loaded_stops_the_region_at_once(catalogue: dict[str, Any], tmp_path: Path) -> None:
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    lines: list[str] = []
    with pytest.raises(PipelineError, match=r"the model cannot be loaded: .*broken.ckpt.*stopped"):
        map_region(
            find_scenes([str(catalogue["items"])]),
            tmp_path / "maps",
            task_of(broken),
            InProcess(),
            lines.append,
        )
    assert lines == ["mapping 3 scene(s): in this process, one scene at a time"]  # not three failures
    assert [p.name for p in (tmp_path / "maps").iterdir()] == []


class _NoEngine:
    description = "nothing"

    def run(self, scenes: list[Any], task: RegionTask) -> list[Any]:
        assert not scenes, "a finished scene was sent to be mapped again"
        return []


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["scene.tif"], "--out MAP.tif for one scene, --out-dir DIR"),
        (["scene.tif", "--out", "m.tif", "--processes", "2"], "use --out-dir"),
        (["scene.tif", "other.tif", "--out", "m.tif"], "2 scenes: --out is one scene's map"),
        (["scene.tif", "--band", "B04=scene.tif", "--out", "m.tif"], "leave out the scene arguments"),
        (["--band", "B04=scene.tif", "--bands", "1,2,3", "--out", "m.tif"], "--bands picks bands"),
        (["--band", "B04=scene.tif", "--band", "b04=scene.tif", "--out", "m.tif"], "given twice"),
        (["--out", "m.tif"], "no scenes"),
        (["catalogue.json", "--out", "m.tif"], "not JSON"),
    ],
)
def test_wrong_combinations_are_refused_with_a_clear_message(
    arguments: list[str],
    message: str,
    tiles: dict[str, list[np.ndarray]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("scene.tif", "other.tif"):
        write_raster(tmp_path / name, mosaic(tiles, grid_of_labels(1, 1)))
    (tmp_path / "catalogue.json").write_text("{ not json")
    assert cli(["map", *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.tif").exists()


def test_a_folder_of_items_gives_the_scenes_of_the_item_collection_and_one_item_maps_with_out(
    catalogue: dict[str, Any], mapped: tuple[Path, int], model: Path, tmp_path: Path
) -> None:
    folder = catalogue["folder"] / "one-file-per-item"
    folder.mkdir(exist_ok=True)
    for feature in catalogue["features"]:
        moved = json.loads(json.dumps(feature))
        for asset in moved["assets"].values():
            asset["href"] = f"../{asset['href']}" if "://" not in asset["href"] else asset["href"]
        (folder / f"{feature['id']}.json").write_text(json.dumps(moved))
    # The items' hrefs point into the folder above theirs: allowed by --stac-root only.
    assert find_scenes([str(folder)], stac_roots=[catalogue["folder"]]) == find_scenes([str(catalogue["items"])])
    scene = find_scenes([str(catalogue["items"])])[0]
    assert [band for band, _ in scene.bands] == ["B02", "B03", "B04", "B08"] and scene.offset == BASELINE_OFFSET
    assert all(path.endswith(f"{band}.tif") for band, path in scene.bands)  # the COGs, not the JPEG 2000s
    item = folder / f"{scene.name}.json"
    root = ["--stac-root", str(catalogue["folder"])]
    assert cli(["map", str(item), "--out", str(tmp_path / "one.tif"), *root, "--checkpoint", str(model)]) == 0
    assert (tmp_path / "one.tif").read_bytes() == (mapped[0] / f"{scene.name}.tif").read_bytes()


def test_stac_hrefs_outside_the_items_folder_are_refused_unless_a_stac_root_allows_them(
    model: Path, tiles: dict[str, list[np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, bands = scene_bands(tiles, seed=22)
    item = earth_search_item(tmp_path / "elsewhere", "far", bands, 500_000)  # files beside another folder
    for asset in item["assets"].values():
        if not asset["href"].startswith("s3://"):
            asset["href"] = f"../elsewhere/{asset['href']}"
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    (catalogue / "far.json").write_text(json.dumps(item))
    with pytest.raises(
        PipelineError, match=r"far: asset href ../elsewhere/far/B02.tif is outside .*catalogue.*--stac-root"
    ):
        find_scenes([str(catalogue / "far.json")])
    item["assets"]["red"]["href"] = "file:///etc/hostname"
    (catalogue / "etc.json").write_text(json.dumps(item | {"id": "etc"}))
    with pytest.raises(PipelineError, match=r"asset href file:///etc/hostname is outside"):
        find_scenes([str(catalogue / "etc.json")], stac_roots=[tmp_path / "elsewhere"])
    (scene,) = find_scenes([str(catalogue / "far.json")], stac_roots=[tmp_path / "elsewhere"])
    assert scene.bands[0][1] == str(tmp_path / "elsewhere" / "far" / "B02.tif")
    out = tmp_path / "map.tif"
    root = ["--stac-root", str(tmp_path / "elsewhere")]
    assert cli(["map", str(catalogue / "far.json"), "--out", str(out), *root, "--checkpoint", str(model)]) == 0
    assert cli(["map", str(catalogue / "far.json"), "--out", str(out), "--checkpoint", str(model)]) == 2
    assert "--stac-root" in capsys.readouterr().err


def test_an_item_without_band_assets_and_a_stac_catalog_are_refused(tmp_path: Path) -> None:
    import pystac

    item = pystac.Item.from_dict(
        {"type": "Feature", "stac_version": "1.0.0", "id": "bare", "geometry": None, "links": []}
        | {"properties": {"datetime": "2023-01-01T00:00:00Z"}, "assets": {"visual": {"href": "TCI.tif"}}}
    )
    with pytest.raises(PipelineError, match="no asset names a Sentinel-2 band"):
        item_scene(item)
    (tmp_path / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "c", "links": []}))
    with pytest.raises(PipelineError, match="a STAC Catalog, not an Item or ItemCollection"):
        find_scenes([str(tmp_path / "catalog.json")])


def test_a_cluster_leaves_the_environment_of_the_process_that_started_it_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """distributed writes OMP_NUM_THREADS=1 and friends into its starter's environment: every process
    started afterwards (a training run, a stage) would run on one thread."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    with DaskCluster.local(1):
        pass
    assert dict(os.environ) == before
