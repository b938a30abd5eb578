"""W&B beside DVCLive, t-SNE pictures, and no secret in any output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eurosat_pipeline.core.classes import CLASS_COLOURS, CLASSES
from eurosat_pipeline.core.records import tsne_figure
from eurosat_pipeline.training.embeddings import MAX_PER_CLASS, sample_per_class, tsne_rows
from eurosat_pipeline.training.tracking import resolve_wandb_mode
from eurosat_pipeline.training.train import TrainPaths, train

from .conftest import tiny_config
from .wandb_log import read_offline_run

FAKE_KEY = "local-0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("configured", "environ", "expected"),
    [
        ("auto", {}, "offline"),
        ("auto", {"WANDB_API_KEY": "x"}, "online"),
        ("offline", {"WANDB_API_KEY": "x"}, "offline"),
        ("online", {}, "online"),
        ("auto", {"WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}, "disabled"),
        ("offline", {"WANDB_MODE": "online"}, "online"),
    ],
)
def test_wandb_mode(
    configured: str, environ: dict[str, str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.delenv("NETRC", raising=False)
    assert resolve_wandb_mode(configured, environ) == expected


def test_netrc_login_means_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_wandb_mode("auto", {}) == "online"


def test_tsne_keeps_at_most_50_points_per_class_with_one_colour_each() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), [80, 50, 10, 60, 70, 5, 50, 51, 90, 3])
    assert all(np.bincount(labels[sample_per_class(labels, len(CLASSES))]) <= MAX_PER_CLASS)
    features = rng.normal(size=(len(labels), 16)) + labels[:, None]
    rows = tsne_rows(3, features, labels, labels[::-1].copy(), CLASSES)
    counts = {name: sum(r["actual"] == name for r in rows) for name in CLASSES}
    assert counts == {name: min(50, int((labels == i).sum())) for i, name in enumerate(CLASSES)}
    figure = tsne_figure(rows, "t", CLASSES)
    colours = {trace.name: trace.marker.color for trace in figure.data}
    assert colours == CLASS_COLOURS and len(set(colours.values())) == len(CLASSES)
    assert all("predicted" in trace.hovertemplate for trace in figure.data)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("WANDB_MODE", raising=False)
        patch.setenv("WANDB_DIR", str(root))
        patch.setenv("WANDB_API_KEY", FAKE_KEY)
        patch.chdir(root)
        from eurosat_pipeline.data.dataset import prepare_dataset
        from eurosat_pipeline.data.split import split_archive

        config = tiny_config(wandb_mode="offline", tsne_interval=2, wandb_project="tests")
        data = root / "data"
        prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
        split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
        train(config, TrainPaths.under(data, root / "models", root / "reports"))
    runs = list(root.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    return {"root": root, "config": config, "log": read_offline_run(runs[0])}


def test_wandb_offline_run_records_config_metrics_and_tsne(offline_run: dict) -> None:
    log = offline_run["log"]
    assert log["config"]["config"] == offline_run["config"].to_dict()
    keys = set().union(*log["history"])
    assert {"val/acc", "val/loss", "train/loss", "train/loss_step", "lr/head", "lr/backbone"} <= keys
    assert any(key.startswith("tsne") for key in keys), "the interactive t-SNE chart was not logged"
    assert log["summary"]["tsne/_type"] == "plotly-file"
    assert {"best_val_acc", "final_val_acc", "images_per_s_phase2"} <= set(log["summary"])


def test_no_secret_is_written_anywhere(offline_run: dict) -> None:
    leaks = [
        path for path in offline_run["root"].rglob("*") if path.is_file() and FAKE_KEY.encode() in path.read_bytes()
    ]
    assert leaks == []
