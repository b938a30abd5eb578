"""Test-time augmentation: the 8 views are EuroSAT's symmetries, and every engine averages over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eurosat_pipeline.core.config import config_from_mapping
from eurosat_pipeline.core.errors import ConfigError, PipelineError
from eurosat_pipeline.core.views import VIEWS, check_view_count, mean_over_views, view_of
from eurosat_pipeline.inference.engines import Predictor, load_predictor
from eurosat_pipeline.inference.options import ModelOptions


def image(seed: int = 0, size: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (1, 3, size, size), dtype=np.uint8)


def with_views(images: np.ndarray, views: int) -> np.ndarray:
    """The first ``views`` views of square images, stacked view by view."""
    return np.concatenate([view_of(images, index) for index in range(views)])


def as_set(arrays: np.ndarray) -> set[bytes]:
    return {np.ascontiguousarray(a).tobytes() for a in arrays}


def test_the_eight_views_are_the_eight_symmetries_of_a_square() -> None:
    x = image()
    views = with_views(x, 8)
    assert views.shape == (8, 3, 5, 5)
    assert len(as_set(views)) == 8  # all different
    expected = [np.rot90(x, k, axes=(-2, -1)) for k in range(4)]
    expected += [np.rot90(x[..., ::-1], k, axes=(-2, -1)) for k in range(4)]
    assert as_set(views) == as_set(np.concatenate(expected))
    # A group: the views of any view are the same eight images.
    for index in range(8):
        assert as_set(with_views(views[index : index + 1], 8)) == as_set(views)
    # The first two are the image and its mirror; the first four the flips, closed on their own.
    assert np.array_equal(views[1], x[0, :, :, ::-1])
    four = with_views(x, 4)
    for index in range(4):
        assert as_set(with_views(four[index : index + 1], 4)) == as_set(four)


def test_torch_and_numpy_views_are_the_same_function() -> None:
    x = image(1, 6)
    for index in range(len(VIEWS)):
        expected = with_views(x, 8)[index : index + 1]
        assert np.array_equal(view_of(torch.from_numpy(x), index).numpy(), expected)
    oblong = np.zeros((1, 3, 4, 6), np.uint8)
    assert view_of(torch.from_numpy(oblong), 5).shape == view_of(oblong, 5).shape == (1, 3, 6, 4)


def test_averaging_makes_any_classifier_blind_to_turns_and_mirrors() -> None:
    class Oriented(Predictor):
        """Probabilities that depend on where the bright pixels are: far from invariant."""

        views = 8

        def probabilities(self, images: np.ndarray) -> np.ndarray:
            weights = np.arange(images[0].size, dtype=np.float64).reshape(images.shape[1:]) % 7
            scores = np.stack([(images * weights).sum(axis=(1, 2, 3)), images.sum(axis=(1, 2, 3))], axis=1)
            exp = np.exp((scores - scores.max(axis=1, keepdims=True)) / 1e4)
            return exp / exp.sum(axis=1, keepdims=True)

    model = Oriented()
    x = image(2).astype(np.float64)
    turned = np.rot90(x, 1, axes=(-2, -1)).copy()
    assert not np.allclose(model.probabilities(x), model.probabilities(turned))
    assert np.allclose(model.classify(x), model.classify(turned))
    assert np.allclose(model.classify(x[..., ::-1].copy()), model.classify(x))


def test_the_mean_over_views_takes_images_of_any_aspect() -> None:
    """A 4 x 6 image's quarter-turns are 6 x 4: each view goes to the classifier on its own."""
    seen: list[tuple[int, ...]] = []

    def classify(images: np.ndarray) -> np.ndarray:
        seen.append(images.shape)
        return np.full((len(images), 2), [1.0, 0.0] if images.shape[-1] == 6 else [0.0, 1.0])

    mean = mean_over_views(classify, np.zeros((2, 3, 4, 6), np.uint8), 8)
    assert seen == [(2, 3, 4, 6)] * 4 + [(2, 3, 6, 4)] * 4
    assert np.allclose(mean, [[0.5, 0.5], [0.5, 0.5]])


def test_view_counts_are_checked_where_they_are_given() -> None:
    with pytest.raises(ValueError, match=r"--views 3: choose one of 1, 2, 4, 8"):
        check_view_count(3)
    with pytest.raises(ConfigError, match=r"key 'tta_views' must be one of 1, 2, 4, 8, got 3"):
        config_from_mapping({"tta_views": 3})
    with pytest.raises(ConfigError, match=r"key 'tta_views' must be one of 1, 2, 4, 8, got True"):
        config_from_mapping({"tta_views": True})


def test_the_checkpoint_engine_averages_its_own_views(map_model: Path) -> None:
    tiles = np.random.default_rng(3).integers(0, 255, (5, 3, 64, 64), dtype=np.uint8)
    single = load_predictor(ModelOptions(map_model, engine="pytorch"))
    averaged = load_predictor(ModelOptions(map_model, engine="pytorch", views=8))
    assert "8 views averaged" in averaged.describe()
    by_hand = np.mean([single.classify(np.ascontiguousarray(view_of(tiles, i))) for i in range(8)], axis=0)
    assert np.allclose(averaged.classify(tiles), by_hand, atol=1e-5)
    turned = np.rot90(tiles, 1, axes=(-2, -1)).copy()
    assert np.allclose(averaged.classify(turned), averaged.classify(tiles), atol=1e-5)
    with pytest.raises(PipelineError, match="--views 5: choose one of"):
        ModelOptions(map_model, engine="pytorch", views=5)


def test_evaluate_records_both_accuracies(map_model: Path, tmp_path: Path) -> None:
    from eurosat_pipeline.reporting.evaluation import EvalPaths, evaluate

    data = map_model.parents[1] / "data"
    outputs = (tmp_path / "metrics.json", tmp_path / "per_class.csv", tmp_path / "predictions.csv")
    paths = EvalPaths(map_model, data / "eurosat.zip", data / "split.csv", data / "dataset.json", *outputs)
    plain = evaluate(paths, views=1)
    assert plain["test_tta"]["views"] == 1 and plain["test_tta"]["acc"] == plain["test"]["acc"]
    averaged = evaluate(paths, views=8)["test_tta"]
    assert averaged["views"] == 8 and 0.0 <= averaged["acc"] <= 1.0


def test_a_map_averages_views_only_when_asked(map_model: Path, tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    from eurosat_pipeline.cli.main import main as cli
    from eurosat_pipeline.maps.mapping import make_map

    scene = tmp_path / "scene.tif"
    pixels = np.random.default_rng(4).integers(0, 255, (3, 128, 192), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": 192, "height": 128, "count": 3, "dtype": "uint8"}
    with rasterio.open(scene, "w", **profile, crs="EPSG:32633", transform=from_origin(500_000, 5_300_000, 10, 10)) as f:
        f.write(pixels)
    plain, _ = make_map(scene, tmp_path / "plain.tif", ModelOptions(map_model, engine="pytorch"))
    averaged, _ = make_map(scene, tmp_path / "views.tif", ModelOptions(map_model, engine="pytorch", views=8))
    assert "views averaged" not in plain.engine and "8 views averaged" in averaged.engine
    assert averaged.classified == plain.classified == 6
    argv = ["map", str(scene), "--out", str(tmp_path / "cli.tif"), "--checkpoint", str(map_model)]
    assert cli([*argv, "--engine", "pytorch", "--views", "8"]) == 0
    with rasterio.open(tmp_path / "cli.tif") as made, rasterio.open(tmp_path / "views.tif") as expected:
        assert np.array_equal(made.read(), expected.read())
