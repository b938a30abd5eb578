"""Shared fixtures: tiny EuroSAT-shaped data made on the spot, and a tiny training config."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.sources.synthetic import synthetic_images
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.training.train import TrainPaths, train

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_EUROSAT = REPO_ROOT.parent / "shared" / "eurosat" / "EuroSAT.zip"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs 2 workers), each worker and every process it starts
    (dvc, stages) takes its share of the cores: two processes that each start all cores' worth of
    OpenMP threads run up to 10x slower, not 2x. An explicit OMP_NUM_THREADS wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# The longest test files, longest first (measured: the DVC end-to-end file about 390 s of a ~1,000 s
# suite, the benchmark smoke runs about 190 s, the robustness file about 80 s). With a file to a
# worker (--dist loadfile), a long file that starts late is the suite's tail; started first, the
# other worker runs the short files beside it (longest-processing-time-first scheduling).
LONGEST_FIRST = ("test_pipeline_e2e.py", "test_benchmarks.py", "test_robustness.py", "test_own_data.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the longest files first (:data:`LONGEST_FIRST`); the rest keep their order."""
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 64), mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4}[mode]
    pixels = rng.integers(0, 255, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_eurosat_folder(root: Path, per_class: int = 3, prefix: str = "2750") -> Path:
    """The official layout, ``root/<prefix>/<Class>/<Class>_<n>.jpg``, with random pixels."""
    base = root / prefix if prefix else root
    for c, name in enumerate(CLASSES):
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            (folder / f"{name}_{n}.jpg").write_bytes(jpeg_bytes(1000 * c + n))
    return root


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return target


@pytest.fixture
def eurosat_folder(tmp_path: Path) -> Path:
    return make_eurosat_folder(tmp_path / "EuroSAT")


@pytest.fixture
def eurosat_zip(tmp_path: Path, eurosat_folder: Path) -> Path:
    return zip_folder(eurosat_folder, tmp_path / "EuroSAT.zip")


def tiny_config(**changes: object) -> Config:
    """A recipe-shaped config small enough to train in seconds on a CPU."""
    base = Config(
        data_source="synthetic",
        synthetic_images_per_class=12,
        model_name="test_efficientnet",
        pretrained=False,
        phase1_epochs=1,
        phase1_warmup_epochs=1,
        phase2_epochs=2,
        phase1_lr=3e-3,
        phase2_lr=3e-3,
        batch_size=16,
        image_size=32,
        tsne_interval=0,
        wandb_mode="disabled",
        resume=False,
        # The CPU on every machine: on a GPU, `auto` would pick bf16 and cuDNN autotuning, and the
        # tests' exact-equality and determinism checks are about the CPU. GPU tests ask for cuda.
        accelerator="cpu",
    )
    return base.replace(**changes) if changes else base


def evaluated_accuracy(paths: TrainPaths, reports: Path) -> float:
    """The evaluate stage's test accuracy for the run that wrote ``paths`` (its files go to ``reports``)."""
    from eurosat_pipeline.reporting.evaluation import EvalPaths, evaluate

    outputs = (reports / "metrics.json", reports / "per_class.csv", reports / "predictions.csv")
    evaluation = EvalPaths(paths.best, paths.archive, paths.split, paths.dataset_info, *outputs)
    return evaluate(evaluation)["test"]["acc"]


@pytest.fixture
def prepared_data(tmp_path: Path) -> Path:
    """A synthetic canonical archive, its description and a split, under ``tmp_path/data``."""
    config = tiny_config()
    data = tmp_path / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(
        data / "eurosat.zip", data / "split.csv", config.val_fraction, config.test_fraction, config.split_seed
    )
    return data


# EuroSAT RGB with made-up band statistics: what a model built outside the pipeline (no split stage)
# is given, so that one from scratch knows how to normalise.
RGB = DataSpec.eurosat_rgb(mean=(90.0, 100.0, 110.0), std=(40.0, 35.0, 30.0))


@pytest.fixture(scope="session")
def map_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RGB model that tells the synthetic classes apart: shared by the map, serve and region tests."""
    root = tmp_path_factory.mktemp("map-model")
    # One phase at a high rate with the whole network learning: the tiny model then tells the
    # synthetic classes apart (about 90% validation accuracy) in well under a minute. (Without
    # pretrained weights the inputs are normalised with the training split's band statistics.)
    config = tiny_config(
        synthetic_images_per_class=30, phase1_epochs=0, phase2_epochs=8, phase2_lr=1e-2, backbone_lr_scale=1.0
    )
    config = config.replace(batch_size=32)
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
    paths = TrainPaths.under(data, root / "models", root / "reports")
    train(config, paths)
    return paths.best


@pytest.fixture(scope="session")
def synthetic_tiles() -> dict[str, list[np.ndarray]]:
    """Synthetic images (3 x 64 x 64 uint8) by class; the generator's later images, not the training ones."""
    by_class: dict[str, list[np.ndarray]] = {name: [] for name in CLASSES}
    for name, file_name, blob in synthetic_images(40):
        if int(file_name.rsplit("_", 1)[1].split(".")[0]) > 30:
            by_class[name].append(np.asarray(Image.open(io.BytesIO(blob))).transpose(2, 0, 1))
    return by_class
